"""talking_head end to end in headless Chromium: upload a photo on the page, start, and watch it
speak the (fake) microphone's words: the returned video is the portrait, its mouth opening and
closing, measured in the page's own decoded pixels."""
from __future__ import annotations

import cv2
import numpy as np

from pipelines.talking_head.face import default_portrait_image
from testing.browser import assert_no_page_errors, chromium_page, open_page, pattern_y4m, stop_and_check_closed
from testing.images import mouth_area, mouth_region, portrait_rig
from testing.media import espeak, vowel

# Grey levels of the mouth region in the page's <video>, sampled on a canvas.
MOUTH_SAMPLES_JS = """
async ([x0, y0, x1, y1, count]) => {
  const video = document.querySelector('#remote-video');
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const darks = [];
  for (let i = 0; i < count; i++) {
    ctx.drawImage(video, 0, 0);
    const px = ctx.getImageData(x0, y0, x1 - x0, y1 - y0).data;
    let dark = 0;
    for (let j = 0; j < px.length; j += 4) {
      if (0.299 * px[j] + 0.587 * px[j + 1] + 0.114 * px[j + 2] < 70) dark++;
    }
    darks.push(dark);
    await new Promise((r) => setTimeout(r, 40));
  }
  return {darks, width: video.videoWidth, height: video.videoHeight};
}
"""


async def test_page_uploads_a_portrait_and_it_speaks(media_server, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), default_portrait_image(), [cv2.IMWRITE_JPEG_QUALITY, 92])
    no_face = tmp_path / "pattern.png"
    cv2.imwrite(str(no_face), np.full((200, 200, 3), 128, np.uint8))
    rig = portrait_rig()
    region, area = list(mouth_region(rig)), mouth_area(rig)

    wav = espeak("en", "Hello there. I am speaking to you, and my lips move with my voice.")
    async with chromium_page(tmp_path, wav, pattern_y4m(tmp_path / "pattern.y4m")) as page:
        await open_page(page, media_server.url)
        await page.uncheck("#pipeline-gender")
        await page.check("#pipeline-talking_head")
        # A photo without a face is refused with the server's message ...
        await page.set_input_files("#th-portrait-file", str(no_face))
        await page.wait_for_function("document.querySelector('#th-portrait-status').dataset.state === 'error'")
        assert "no face found" in await page.text_content("#th-portrait-status")
        # ... a portrait is analysed and becomes the pipeline's portrait option.
        await page.set_input_files("#th-portrait-file", str(photo))
        await page.wait_for_function("document.querySelector('#th-portrait-status').dataset.state === 'ok'",
                                     timeout=15_000)
        portrait_id = await page.input_value('input.option-input[data-pipeline="talking_head"][data-key="portrait"]')
        assert len(portrait_id) == 16
        assert await page.input_value("#th-drive") == "mic"

        await page.click("#start")
        await page.wait_for_function("window.mmsStats.framesDecoded > 25", timeout=20_000)
        await page.wait_for_function(
            "document.querySelector('#result-talking_head') && "
            "document.querySelector('#result-talking_head').textContent.includes('speaking')", timeout=10_000)
        assert portrait_id in await page.text_content("#card-talking_head")
        (session,) = media_server.server.sessions.values()
        assert session.pipelines["talking_head"].options["portrait"] == portrait_id
        sampled = await page.evaluate(MOUTH_SAMPLES_JS, [*region, 100])
        assert (sampled["width"], sampled["height"]) == (512, 512)
        darks = sampled["darks"]
        assert max(darks) > 0.25 * area, darks  # open while the words are spoken
        assert min(darks) < 0.08 * area, darks  # closed in the pauses
        await stop_and_check_closed(page, media_server.server)
        assert_no_page_errors(page)


async def test_page_opens_a_rest_avatar_session(media_server, tmp_path):
    """/?avatar_session=ID: the page selects talking_head with drive "api"; audio an app feeds over
    REST moves the lips the page shows."""
    from talking_head_client import AvatarClient

    rig = portrait_rig()
    region, area = list(mouth_region(rig)), mouth_area(rig)
    api = AvatarClient(media_server.url)
    sid = (await api.create_session(chunk_duration=2.0))["session_id"]
    try:
        async with chromium_page(tmp_path, espeak("en"), pattern_y4m(tmp_path / "pattern.y4m")) as page:
            await page.goto(f"{media_server.url}/?avatar_session={sid}")
            await page.wait_for_selector("#th-drive")
            assert await page.is_checked("#pipeline-talking_head")
            assert await page.input_value("#th-drive") == "api"
            await page.uncheck("#pipeline-gender")
            await page.click("#start")
            await page.wait_for_function("window.mmsStats.framesDecoded > 10", timeout=20_000)
            await page.wait_for_function(
                "document.querySelector('#card-talking_head') && "
                f"document.querySelector('#card-talking_head').textContent.includes('{sid[:8]}')", timeout=10_000)
            quiet = await page.evaluate(MOUTH_SAMPLES_JS, [*region, 10])
            await api.feed_audio(sid, (vowel(1.5) * 32767).astype("<i2").tobytes())
            loud = await page.evaluate(MOUTH_SAMPLES_JS, [*region, 25])
            assert max(quiet["darks"]) < 0.08 * area, quiet["darks"]
            assert max(loud["darks"]) > 0.25 * area, loud["darks"]
            assert (await api.status(sid))["viewer_attached"]
            await stop_and_check_closed(page, media_server.server)
    finally:
        await api.close()
