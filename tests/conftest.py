"""Shared fixtures: an in-process server on 127.0.0.1 with ICE restricted to loopback."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.config import Settings  # noqa: E402
from testing.net import free_port  # noqa: E402
from testing.server import in_process  # noqa: E402

# Load shedding (server/load.py) judges the whole machine; the tests share a busy one, so their
# servers (in process, and webrtc_server.py subprocesses through the environment) never shed
# load unless a test asks (tests/test_load.py).
os.environ.setdefault("MMS_LOAD_THRESHOLD", "0")


@pytest.fixture
def settings() -> Settings:
    """Test settings; a test may change them before using ``media_server``."""
    return Settings(host="127.0.0.1", port=free_port(), ice_hosts=["127.0.0.1"], max_sessions=8,
                    load_threshold=float(os.environ["MMS_LOAD_THRESHOLD"]))


@pytest.fixture
async def media_server(settings):
    async with in_process(settings) as running:
        yield running
