"""Loopback networking for tests and benchmarks: free ports, a plain GET, and checks that a WebRTC
session's ICE pair stays on 127.0.0.1."""
from __future__ import annotations

import socket

import aiohttp

LOOPBACK = "127.0.0.1"

Pair = tuple[tuple[str, int], tuple[str, int]]


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on at the moment (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def http_get(url: str, text: bool = False):
    """``GET url``: the body as JSON (or as text)."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.text() if text else await resp.json()


def nominated_pair(pc) -> Pair | None:
    """(local, remote) addresses of an aiortc peer connection's nominated ICE pair, if any."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is None:
            continue
        for pair in transport.transport._connection._nominated.values():
            return pair.local_addr, pair.remote_addr
    return None


def server_pair(session) -> Pair | None:
    """(local, remote) addresses of a server session's nominated ICE pair."""
    return nominated_pair(session.pc)


def assert_loopback(pair: Pair | None) -> None:
    """Both ends of an ICE pair (``server_pair`` or ``StreamClient.selected_pair``) on loopback."""
    assert pair is not None, "no nominated ICE pair"
    (local_host, _), (remote_host, _) = pair
    assert local_host == LOOPBACK and remote_host == LOOPBACK, pair
