"""static/mms-client.js in headless Chromium: the embedding example connects and gets events, the
library reconnects a dropped connection to the same session, and the page shows it resuming."""
from __future__ import annotations

import asyncio
import time

from testing.browser import (assert_no_page_errors, chromium_page, open_page, pattern_y4m,
                             stop_and_check_closed, wait_sessions)
from testing.media import espeak

RESULT_TIMEOUT_MS = 30_000

DROP_JS = """(session) => {
    window.seen = [];
    session.on('*', (event) => window.seen.push(event.type === 'resumed' ? event : event.type));
    session.pc.close();  // as if the network had gone: no "close" message to the server
}"""
RESUMED_JS = "window.seen.some((e) => e.type === 'resumed')"
VIDEO_FRAMES_JS = """async () => {
    let frames = 0;
    (await window.session.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded;
    });
    return frames;
}"""


async def test_embed_example_connects_receives_events_and_resumes(media_server, tmp_path):
    server = media_server.server
    wav, y4m = espeak("en+f3"), pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path, wav, y4m) as page:
        await page.goto(f"{media_server.url}/static/embed-example.html?pipelines=gender")
        # A refusal rejects with the server's own words and HTTP status.
        refused = await page.evaluate("""async () => {
            const {connect} = await import('/static/mms-client.js');
            try { await connect(location.origin, {pipelines: ['telepathy']}); return null; }
            catch (err) { return [err.name, err.status, err.message]; }
        }""")
        assert refused[:2] == ["ServerError", 400] and "unknown pipeline" in refused[2], refused
        assert not server.sessions

        await page.click("#start")
        await page.wait_for_function("document.querySelector('#events').textContent.includes('\"type\":\"gender\"')",
                                     timeout=RESULT_TIMEOUT_MS)
        await page.wait_for_function("document.querySelector('#returned').videoWidth > 0", timeout=15_000)
        assert '"type":"ready"' in await page.text_content("#events")
        session_id = await page.evaluate("window.session.sessionId")
        assert list(server.sessions) == [session_id]
        assert session_id in await page.text_content("#state")

        # The connection drops; the library resumes the same session on a new one.
        first_pc = server.sessions[session_id].pc
        await page.evaluate(DROP_JS, await page.evaluate_handle("window.session"))
        await page.wait_for_function(RESUMED_JS, timeout=15_000)
        seen = await page.evaluate("window.seen")
        resumed_at = next(i for i, e in enumerate(seen) if isinstance(e, dict))
        assert "reconnecting" in seen[:resumed_at]
        assert seen[resumed_at]["session_id"] == session_id
        assert await page.evaluate("window.session.sessionId") == session_id
        assert list(server.sessions) == [session_id] and server.sessions[session_id].pc is not first_pc
        # The same pipeline goes on hearing the microphone: gender events after "resumed".
        await page.wait_for_function(
            "window.seen.slice(window.seen.findIndex((e) => e.type === 'resumed')).includes('gender')",
            timeout=RESULT_TIMEOUT_MS)
        deadline = time.monotonic() + 15
        while await page.evaluate(VIDEO_FRAMES_JS) <= 10:  # returned video on the new connection
            assert time.monotonic() < deadline, "no returned video after resuming"
            await asyncio.sleep(0.2)

        await page.click("#stop")
        await page.wait_for_function("document.querySelector('#state').textContent.startsWith('closed')")
        await wait_sessions(server, 0, timeout=5)  # "close": freed at once, no waiting for a resume
        assert_no_page_errors(page)


async def test_page_shows_reconnecting_then_carries_on(media_server, tmp_path):
    server = media_server.server
    wav, y4m = espeak("en+f3"), pattern_y4m(tmp_path / "pattern.y4m")
    async with chromium_page(tmp_path, wav, y4m) as page:
        await page.add_init_script("""
            window.statusSeen = [];
            addEventListener('DOMContentLoaded', () => {
                const status = document.getElementById('status');
                new MutationObserver(() => window.statusSeen.push(status.textContent))
                    .observe(status, {childList: true, characterData: true, subtree: true});
            });
        """)
        await open_page(page, media_server.url)
        await page.click("#start")
        await page.wait_for_function(
            "document.querySelector('#result-gender') && document.querySelector('#result-gender').dataset.label",
            timeout=RESULT_TIMEOUT_MS)
        session_id = await page.evaluate("window.mmsStats.sessionId")
        genders = await page.evaluate("window.mmsStats.eventCounts.gender")

        await page.evaluate(DROP_JS, await page.evaluate_handle("window.mms.client()"))
        await page.wait_for_function("window.mmsStats.eventCounts.resumed === 1", timeout=15_000)
        assert "reconnecting…" in await page.evaluate("window.statusSeen")
        assert "connection lost" in await page.text_content("#log")
        await page.wait_for_function(f"window.mmsStats.eventCounts.gender > {genders}", timeout=RESULT_TIMEOUT_MS)
        stats = await page.evaluate("window.mmsStats")
        assert stats["sessionId"] == session_id and stats["eventCounts"]["ready"] == 1
        assert await page.text_content("#status") == "connected"
        assert await page.text_content("#session-id") == session_id
        assert list(server.sessions) == [session_id]
        assert await page.is_enabled("#text-input")  # the channel is open again
        await stop_and_check_closed(page, server)
        assert_no_page_errors(page)
