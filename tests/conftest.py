"""Shared fixtures: an in-process server on 127.0.0.1 with ICE restricted to loopback."""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.app import MediaServer  # noqa: E402
from server.config import Settings  # noqa: E402
from testing.net import free_port  # noqa: E402

# Load shedding (server/load.py) judges the whole machine; the tests share a busy one, so their
# servers (in process, and webrtc_server.py subprocesses through the environment) never shed
# load unless a test asks (tests/test_load.py).
os.environ.setdefault("MMS_LOAD_THRESHOLD", "0")


@dataclasses.dataclass
class RunningServer:
    server: MediaServer
    url: str


@pytest.fixture
def settings() -> Settings:
    """Test settings; a test may change them before using ``media_server``."""
    return Settings(host="127.0.0.1", port=free_port(), ice_hosts=["127.0.0.1"], max_sessions=8,
                    load_threshold=float(os.environ["MMS_LOAD_THRESHOLD"]))


@pytest.fixture
async def media_server(settings):
    server = MediaServer(settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    try:
        yield RunningServer(server, f"http://{settings.host}:{settings.port}")
    finally:
        await runner.cleanup()
