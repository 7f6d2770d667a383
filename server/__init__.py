"""The media server: its routes and sessions (``app.py``), the transports that carry sessions
(``transports/``), settings, metrics and ICE. Pipelines are in ``pipelines/``, models behind
``inference/``, media formats and buffers in ``media/``, aiortc tracks in ``tracks/``."""
