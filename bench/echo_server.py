#!/usr/bin/env python3
"""A minimal aiortc echo server: the baseline the session benchmark compares our server with.

In the style of aiortc's own ``examples/server``: every inbound video frame goes through a cheap
OpenCV transform (edge filter by default, or a colour inversion) and is re-encoded and sent back;
inbound audio is sent straight back. No models, no pipelines, no buffering. ``POST /offer`` speaks
the same JSON as our server (``{"sdp","type","pipelines","options"}`` -> ``{"sdp","type",
"session_id"}``; pipelines and options are ignored), so ``client.StreamClient`` works unchanged,
and ``GET /health`` reports event-loop lag measured the same way as ``server/metrics.py`` does (``GET /metrics``
holds it as the same Prometheus histogram, ``mms_event_loop_lag_seconds``).
A data channel named ``events`` gets a ``ready`` event and answers ``ping`` with ``pong``.

    .venv/bin/python bench/echo_server.py --port 8090 [--transform edges|invert|none] [--encoder aiortc|ours]

ICE is restricted to 127.0.0.1 (``server.ice.restrict_ice_hosts``): nothing leaves loopback.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame
from prometheus_client import CollectorRegistry, Histogram, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench.harness import LoopLag  # noqa: E402
from server.ice import restrict_ice_hosts  # noqa: E402
from server.metrics import LATENCY_BUCKETS  # noqa: E402

log = logging.getLogger("echo")


def edges(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.Canny(img, 100, 200), cv2.COLOR_GRAY2BGR)


def invert(img: np.ndarray) -> np.ndarray:
    return cv2.bitwise_not(img)


TRANSFORMS = {"edges": edges, "invert": invert, "none": None}


class VideoTransformTrack(MediaStreamTrack):
    """Each frame of ``track`` through ``transform`` (BGR ndarray -> BGR ndarray), same timestamps."""

    kind = "video"

    def __init__(self, track: MediaStreamTrack, transform):
        super().__init__()
        self.track = track
        self.transform = transform

    async def recv(self) -> VideoFrame:
        frame = await self.track.recv()
        if self.transform is None:
            return frame
        out = VideoFrame.from_ndarray(self.transform(frame.to_ndarray(format="bgr24")), format="bgr24")
        out.pts = frame.pts
        out.time_base = frame.time_base
        return out


class EchoServer:
    def __init__(self, transform):
        self.transform = transform
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.lag = LoopLag(keep=600)  # as server.metrics.Metrics keeps for /health
        self.registry = CollectorRegistry()  # /metrics: the loop-lag histogram, named as ours
        self.lag_hist = Histogram("mms_event_loop_lag_seconds", "Event-loop scheduling lag",
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self.started = time.monotonic()
        self._monitor: asyncio.Task | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app) -> None:
        self._monitor = asyncio.get_running_loop().create_task(self.lag.run(observe=self.lag_hist.observe))

    async def _on_shutdown(self, app) -> None:
        await asyncio.gather(*(pc.close() for pc in list(self.pcs.values())), return_exceptions=True)
        self.pcs.clear()
        if self._monitor:
            self._monitor.cancel()

    async def health(self, request: web.Request) -> web.Response:
        lags = np.asarray(self.lag.samples or [0.0]) * 1000
        return web.json_response({
            "status": "ok",
            "sessions": len(self.pcs),
            "uptime": round(time.monotonic() - self.started, 1),
            "event_loop_lag_ms": {"p50": round(float(np.percentile(lags, 50)), 2),
                                  "p99": round(float(np.percentile(lags, 99)), 2)},
        })

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")

    async def offer(self, request: web.Request) -> web.Response:
        try:
            params = await request.json()
            offer = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"sdp": "...", "type": "offer"}'}, status=400)
        session_id = uuid.uuid4().hex
        pc = RTCPeerConnection()
        self.pcs[session_id] = pc

        @pc.on("datachannel")
        def on_datachannel(channel):
            def send(type_: str, **fields):
                channel.send(json.dumps({"type": type_, "t": round(time.monotonic() - self.started, 3),
                                         **fields}))

            @channel.on("message")
            def on_message(message):
                try:
                    msg = json.loads(message)
                except (TypeError, ValueError):
                    return
                if isinstance(msg, dict) and msg.get("type") == "ping":
                    send("pong", id=msg.get("id"))

            if channel.readyState == "open":
                send("ready", session_id=session_id, pipelines=[])
            else:
                channel.on("open", lambda: send("ready", session_id=session_id, pipelines=[]))

        @pc.on("connectionstatechange")
        async def on_connectionstatechange():
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                self.pcs.pop(session_id, None)

        @pc.on("track")
        def on_track(track):
            if track.kind == "audio":
                pc.addTrack(track)  # straight back
            elif track.kind == "video":
                pc.addTrack(VideoTransformTrack(track, self.transform))

        try:
            await pc.setRemoteDescription(offer)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            self.pcs.pop(session_id, None)
            return web.json_response({"error": f"malformed SDP: {exc}"}, status=400)
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session_id": session_id})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Minimal aiortc echo server (benchmark baseline).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--transform", choices=sorted(TRANSFORMS), default="edges")
    parser.add_argument("--ice-host", action="append", default=None,
                        help="restrict ICE to this local address (repeatable; default 127.0.0.1)")
    parser.add_argument("--encoder", choices=("aiortc", "ours"), default="aiortc",
                        help="the returned video's VP8 settings: aiortc's, or the server's (media/codecs.py)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    restrict_ice_hosts(args.ice_host or ["127.0.0.1"])
    if args.encoder == "ours":
        from media import codecs
        codecs.install()
    server = EchoServer(TRANSFORMS[args.transform])
    print(f"Echo server on http://{args.host}:{args.port}", flush=True)
    web.run_app(server.app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
