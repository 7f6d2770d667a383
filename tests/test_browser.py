"""End to end: the web page (static/) in headless Chromium against an in-process server.

Chromium's fake camera and microphone play files made on the spot (espeak-ng speech, a y4m test
pattern); ICE runs on 127.0.0.1 only (the server is restricted to it, Chromium is allowed loopback).
"""
from __future__ import annotations

import json

from testing.browser import (assert_no_page_errors, chromium_page, open_page, pattern_y4m,
                             stop_and_check_closed)
from testing.media import espeak
from testing.net import LOOPBACK, server_pair

RESULT_TIMEOUT_MS = 30_000


async def run_voice(page, server, expected: str) -> dict:
    """Start a session, wait for a gender result and media; check the network path; stop."""
    await page.click("#start")
    await page.wait_for_function(
        "document.querySelector('#result-gender') && document.querySelector('#result-gender').dataset.label",
        timeout=RESULT_TIMEOUT_MS)
    text = await page.text_content("#result-gender")
    assert text.split()[0] == expected, f"expected {expected!r}, page shows {text!r}"
    assert text.strip().endswith("%")

    # Returned video decoded, the selected candidate pair known, a ping answered.
    await page.wait_for_function(
        "window.mmsStats.framesDecoded > 20 && window.mmsStats.selectedPair"
        " && window.mmsStats.selectedPair.local && window.mmsStats.rttMs !== null", timeout=15_000)
    stats = await page.evaluate("window.mmsStats")
    assert stats["state"] == "connected"
    assert await page.text_content("#status") == "connected"
    pair = stats["selectedPair"]
    assert pair["local"]["address"] == LOOPBACK, pair
    assert pair["remote"]["address"] == LOOPBACK, pair
    assert stats["eventCounts"].get("ready") == 1
    assert stats["eventCounts"].get("gender", 0) >= 1
    assert stats["eventCounts"].get("pong", 0) >= 1

    # The server agrees: one session, the one the page shows, over loopback on both ends.
    assert len(server.sessions) == 1
    (session_id, session), = server.sessions.items()
    assert stats["sessionId"] == session_id
    assert await page.text_content("#session-id") == session_id
    local, remote = server_pair(session)
    assert local[0] == LOOPBACK and remote[0] == LOOPBACK, (local, remote)
    assert (remote[1], local[1]) == (pair["local"]["port"], pair["remote"]["port"])
    return stats


async def test_female_voice(media_server, tmp_path):
    wav, y4m = espeak("en+f3"), pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path, wav, y4m) as page:
        await open_page(page, media_server.url)
        await run_voice(page, media_server.server, "female")
        await page.screenshot(path="/tmp/page.png", full_page=True)
        # gender asks for 60 ms audio packets (a=ptime in the answer): Chromium sends 16.7 a second, not 50
        (session,) = media_server.server.sessions.values()
        receiver = next(t.receiver for t in session.pc.getTransceivers() if t.kind == "audio")

        async def received() -> int:
            return sum(s.packetsReceived for s in (await receiver.getStats()).values() if s.type == "inbound-rtp")

        before = await received()
        await page.wait_for_timeout(2000)
        assert 12 < (await received() - before) / 2 < 21
        # Text goes over the data channel (the gender pipeline ignores it; no error comes back).
        await page.fill("#text-input", "hello")
        await page.press("#text-input", "Enter")
        await page.wait_for_function("document.querySelector('#log').textContent.includes('sent text: hello')")
        await stop_and_check_closed(page, media_server.server)
        assert_no_page_errors(page)


async def test_male_voice_without_camera(media_server, tmp_path):
    """A male voice, and no camera: the page falls back to audio only with a receive-only video
    transceiver, so the server's returned video (its placeholder card) still arrives."""
    wav, y4m = espeak("en"), pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path, wav, y4m) as page:
        await page.add_init_script("""
            const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
            navigator.mediaDevices.getUserMedia = (c) => c && c.video
                ? Promise.reject(new DOMException('Requested device not found', 'NotFoundError'))
                : real(c);
        """)
        await open_page(page, media_server.url)
        await run_voice(page, media_server.server, "male")
        log = await page.text_content("#log")
        assert "no camera: sending audio only" in log
        assert "(no camera)" in await page.text_content("#local-note")
        await stop_and_check_closed(page, media_server.server)


