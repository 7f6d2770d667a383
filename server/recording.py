"""Session recording (``--record-dir DIR`` and ``"record": true`` in an offer).

One folder per session, ``DIR/<session_id>/``:

* ``session.mkv``: Matroska with four streams, written as the session runs: the person's audio
  and video (what the server received) and the returned audio and video (what it sent), H.264
  (640x480, letterboxed) and 48 kHz PCM, timed from the start of the recording. Packets are
  flushed as they are muxed and clusters close every second, so a file whose server died
  mid-session still plays up to its last second.
* ``events.jsonl``: every event the session sent, as sent (one JSON object a line).
* ``transcript.vtt``, ``translation.vtt``: WebVTT captions of the final transcripts (timed on the
  person's audio) and of the translations (timed on when their speech plays on the returned
  audio), relative to the recording's start.
* ``session.json``: who may read it back (the session's pipelines), when it started.

Nothing here runs on the event loop but the taps: each hands a frame to a bounded queue (dropped
and counted when the writer thread is behind, so a slow disk never slows the session) that one
thread per recording encodes and writes. A size limit and a duration limit stop a recording; a
write error (disk full) stops it with an ``error`` event, and the session carries on.

``GET /recordings/{session_id}`` lists the files (JSON), ``GET /recordings/{session_id}/{file}``
serves one; behind the server's authentication, to credentials that allow the session's pipelines.
"""
from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import queue
import re
import threading
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np
from aiohttp import web
from av.video.reformatter import VideoReformatter

from server.auth import GRANT, AuthError

log = logging.getLogger(__name__)

MEDIA = "session.mkv"
EVENTS = "events.jsonl"
CAPTIONS = {"transcript": "transcript.vtt", "translation": "translation.vtt"}
META = "session.json"
FILES = (MEDIA, EVENTS, *CAPTIONS.values(), META)
WIDTH, HEIGHT = 640, 480  # both video streams, pictures letterboxed into it
AUDIO_RATE = 48000
QUEUE = 256  # media frames waiting for the writer thread (~2.5 s of the four streams) before drops
VIDEO_QUEUE = 192  # beyond this many, video frames are dropped first (audio gaps are worse)
TEXT_QUEUE = 1024  # room kept for events and captions, which media never takes
NEW_CLOCK = 10.0  # seconds between an inbound audio frame's place on its clock and its arrival: a new clock
RESYNC = 0.01  # seconds of audio missing (frames dropped, a pause) that leave a gap in the recording
SESSION_ID = re.compile(r"[0-9a-f]{32}")
STREAMS = ("person_audio", "person_video", "returned_audio", "returned_video")


class RecordingError(Exception):
    pass


