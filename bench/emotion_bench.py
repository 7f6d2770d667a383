#!/usr/bin/env python3
"""Emotion pipeline benchmark (a script, not a test).

1. Face stage, in process: milliseconds per 640x480 webcam-like frame (the astronaut photo framed
   head-and-shoulders, face ~130 px), split into frame conversion (PyAV yuv420p -> BGR), detection
   (dlib HOG on the frame scaled to 480 px wide) and classification (FER2013 tflite); a frame
   without a face; and the steady state, where the face is searched for only around its last box.
2. Reaction times, against ``webrtc_server.py --pipelines emotion`` in a subprocess over loopback:
   * new sentence: from sending a typed sentence to the first ``emotion`` event whose label is
     the sentence's emotion (sentences alternate sad / angry / happy; no face, silent audio);
   * new face: the video switches from an empty room to the astronaut; from the first frame
     with her face leaving the client to the first event whose face modality says happy.
3. CPU per session: the emotion stages alone, in process (CPU time per second of a simulated
   session); and the server process (psutil, % of one core) with N WebRTC sessions each sending
   640x480 video of the astronaut at 25 fps and looped espeak-ng speech, with ``emotion`` on and
   with no pipeline (the media alone), alternated twice because the machine's load drifts.

Prints a markdown table and writes it to bench/results/emotion.md (raw numbers in emotion.json).

    .venv/bin/python bench/emotion_bench.py [--sessions 1,2] [--duration 15] [--repeats 6]
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from av import VideoFrame

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench import harness  # noqa: E402
from bench.harness import RESULTS, drain, markdown_table  # noqa: E402
from client import ArrayAudioTrack, PatternVideoTrack, StreamClient  # noqa: E402
from testing.images import astronaut  # noqa: E402
from testing.media import espeak, load_audio  # noqa: E402
from testing.server import ServerProcess  # noqa: E402

SPEECH = ("I walked to the station this morning and waited for the train. "
          "It was late again, so I read the news and drank my coffee.")
SENTENCES = [("sad", "I feel so down and empty today, like nothing matters."),
             ("angry", "You broke my phone again and didn't even apologise, I'm so angry!"),
             ("happy", "We won the championship, this is the best day of my life!")]


def webcam_frame(face: bool = True) -> np.ndarray:
    frame = np.full((480, 640, 3), 60, np.uint8)
    if face:
        frame[:, 60:540] = cv2.resize(astronaut()[0:320, 100:420], (480, 480))
    return frame


def stats_ms(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"mean": round(float(ms.mean()), 2), "p50": round(float(np.median(ms)), 2),
            "p95": round(float(np.percentile(ms, 95)), 2), "n": len(ms)}


# --- 1. face stage ---------------------------------------------------------------------------------
def bench_face(frames: int = 100) -> dict:
    from pipelines.emotion.face_expression import FerExpression, crop

    fer = FerExpression()
    video = VideoFrame.from_ndarray(webcam_frame(), format="bgr24").reformat(format="yuv420p")
    empty = VideoFrame.from_ndarray(webcam_frame(False), format="bgr24").reformat(format="yuv420p")
    for _ in range(5):
        fer.analyze(video.to_ndarray(format="bgr24"))
    convert, detect, classify, total, no_face, tracking = [], [], [], [], [], []
    for _ in range(frames):
        t0 = time.perf_counter()
        image = video.to_ndarray(format="bgr24")
        t1 = time.perf_counter()
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        box = fer.detector.largest(gray)
        t2 = time.perf_counter()
        probs = fer.classify_gray(crop(gray, box, 0.1))
        t3 = time.perf_counter()
        convert.append(t1 - t0)
        detect.append(t2 - t1)
        classify.append(t3 - t2)
        total.append(t3 - t0)
        assert probs.argmax() == 3  # FER's "happy"
        t0 = time.perf_counter()
        assert fer.analyze(empty.to_ndarray(format="bgr24")) is None
        no_face.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert fer.analyze(video.to_ndarray(format="bgr24"), near=box) is not None
        tracking.append(time.perf_counter() - t0)
    return {"total": stats_ms(total), "convert": stats_ms(convert), "detect": stats_ms(detect),
            "classify": stats_ms(classify), "no_face": stats_ms(no_face), "tracking": stats_ms(tracking)}


def bench_stage_cpu(seconds: int = 20) -> dict:
    """CPU the emotion stages use per second of one session, without WebRTC: 4 face frames
    (640x480, face tracked), VAD over 1 s of speech, MFCCs, a prosody estimate over the last 3 s,
    fusion; a typed sentence every 5 s. Process CPU time (all threads) / session seconds."""
    from pipelines.emotion.face_expression import FerExpression
    from pipelines.emotion.fusion import Estimate, LabelHysteresis, Smoother, fuse
    from pipelines.emotion.prosody import MfccExtractor, ProsodyBaseline, prosody_features
    from pipelines.emotion.text_emotion import PrototypeTextEmotion
    from pipelines.common.vad import SileroVAD

    fer, vad, mfcc, text = FerExpression(), SileroVAD().stream(), MfccExtractor(), PrototypeTextEmotion()
    baseline, smoother, labels = ProsodyBaseline(), Smoother(1.0), LabelHysteresis()
    speech = load_audio(espeak("en", SPEECH))
    speech = np.tile(speech, int(np.ceil((seconds + 3) * 16000 / len(speech))))
    frame = VideoFrame.from_ndarray(webcam_frame(), format="bgr24").reformat(format="yuv420p")
    box = None
    text.predict(["warm up"])
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for second in range(seconds):
        for _ in range(4):
            result = fer.analyze(frame.to_ndarray(format="bgr24"), near=box)
            box = result.box
            face = Estimate(smoother.update(result.probs, second), 0.9)
        audio = speech[(second + 3) * 16000:(second + 4) * 16000]
        for i in range(0, 16000, 2048):
            vad(audio[i:i + 2048])
        mfcc(audio)
        voice = baseline.estimate(prosody_features(speech[second * 16000:(second + 3) * 16000]))
        words = text.predict([SENTENCES[second % 3][1]])[0] if second % 5 == 0 else None
        labels.update(fuse({"face": face, "voice": voice, "text": words}, {"voice": 0.5, "text": 1.5})[0])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"session_seconds": seconds, "cpu_pct_of_core": round(100 * cpu / seconds, 1),
            "wall_pct": round(100 * wall / seconds, 1)}


# --- 2. reaction times -----------------------------------------------------------------------------
class SwitchableVideoTrack(PatternVideoTrack):
    """A still image that can be swapped; notes when the first frame of the new image goes out."""

    def __init__(self, image: np.ndarray, fps: float = 25.0):
        super().__init__(image.shape[1], image.shape[0], fps, image=image)
        self.switched_at: float | None = None
        self._pending = False

    def show(self, image: np.ndarray) -> None:
        self.image = image
        self._pending = True
        self.switched_at = None

    async def recv(self):
        frame = await super().recv()
        if self._pending:
            self._pending = False
            self.switched_at = time.monotonic()
        return frame


async def wait_event(client: StreamClient, predicate, timeout: float) -> tuple[float, dict]:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            event = await client.next_event(None, timeout=max(0.05, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise RuntimeError(f"no matching emotion event within {timeout}s; got {seen[-5:]}") from None
        if event["type"] == "emotion" and predicate(event):
            return time.monotonic(), event
        seen.append(event)


async def bench_reaction(url: str, repeats: int) -> dict:
    empty, face = webcam_frame(False), webcam_frame(True)
    video = SwitchableVideoTrack(empty)
    client = StreamClient(url, ["emotion"])
    await client.connect(ArrayAudioTrack(np.zeros(16000, np.float32), 16000, loop=True), video)
    sentence_s, face_s = [], []
    try:
        await client.next_event("ready", timeout=30)
        # warm-up: the first text waits for the models to load
        client.send({"type": "text", "text": "Hello there."})
        await wait_event(client, lambda e: e["modalities"]["text"] is not None, 120)
        for i in range(repeats):
            label, text = SENTENCES[i % len(SENTENCES)]
            await asyncio.sleep(1.5)
            sent = time.monotonic()
            client.send({"type": "text", "text": text})
            arrived, _ = await wait_event(client, lambda e: e["label"] == label and e["modalities"]["text"]
                                          and e["modalities"]["text"]["text"] == text, 10)
            sentence_s.append(arrived - sent)
        # let the text fade out of the way: the face alone decides
        client.send({"type": "config", "pipeline": "emotion", "options": {"text_weight": 0}})
        for _ in range(repeats):
            video.show(empty)
            await asyncio.sleep(4.0)  # the face is gone (held 2 s)
            drain(client)
            video.show(face)
            arrived, _ = await wait_event(client, lambda e: e["modalities"]["face"] is not None
                                          and e["modalities"]["face"]["label"] == "happy", 10)
            face_s.append(arrived - video.switched_at)
    finally:
        await client.close()
    return {"sentence": stats_ms(sentence_s), "face": stats_ms(face_s)}


# --- 3. CPU per session ----------------------------------------------------------------------------
async def bench_cpu(url: str, server: ServerProcess, sessions: int, pipelines: list[str], duration: float,
                    speech: np.ndarray) -> dict:
    clients = []
    try:
        for _ in range(sessions):
            client = StreamClient(url, pipelines)
            await client.connect(ArrayAudioTrack(speech, 16000, loop=True),
                                 PatternVideoTrack(640, 480, image=webcam_frame()))
            clients.append(client)
        await asyncio.sleep(8.0)  # warm-up (models loaded, encoders settled)
        for client in clients:
            drain(client)
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(duration)
        used, t1 = server.cpu_seconds() - cpu0, time.monotonic()
        events = sum(e.get("type") == "emotion" for client in clients for e in drain(client))
        return {"sessions": sessions, "pipelines": pipelines, "cpu_pct_per_session": round(100 * used / (t1 - t0) / sessions, 1),
                "emotion_events_per_s_per_session": round(events / (t1 - t0) / sessions, 2),
                "rss_mb": round(server.ps.memory_info().rss / 2**20)}
    finally:
        for client in clients:
            await client.close()
        await asyncio.sleep(1.0)


async def main_async(args) -> dict:
    harness.loopback_only()
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "face": bench_face(args.frames)}
    print("face stage:", json.dumps(results["face"]), flush=True)
    results["stage_cpu"] = bench_stage_cpu(args.stage_seconds)
    print("stage cpu:", json.dumps(results["stage_cpu"]), flush=True)
    async with ServerProcess.script("emotion", RESULTS / "emotion-server.log", "--pipelines", "emotion",
                                    "--max-sessions", "32") as server:
        results["reaction"] = await bench_reaction(server.url, args.repeats)
        print("reaction:", json.dumps(results["reaction"]), flush=True)
        speech = load_audio(espeak("en", SPEECH))
        results["cpu"] = []
        for n in args.sessions:
            for pipelines in (["emotion"], [], ["emotion"], []):  # alternated: the machine's load drifts
                row = await bench_cpu(server.url, server, n, pipelines, args.duration, speech)
                print("cpu:", json.dumps(row), flush=True)
                results["cpu"].append(row)
    return results


def table(results: dict) -> str:
    f, r, c = results["face"], results["reaction"], results["stage_cpu"]
    rows = [
        ["face stage, 640x480 frame, face searched in the whole frame (convert + detect + classify)",
         f"{f['total']['mean']} ms mean, {f['total']['p50']} ms p50, {f['total']['p95']} ms p95"],
        ["&nbsp; of which detection (dlib HOG, 480 px wide)", f"{f['detect']['p50']} ms p50"],
        ["&nbsp; of which classification (FER2013 tflite, 64x64)", f"{f['classify']['p50']} ms p50"],
        ["&nbsp; of which frame conversion (yuv420p -> BGR)", f"{f['convert']['p50']} ms p50"],
        ["face stage, frame without a face (full search)", f"{f['no_face']['p50']} ms p50"],
        ["face stage, face tracked from the previous frame (the steady state)",
         f"{f['tracking']['mean']} ms mean, {f['tracking']['p50']} ms p50, {f['tracking']['p95']} ms p95"],
        ["reaction to a new typed sentence (send -> event with its label)",
         f"{r['sentence']['p50']} ms p50, {r['sentence']['p95']} ms p95 (n={r['sentence']['n']})"],
        ["reaction to a new face (first frame sent -> event with face happy)",
         f"{r['face']['p50']} ms p50, {r['face']['p95']} ms p95 (n={r['face']['n']})"],
        ["emotion stages' CPU per session (4 face frames/s tracked, VAD, MFCC, prosody, fusion, "
         "a sentence every 5 s; no WebRTC)", f"{c['cpu_pct_of_core']}% of a core"],
    ]
    for n in sorted({row["sessions"] for row in results["cpu"]}):
        on = [r["cpu_pct_per_session"] for r in results["cpu"] if r["sessions"] == n and r["pipelines"]]
        off = [r["cpu_pct_per_session"] for r in results["cpu"] if r["sessions"] == n and not r["pipelines"]]
        events = [r["emotion_events_per_s_per_session"] for r in results["cpu"] if r["sessions"] == n and r["pipelines"]]
        if on and off:
            rows.append([f"server process CPU per session, {n} session(s) of 640x480 video + speech over WebRTC",
                         f"with emotion {' / '.join(map(str, on))}% of a core, with no pipeline "
                         f"{' / '.join(map(str, off))}% ({statistics.mean(events):.2f} events/s)"])
    return "\n".join([f"Measured on {results['machine']} (shared with other work: expect noise), "
                      f"{time.strftime('%Y-%m-%d')}.", "", markdown_table(["measure", "value"], rows)])


def main() -> int:
    parser = harness.parser(__doc__)
    harness.add_load_flags(parser, "1,2", 15.0)
    parser.add_argument("--repeats", type=int, default=6, help="reactions measured of each kind")
    parser.add_argument("--frames", type=int, default=100, help="frames through the face stage")
    parser.add_argument("--stage-seconds", type=int, default=20, help="simulated session seconds of the stages' CPU")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    harness.publish("emotion", table(results), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