async def test_refused_offer_is_shown(settings, media_server, tmp_path):
    """The server's JSON error reaches the user: a 400 for an unknown pipeline (the request is
    rewritten on its way), then a 503 from a full server (max_sessions 0)."""
    settings.max_sessions = 0
    wav, y4m = espeak("en+f3"), pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path, wav, y4m) as page:
        await open_page(page, media_server.url)

        async def unknown_pipeline(route):
            body = route.request.post_data_json
            assert body["type"] == "offer" and body["pipelines"] == ["gender"] and "v=0" in body["sdp"]
            body["pipelines"] = ["no-such-pipeline"]
            await route.continue_(post_data=json.dumps(body))

        await page.route("**/offer", unknown_pipeline)
        await page.click("#start")
        await page.wait_for_selector("#error:not([hidden])", timeout=15_000)
        error = await page.text_content("#error")
        assert "HTTP 400" in error and "unknown pipeline" in error and "no-such-pipeline" in error, error
        assert await page.text_content("#status") == "failed"
        assert await page.is_enabled("#start") and not await page.is_enabled("#stop")
        await page.unroute("**/offer")

        await page.click("#start")
        await page.wait_for_function(
            "document.querySelector('#error').textContent.includes('503')", timeout=15_000)
        error = await page.text_content("#error")
        assert "server is full" in error, error
        assert await page.text_content("#status") == "failed"
        assert "server is full" in await page.text_content("#log")
        assert media_server.server.sessions == {}


async def test_camera_relayed_back_to_chromium_while_nothing_is_drawn(media_server, tmp_path):
    """Overlay off: Chromium's own VP8 camera frames come back as they went (tracks/relay.py), and
    it decodes them; the overlay back on mid-session: drawn and encoded again, with no break."""
    wav, y4m = espeak("en+f3"), pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path, wav, y4m) as page:
        await open_page(page, media_server.url)
        overlay = "input[data-pipeline=gender][data-key=overlay]"
        await page.eval_on_selector(overlay, "i => { i.checked = false; i.dispatchEvent(new Event('change')); }")
        await run_voice(page, media_server.server, "female")
        (session,) = media_server.server.sessions.values()
        relay = session.relay

        start = (await page.evaluate("window.mmsStats"))["framesDecoded"]
        await page.wait_for_timeout(2500)  # (the page reads its stats once a second)
        assert relay.forwarding and relay.forwarded > 20 and session.camera.received <= 1  # nothing decoded here
        before = await page.evaluate("window.mmsStats")
        assert before["framesDecoded"] > start + 25 and before["videoSize"] == "320x240"  # Chromium decodes them
        # While relaying, the camera is asked for at most what the client can receive: Chromium's
        # REMB for the returned video reaches the relay, and Chromium's camera follows the REMB the
        # server sends it (capped here at 100 kbps, below what Chromium itself could take).
        for _ in range(40):  # Chromium's first REMB for the video it receives: within seconds
            if relay.client_bitrate:
                break
            await page.wait_for_timeout(250)
        assert relay.client_bitrate and before["cameraTargetBitrate"] > 150_000
        relay.receiver._RTCRtpReceiver__remote_bitrate_estimator.cap = lambda: 100_000
        await page.wait_for_timeout(2500)
        capped = await page.evaluate("window.mmsStats")
        assert capped["cameraTargetBitrate"] <= 100_000 and capped["framesDecoded"] > before["framesDecoded"] + 25
        await page.eval_on_selector(overlay, "i => { i.checked = true; i.dispatchEvent(new Event('change')); }")
        await page.wait_for_timeout(2000)
        assert not relay.forwarding and session.camera.received > 10  # decoded and drawn on again
        after = await page.evaluate("window.mmsStats")
        assert after["framesDecoded"] > capped["framesDecoded"] + 30 and after["videoSize"] == "320x240"
        await stop_and_check_closed(page, media_server.server)
        assert_no_page_errors(page)
