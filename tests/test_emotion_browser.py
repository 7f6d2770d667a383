"""The emotion pipeline on the web page, in headless Chromium: the astronaut photo as the fake
camera, speech as the fake microphone; the page shows the label, per-modality bars, the
response, and a crisis banner; typed text changes the result."""
from __future__ import annotations

import cv2

from testing.browser import assert_no_page_errors, chromium_page
from testing.images import astronaut, face_scene
from testing.media import espeak, write_y4m
from testing.net import LOOPBACK, server_pair

TIMEOUT_MS = 60_000  # the first session loads the models


def astronaut_y4m(path):
    image = cv2.resize(astronaut(), (320, 320))
    return write_y4m(path, [image] * 10)


async def test_page_shows_emotion_from_face_and_words(media_server, tmp_path):
    wav = espeak("en", "I walked to the station this morning and waited for the train.")
    async with chromium_page(tmp_path, wav, astronaut_y4m(tmp_path / "astronaut.y4m")) as page:
        await page.goto(media_server.url)
        await page.wait_for_selector("#pipeline-emotion")
        if await page.is_checked("#pipeline-gender"):
            await page.uncheck("#pipeline-gender")
        await page.check("#pipeline-emotion")
        await page.click("#start")
        await page.wait_for_function(
            "document.querySelector('#result-emotion') && document.querySelector('#result-emotion').dataset.label"
            " && document.querySelector('#emotion-face-label').textContent.startsWith('happy')",
            timeout=TIMEOUT_MS)
        assert (await page.text_content("#result-emotion")).startswith("happy")
        width = await page.eval_on_selector("#emotion-face-bar span", "e => parseFloat(e.style.width)")
        assert width > 80
        assert await page.text_content("#emotion-response")
        assert not await page.is_visible("#emotion-crisis")

        await page.fill("#text-input", "You broke my phone again and didn't even apologise, I'm so angry!")
        await page.press("#text-input", "Enter")
        await page.wait_for_function(
            "document.querySelector('#emotion-text-label').textContent.startsWith('angry')", timeout=15_000)
        await page.fill("#text-input", "I want to kill myself.")
        await page.press("#text-input", "Enter")
        await page.wait_for_selector("#emotion-crisis:not([hidden])", timeout=15_000)
        assert "988" in await page.text_content("#emotion-crisis")
        await page.screenshot(path=str(tmp_path / "emotion.png"), full_page=True)

        stats = await page.evaluate("window.mmsStats")
        assert stats["eventCounts"].get("emotion", 0) >= 2
        assert stats["selectedPair"]["local"]["address"] == LOOPBACK
        (session_id, session), = media_server.server.sessions.items()
        assert stats["sessionId"] == session_id and list(session.pipelines) == ["emotion"]
        local, remote = server_pair(session)
        assert local[0] == LOOPBACK and remote[0] == LOOPBACK
        assert_no_page_errors(page)
        await page.click("#stop")


async def test_small_face_from_a_320x240_camera(media_server, tmp_path):
    """A 320x240 camera with a ~50 px face (a person sitting back, or a link that lowered the
    resolution): dlib's 80 px window misses it in the plain scan; the upscaled sweep finds it and
    the emotion event carries the face modality."""
    frame, _ = face_scene(320, 240, 50, centre=(0.4, 0.4))
    wav = espeak("en", "I walked to the station this morning and waited for the train.")
    async with chromium_page(tmp_path, wav, write_y4m(tmp_path / "small.y4m", [frame] * 10)) as page:
        await page.goto(media_server.url)
        await page.wait_for_selector("#pipeline-emotion")
        if await page.is_checked("#pipeline-gender"):
            await page.uncheck("#pipeline-gender")
        await page.check("#pipeline-emotion")
        await page.click("#start")
        await page.wait_for_function(
            "(() => { const e = window.mmsStats.last.emotion; return e && e.modalities.face; })()",
            timeout=TIMEOUT_MS)
        face = await page.evaluate("window.mmsStats.last.emotion.modalities.face")
        assert face["label"] == "happy"
        (session,) = media_server.server.sessions.values()
        assert (session.camera.frame.width, session.camera.frame.height) == (320, 240)
        assert_no_page_errors(page)
        await page.click("#stop")