def vtt_time(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def vtt_text(text: str) -> str:
    text = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("-->", "->")


def letterbox(frame: av.VideoFrame, reformatter: VideoReformatter) -> av.VideoFrame:
    """A new frame: ``frame`` scaled to fit WIDTH x HEIGHT, centred on black. The frame itself is
    shared with the threads that encode it for WebRTC: only read, never reformatted in place
    (``frame.reformat`` keeps a converter on the frame, which two threads must not use at once)."""
    scale = min(WIDTH / frame.width, HEIGHT / frame.height)
    w, h = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
    image = reformatter.reformat(frame, w, h, "bgr24").to_ndarray()
    if (w, h) != (WIDTH, HEIGHT):
        canvas = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        y, x = (HEIGHT - h) // 2, (WIDTH - w) // 2
        canvas[y:y + h, x:x + w] = image
        image = canvas
    return av.VideoFrame.from_ndarray(image, format="bgr24")


class Recorder:
    """One session's recording. The taps and ``event`` run on the event loop and never block;
    ``notify(type, **fields)`` is called on the event loop (the session's ``emit``)."""

    def __init__(self, folder: Path, session_id: str, pipelines: list[str], max_bytes: int,
                 max_seconds: float, notify: Callable[..., None]):
        self.folder = Path(folder) / session_id
        self.session_id = session_id
        self.pipelines = pipelines
        self.max_bytes, self.max_seconds = max_bytes, max_seconds
        self._notify = notify
        self._loop = asyncio.get_running_loop()
        self._queue: queue.Queue = queue.Queue(QUEUE + TEXT_QUEUE)
        self.started = time.monotonic()
        self.active = True
        self.dropped = 0  # items the writer thread was too far behind to take
        self.written = 0  # bytes on disk
        self._audio_origin: float | None = None  # recording time of the person's first audio sample
        # The returned audio's play clock (seconds of audio sent), and the recording time of its 0.
        self.play_clock: Callable[[], float] | None = None
        self._play_origin: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"record-{session_id[:8]}", daemon=True)

    @property
    def url(self) -> str:
        return f"/recordings/{self.session_id}"

    def start(self) -> None:
        self._thread.start()
        self._notify("recording", state="started", url=self.url, files=list(FILES),
                     max_seconds=self.max_seconds, max_bytes=self.max_bytes)

    def now(self) -> float:
        return time.monotonic() - self.started

    # --- on the event loop -----------------------------------------------------------------------
    def _put(self, item, limit: int = QUEUE + TEXT_QUEUE) -> None:
        if not self.active:
            return
        if self._queue.qsize() >= limit:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def tap(self, stream: str) -> Callable[[av.frame.Frame], None]:
        limit = VIDEO_QUEUE if stream.endswith("video") else QUEUE

        def put(frame) -> None:
            self._put((stream, frame, self.now()), limit)
        return put

    def person_audio(self, frame: av.AudioFrame) -> None:
        if self._audio_origin is None:  # the ring's sample 0 arrived with this frame
            self._audio_origin = self.now()
        self._put(("person_audio", frame, self.now()), QUEUE)

    def returned_audio(self, frame: av.AudioFrame) -> None:
        if self._play_origin is None:  # as the writer places it: its pts 0 at this arrival
            self._play_origin = self.now() - float(frame.pts * frame.time_base)
        self._put(("returned_audio", frame, self.now()), QUEUE)

    def event(self, type: str, fields: dict, message: str) -> None:
        """An event the session sent: a JSON line, and a caption for transcripts and translations."""
        self._put(("event", message, None))
        cue = self._cue(type, fields)
        if cue is not None:
            self._put(("cue", CAPTIONS[type], cue))

    def _cue(self, type: str, fields: dict) -> tuple[float, float, str] | None:
        now = self.now()
        if type == "transcript" and fields.get("final") and fields.get("text"):
            origin = self._audio_origin
            if origin is not None and isinstance(fields.get("audio_end_s"), (int, float)):
                end = origin + fields["audio_end_s"]
                start = origin + fields.get("audio_start_s", fields["audio_end_s"] - 2.0)
            else:
                start, end = now - 2.0, now
            return start, max(end, start + 0.5), fields["text"]
        if type == "translation":
            text = fields.get("chunk") if "chunk" in fields else fields.get("text")
            seconds = fields.get("audio_seconds") or 0.0
            if not text or (not seconds and not fields.get("final")):
                return None
            start = now  # when its speech starts playing: after what was queued ahead of it
            if self.play_clock is not None and self._play_origin is not None:
                start = self._play_origin + self.play_clock()  # on the returned audio's own clock
            start += fields.get("queued_ahead_s") or 0.0
            return start, start + (seconds or 2.0), text
        return None

    async def close(self, reason: str = "session ended") -> None:
        """Stop (if not stopped yet) and wait for the files to be complete."""
        was_active, self.active = self.active, False  # the taps stop here
        if was_active and self._thread.is_alive():  # the writer finishes what is queued, then closes
            with contextlib.suppress(queue.Full):  # a writer stuck that long is left behind
                await asyncio.to_thread(self._queue.put, ("stop", reason, None), True, 30)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 30)

    # --- the writer thread ---------------------------------------------------------------------------
    def _tell(self, type: str, **fields) -> None:
        try:
            self._loop.call_soon_threadsafe(lambda: self._notify(type, **fields))
        except RuntimeError:  # the loop is closed: nobody to tell
            pass

    def _run(self) -> None:
        reason, files = "session ended", None
        try:
            files = _Files(self)
            while True:
                kind, item, at = self._queue.get()
                if kind == "stop":
                    reason = item
                    break
                files.write(kind, item, at)
                if self.max_seconds and self.now() > self.max_seconds:
                    reason = f"duration limit ({self.max_seconds:g} s)"
                    break
                if self.max_bytes and self.written > self.max_bytes:
                    reason = f"size limit ({self.max_bytes} bytes)"
                    break
        except Exception as exc:  # disk full, permissions, an encoder failing
            log.exception("recording of session %s failed", self.session_id)
            reason = f"error: {type(exc).__name__}: {exc}"
            self._tell("error", pipeline=None, message=f"recording stopped: {type(exc).__name__}: {exc}")
        self.active = False
        stopped = {"state": "stopped", "reason": reason, "url": self.url, "seconds": round(self.now(), 3),
                   "bytes": self.written, "dropped": self.dropped}
        if files is not None:
            try:
                files.close(stopped)
            except Exception:
                log.exception("closing the recording of session %s failed", self.session_id)
        self._tell("recording", **stopped)


