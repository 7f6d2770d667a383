"""Authentication (API keys, signed session tokens) and origin checks (server/auth.py)."""
from __future__ import annotations

import subprocess
import sys

import aiohttp
import pytest

from client import ArrayAudioTrack, StreamClient
from server.auth import AuthError, Security, mint_token, verify_token
from server.auth import main as mint_cli
from server.config import Settings
from testing.browser import assert_no_page_errors, chromium_page, open_page, pattern_y4m, stop_and_check_closed
from testing.media import espeak, load_audio

KEY, SECRET = "test-key-0123456789", "test-secret"


def test_tokens_sign_expire_and_limit_pipelines(capsys):
    token = mint_token(SECRET, 60, ["gender"])
    grant = verify_token(SECRET, token)
    grant.check(["gender"])
    with pytest.raises(AuthError) as refused:
        grant.check(["gender", "translation"])
    assert refused.value.status == 403 and "translation" in refused.value.message
    verify_token(SECRET, mint_token(SECRET, 60)).check(["translation", "emotion"])  # no list: all
    for bad, why in [(mint_token(SECRET, -1), "expired"), (mint_token("other", 60), "invalid"),
                     (token[:-2] + "xx", "invalid"), ("v1.e30.", "invalid"), ("garbage", "invalid")]:
        with pytest.raises(AuthError, match=why) as err:
            verify_token(SECRET, bad)
        assert err.value.status == 401
    header, payload, signature = token.split(".")  # a payload edited to allow more is refused
    forged = mint_token("attacker", 60).split(".")[1]
    with pytest.raises(AuthError):
        verify_token(SECRET, f"{header}.{forged}.{signature}")
    assert mint_cli(["--secret", SECRET, "--pipelines", "gender,emotion", "--ttl", "30"]) == 0
    minted = capsys.readouterr().out.strip()
    verify_token(SECRET, minted).check(["emotion"])


def test_a_public_address_needs_authentication():
    with pytest.raises(ValueError, match="--api-key"):
        Security(Settings(host="0.0.0.0"))
    Security(Settings(host="0.0.0.0", insecure=True))
    Security(Settings(host="0.0.0.0", api_keys=[KEY]))
    Security(Settings(host="::1"))  # loopback: open by default
    result = subprocess.run([sys.executable, "webrtc_server.py", "--host", "0.0.0.0", "--port", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "needs authentication" in result.stderr and "--insecure" in result.stderr


@pytest.fixture
def secured(settings):
    settings.api_keys = [KEY]
    settings.auth_secret = SECRET
    settings.allowed_origins = ["https://app.example.com"]
    return settings


async def call(http, method, url, token=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        body = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.text()
        return resp.status, body, resp.headers


BAD_SDP = {"type": "offer", "sdp": "not sdp"}  # past authentication, refused as SDP: 400


async def test_credentials_are_required_everywhere(secured, media_server):
    url = media_server.url
    gender_only = mint_token(SECRET, 60, ["gender"])
    async with aiohttp.ClientSession() as http:
        status, body, headers = await call(http, "POST", url + "/offer", json=BAD_SDP)
        assert status == 401 and "authentication required" in body["error"] and headers["WWW-Authenticate"] == "Bearer"
        assert (await call(http, "POST", url + "/offer", "wrong", json=BAD_SDP))[0] == 401
        assert (await call(http, "POST", url + "/offer", mint_token(SECRET, -5), json=BAD_SDP))[1]["error"] == "token expired"
        assert (await call(http, "POST", url + "/offer", KEY, json=BAD_SDP))[0] == 400
        assert (await call(http, "POST", url + f"/offer?token={KEY}", json=BAD_SDP))[0] == 400
        assert (await call(http, "POST", url + "/offer", gender_only, json={**BAD_SDP, "pipelines": ["gender"]}))[0] == 400
        status, body, _ = await call(http, "POST", url + "/offer", gender_only, json={**BAD_SDP, "pipelines": ["emotion"]})
        assert status == 403 and "emotion" in body["error"]
        # REST routes of a pipeline: the token must allow that pipeline
        assert (await call(http, "POST", url + "/api/avatar/sessions", json={}))[0] == 401
        assert (await call(http, "POST", url + "/api/avatar/sessions", gender_only, json={}))[0] == 403
        assert (await call(http, "POST", url + "/api/avatar/sessions", KEY, json={}))[0] == 201
        assert (await call(http, "GET", url + "/languages"))[0] == 401
        assert (await call(http, "GET", url + "/metrics"))[0] == 401
        assert (await call(http, "GET", url + "/metrics", KEY))[0] == 200
        # /health stays public but says less; the page and static files stay public
        status, public, _ = await call(http, "GET", url + "/health")
        assert status == 200 and public["auth"] == "required" and "ice_servers" not in public and "pipelines" not in public
        status, full, _ = await call(http, "GET", url + "/health", gender_only)
        assert status == 200 and "ice_servers" not in full and "gender" in full["pipelines"]
        assert (await call(http, "GET", url + "/ice-servers"))[0] == 401  # TURN credentials: never public
        assert (await call(http, "GET", url + "/ice-servers", gender_only))[0] == 200
        assert (await call(http, "GET", url + "/"))[0] == 200
        assert (await call(http, "GET", url + "/static/app.js"))[0] == 200


async def test_websockets_sign_in_by_header_query_or_first_message(secured, media_server):
    ws_url = media_server.url.replace("http", "ws") + "/ws"
    gender_only = mint_token(SECRET, 60, ["gender"])
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url) as ws:  # nothing: the first message must sign in
            await ws.send_json({"type": "ping"})
            error = await ws.receive_json(timeout=10)
            assert error["type"] == "error" and "authentication required" in error["message"]
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4401
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "auth", "token": "forged.token.here"})
            assert "invalid token" in (await ws.receive_json(timeout=10))["message"]
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "auth", "token": gender_only})
            assert (await ws.receive_json(timeout=10))["type"] == "authenticated"
            await ws.send_json({"type": "start_stream", "pipelines": ["emotion"]})
            error = await ws.receive_json(timeout=10)
            assert error["type"] == "error" and "does not allow" in error["message"]
            await ws.send_json({"type": "start_stream", "pipelines": ["gender"]})
            assert (await ws.receive_json(timeout=10))["type"] == "started"
        async with http.ws_connect(ws_url + f"?token={KEY}") as ws:
            await ws.send_json({"type": "ping", "id": 3})
            assert (await ws.receive_json(timeout=10))["id"] == 3
        async with http.ws_connect(ws_url, headers={"Authorization": f"Bearer {gender_only}"}) as ws:
            await ws.send_json({"type": "start_stream", "pipelines": ["gender"]})
            assert (await ws.receive_json(timeout=10))["type"] == "started"


