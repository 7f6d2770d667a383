"""Per-session media cost: the returned video follows the camera's size, nothing is encoded for a
client that receives no video, and the VP8 encoder settings patched into aiortc are where
``media/codecs.py`` expects them."""
from __future__ import annotations

import asyncio

import numpy as np

from client import ArrayAudioTrack, PatternVideoTrack, StreamClient
from tests.test_server import wait_until


async def _returned_size(url: str, width: int, height: int) -> tuple[int, int]:
    client = StreamClient(url, ["gender"])
    client.keep_frames = 1
    await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True),
                         PatternVideoTrack(width, height))
    try:
        # The first frames may be the card (sent before the camera's first frame arrived).
        await wait_until(lambda: client.frame_counts["video"] >= 15, timeout=15)
        frame = client.received["video"][-1][1]
        return frame.width, frame.height
    finally:
        await client.close()


async def test_returned_video_has_the_cameras_size(media_server):
    assert await _returned_size(media_server.url, 320, 240) == (320, 240)
    assert await _returned_size(media_server.url, 640, 480) == (640, 480)


async def test_no_outbound_video_for_a_client_that_receives_none(media_server):
    client = StreamClient(media_server.url, ["gender"])
    answer = await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True),
                                  PatternVideoTrack(320, 240), receive_video=False)
    try:
        session = media_server.server.sessions[answer["session_id"]]
        await wait_until(lambda: session.audio.end >= 16000, timeout=15)
        await asyncio.sleep(0.5)
        assert session.video_out.sent == 0 and client.frame_counts["video"] == 0
        assert all(s.track is None for s in session.pc.getSenders() if s.kind == "video")  # no encoder
        # gender reads no camera: the client's video is declined, so nothing is decoded either
        assert _video_direction(answer["sdp"]) == "inactive" and session.camera.received == 0
    finally:
        await client.close()


async def test_camera_is_kept_where_a_pipeline_reads_it(media_server):
    client = StreamClient(media_server.url, ["commentary"])
    answer = await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True),
                                  PatternVideoTrack(320, 240), receive_video=False)
    try:
        session = media_server.server.sessions[answer["session_id"]]
        assert _video_direction(answer["sdp"]) == "recvonly"
        await wait_until(lambda: session.camera.received >= 5, timeout=15)
        assert session.video_out.sent == 0
    finally:
        await client.close()


def _video_direction(sdp: str) -> str:
    video = [m for m in sdp.split("m=")[1:] if m.startswith("video")]
    assert len(video) == 1
    return next(d for d in ("sendrecv", "sendonly", "recvonly", "inactive") if f"a={d}" in video[0])