class _Files:
    """The open files of a recording (writer thread only)."""

    def __init__(self, recorder: Recorder):
        self.r = recorder
        recorder.folder.mkdir(parents=True, exist_ok=True)
        (recorder.folder / META).write_text(json.dumps({
            "session_id": recorder.session_id, "pipelines": recorder.pipelines,
            "started": time.time()}) + "\n")
        self.events = open(recorder.folder / EVENTS, "a", encoding="utf-8")
        self.captions = {}
        for name in CAPTIONS.values():
            self.captions[name] = open(recorder.folder / name, "w", encoding="utf-8")
            self.captions[name].write("WEBVTT\n\n")
            self.captions[name].flush()
        self.container = av.open(str(recorder.folder / MEDIA), "w", format="matroska",
                                 container_options={"flush_packets": "1", "cluster_time_limit": "1000",
                                                    # a stream with nothing yet (no camera) holds
                                                    # the others back no longer than this (µs)
                                                    "max_interleave_delta": "500000"})
        self.streams, self.resamplers, self.reformatters, self.next_pts, self.last_pts = {}, {}, {}, {}, {}
        self.origins: dict[str, float] = {}  # audio: recording time of each stream's pts 0
        for name in STREAMS:
            if name.endswith("video"):
                stream = self.container.add_stream("libx264", rate=25, options={
                    "preset": "ultrafast", "tune": "zerolatency", "crf": "28", "g": "50", "threads": "1"})
                stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
                stream.time_base = fractions.Fraction(1, 1000)
                stream.codec_context.time_base = fractions.Fraction(1, 1000)
                self.reformatters[name] = VideoReformatter()
            else:
                stream = self.container.add_stream("pcm_s16le", rate=AUDIO_RATE, layout="mono")
                stream.time_base = fractions.Fraction(1, AUDIO_RATE)
                self.resamplers[name] = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
            stream.metadata["title"] = name.replace("_", " ")
            self.streams[name] = stream
            self.next_pts[name], self.last_pts[name] = 0, -1
        self.path = recorder.folder / MEDIA
        self.packets = 0

    def write(self, kind: str, item, at: float) -> None:
        if kind == "event":
            self.events.write(item + "\n")
            self.events.flush()
        elif kind == "cue":  # item: the file, at: (start, end, text)
            self.cue(item, *at)
        elif kind.endswith("audio"):
            self._audio(kind, item, at)
        else:
            self._video(kind, item, at)

    def cue(self, name: str, start: float, end: float, text: str) -> None:
        f = self.captions[name]
        f.write(f"{vtt_time(start)} --> {vtt_time(end)}\n{vtt_text(text)}\n\n")
        f.flush()

    def _mux(self, packets) -> None:
        for packet in packets:
            self.container.mux(packet)
            self.packets += 1
            if self.packets % 25 == 0:
                self.r.written = self.path.stat().st_size

    def _audio(self, name: str, frame: av.AudioFrame, at: float) -> None:
        """Audio is timed by its own clock (the frames' pts: RTP time inbound, the play clock
        outbound), anchored where its first frame arrived: frames that came in a burst after a
        stall keep their places, and frames dropped here leave a gap of their length."""
        stream = self.streams[name]
        clock = int(at * AUDIO_RATE)
        if frame.pts is not None and frame.time_base:
            t = float(frame.pts * frame.time_base)
            origin = self.origins.setdefault(name, at - t)
            if name == "person_audio" and abs(origin + t - at) > NEW_CLOCK:  # the client resumed: new RTP clock
                origin = self.origins[name] = at - t
            clock = int((origin + t) * AUDIO_RATE)
        if clock - self.next_pts[name] > RESYNC * AUDIO_RATE:  # frames dropped, or a pause: a gap
            self.next_pts[name] = clock
        for out in self.resamplers[name].resample(frame):
            out.pts, out.time_base = self.next_pts[name], fractions.Fraction(1, AUDIO_RATE)
            self.next_pts[name] += out.samples
            self._mux(stream.encode(out))

    def _video(self, name: str, frame: av.VideoFrame, at: float) -> None:
        pts = max(int(at * 1000), self.last_pts[name] + 1)
        self.last_pts[name] = pts
        picture = letterbox(frame, self.reformatters[name])
        picture.pts, picture.time_base = pts, fractions.Fraction(1, 1000)
        self._mux(self.streams[name].encode(picture))

    def close(self, stopped: dict) -> None:
        try:
            for stream in self.streams.values():
                self._mux(stream.encode(None))
        finally:
            self.container.close()
            self.r.written = self.path.stat().st_size if self.path.exists() else 0  # no media came
            stopped["bytes"] = self.r.written
            self.events.write(json.dumps({"type": "recording", "t": stopped["seconds"], **stopped}) + "\n")
            self.events.close()
            for f in self.captions.values():
                f.close()


