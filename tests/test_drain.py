"""Graceful drain: on SIGTERM the server refuses new sessions, tells the current ones, lets them
finish up to --drain-seconds, then closes them and exits (webrtc_server.py as a subprocess)."""
from __future__ import annotations

import asyncio
import signal
import time

import aiohttp

from testing.server import ServerProcess


async def wait_exit(server: ServerProcess, timeout: float) -> float:
    """Seconds until the process exits (an assertion error after ``timeout``)."""
    t0 = time.monotonic()
    while server.proc.poll() is None:
        assert time.monotonic() - t0 < timeout, f"still running after {timeout} s:\n{server.log_tail()}"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def open_socket(http, server):
    ws = await http.ws_connect(server.url.replace("http", "ws") + "/ws")
    await ws.send_json({"type": "start_stream", "pipelines": ["gender"]})
    assert (await ws.receive_json(timeout=30))["type"] == "started"
    return ws


async def test_sigterm_drains_then_exits(tmp_path):
    server = ServerProcess.script("drain", tmp_path / "drain.log", "--drain-seconds", "20", log_level="INFO")
    async with server, aiohttp.ClientSession() as http:
        first, second = await open_socket(http, server), await open_socket(http, server)
        server.proc.send_signal(signal.SIGTERM)
        for ws in (first, second):  # every session is told, with when to come back
            shutdown = await ws.receive_json(timeout=10)
            assert shutdown["type"] == "shutdown" and shutdown["retry_after"] == 21 and shutdown["closing_in"] == 20
        async with http.get(server.url + "/health") as resp:  # a balancer stops sending users here
            assert resp.status == 503 and (await resp.json())["status"] == "draining"
        async with http.get(server.url.replace("http", "ws") + "/ws") as resp:  # no new sessions
            assert resp.status == 503 and resp.headers["Retry-After"] == "21"
        await first.send_json({"type": "ping", "id": 1})  # the current ones still work meanwhile
        assert (await first.receive_json(timeout=10))["type"] == "pong"
        await first.close()
        await asyncio.sleep(0.5)
        assert server.proc.poll() is None  # one session still there: still draining
        await second.close()
        assert await wait_exit(server, 10) < 10  # the last one left: exits well before the 20 s
        assert server.proc.returncode == 0


async def test_sessions_that_stay_are_closed_after_the_drain(tmp_path):
    server = ServerProcess.script("drain", tmp_path / "drain.log", "--drain-seconds", "2", log_level="INFO")
    async with server, aiohttp.ClientSession() as http:
        ws = await open_socket(http, server)
        server.proc.send_signal(signal.SIGTERM)
        assert (await ws.receive_json(timeout=10))["type"] == "shutdown"
        closed = await ws.receive(timeout=15)  # the client stays: the server closes it
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        elapsed = await wait_exit(server, 15)
        assert server.proc.returncode == 0 and elapsed < 15
        assert "draining 1 session(s)" in server.log_tail(40)


async def test_https_with_a_self_signed_certificate(tmp_path, monkeypatch):
    """--tls-self-signed: the page and signalling over HTTPS, with a certificate naming this
    machine's addresses that a client can pin."""
    import ssl

    from server.tls import self_signed

    monkeypatch.setenv("MMS_CACHE", str(tmp_path / "cache"))
    cert, _ = self_signed(tmp_path / "cache" / "tls")  # made here first; the server reuses it
    made = cert.read_bytes()
    server = ServerProcess.script("tls", tmp_path / "tls.log", "--tls-self-signed")
    server.url = server.url.replace("http://", "https://")
    server.start()
    try:
        pinned = ssl.create_default_context(cafile=str(cert))  # verifies the chain and 127.0.0.1
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    async with http.get(server.url + "/health", ssl=pinned) as resp:
                        assert resp.status == 200 and (await resp.json())["status"] == "ok"
                        break
                except aiohttp.ClientConnectorError as exc:  # not listening yet
                    assert time.monotonic() < deadline and server.proc.poll() is None, (exc, server.log_tail())
                    await asyncio.sleep(0.3)
            async with http.get(server.url + "/", ssl=pinned) as resp:
                assert resp.status == 200 and "<html" in (await resp.text()).lower()
        assert cert.read_bytes() == made  # still valid for these names: reused, not remade
        async with aiohttp.ClientSession() as plain:  # an unpinned client does not trust it
            try:
                await plain.get(server.url + "/health")
                raise AssertionError("a self-signed certificate was trusted")
            except aiohttp.ClientConnectorCertificateError:
                pass
    finally:
        await server.stop()
