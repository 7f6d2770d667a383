"""Media tracks: inbound readers that feed the session's buffers, and the outbound tracks the
server sends back (synthesized video, speech audio)."""
