"""Building blocks that several pipelines share (voice activity, pitch, ...)."""
