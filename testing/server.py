"""A server as a subprocess (``webrtc_server.py``, or any script taking the same ``--host``,
``--port``, ``--ice-host`` and ``--log-level`` flags), its output in a log file, always stopped:
SIGINT (a graceful shutdown), then SIGKILL; whatever is still running when this process exits is
killed."""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

from testing.net import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parent.parent
WEBRTC_SERVER = ROOT / "webrtc_server.py"
_children: list[subprocess.Popen] = []


def kill_children() -> None:
    """Kill every server this process started that still runs."""
    for proc in _children:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(5)


atexit.register(kill_children)


@dataclasses.dataclass
class RunningServer:
    server: "MediaServer"  # noqa: F821
    url: str


@contextlib.asynccontextmanager
async def in_process(settings):
    """A ``MediaServer`` of ``settings`` served in this process and event loop, stopped on the way out."""
    from aiohttp import web

    from server.app import MediaServer

    server = MediaServer(settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    try:
        yield RunningServer(server, f"http://{settings.host}:{settings.port}")
    finally:
        await runner.cleanup()


class ServerProcess:
    def __init__(self, name: str, argv: list[str], port: int, log_path: Path):
        self.name, self.argv, self.port, self.log_path = name, argv, port, log_path
        self.cwd = ROOT  # where it runs
        self.url = f"http://{LOOPBACK}:{port}"
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None
        self._log = None

    @classmethod
    def script(cls, name: str, log_path: Path, *flags: str, script: Path = WEBRTC_SERVER,
               log_level: str = "WARNING") -> ServerProcess:
        """``script`` (default ``webrtc_server.py``) on a free loopback port, ICE on loopback only,
        with ``flags`` added."""
        port = free_port()
        argv = [sys.executable, str(script), "--host", LOOPBACK, "--port", str(port), "--ice-host", LOOPBACK,
                *flags, "--log-level", log_level]
        return cls(name, argv, port, log_path)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        _children.append(self.proc)
        self.ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def wait_healthy(self, http: aiohttp.ClientSession | None = None, timeout: float = 60.0) -> dict:
        """``GET /health``'s answer once it is 200; an error naming the log's tail if the process
        exits or ``timeout`` passes first."""
        if http is None:
            async with aiohttp.ClientSession() as own:
                return await self.wait_healthy(own, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return await r.json()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy within {timeout:.0f}s:\n{self.log_tail()}")

    async def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGINT)  # aiohttp's run_app: graceful shutdown
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    self.proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.proc.wait, 5)
        if self._log:
            self._log.close()
        return self.proc.returncode

    async def __aenter__(self) -> ServerProcess:
        """Started and healthy (within 120 s); stopped on the way out."""
        self.start()
        try:
            await self.wait_healthy(timeout=120)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
