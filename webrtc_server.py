#!/usr/bin/env python3
"""Entry point in a checkout: ``python webrtc_server.py [--help]`` serves the page and the WebRTC
endpoint. The code is ``server/cli.py`` (the ``mms-server`` command of an installed copy)."""
from server.cli import main, serve  # noqa: F401

if __name__ == "__main__":
    main()
