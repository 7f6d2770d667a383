"""What the tests (tests/) and the benchmarks (bench/) share; nothing here is a test.

* ``testing.media``: test speech and recordings (``espeak``, ``flite``, ``LIBRIVOX``, ``SENTENCE``),
  ``load_audio``, ``write_wav``, ``write_y4m``, a synthetic ``vowel``, ``frame_level`` of a
  received audio frame.
* ``testing.images``: the ``astronaut`` photo, and the talking_head avatar's mouth made from it
  (``mouth_region``, ``mouth_area``, ``dark_pixels``).
* ``testing.net``: ``LOOPBACK``, ``free_port``, ``http_get``, ``server_pair`` / ``nominated_pair``
  (a session's ICE pair) and ``assert_loopback``.
* ``testing.browser``: Debian's headless Chromium through Playwright with fake media
  (``chromium_page``, ``FLAGS``), ``pattern_y4m``, ``open_page``, ``wait_sessions``,
  ``stop_and_check_closed``, ``assert_no_page_errors``.
* ``testing.server``: ``ServerProcess``, ``webrtc_server.py`` (or another server script) as a
  subprocess, always stopped.
* ``testing.speech``: ``silence_after`` (when received speech falls silent) and ``loud_frames``.
* ``testing.translation``: ``EN_TEXT``, ``SPANISH_WORDS``, ``words``, ``ws_session`` (a client of
  the WebSocket translation endpoints).
* ``testing.fuzz``: ``explore`` (hypothesis examples run against the in-process server on the
  test's own event loop), strategies for hostile input (``json_values``, ``content_types``,
  ``sdp_mutations`` / ``mutate``), ``wav_bytes`` and ``png_declaring`` (odd headers, bombs),
  ``image_bytes``, ``PeakRSS``, a ``Bystander`` session that must carry on, ``assert_healthy``.

The in-process server fixtures (``settings``, ``media_server``) stay in tests/conftest.py.
"""