# --- HTTP ----------------------------------------------------------------------------------------------
def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def routes(server) -> list:
    """``GET /recordings/{session_id}`` (the files, JSON) and ``GET /recordings/{session_id}/{file}``."""

    def folder(request: web.Request) -> Path | web.Response:
        if not server.settings.record_dir:
            return _error(404, "recording is not enabled on this server (--record-dir)")
        session_id = request.match_info["session_id"]
        path = Path(server.settings.record_dir) / session_id
        if not SESSION_ID.fullmatch(session_id) or not (path / META).is_file():
            return _error(404, f"no recording of session {session_id!r}")
        grant = request.get(GRANT)
        if grant is not None:
            try:
                meta = json.loads((path / META).read_text())
                grant.check(meta.get("pipelines", []))
            except AuthError as exc:
                return _error(exc.status, exc.message)
            except (OSError, ValueError):
                return _error(404, f"no recording of session {session_id!r}")
        return path

    async def listing(request: web.Request) -> web.Response:
        path = await asyncio.to_thread(folder, request)
        if isinstance(path, web.Response):
            return path
        session = server.sessions.get(path.name)
        recorder = getattr(session, "recorder", None)
        files = [{"name": name, "bytes": (path / name).stat().st_size, "url": f"/recordings/{path.name}/{name}"}
                 for name in FILES if (path / name).is_file()]
        return web.json_response({"session_id": path.name, "recording": bool(recorder and recorder.active),
                                  "files": files})

    async def file(request: web.Request) -> web.StreamResponse:
        path = await asyncio.to_thread(folder, request)
        if isinstance(path, web.Response):
            return path
        name = request.match_info["name"]
        if name not in FILES or not (path / name).is_file():  # only the recording's own files
            return _error(404, f"no file {name!r} in this recording; see /recordings/{path.name}")
        types = {".mkv": "video/x-matroska", ".jsonl": "application/x-ndjson", ".vtt": "text/vtt",
                 ".json": "application/json"}
        return web.FileResponse(path / name, headers={"Content-Type": types[Path(name).suffix]})

    return [web.get("/recordings/{session_id}", listing), web.get("/recordings/{session_id}/{name}", file)]
