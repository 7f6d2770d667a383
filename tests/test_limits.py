"""Limits for a public server (issue 13): per-address sessions and rates (server/limits.py), the
maximum session duration, WebSocket idle timeout and message rate, the portrait folder's quota,
and short-lived TURN credentials (server/turn.py)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import time

import aiohttp
import pytest

from client import StreamClient
from pipelines.talking_head.rest import AvatarSessions
from server.app import MediaServer
from server.config import Settings, parse_settings
from server.limits import Buckets, TokenBucket, client_ip, client_key, parse_networks
from server.turn import turn_credentials
from pipelines import PIPELINES
from testing.fuzz import image_bytes, receive_event, ws_url
from testing.server import in_process

BAD_OFFER = {"sdp": "v=0\r\n", "type": "offer"}  # answered 400 without a session


async def call(http, method: str, url: str, **kwargs) -> tuple[int, dict, dict]:
    async with http.request(method, url, **kwargs) as resp:
        assert resp.content_type == "application/json", (resp.status, await resp.text())
        return resp.status, await resp.json(), dict(resp.headers)


# --- token buckets, addresses --------------------------------------------------------------------
def test_token_bucket_rate_and_burst():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert bucket.take(0.0) == pytest.approx(0.5)  # then one every 1/rate seconds
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0 and bucket.take(0.5) > 0
    assert [bucket.take(100.0) for _ in range(4)].count(0.0) == 3  # refills to the burst, no further


def test_buckets_forget_idle_addresses_and_stay_bounded():
    now = [0.0]
    buckets = Buckets(rate=1.0, burst=2, capacity=1000, clock=lambda: now[0])
    for i in range(5000):  # a flood of distinct addresses within one second
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) == 1000  # the least recently seen went first
    last = "10.0.19.135"  # i = 4999: still counted, one token of its burst of 2 taken
    assert buckets.take(last) == 0.0 and buckets.take(last) == pytest.approx(1.0)
    now[0] = 2.5  # past burst / rate: every bucket is full again, the same as none
    buckets.take("192.0.2.1")
    assert len(buckets) == 1


def test_client_address_from_the_peer_or_trusted_proxies():
    trusted = parse_networks(["10.0.0.1", "172.16.0.0/12"])
    ip = ipaddress.ip_address
    assert client_ip("203.0.113.9", "198.51.100.1", trusted) == ip("203.0.113.9")  # untrusted peer: XFF ignored
    assert client_ip("10.0.0.1", "198.51.100.1", trusted) == ip("198.51.100.1")
    # the rightmost address that is not a trusted proxy: what the client wrote itself is not believed
    assert client_ip("10.0.0.1", "6.6.6.6, 198.51.100.1, 172.16.4.4", trusted) == ip("198.51.100.1")
    assert client_ip("10.0.0.1", "garbage, 198.51.100.1", trusted) == ip("198.51.100.1")
    assert client_ip("10.0.0.1", "198.51.100.1, garbage", trusted) == ip("10.0.0.1")
    assert client_ip("10.0.0.1", "172.16.0.2", trusted) == ip("172.16.0.2")  # only proxies: the first
    assert client_ip("10.0.0.1", None, trusted) == ip("10.0.0.1")
    assert client_ip("::ffff:198.51.100.7", None, trusted) == ip("198.51.100.7")
    assert client_ip(None, None, trusted) is None
    assert client_key(ip("2001:db8:1:2:3:4:5:6")) == client_key(ip("2001:db8:1:2::9")) == "2001:db8:1:2::/64"
    assert client_key(ip("198.51.100.7")) == "198.51.100.7"
    with pytest.raises(ValueError, match="trusted-proxy"):
        parse_networks(["proxy.example.org"])


def test_settings_are_checked_at_start():
    assert parse_settings(["--trusted-proxy", "10.0.0.0/8,::1", "--max-sessions-per-address", "2"],
                          environ={}).trusted_proxies == ["10.0.0.0/8", "::1"]
    with pytest.raises(ValueError, match="trusted-proxy"):
        MediaServer(Settings(trusted_proxies=["nope"]))
    with pytest.raises(ValueError, match="turn-secret"):
        MediaServer(Settings(turn_urls=["turn:turn.example.org:3478"]))


# --- per-address limits over HTTP ----------------------------------------------------------------
# (the rates and trusted proxies are read when the server starts: these tests start their own)
async def test_offers_over_the_rate_get_429_before_the_body_is_read(settings):
    settings.limit_loopback, settings.offers_per_second, settings.offer_burst = True, 0.5, 2
    async with in_process(settings) as media_server, aiohttp.ClientSession() as http:
        url = media_server.url + "/offer"
        assert [(await call(http, "POST", url, json=BAD_OFFER))[0] for _ in range(2)] == [400, 400]
        status, body, headers = await call(http, "POST", url, data=b"{" * (1 << 20))  # over 256 KiB: not read
        assert status == 429 and "offers" in body["error"] and headers["Retry-After"] in ("1", "2"), (status, body)
        assert (await call(http, "GET", media_server.url + "/health"))[0] == 200  # other routes go on


async def test_requests_over_the_rate_get_429_and_the_page_is_not_counted(settings):
    settings.limit_loopback, settings.requests_per_second, settings.request_burst = True, 1.0, 3
    async with in_process(settings) as media_server, aiohttp.ClientSession() as http:
        assert [(await call(http, "GET", media_server.url + "/health"))[0] for _ in range(3)] == [200] * 3
        status, body, headers = await call(http, "GET", media_server.url + "/health")
        assert status == 429 and "requests" in body["error"] and int(headers["Retry-After"]) >= 1
        for path in ("/", "/static/app.js"):
            async with http.get(media_server.url + path) as resp:
                assert resp.status == 200
        await asyncio.sleep(1.1)
        assert (await call(http, "GET", media_server.url + "/health"))[0] == 200


async def test_loopback_is_exempt_unless_it_forwards_for_someone(settings):
    settings.offers_per_second, settings.offer_burst = 0.1, 1
    async with in_process(settings) as media_server, aiohttp.ClientSession() as http:
        url = media_server.url + "/offer"
        assert {(await call(http, "POST", url, json=BAD_OFFER))[0] for _ in range(5)} == {400}
        # a proxy on this machine nobody declared (--trusted-proxy): its clients are not exempt
        forwarded = {"X-Forwarded-For": "198.51.100.1"}
        statuses = [(await call(http, "POST", url, json=BAD_OFFER, headers=forwarded))[0] for _ in range(3)]
    assert statuses == [400, 429, 429]


async def test_trusted_proxy_clients_are_limited_one_by_one(settings):
    settings.trusted_proxies, settings.offer_burst, settings.offers_per_second = ["127.0.0.1"], 1, 0.1
    async with in_process(settings) as media_server, aiohttp.ClientSession() as http:
        url = media_server.url + "/offer"

        async def offer(client: str) -> int:
            return (await call(http, "POST", url, json=BAD_OFFER, headers={"X-Forwarded-For": client}))[0]
        assert [await offer("198.51.100.1"), await offer("198.51.100.1")] == [400, 429]
        assert await offer("198.51.100.2") == 400  # another client behind the same proxy
        assert await offer("6.6.6.6, 198.51.100.1") == 429  # what a client wrote itself is not believed
        assert await offer("2001:db8::1") == 400 and await offer("2001:db8::2") == 429  # one /64


async def test_sessions_per_address(settings, media_server):
    settings.limit_loopback, settings.max_sessions_per_address = True, 2
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(ws_url(media_server.url))
        second = await http.ws_connect(ws_url(media_server.url))
        for ws in (first, second):
            await ws.send_json({"type": "ping", "id": 1})
            assert (await receive_event(ws))["type"] == "pong"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(media_server.url))
        assert refused.value.status == 429
        status, body, _ = await call(http, "POST", media_server.url + "/offer", json=BAD_OFFER)
        assert status == 429 and "sessions" in body["error"]  # WebRTC and WebSocket count together
        await first.close()
        for _ in range(100):
            if len(media_server.server.sessions) < 2:
                break
            await asyncio.sleep(0.02)
        third = await http.ws_connect(ws_url(media_server.url))  # a slot freed
        await third.close()
        await second.close()


# --- session duration, WebSocket idle timeout and message rate ------------------------------------
async def test_websocket_session_reaching_its_maximum_duration(settings, media_server):
    settings.max_session_seconds = 1.0
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(media_server.url)) as ws:
            await ws.send_json({"type": "start_stream", "pipelines": ["gender"]})
            assert (await receive_event(ws))["type"] == "started"
            t0 = time.monotonic()
            shutdown = await receive_event(ws, timeout=5)
            assert shutdown["type"] == "shutdown" and shutdown["reason"] == "max_duration", shutdown
            assert shutdown["closing_in"] == pytest.approx(0.1) and shutdown["retry_after"] == 0
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
            assert msg.extra == "maximum session duration reached" and time.monotonic() - t0 < 4
    assert not media_server.server.sessions


async def test_webrtc_session_reaching_its_maximum_duration(settings, media_server):
    settings.max_session_seconds = 2.0
    client = StreamClient(media_server.url, ["gender"])
    try:
        await client.connect()
        await client.next_event("ready")
        shutdown = await client.next_event("shutdown", timeout=5)
        assert shutdown["reason"] == "max_duration" and shutdown["closing_in"] == pytest.approx(0.2)
        for _ in range(100):
            if not media_server.server.sessions:
                break
            await asyncio.sleep(0.05)
        assert not media_server.server.sessions
    finally:
        await client.close()


def test_avatar_sessions_older_than_the_maximum_are_removed():
    sessions = AvatarSessions(capacity=4, idle_timeout=60, max_age=0.2)
    try:
        session = sessions.create("default", 16000, 10.0)
        session.touch()
        deadline = time.monotonic() + 5
        while session.id in sessions.sessions and time.monotonic() < deadline:
            session.touch()  # in use: only its age removes it
            time.sleep(0.02)
        assert session.id not in sessions.sessions and session.closed
    finally:
        sessions.close()


async def test_idle_websocket_is_closed_with_4408(settings, media_server):
    settings.ws_idle_timeout = 0.5
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(media_server.url)) as ws:
            await ws.send_json({"type": "ping", "id": 1})
            assert (await receive_event(ws))["type"] == "pong"
            error = await receive_event(ws, timeout=3)
            assert error["type"] == "error" and "no message for 0.5 s" in error["message"]
            msg = await ws.receive(timeout=3)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4408 and msg.extra == "idle timeout"


async def test_websocket_message_rate(settings, media_server):
    settings.ws_messages_per_second, settings.ws_message_burst = 1.0, 10
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(media_server.url)) as ws:
            for i in range(14):  # the burst of 10 is answered, the rest dropped with one error
                await ws.send_json({"type": "ping", "id": i})
            events = [await receive_event(ws) for _ in range(11)]
            pongs = [e["id"] for e in events if e["type"] == "pong"]
            errors = [e for e in events if e["type"] == "error"]
            assert pongs == list(range(10)) and len(errors) == 1 and "too many messages" in errors[0]["message"]
            await asyncio.sleep(1.2)  # the socket stays open; the bucket refills
            await ws.send_json({"type": "ping", "id": "later"})
            assert await receive_event(ws) == {"type": "pong", "t": pytest.approx(0, abs=60), "id": "later"}
            for i in range(30):  # keeping on: as many dropped as the burst closes it
                await ws.send_str(json.dumps({"type": "ping", "id": i}))
            while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                pass
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4429, msg


# --- portraits: the folder's quota ---------------------------------------------------------------
async def test_portrait_folder_quota(settings, media_server, tmp_path):
    settings.talking_head.portrait_dir = str(tmp_path)
    settings.talking_head.portrait_quota_files = 1
    url = media_server.url + "/api/portraits"
    first, second = image_bytes("PNG"), image_bytes("JPEG")
    async with aiohttp.ClientSession() as http:
        status, body, _ = await call(http, "POST", url, data=first, headers={"Content-Type": "image/png"})
        assert status == 201, body
        status, body, _ = await call(http, "POST", url, data=second, headers={"Content-Type": "image/jpeg"})
        assert status == 507 and "full" in body["error"] and "at most 1" in body["error"], body
        assert (await call(http, "POST", url, data=first, headers={"Content-Type": "image/png"}))[0] == 201  # kept
        store = (await media_server.server.models.shared(PIPELINES["talking_head"])).portraits
        store.quota_files, store.quota_bytes = 0, len(first) + len(second) - 1  # now by size
        status, body, _ = await call(http, "POST", url, data=second, headers={"Content-Type": "image/jpeg"})
        assert status == 507 and "MB" in body["error"], body
        store.quota_bytes = 0
        assert (await call(http, "POST", url, data=second, headers={"Content-Type": "image/jpeg"}))[0] == 201
    assert len(list(tmp_path.glob("*.img"))) == 2


# --- TURN credentials ----------------------------------------------------------------------------
def test_turn_credentials_follow_the_coturn_rest_scheme():
    creds = turn_credentials("north", ttl=600, label="mms", now=1_600_000_000 - 600)
    # openssl: echo -n 1600000000:mms | openssl dgst -binary -sha1 -hmac north | base64
    assert creds == {"username": "1600000000:mms", "credential": "Z6Ov9ZQXEeTOfFQNRzVv0cCIPi8=",
                     "expires_at": 1_600_000_000}
    fresh = turn_credentials("s3cret", ttl=60)
    expiry, label = fresh["username"].split(":")
    assert int(expiry) == fresh["expires_at"] and abs(int(expiry) - time.time() - 60) < 2 and label
    expected = base64.b64encode(hmac.new(b"s3cret", fresh["username"].encode(), hashlib.sha1).digest()).decode()
    assert fresh["credential"] == expected


async def test_ice_servers_endpoint_and_health_without_credentials(settings, media_server):
    settings.stun = ["stun:stun.example.org:3478"]
    settings.turn_urls, settings.turn_secret, settings.turn_ttl = ["turn:turn.example.org:3478"], "s3cret", 120
    async with aiohttp.ClientSession() as http:
        status, body, headers = await call(http, "GET", media_server.url + "/ice-servers")
        assert status == 200 and headers["Cache-Control"] == "no-store"
        turn = body["ice_servers"][-1]
        assert turn["urls"] == ["turn:turn.example.org:3478"] and abs(body["expires_at"] - time.time() - 120) < 2
        assert turn["username"].startswith(f"{body['expires_at']}:")
        assert turn["credential"] == base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(),
                                                               hashlib.sha1).digest()).decode()
        status, health, _ = await call(http, "GET", media_server.url + "/health")
        assert status == 200 and "ice_servers" not in health and "s3cret" not in json.dumps(health)


async def test_ice_servers_need_credentials_when_auth_is_on(settings, media_server):
    settings.turn_urls, settings.turn_secret = ["turn:turn.example.org:3478"], "s3cret"
    media_server.server.security.keys = {"k" * 20}
    async with aiohttp.ClientSession() as http:
        status, body, headers = await call(http, "GET", media_server.url + "/ice-servers")
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        status, body, _ = await call(http, "GET", media_server.url + "/ice-servers",
                                     headers={"Authorization": "Bearer " + "k" * 20})
        assert status == 200 and body["ice_servers"][-1]["username"]