async def test_other_origins_are_refused(secured, media_server):
    url, host = media_server.url, media_server.url.split("//")[1]
    async with aiohttp.ClientSession() as http:
        # the attack: a page elsewhere posts an offer as text/plain (no CORS preflight)
        status, body, _ = await call(http, "POST", url + "/offer", KEY, data='{"type": "offer", "sdp": "v=0"}',
                                     headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
        assert status == 403 and "evil.example" in body["error"]
        status, _, headers = await call(http, "POST", url + "/offer", KEY, json=BAD_SDP,
                                        headers={"Origin": f"http://{host}"})  # the server's own page
        assert status == 400 and "Access-Control-Allow-Origin" not in headers
        status, _, headers = await call(http, "POST", url + "/offer", KEY, json=BAD_SDP,
                                        headers={"Origin": "https://app.example.com"})
        assert status == 400 and headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        status, _, headers = await call(http, "OPTIONS", url + "/offer", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
        assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
        assert (await call(http, "OPTIONS", url + "/offer", headers={"Origin": "http://evil.example"}))[0] == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(media_server.url.replace("http", "ws") + f"/ws?token={KEY}",
                                  headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403


async def test_a_session_with_a_token_end_to_end(secured, media_server):
    voice = load_audio(espeak("en+f3", "Hello, this session was opened with a signed token."))
    client = StreamClient(media_server.url, ["gender"], token=mint_token(SECRET, 60, ["gender"]))
    try:
        await client.connect(audio=ArrayAudioTrack(voice, 16000, loop=True))
        event = await client.next_event("gender", timeout=30)
        assert event["label"] == "female"
    finally:
        await client.close()
    refused = StreamClient(media_server.url, ["gender"])
    with pytest.raises(Exception, match="401|authentication required"):
        await refused.connect(audio=ArrayAudioTrack(voice, 16000))
    await refused.close()


async def test_the_page_uses_the_token_in_its_url(secured, media_server, tmp_path):
    wav, y4m = espeak("en+f3"), pattern_y4m(tmp_path / "pattern.y4m")
    token = mint_token(SECRET, 120, ["gender"])
    async with chromium_page(tmp_path, wav, y4m) as page:
        await open_page(page, f"{media_server.url}/?token={token}")
        await page.click("#start")
        await page.wait_for_function(
            "document.querySelector('#result-gender') && document.querySelector('#result-gender').dataset.label",
            timeout=60_000)
        assert len(media_server.server.sessions) == 1
        assert await page.is_hidden("#error")  # no request of the page was refused
        await stop_and_check_closed(page, media_server.server)
        assert_no_page_errors(page)
