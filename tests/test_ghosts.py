"""Ghost sessions free their slot within a few seconds (--connect-timeout), sooner than the
heartbeat timeout that ends established sessions whose client went quiet."""
from __future__ import annotations

import asyncio
import time

import numpy as np

from client import ArrayAudioTrack, StreamClient
from testing.ghosts import offer_only, vanish, wait_sessions


async def test_a_client_that_stops_between_offer_and_ice(settings, media_server):
    settings.connect_timeout, settings.heartbeat_timeout = 2.0, 30.0
    sessions = media_server.server.sessions
    session_id = await offer_only(media_server.url)
    assert session_id in sessions  # the answer was given: it holds a slot
    closed_in = await wait_sessions(lambda: len(sessions), 0, timeout=6)
    assert closed_in < 5, closed_in


async def test_a_client_that_connects_and_never_sends_anything(settings, media_server):
    settings.connect_timeout, settings.heartbeat_timeout = 2.0, 30.0
    sessions = media_server.server.sessions
    silent = StreamClient(media_server.url, ["gender"])  # no media, no messages
    pinging = StreamClient(media_server.url, ["gender"])  # no media, but pings
    try:
        await silent.connect()
        await pinging.connect()
        connected = time.monotonic()
        while silent.session_id in sessions:
            assert time.monotonic() - connected < 6, "the silent session is still there"
            pinging.send({"type": "ping"})
            await asyncio.sleep(0.3)
        assert time.monotonic() - connected >= 1.5  # it had its connect_timeout
        assert list(sessions) == [pinging.session_id]  # heard from: the heartbeat rules it
    finally:
        await silent.close()
        await pinging.close()
    await wait_sessions(lambda: len(sessions), 0, timeout=10)


async def test_an_established_session_that_vanishes_waits_for_the_heartbeat(settings, media_server):
    """A client heard from, then gone without a goodbye (its sockets silent): the heartbeat
    timeout, not the connect deadline, ends it (resuming off; else it waits --resume-seconds more)."""
    settings.connect_timeout, settings.heartbeat_timeout, settings.resume_seconds = 1.0, 3.0, 0
    sessions = media_server.server.sessions
    client = StreamClient(media_server.url, ["gender"])
    try:
        await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), None)
        await asyncio.sleep(1.5)  # media flows past the connect deadline
        assert client.session_id in sessions
        vanish(client.pc)
        gone = time.monotonic()
        await wait_sessions(lambda: len(sessions), 0, timeout=8)
        assert 2.5 <= time.monotonic() - gone <= 6
    finally:
        await client.close()
