"""Server settings: the server's own fields, and one settings dataclass per pipeline (declared in
its package), all filled from CLI flags with environment-variable equivalents.

A pipeline's field ``foo`` of pipeline ``my_pipe`` is ``--my-pipe-foo`` / ``MMS_MY_PIPE_FOO`` and
``settings.my_pipe.foo``; a field's metadata may give ``help``, ``choices`` and the older flag
and variable names it still answers to (``aliases``, ``env_aliases``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from pipelines import PIPELINES


def _pipeline_settings() -> dict[str, Any]:
    return {name: cls.Settings() for name, cls in PIPELINES.items() if cls.Settings is not None}


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    pipelines: list[str] = field(default_factory=lambda: ["gender"])  # used when an offer names none
    max_sessions: int = 16
    stun: list[str] = field(default_factory=list)
    turn: list[str] = field(default_factory=list)  # turn:user:password@host:port
    device: str = "cpu"
    log_level: str = "INFO"
    ice_hosts: list[str] = field(default_factory=list)
    video_fps: float = 25.0
    heartbeat_timeout: float = 10.0
    drain_seconds: float = 30.0  # on SIGTERM: how long sessions may finish before they are closed
    resume_seconds: float = 30.0  # how long a WebRTC session whose connection dropped waits to be resumed
    load_threshold: float = 0.7  # server/load.py: new sessions are refused at this load (0: never)
    connect_timeout: float = 6.0  # a WebRTC session's ICE must connect, then it must be heard, in this long
    model_timeout: float = 30.0  # deadline of one model call (0: none)
    max_body_bytes: int = 256 * 1024
    preload: list[str] = field(default_factory=list)  # pipelines whose models load at start-up
    api_keys: list[str] = field(default_factory=list, repr=False)  # server/auth.py
    api_key_file: str = ""
    auth_secret: str = field(default="", repr=False)
    allowed_origins: list[str] = field(default_factory=list)
    insecure: bool = False
    tls_cert: str = ""  # server/tls.py
    tls_key: str = field(default="", repr=False)
    tls_self_signed: bool = False
    max_sessions_per_address: int = 4  # server/limits.py; 0: no limit
    offers_per_second: float = 1.0
    offer_burst: int = 5
    requests_per_second: float = 20.0
    request_burst: int = 60
    trusted_proxies: list[str] = field(default_factory=list)
    limit_loopback: bool = False
    max_session_seconds: float = 3600.0  # 0: unlimited
    ws_idle_timeout: float = 60.0
    ws_messages_per_second: float = 200.0
    ws_message_burst: int = 1000
    turn_urls: list[str] = field(default_factory=list)  # server/turn.py
    turn_secret: str = field(default="", repr=False)
    turn_ttl: float = 7200.0
    record_dir: str = ""  # server/recording.py: offers with "record": true are recorded here
    record_max_mb: float = 1024.0
    record_max_seconds: float = 3600.0
    # Scaling out (inference/remote.py, README "Scaling out")
    server_id: str = ""  # this media server's name behind a balancer (default HOST:PORT)
    inference: str = "local"  # local | ray
    ray_address: str = ""
    remote_models: list[str] = field(default_factory=list)  # empty: every model that has a spec
    ray_max_replicas: int = 2
    ray_replica_cpus: float = 1.0
    ray_replica_gpus: float = 0.0
    ray_batch_wait: float = 0.0  # seconds a replica waits to fill a batch (0: the model's own)
    agent_port: int = 0  # HAProxy agent-check port (0: none)
    room_size: int = 4  # server/rooms.py: participants in one room
    per_pipeline: dict[str, Any] = field(default_factory=_pipeline_settings, repr=False)

    def __getattr__(self, name: str) -> Any:
        """``settings.gender``: the gender pipeline's settings."""
        per_pipeline = self.__dict__.get("per_pipeline")
        if per_pipeline is not None and name in per_pipeline:
            return per_pipeline[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")


# flag name -> (environment variable, help). Lists are comma-separated in the environment.
_ENV = {
    "host": ("MMS_HOST", "address to listen on"),
    "port": ("MMS_PORT", "HTTP port"),
    "pipelines": ("MMS_PIPELINES", "default pipelines when an offer names none (comma-separated)"),
    "max_sessions": ("MMS_MAX_SESSIONS", "sessions at once, over every transport; more answer 503"),
    "stun": ("MMS_STUN", "STUN server URL, e.g. stun:stun.example.org:3478 (repeatable)"),
    "turn": ("MMS_TURN", "TURN server as turn:USER:PASSWORD@HOST:PORT (repeatable)"),
    "device": ("MMS_DEVICE", "where models run: cpu or cuda"),
    "log_level": ("MMS_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    "ice_hosts": ("MMS_ICE_HOSTS", "offer only these host addresses as ICE candidates (repeatable)"),
    "video_fps": ("MMS_VIDEO_FPS", "frame rate of the outbound video track"),
    "heartbeat_timeout": ("MMS_HEARTBEAT_TIMEOUT", "seconds without media or messages before a session is closed"),
    "drain_seconds": ("MMS_DRAIN_SECONDS", "on SIGTERM, seconds sessions may finish (told by a shutdown event) "
                      "before they are closed; new ones are refused meanwhile"),
    "resume_seconds": ("MMS_RESUME_SECONDS", "seconds a WebRTC session whose connection dropped waits for "
                       "its client to resume it (POST /offer with its resume token); 0: off"),
    "load_threshold": ("MMS_LOAD_THRESHOLD", "load (0 idle, 1 users feel it; server/load.py) at which new sessions "
                       "are refused with 503 and /health answers 503; 0 never refuses"),
    "connect_timeout": ("MMS_CONNECT_TIMEOUT", "seconds a new WebRTC session has to connect (ICE), and then to "
                        "send its first media or message, before it is closed"),
    "model_timeout": ("MMS_MODEL_TIMEOUT", "seconds one model call may take before its callers get an error "
                      "(0: no deadline)"),
    "preload": ("MMS_PRELOAD", "pipelines whose models load at start-up, or 'all' (default: the default pipelines)"),
    "api_keys": ("MMS_API_KEYS", "API key clients send as 'Authorization: Bearer KEY' (repeatable)"),
    "api_key_file": ("MMS_API_KEY_FILE", "file of API keys, one per line"),
    "auth_secret": ("MMS_AUTH_SECRET", "secret that signs session tokens (python -m server.auth mints them)"),
    "allowed_origins": ("MMS_ALLOWED_ORIGINS", "web origin, besides the server's own, whose pages may use it, "
                        "e.g. https://app.example.com (repeatable)"),
    "insecure": ("MMS_INSECURE", "serve a non-loopback address without authentication"),
    "tls_cert": ("MMS_TLS_CERT", "serve HTTPS with this certificate (PEM, with its chain)"),
    "tls_key": ("MMS_TLS_KEY", "the certificate's private key (PEM)"),
    "tls_self_signed": ("MMS_TLS_SELF_SIGNED", "serve HTTPS with a self-signed certificate for this machine's "
                        "names and addresses, made once (LAN demos: make run HTTPS=1)"),
    "max_sessions_per_address": ("MMS_MAX_SESSIONS_PER_ADDRESS", "sessions at once from one client address "
                                 "(WebRTC and WebSocket); more answer 429; 0: no limit"),
    "offers_per_second": ("MMS_OFFERS_PER_SECOND", "POST /offer a second from one client address; 0: no limit"),
    "offer_burst": ("MMS_OFFER_BURST", "POST /offer one client address may send at once"),
    "requests_per_second": ("MMS_REQUESTS_PER_SECOND", "HTTP requests a second from one client address "
                            "(the page and /static/ not counted); 0: no limit"),
    "request_burst": ("MMS_REQUEST_BURST", "HTTP requests one client address may send at once"),
    "trusted_proxies": ("MMS_TRUSTED_PROXIES", "reverse proxy address or network whose X-Forwarded-For names "
                        "the client (repeatable)"),
    "limit_loopback": ("MMS_LIMIT_LOOPBACK", "apply the per-address limits to loopback clients too"),
    "max_session_seconds": ("MMS_MAX_SESSION_SECONDS", "a session is told (shutdown event) and closed after "
                            "this long; 0: unlimited"),
    "ws_idle_timeout": ("MMS_WS_IDLE_TIMEOUT", "seconds a WebSocket may send no message before it is closed "
                        "(4408); 0: never"),
    "ws_messages_per_second": ("MMS_WS_MESSAGES_PER_SECOND", "messages a second one WebSocket may send; more "
                               "are dropped with an error event; 0: no limit"),
    "ws_message_burst": ("MMS_WS_MESSAGE_BURST", "messages a WebSocket may send at once; as many dropped "
                         "close it (4429)"),
    "turn_urls": ("MMS_TURN_URLS", "TURN server URL handed out with short-lived credentials from --turn-secret, "
                  "e.g. turn:turn.example.org:3478 (repeatable)"),
    "turn_secret": ("MMS_TURN_SECRET", "the TURN server's shared secret (coturn: static-auth-secret)"),
    "turn_ttl": ("MMS_TURN_TTL", "seconds the TURN credentials of GET /ice-servers are valid"),
    "record_dir": ("MMS_RECORD_DIR", "folder where sessions whose offer asks \"record\": true are recorded "
                   "(none: recording is refused)"),
    "record_max_mb": ("MMS_RECORD_MAX_MB", "a recording stops at this size (MB; 0: no limit)"),
    "record_max_seconds": ("MMS_RECORD_MAX_SECONDS", "a recording stops after this many seconds (0: no limit)"),
    "server_id": ("MMS_SERVER_ID", "this media server's name, given in /health and /offer answers and used "
                  "by the balancer to keep a client on it (default HOST:PORT)"),
    "inference": ("MMS_INFERENCE", "where shared models run: local (in this process) or ray (a Ray Serve cluster)"),
    "ray_address": ("MMS_RAY_ADDRESS", "the Ray cluster, HOST:PORT of its head (--inference ray)"),
    "remote_models": ("MMS_REMOTE_MODELS", "models served by Ray, e.g. gender,emotion-text,translation-mt "
                      "(repeatable; default: every model that can be)"),
    "ray_batch_wait": ("MMS_RAY_BATCH_WAIT", "seconds a model replica waits to fill a batch (0: each model's own, "
                       "tens of ms; more: bigger batches, e.g. on a GPU)"),
    "agent_port": ("MMS_AGENT_PORT", "port on HOST where HAProxy's agent-check reads this server's free "
                   "capacity as a weight (0: off; server/balancer.py)"),
    "ray_max_replicas": ("MMS_RAY_MAX_REPLICAS", "most replicas Ray Serve scales each model deployment to"),
    "ray_replica_cpus": ("MMS_RAY_REPLICA_CPUS", "CPUs one model replica reserves (num_cpus; may be a fraction)"),
    "ray_replica_gpus": ("MMS_RAY_REPLICA_GPUS", "GPUs one model replica reserves (num_gpus; a fraction shares "
                         "a GPU; default 0, or 0.25 with --device cuda)"),
    "room_size": ("MMS_ROOM_SIZE", "participants in one room (an offer naming a full room answers 409)"),
}


def _add_flag(parser, flags: list[str], dest: str, default, raw: str | None, help_text: str, env_name: str,
              fallback: dict, choices=None) -> None:
    if isinstance(default, bool):
        parser.add_argument(*flags, dest=dest, action="store_true",
                            default=raw is not None and raw.strip().lower() in ("1", "true", "yes", "on"),
                            help=f"{help_text} [env {env_name}=1]")
    elif isinstance(default, list):  # repeatable flag, or comma-separated
        fallback[dest] = [v.strip() for v in raw.split(",") if v.strip()] if raw else default
        parser.add_argument(*flags, dest=dest, action="append", help=f"{help_text} [env {env_name}]")
    else:
        parser.add_argument(*flags, dest=dest, type=type(default), choices=choices,
                            metavar=None if choices else dest.rpartition(".")[2].upper(),
                            default=type(default)(raw) if raw is not None else default,
                            help=f"{help_text} [env {env_name}, default {default}]")


def parse_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    defaults = Settings()
    parser = argparse.ArgumentParser(description="Real-time multimodal AI media server (WebRTC).")
    fallback = {}  # list settings: the environment's value, or the default, when no flag is given
    for f in dataclasses.fields(Settings):
        if f.name not in _ENV:
            continue
        env_name, help_text = _ENV[f.name]
        flag = {"ice_hosts": "--ice-host", "api_keys": "--api-key",
                "allowed_origins": "--allowed-origin", "trusted_proxies": "--trusted-proxy",
                "turn_urls": "--turn-url"}.get(f.name, "--" + f.name.replace("_", "-"))
        _add_flag(parser, [flag], f.name, getattr(defaults, f.name), environ.get(env_name), help_text,
                  env_name, fallback)
    for name, pipeline_defaults in defaults.per_pipeline.items():
        group = parser.add_argument_group(f"pipeline {name}")
        for f in dataclasses.fields(pipeline_defaults):
            meta = f.metadata
            env_name = f"MMS_{name}_{f.name}".upper()
            raw = next((environ[e] for e in (env_name, *meta.get("env_aliases", ())) if e in environ), None)
            flags = [f"--{name}-{f.name}".replace("_", "-"), *meta.get("aliases", ())]
            _add_flag(group, flags, f"{name}.{f.name}", getattr(pipeline_defaults, f.name), raw,
                      f"{name}: {meta.get('help', '')}", env_name, fallback, meta.get("choices"))
    values = vars(parser.parse_args(argv))
    for dest, value in fallback.items():
        given = values[dest]
        values[dest] = [v.strip() for item in given for v in item.split(",") if v.strip()] if given else value
    per_pipeline = {name: dataclasses.replace(pipeline_defaults, **{
        f.name: values.pop(f"{name}.{f.name}") for f in dataclasses.fields(pipeline_defaults)})
        for name, pipeline_defaults in defaults.per_pipeline.items()}
    settings = Settings(**values, per_pipeline=per_pipeline)
    for name, pipeline_settings in per_pipeline.items():
        for f in dataclasses.fields(pipeline_settings):
            value, choices = getattr(pipeline_settings, f.name), f.metadata.get("choices")
            if choices and value not in choices:
                parser.error(f"--{name}-{f.name}".replace("_", "-") + f" must be one of {list(choices)}, not {value!r}")
    if settings.device not in ("cpu", "cuda") and not settings.device.startswith("cuda:"):
        parser.error(f"--device must be cpu or cuda, not {settings.device!r}")
    if settings.inference not in ("local", "ray"):
        parser.error(f"--inference must be local or ray, not {settings.inference!r}")
    if settings.inference == "ray" and not settings.ray_address:
        parser.error("--inference ray needs --ray-address HOST:PORT (the Ray head)")
    settings.server_id = settings.server_id or f"{settings.host}:{settings.port}"
    settings.log_level = settings.log_level.upper()
    return settings
