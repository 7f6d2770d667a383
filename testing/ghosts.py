"""Clients that go away badly, for tests and bench/soak.py: one that stops between its offer and
ICE, one whose sockets go silent without a goodbye, and the server sessions' count to watch."""
from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from aiortc import RTCPeerConnection


async def offer_only(url: str, pipelines: list[str] | None = None, headers: dict | None = None) -> str:
    """Offer, take the answer, and vanish before ICE (never setting the answer): the server holds a
    session whose ICE can never connect. Returns its id."""
    pc = RTCPeerConnection()
    try:
        pc.createDataChannel("events")
        pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "pipelines": pipelines or ["gender"]}
        async with aiohttp.ClientSession() as http, \
                http.post(f"{url}/offer", json=body, headers=headers or {}) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused ({resp.status}): {answer.get('error')}")
        return answer["session_id"]
    finally:
        await pc.close()


def vanish(pc: RTCPeerConnection) -> None:
    """Make a peer connection go silent without a word (no DTLS close_notify, no SCTP ABORT, no
    more RTCP, STUN or media, and it hears nothing either), as when a tab crashes or the network
    goes: its UDP sockets stay open but neither read nor send. ``pc.close()`` afterwards frees
    this side only."""
    transports = {t.receiver.transport for t in pc.getTransceivers() if t.receiver.transport is not None}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    for dtls in transports:
        for protocol in getattr(dtls.transport._connection, "_protocols", []):
            if getattr(protocol, "transport", None) is not None:
                protocol.transport.pause_reading()
                protocol.transport.sendto = lambda *args, **kwargs: None


async def wait_sessions(count, want: int, timeout: float) -> float:
    """Seconds until ``count()`` (sync or async) is ``want``; AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while True:
        got = count()
        if asyncio.iscoroutine(got):
            got = await got
        if got == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"{got} sessions, not {want}, after {timeout} s"
        await asyncio.sleep(0.1)


async def health_sessions(http: aiohttp.ClientSession, url: str) -> int | None:
    """``/health``'s session count, or None if it did not answer."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with http.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return (await resp.json())["sessions"]
    return None
