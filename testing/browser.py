"""The web page (static/) in Debian's headless Chromium, driven through Playwright.

Chromium's fake camera and microphone play files (a y4m video, a WAV); WebRTC may use loopback.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import numpy as np
from playwright import async_api

from testing.media import write_y4m

CHROMIUM = "/usr/bin/chromium"  # Debian's package (make installs it); never a downloaded browser
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
]


def pattern_y4m(path: Path, width: int = 320, height: int = 240, frames: int = 25) -> Path:
    """A moving colour gradient with a white square, for Chromium's fake camera."""
    images = []
    for i in range(frames):
        img = np.zeros((height, width, 3), dtype=np.uint8)
        img[..., 0] = (np.arange(width)[None, :] + i * 8) % 256
        img[..., 1] = np.arange(height)[:, None] * 255 // height
        img[..., 2] = 96
        x = (i * 10) % (width - 40)
        img[100:140, x:x + 40] = 255
        images.append(img)
    write_y4m(path, images)
    header = len(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n")
    # A torn file would give Chromium misaligned frames and end its fake camera early.
    assert path.stat().st_size == header + frames * (len(b"FRAME\n") + width * height * 3 // 2)
    return path


@contextlib.asynccontextmanager
async def chromium_page(tmp_path: Path, wav: Path, y4m: Path):
    """A page in a fresh headless Chromium profile whose camera and microphone are the files; its
    console messages and page errors are collected in ``page.console_messages_seen``."""
    args = FLAGS + [f"--use-file-for-fake-audio-capture={wav}", f"--use-file-for-fake-video-capture={y4m}"]
    async with async_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=args,
            viewport={"width": 1280, "height": 900})
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.console_messages_seen = []
            page.on("console", lambda m: page.console_messages_seen.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: page.console_messages_seen.append(f"pageerror: {e}"))
            yield page
        finally:
            await context.close()


def assert_no_page_errors(page) -> None:
    errors = [m for m in page.console_messages_seen if m.startswith("pageerror")]
    assert not errors, errors


async def open_page(page, url: str) -> None:
    """The page at ``url``, ready to start: pipelines listed (gender checked), their UI loaded."""
    await page.goto(url)
    await page.wait_for_selector("#pipeline-gender")  # /health answered and was listed
    assert await page.is_checked("#pipeline-gender")  # a default pipeline
    await page.wait_for_selector("#start:enabled")  # enabled once the pipelines' UI modules loaded


async def wait_sessions(server, count: int, timeout: float = 10.0) -> None:
    """Until the in-process server has ``count`` sessions (an assertion error after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while len(server.sessions) != count:
        assert time.monotonic() < deadline, f"server has {len(server.sessions)} sessions, expected {count}"
        await asyncio.sleep(0.1)


async def stop_and_check_closed(page, server) -> None:
    """Stop on the page: closed there, ready to start again, and the session gone from the server."""
    await page.click("#stop")
    assert await page.text_content("#status") == "closed"
    assert await page.is_enabled("#start")
    await wait_sessions(server, 0, timeout=5)  # the close itself, well before the 10 s heartbeat timeout
