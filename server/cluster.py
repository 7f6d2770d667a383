"""A local cluster on 127.0.0.1: a Ray head, the Serve applications, N media servers, HAProxy.

    python -m server.cluster --port 8080 --media-servers 2 [-- media-server flags...]
    make cluster PORT=8080 MEDIA_SERVERS=2

Runs in the foreground; Ctrl-C or SIGTERM stops everything it started, by process id (each
process and the processes it started, e.g. Ray's raylet and workers). Ray binds to 127.0.0.1
(``--node-ip-address``, and single-node mode so that Ray never advertises another address),
with usage statistics and the dashboard off. Media server i is ``m<i>`` (its ``--server-id`` and
HAProxy's name for it) on port PORT+i; HAProxy serves PORT.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from server.balancer import haproxy_config

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """The environment of every process of a local cluster (and of a driver joining it)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
            # Single-node mode: Ray keeps 127.0.0.1 as the node address instead of looking up
            # the machine's outward one (ray start turns --node-ip-address 127.0.0.1 into it).
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # A busy machine starts Ray's agents slowly: wait for them rather than fail
            "RAY_agent_register_timeout_ms": "300000",
            # Ray 2.5x turns token authentication on for a head started where ~/.ray/auth_token
            # exists (any ray.init() that starts a cluster of its own leaves one there), while a
            # driver given the head's address never turns it on: its media servers could not
            # connect. This cluster listens on 127.0.0.1 only: no tokens, whatever ~/.ray holds.
            # (A cluster across machines is Ray's own, with its token authentication: README.)
            "RAY_AUTH_MODE": "disabled",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Proc:
    """A process this cluster started, stopped with every process below it."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str], preexec_fn=None):
        self.name, self.argv, self.log_path = name, argv, log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn)
        self.pid = self.popen.pid
        self.stop_signal = signal.SIGTERM  # media servers: SIGINT (stop now; SIGTERM would drain)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        return []

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def stop_all(procs: list[Proc], timeout: float = 40.0) -> list[int]:
    """Signal each process (in order: its ``stop_signal``), wait, then kill whatever is left of their
    trees (by pid); returns the pids that had to be killed."""
    known: dict[int, psutil.Process] = {}
    for proc in procs:
        for p in proc.tree():
            known[p.pid] = p
        if proc.alive():
            with contextlib.suppress(OSError):
                proc.popen.send_signal(proc.stop_signal)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in list(known.values()):  # children started meanwhile (e.g. a new Ray worker)
            with contextlib.suppress(psutil.Error):
                for child in p.children(recursive=True):
                    known.setdefault(child.pid, child)
        if not any(_running(p) for p in known.values()):
            break
        time.sleep(0.2)
    killed = []
    for p in known.values():
        if _running(p):
            with contextlib.suppress(psutil.Error):
                p.kill()
                killed.append(p.pid)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.popen.wait(5)
        proc._log.close()
    return killed


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


STARTUP_NICENESS = -5
LOCAL_REPLICA_CPUS = 0.25  # what a replica of `make cluster` reserves unless --ray-replica-cpus is given


def _startup_priority() -> None:
    """Ray's head starts at a raised priority: its raylet waits only 15 s (fixed, Ray 2.60) for its
    agents to start, which a busy machine misses. ``LocalCluster`` puts the whole tree back to
    this process's priority once the head is up. Where raising it is not allowed, as it was."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, STARTUP_NICENESS)


