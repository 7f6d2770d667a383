"""The media server's core: configuration, sessions, signalling, metrics and the shared plumbing
that every pipeline stands on. Tracks live in ``tracks/``, pipelines in ``pipelines/``."""
