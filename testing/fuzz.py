"""Property-based fuzzing of the server (tests/test_fuzz.py): a driver that runs hypothesis examples
against an in-process server on the test's own event loop, strategies for hostile input (JSON
values, SDP line mutations, HTTP content types), builders of odd WAV and PNG bytes, a peak-memory
probe, a bystander session that must carry on through it all, and the server health check.

Why a driver. pytest-asyncio gives each test its own event loop, and the ``media_server`` fixture
runs the server on it; hypothesis' ``@given`` cannot wrap an ``async def`` test, and a
function-scoped fixture would not be reset between its examples anyway. So a test awaits
``explore(strategy, check)``: hypothesis runs in a worker thread (``asyncio.to_thread``), and each
example hands the coroutine ``check(example)`` back to the test's loop with
``asyncio.run_coroutine_threadsafe`` and waits for it under a timeout. One server serves every
example, the loop stays free to serve them, and a hang becomes a failure, not a stuck run.

Reproducible: ``derandomize=True`` and no example database, so CI draws the same examples every run.
Shrinking is off by default (a hanging input would be retried for minutes). To explore further
locally: ``FUZZ_EXAMPLES=N`` multiplies every test's example count, ``FUZZ_RANDOM=1`` draws new
examples each run, ``FUZZ_SHRINK=1`` shrinks a failure to a minimal example.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
DERANDOMIZE = not os.environ.get("FUZZ_RANDOM")
PHASES = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if os.environ.get("FUZZ_SHRINK") else ())
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)


# --- the driver ------------------------------------------------------------------------------------
async def explore(strategy: st.SearchStrategy, check: Callable[[Any], Awaitable[None]], *,
                  max_examples: int, timeout: float = 15.0) -> None:
    """Run ``await check(example)`` on the running loop for ``max_examples`` examples of
    ``strategy`` (hypothesis on a worker thread, see the module docstring). An example that takes
    longer than ``timeout`` seconds fails as a hang; hypothesis reports the falsifying example."""
    loop = asyncio.get_running_loop()
    stopped = threading.Event()  # the test stopped waiting (failed, cancelled): no more examples

    @settings(max_examples=max(1, round(max_examples * SCALE)), deadline=None, derandomize=DERANDOMIZE,
              database=None, phases=PHASES, suppress_health_check=list(HealthCheck), print_blob=False)
    @given(strategy)
    def example(value):
        if stopped.is_set():
            raise AssertionError("the test stopped waiting for its examples")
        future = asyncio.run_coroutine_threadsafe(_bounded(check(value), timeout), loop)
        try:
            future.result(timeout + 10)
        except TimeoutError:  # the loop itself did not finish it: blocked
            future.cancel()
            raise AssertionError(f"the event loop did not complete an example in {timeout + 10:.0f} s") from None

    try:
        await asyncio.to_thread(example)
    finally:
        stopped.set()


async def _bounded(coro, timeout: float) -> None:
    try:
        await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise AssertionError(f"no answer within {timeout:.0f} s (a hang)") from None


# --- strategies ------------------------------------------------------------------------------------
def json_scalars(finite: bool = False) -> st.SearchStrategy:
    """JSON scalars as Python's json module reads them (NaN and Infinity included unless ``finite``)."""
    return (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
            | st.floats(allow_nan=not finite, allow_infinity=not finite) | st.text(max_size=30))


def json_values(max_leaves: int = 10, finite: bool = False) -> st.SearchStrategy:
    """Any JSON value: scalars, lists and objects, nested."""
    return st.recursive(json_scalars(finite), lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=max_leaves)


def json_text(value: Any) -> str:
    """``value`` as the JSON a client sends (NaN and Infinity as Python writes them)."""
    return json.dumps(value)


HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters='";,\\'),
                      min_size=1, max_size=20)
# Text codecs, and names that are none (aiohttp's request.json() raises LookupError for those)
CHARSETS = ("utf-8", "UTF-8", "latin-1", "ascii", "utf-16", "utf-32", "cp1252", "utf-8-sig", "bogus", "hex",
            "rot13", "base64", "")