def wait_port(host: str, port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{proc.name} did not open {host}:{port} within {timeout:.0f} s:\n{proc.log_tail()}")


def wait_log(proc: Proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with contextlib.suppress(OSError):
            if text in proc.log_path.read_text(errors="replace"):
                return
        time.sleep(0.3)
    raise RuntimeError(f"{proc.name} did not start within {timeout:.0f} s:\n{proc.log_tail()}")


def health(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


_clusters: list["LocalCluster"] = []


@atexit.register
def _stop_left() -> None:
    """Whatever a cluster of this process still runs when it exits (an interrupted test)."""
    for cluster in _clusters:
        cluster.stop()


class LocalCluster:
    """Everything ``make cluster`` runs, as processes this object started and stops."""

    def __init__(self, port: int = 8080, media_servers: int = 2, *, num_cpus: int = 2, ray_port: int = 0,
                 server_args: list[str] = (), workdir: Path | None = None, startup_timeout: float = 300.0,
                 log_level: str = "WARNING", agent_check: bool = True):
        self.fixed_ports = bool(port)
        self.port = port or free_port()
        self.count = media_servers
        self.num_cpus = num_cpus
        self.ray_port = ray_port or free_port()
        self.ray_address = f"{LOOPBACK}:{self.ray_port}"
        self.server_args = list(server_args)
        self.log_level = log_level
        self.agent_check = agent_check  # HAProxy weighs servers by free capacity (else: round robin)
        self.startup_timeout = startup_timeout
        # Short: Ray's unix sockets live under it (their paths have a length limit)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mms-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = ray_env()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.head: Proc | None = None
        self.media: dict[str, Proc] = {}
        self.media_urls: dict[str, str] = {}
        self.haproxy: Proc | None = None
        _clusters.append(self)

    @property
    def procs(self) -> list[Proc]:
        """Front to back: HAProxy, the media servers, Ray."""
        return [p for p in (self.haproxy, *self.media.values(), self.head) if p is not None]

    def _start(self, name: str, argv: list[str], preexec_fn=None) -> Proc:
        return Proc(name, argv, self.workdir / f"{name}.log", self.env, preexec_fn)

    def server_flags(self) -> list[str]:
        return ["--inference", "ray", "--ray-address", self.ray_address, "--log-level", self.log_level,
                *self.server_args]

    def start(self) -> "LocalCluster":
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_head(self) -> Proc:
        ray = str(Path(sys.executable).parent / "ray")
        return self._start("ray-head", preexec_fn=_startup_priority, argv=[
            ray, "start", "--head", "--block", "--node-ip-address", LOOPBACK, "--port", str(self.ray_port),
            "--num-cpus", str(self.num_cpus), "--include-dashboard", "false", "--disable-usage-stats",
            "--temp-dir", str(self.workdir / "ray"),
            # Fixed ports: the raylet need not wait for the agents to report theirs
            *(arg for flag in ("--ray-client-server-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                               "--dashboard-agent-listen-port") for arg in (flag, str(free_port())))])

    def _start_all(self) -> None:
        # On a busy machine Ray's agents may start too slowly for the raylet (Ray 2.60 waits 15 s for
        # them, fixed): then the head fails, and starts again.
        for attempt in range(1, 6):
            self.head = self._start_head()
            try:
                wait_log(self.head, "block forever", self.startup_timeout)  # `ray start` finished: the node is up
                own = os.getpriority(os.PRIO_PROCESS, 0)
                for p in self.head.tree():  # back to normal: later workers inherit the raylet's
                    with contextlib.suppress(psutil.Error):
                        p.nice(own)
                break
            except RuntimeError:
                if attempt == 5:
                    raise
                print(f"the Ray head did not start (attempt {attempt}); again:\n{self.head.log_tail(3)}", flush=True)
                stop_all([self.head], timeout=20)
        # The Serve applications, before any media server needs them
        deploy = self._start("deploy", [sys.executable, "-m", "server.serve_apps", "deploy", *self.server_flags()])
        try:
            rc = deploy.popen.wait(self.startup_timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            stop_all([deploy], timeout=10)
        if rc is None:
            raise RuntimeError(f"deploying the Serve applications took over {self.startup_timeout:.0f} s (a replica "
                               "that cannot get the CPUs it reserves waits for them: --ray-replica-cpus, "
                               f"--num-cpus):\n{deploy.log_tail(5)}")
        if rc != 0:
            raise RuntimeError(f"deploying the Serve applications failed ({rc}):\n{deploy.log_tail()}")
        servers = []
        for i in range(1, self.count + 1):
            # PORT+i as documented when PORT was given; free ports otherwise (tests: PORT+i may be taken)
            port = self.port + i if self.fixed_ports else free_port()
            name, agent = f"m{i}", (free_port() if self.agent_check else 0)
            self.media[name] = self._start(name, [
                sys.executable, "webrtc_server.py", "--host", LOOPBACK, "--port", str(port),
                "--ice-host", LOOPBACK, "--server-id", name, "--agent-port", str(agent), *self.server_flags()])
            self.media[name].stop_signal = signal.SIGINT
            self.media_urls[name] = f"http://{LOOPBACK}:{port}"
            servers.append((name, LOOPBACK, port, agent))
        for name, url in self.media_urls.items():
            self.wait_healthy(name, url)
        config = self.workdir / "haproxy.cfg"
        config.write_text(haproxy_config(servers, bind=LOOPBACK, port=self.port))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.haproxy = self._start("haproxy", [haproxy, "-db", "-f", str(config)])
        wait_port(LOOPBACK, self.port, self.haproxy, 30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # HAProxy's checks found the servers up
            with contextlib.suppress(OSError, ValueError):
                if health(self.url)[0] == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"HAProxy found no media server up within 60 s:\n{self.haproxy.log_tail()}")

    def wait_healthy(self, name: str, url: str) -> dict:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            proc = self.media[name]
            if not proc.alive():
                raise RuntimeError(f"{name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                status, body = health(url)
                if status == 200 and body.get("ready"):
                    return body
            time.sleep(0.5)
        raise RuntimeError(f"{name} not ready within {self.startup_timeout:.0f} s:\n{self.media[name].log_tail()}")

    def stop(self) -> list[int]:
        """Stop everything started, front to back (by pid); the pids that had to be killed."""
        killed = stop_all(self.procs)
        self.haproxy, self.head = None, None
        self.media.clear()
        return killed

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080, help="HAProxy's port (media servers: PORT+1...)")
    parser.add_argument("--media-servers", type=int, default=2)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="CPUs Ray may schedule")
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="after --: flags for every media server")
    args = parser.parse_args(argv)
    server_args = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    if not any(a.startswith("--ray-replica-cpus") for a in server_args):
        # The replicas share this machine's cores: reserving a whole CPU each would leave every
        # model past the first --num-cpus ones waiting for a CPU forever (--preload all: 3 on 2 cores)
        server_args = ["--ray-replica-cpus", str(LOCAL_REPLICA_CPUS), *server_args]
    cluster = LocalCluster(args.port, args.media_servers, num_cpus=args.num_cpus, server_args=server_args,
                           log_level="INFO")
    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # like Ctrl-C, even while the cluster starts
    failed = False
    try:
        print(f"Starting a Ray head on {cluster.ray_address}, the Serve applications, "
              f"{args.media_servers} media servers and HAProxy (logs in {cluster.workdir}) ...", flush=True)
        cluster.start()
        print(f"Serving on {cluster.url} (HAProxy) -> "
              + ", ".join(f"{n} {u}" for n, u in cluster.media_urls.items())
              + f"; Ray at {cluster.ray_address}. Ctrl-C stops everything.", flush=True)
        while True:
            dead = [p.name for p in cluster.procs if not p.alive()]
            if dead:
                print(f"{', '.join(dead)} exited; stopping the cluster", flush=True)
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:  # it did not start (everything it started is stopped already)
        print(f"The cluster did not start: {exc}", flush=True)
        failed = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        print("Stopping the cluster ...", flush=True)
        killed = cluster.stop()
        print("Stopped" + (f" (killed {len(killed)} processes that did not exit)" if killed else "") + ".",
              flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
