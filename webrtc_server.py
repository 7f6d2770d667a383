#!/usr/bin/env python3
"""Entry point: ``python webrtc_server.py [--help]`` serves the page and the WebRTC endpoint."""
from __future__ import annotations

import logging
import sys

from aiohttp import web

from server.app import MediaServer
from server.config import parse_settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = MediaServer(settings)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    print(f"Serving on http://{settings.host}:{settings.port}", flush=True)
    web.run_app(server.app(), host=settings.host, port=settings.port, print=None)


if __name__ == "__main__":
    main()