def content_types() -> st.SearchStrategy:
    """Content-Type header values: the usual ones, random type/subtype, with odd parameters."""
    base = st.sampled_from(["application/json", "text/plain", "application/octet-stream", "image/png",
                            "image/jpeg", "image/", "multipart/form-data", "application/x-www-form-urlencoded",
                            "audio/wav", "*/*"]) | st.builds("{}/{}".format, HEADER_TEXT, HEADER_TEXT)
    param = ((st.sampled_from(CHARSETS) | HEADER_TEXT).map("charset={}".format)
             | HEADER_TEXT.map("boundary={}".format) | st.builds("{}={}".format, HEADER_TEXT, HEADER_TEXT))
    return st.builds(lambda b, ps: "; ".join([b, *ps]), base, st.lists(param, max_size=2))


ODD_NUMBERS = st.sampled_from(["0", "-1", "1", "65535", "65536", "4294967296", str(2 ** 63), "1" * 30,
                               "1e9", "0x10", "NaN", ""])


def sdp_mutations(lines: list[str], protected: Callable[[str], bool] = lambda line: False,
                  new_line: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """Lists of mutations of an SDP's ``lines`` (apply them with ``mutate``): delete, duplicate,
    swap, truncate or replace a line, replace a number in it, insert a line, change line endings.
    Lines for which ``protected`` is true are left alone."""
    free = [i for i, line in enumerate(lines) if not protected(line)]
    index = st.sampled_from(free)
    new_line = new_line if new_line is not None else st.text(max_size=60)
    one = st.one_of(
        st.tuples(st.just("delete"), index),
        st.tuples(st.just("duplicate"), index),
        st.tuples(st.just("swap"), index, index),
        st.tuples(st.just("truncate"), index, st.integers(0, 80)),
        st.tuples(st.just("replace"), index, new_line),
        st.tuples(st.just("number"), index, st.integers(0, 12), ODD_NUMBERS),
        st.tuples(st.just("insert"), st.integers(0, len(lines)), new_line),
        st.tuples(st.just("newline"), st.sampled_from(["\n", "\r", "\r\r\n", "\n\n", " \r\n"])),
    )
    return st.lists(one, min_size=1, max_size=4)


def mutate(lines: list[str], mutations: list[tuple]) -> str:
    """Apply ``sdp_mutations`` (indices name the original lines) and join the SDP again."""
    import re

    entries = list(enumerate(lines))
    newline = "\r\n"

    def at(i):
        return next((k for k, (orig, _) in enumerate(entries) if orig == i), None)

    for m in mutations:
        kind, k = m[0], (at(m[1]) if m[0] not in ("insert", "newline") else None)
        if kind == "newline":
            newline = m[1]
        elif kind == "insert":
            entries.insert(min(m[1], len(entries)), (-1, m[2]))
        elif k is None:
            continue  # that line is already gone
        elif kind == "delete":
            del entries[k]
        elif kind == "duplicate":
            entries.insert(k, (-1, entries[k][1]))
        elif kind == "swap":
            j = at(m[2])
            if j is not None:
                entries[k], entries[j] = entries[j], entries[k]
        elif kind == "truncate":
            entries[k] = (entries[k][0], entries[k][1][:m[2]])
        elif kind == "replace":
            entries[k] = (entries[k][0], m[2])
        elif kind == "number":
            numbers = list(re.finditer(r"\d+", entries[k][1]))
            if numbers:
                n = numbers[m[2] % len(numbers)]
                line = entries[k][1]
                entries[k] = (entries[k][0], line[:n.start()] + m[3] + line[n.end():])
    return newline.join(line for _, line in entries)


# --- bytes -----------------------------------------------------------------------------------------
def wav_bytes(data: bytes, rate: int, channels: int = 1, bits: int = 16, format_tag: int = 1,
              block_align: int | None = None, byte_rate: int | None = None, data_size: int | None = None) -> bytes:
    """A RIFF/WAVE file with exactly these header fields (wrapped to their widths), true or not."""
    if block_align is None:
        block_align = channels * bits // 8
    if byte_rate is None:
        byte_rate = rate * block_align
    fmt = struct.pack("<HHIIHH", format_tag & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                      byte_rate & 0xFFFFFFFF, block_align & 0xFFFF, bits & 0xFFFF)
    size = len(data) if data_size is None else data_size & 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", (36 + len(data)) & 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", size) + data)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, colour_type: int = 0, pixels: bool = True) -> bytes:
    """A PNG of ``width`` x ``height`` black pixels (8-bit; colour type 0 grey, 2 RGB, 6 RGBA),
    compressed as far as zlib goes (about 1000:1), built row by row without holding the image.
    ``pixels=False``: a header only, with an empty image data chunk."""
    bands = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    idat = b""
    if pixels:
        compressor, row = zlib.compressobj(9), bytes(1 + width * bands)  # filter byte 0, then the row
        idat = b"".join([*(compressor.compress(row) for _ in range(height)), compressor.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def image_bytes(fmt: str, side: int = 256, **save) -> bytes:
    """The astronaut photo (a face), ``side`` pixels square, saved in PIL format ``fmt``."""
    import io

    import cv2
    from PIL import Image

    from testing.images import astronaut

    rgb = cv2.resize(astronaut(), (side, side), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt, **save)
    return out.getvalue()


# --- memory ----------------------------------------------------------------------------------------
def rss_mb() -> float:
    """This process's resident memory now, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class PeakRSS:
    """``with PeakRSS() as peak: ...``; then ``peak.growth_mb``: how far this process's resident
    memory rose above where it was at the start, at its highest (sampled every 2 ms on a thread,
    so it sees what C libraries allocate, which tracemalloc does not)."""

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def growth_mb(self) -> float:
        return self.peak - self.base


# --- the server carries on -------------------------------------------------------------------------
def ws_url(url: str, path: str = "/ws") -> str:
    return url.replace("http://", "ws://", 1) + path


async def receive_event(ws, timeout: float = 10.0) -> dict:
    """The next JSON event of a WebSocket (binary audio skipped); AssertionError if it closes."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type == aiohttp.WSMsgType.BINARY:
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"the socket closed: {msg.type.name} {msg.data!r} {msg.extra!r}")
        return json.loads(msg.data)


async def assert_healthy(url: str) -> None:
    """``GET /health`` answers 200 ``ok``, and a new WebSocket session answers a ``ping``."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        async with http.get(url + "/health") as resp:
            assert resp.status == 200, resp.status
            assert (await resp.json())["status"] == "ok"
        async with http.ws_connect(ws_url(url)) as ws:
            await ws.send_json({"type": "ping", "id": "health"})
            event = await receive_event(ws)
            assert event["type"] == "pong" and event["id"] == "health", event


class Bystander:
    """A well-behaved session beside the fuzzing: a WebSocket with a gender stream started, fed
    silence and pinged every ``period`` seconds. ``async with Bystander(url) as b: ...``, then
    ``b.check()``: every ping was answered, the slowest within ``max_rtt`` seconds."""

    def __init__(self, url: str, period: float = 0.25):
        self.url, self.period = url, period
        self.rtts: list[float] = []
        self.failure: BaseException | None = None

    async def __aenter__(self) -> "Bystander":
        self._http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        self._ws = await self._http.ws_connect(ws_url(self.url))
        await self._ws.send_json({"type": "start_stream", "pipelines": ["gender"], "sample_rate": 16000})
        started = await receive_event(self._ws)
        assert started["type"] == "started", started
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        n = 0
        try:
            while True:
                n += 1
                await self._ws.send_bytes(bytes(2 * int(16000 * self.period)))  # silence, in real time
                await self._ws.send_json({"type": "ping", "id": n})
                t0 = time.monotonic()
                while True:
                    event = await receive_event(self._ws, timeout=30)
                    if event["type"] == "pong" and event["id"] == n:
                        break
                    assert event["type"] != "error", event
                self.rtts.append(time.monotonic() - t0)
                await asyncio.sleep(self.period)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            self.failure = exc

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._ws.close()
        await self._http.close()

    def check(self, max_rtt: float = 5.0) -> None:
        assert self.failure is None, f"the bystander session failed: {self.failure!r}"
        assert self.rtts, "the bystander session got no answer at all"
        assert max(self.rtts) < max_rtt, f"the bystander waited {max(self.rtts):.1f} s for a pong"
