"""The server: its HTTP routes (the page, ``POST /offer``, ``/ws``, ``/health``, ``/metrics``,
the pipelines' own routes), its sessions over every transport, and the models it owns."""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path

from aiohttp import web
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCSessionDescription

from inference import ModelRegistry
from pipelines import PIPELINES
from pipelines.base import OptionError
from server.auth import GRANT, AuthError, Security
from server.config import Settings
from server.ice import restrict_ice_hosts
from server.limits import CLIENT, AddressLimits
from server.load import RETRY_AFTER, LoadMonitor, process_figures
from server.metrics import Metrics
from server.resume import ResumeTokens
from server import recording
from server.rooms import RoomError, RoomRegistry, new_room_name, participant_options
from server.transports.session import Session
from server.transports.webrtc import WebRTCSession
from server.turn import client_ice_servers
from server.transports.websocket import MAX_FRAME_BYTES, SocketSession, pipelines_start, single_start

log = logging.getLogger(__name__)
# The page: static/ of a checkout, or server/static/ of an installed copy (pyproject.toml).
STATIC = next((d for d in (Path(__file__).resolve().parent / "static",
                           Path(__file__).resolve().parent.parent / "static") if (d / "index.html").is_file()),
              Path(__file__).resolve().parent.parent / "static")


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error answers JSON ``{"error": ...}``, aiohttp's own (404, 405, 413) included; an
    unexpected exception is logged and answers 500 without its text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text.removeprefix(f"{exc.status}: ") if exc.text else exc.reason
        return web.json_response({"error": message}, status=exc.status,
                                 headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal server error")


def malformed_sdp(sdp: str) -> str | None:
    if not sdp.lstrip().startswith("v=0") or "\nm=" not in sdp:
        return "malformed SDP: expected a session description with media sections"
    return None


def ghost_sdp(sdp: str) -> str | None:
    if "\na=fingerprint:" not in sdp:
        return "malformed SDP: no DTLS fingerprint (a=fingerprint), so it can never connect"
    return None


def ice_servers(settings: Settings) -> list[RTCIceServer]:
    servers = [RTCIceServer(urls=url) for url in settings.stun]
    for spec in settings.turn:  # turn:USER:PASSWORD@HOST:PORT
        try:
            scheme_creds, hostport = spec.rsplit("@", 1)
            scheme, user, password = scheme_creds.split(":", 2)
        except ValueError:
            raise ValueError(f"TURN server {spec!r} is not turn:USER:PASSWORD@HOST:PORT") from None
        servers.append(RTCIceServer(urls=f"{scheme}:{hostport}", username=user, credential=password))
    return servers


class MediaServer:
    def __init__(self, settings: Settings, freeze_gc: bool = False):
        self.settings = settings
        # A server that is its process's whole life (the command) freezes what it loaded; one of
        # many in a process (tests) does not: what a frozen object holds is never collected.
        self.freeze_gc = freeze_gc
        self.metrics = Metrics()
        self.models = ModelRegistry(settings, self.metrics)
        self.sessions: dict[str, Session] = {}  # every transport's, counted once against max_sessions
        self.load = LoadMonitor(settings, self.metrics, self.sessions.values)
        self.started = time.monotonic()
        self.rtc_configuration = RTCConfiguration(iceServers=ice_servers(settings))
        # A room's offer has several m-lines of a kind; aiortc's default (balanced) bundling then
        # leaves the second video one on a transport that never connects. Browsers always bundle.
        self.room_rtc_configuration = RTCConfiguration(iceServers=self.rtc_configuration.iceServers,
                                                       bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.security = Security(settings)  # raises ValueError: a public address without auth
        self.limits = AddressLimits(settings, self._sessions_of)  # raises ValueError: a bad --trusted-proxy
        if bool(settings.turn_urls) != bool(settings.turn_secret):
            raise ValueError("--turn-url and --turn-secret go together (short-lived TURN credentials)")
        self.resume_tokens = ResumeTokens()
        self.rooms = RoomRegistry(settings)
        self.metrics.count_rooms(self.rooms.counts)
        if settings.room_size < 1:
            raise ValueError(f"--room-size must be at least 1, not {settings.room_size}")
        restrict_ice_hosts(settings.ice_hosts)
        unknown = set(settings.pipelines) - set(PIPELINES)
        if unknown:
            raise ValueError(f"unknown default pipeline(s) {sorted(unknown)}; valid: {sorted(PIPELINES)}")
        unknown = set(settings.preload) - set(PIPELINES) - {"all"}
        if unknown:
            raise ValueError(f"unknown pipeline(s) to preload {sorted(unknown)}; valid: all, {sorted(PIPELINES)}")
        self._background: list[asyncio.Task] = []
        self.ready = False  # the models to preload are loaded (or failed, and sessions will say so)
        self.draining = False  # SIGTERM: new sessions are refused while the current ones finish
        self.server_id = settings.server_id or f"{settings.host}:{settings.port}"  # behind a balancer

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes,
                              middlewares=[json_errors, self.limits.middleware, self.security.middleware])
        app.router.add_get("/", self.index)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/rooms", self.new_room)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/ice-servers", self.ice_servers_endpoint)
        app.router.add_get("/ws", self.socket_handler(pipelines_start(PIPELINES)))
        app.router.add_static("/static", STATIC)
        app.router.add_routes(recording.routes(self))
        for cls in PIPELINES.values():
            app.router.add_routes([web.RouteDef(r.method, r.path, self._for_pipeline(cls.name, r.handler), r.kwargs)
                                   for r in cls.routes(self)])
            for path, read_options in cls.socket_endpoints().items():
                app.router.add_get(path, self.socket_handler(single_start(cls, read_options)))
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app) -> None:
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self.metrics.monitor_loop_lag(), name="loop-lag"))
        self._background.append(loop.create_task(self.load.run(), name="load"))
        # Load models now, so the first visitor doesn't wait for them: one pipeline after another
        # (loading in parallel would only fight over the GIL).
        self._background.append(loop.create_task(self.preload(), name="preload"))
        if self.settings.agent_port:  # HAProxy's agent-check: this server's free capacity (server/balancer.py)
            from server.balancer import serve_agent
            self._background.append(loop.create_task(serve_agent(self), name="balancer-agent"))

    async def preload(self) -> None:
        preload = self.settings.preload or self.settings.pipelines
        for name in (list(PIPELINES) if "all" in preload else preload):
            try:
                await self.models.shared(PIPELINES[name])
            except Exception:  # sessions will retry and report the error on their data channel
                log.exception("could not load the models of pipeline %s", name)
        if self.freeze_gc:
            # What exists now (modules, models) lives as long as the server: out of the cyclic
            # collector's sight, its full collections walk only what sessions make. They walked
            # everything imported: 2.0% of the CPU samples of a server with 6 gender sessions
            # (perf), 0.1% after. Garbage first, so that none of it is kept for good.
            gc.collect()
            gc.freeze()
        self.ready = True

    async def _on_shutdown(self, app) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.models.close()

    # --- sessions, whatever their transport ---------------------------------------------------------
    def full(self, client: str | None = None) -> web.Response | None:
        if self.draining:
            self.load.refused.labels("draining").inc()
            return web.json_response({"error": "server is shutting down; try again shortly"}, status=503,
                                     headers={"Retry-After": str(int(self.settings.drain_seconds) + 1)})
        if len(self.sessions) >= self.settings.max_sessions:
            self.load.refused.labels("full").inc()
            return error(503, f"server is full ({self.settings.max_sessions} sessions)")
        if self.load.overloaded():  # before the sessions it has degrade (server/load.py)
            self.load.refused.labels("load").inc()
            return web.json_response({"error": f"server is busy (load {self.load.load:.2f}); try again shortly"},
                                     status=503, headers={"Retry-After": str(RETRY_AFTER)})
        return self.limits.session_refused(client)

    def _sessions_of(self, client: str) -> int:
        return sum(s.client == client for s in self.sessions.values())

    def _opened(self, session: Session, client: str | None = None) -> None:
        session.client = client  # counted against --max-sessions-per-address
        if self.settings.max_session_seconds > 0:
            session.spawn(session.expire(self.settings.max_session_seconds), "max-duration")
        self.sessions[session.id] = session
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.sessions_total.inc()

    def _closed(self, session: Session) -> None:
        if getattr(session, "room", None) is not None:
            session.room.leave(session)
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.sessions.set(len(self.sessions))

    @staticmethod
    def _for_pipeline(name: str, handler):
        """A pipeline's own route: the caller's credentials must allow that pipeline."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            grant = request.get(GRANT)
            if grant is not None:
                try:
                    grant.check([name])
                except AuthError as exc:
                    return error(exc.status, exc.message)
            return await handler(request)
        return guarded

    def socket_handler(self, start):
        async def handler(request: web.Request) -> web.StreamResponse:
            if (full := self.full(request.get(CLIENT))) is not None:
                return full
            ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=20)
            session = SocketSession(self.settings, self.metrics, self.models, ws, on_close=self._closed,
                                    grant=request.get(GRANT), authenticate=self.security.grant)
            self._opened(session, request.get(CLIENT))  # counted before the handshake's await: concurrent ones see it
            try:
                await ws.prepare(request)
                await session.serve(start)
            finally:
                await session.close()
            return ws
        return handler

    # --- routes ----------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def drain(self) -> None:
        """Graceful shutdown: refuse new sessions (``/health`` answers 503), tell every session
        ``shutdown`` with ``retry_after``, and wait up to ``--drain-seconds`` for them to leave;
        whatever is left is closed by the shutdown that follows."""
        self.draining = True
        seconds = self.settings.drain_seconds
        log.info("draining %d session(s) for up to %.0f s", len(self.sessions), seconds)
        for session in list(self.sessions.values()):
            session.emit("shutdown", reason="drain", retry_after=int(seconds) + 1, closing_in=seconds)
        deadline = time.monotonic() + seconds
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def health(self, request: web.Request) -> web.Response:
        # 503 tells a balancer to send no new sessions here (server/balancer.py)
        status, code = (("draining", 503) if self.draining else
                        ("full", 503) if len(self.sessions) >= self.settings.max_sessions else ("ok", 200))
        if status == "ok" and self.load.overloaded():
            status, code = "overloaded", 503
        load = round(self.load.load, 3)
        if self.security.enabled and request.get(GRANT) is None:  # public: only what a balancer needs
            return web.json_response({"status": status, "ready": self.ready, "sessions": len(self.sessions),
                                      "max_sessions": self.settings.max_sessions, "load": load,
                                      "server_id": self.server_id,
                                      "auth": "required"}, status=code)
        return web.json_response(status=code, data={
            "status": status,
            "server_id": self.server_id,
            "inference": self.models.describe(),  # where the models run: local, or which in Ray
            "ready": self.ready,  # --preload finished: the first sessions will not wait for models
            "sessions": len(self.sessions),
            "sessions_by_transport": {t: sum(s.transport == t for s in self.sessions.values())
                                      for t in ("webrtc", "websocket")},
            "max_sessions": self.settings.max_sessions,
            **self.rooms.counts(),  # rooms, room_participants (server/rooms.py)
            "uptime": round(time.monotonic() - self.started, 1),
            "device": self.settings.device,
            "pipelines": {name: {"description": cls.description, "defaults": cls.defaults}
                          for name, cls in PIPELINES.items()},
            "default_pipelines": self.settings.pipelines,
            "event_loop_lag_ms": self.metrics.lag_percentiles_ms(),
            "load": load,
            "load_detail": self.load.report(),  # its parts and readings (server/load.py)
            "process": process_figures(),  # what a leak would grow (bench/soak.py watches it)
        })

    async def ice_servers_endpoint(self, request: web.Request) -> web.Response:
        """The STUN/TURN servers for a client's peer connection, TURN with short-lived credentials
        (server/turn.py); never public where authentication is on."""
        return web.json_response(client_ice_servers(self.settings, self.rtc_configuration.iceServers),
                                 headers={"Cache-Control": "no-store"})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"body too large (max {self.settings.max_body_bytes} bytes)")
        except (ValueError, UnicodeDecodeError, LookupError, RecursionError):
            return error(400, "body is not valid JSON (or is nested too deeply, or in an unknown charset)")
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            return error(400, 'expected {"sdp": "...", "type": "offer"}')
        if "resume" in body:
            return await self.resume(request, body)
        names = body.get("pipelines", self.settings.pipelines)
        options = body.get("options", {})
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return error(400, '"pipelines" must be a list of names')
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            return error(400, '"options" must map pipeline names to objects')
        unknown = [n for n in names + list(options) if n not in PIPELINES]
        if unknown:
            return error(400, f"unknown pipeline(s) {unknown}; valid: {sorted(PIPELINES)}")
        try:
            request[GRANT].check(names)
            request[GRANT].check_room(body.get("room"))
        except AuthError as exc:
            return error(exc.status, exc.message)
        record = body.get("record", False)
        if not isinstance(record, bool):
            return error(400, '"record" must be true or false')
        if record and not self.settings.record_dir:
            return error(400, "this server does not record sessions (start it with --record-dir DIR)")
        if "room" in body:
            try:
                self.rooms.check(body["room"])
            except RoomError as exc:
                return error(exc.status, exc.message)
        if (problem := malformed_sdp(body["sdp"])) is not None:
            return error(400, problem)
        if (full := self.full(request.get(CLIENT))) is not None:
            return full

        session = WebRTCSession(self.settings, self.metrics, self.models,
                                self.room_rtc_configuration if "room" in body else self.rtc_configuration,
                                on_close=self._closed)
        try:
            session.add_pipelines({n: (PIPELINES[n], options.get(n, {})) for n in dict.fromkeys(names)})
        except OptionError as exc:
            await session.close()
            return error(400, str(exc))
        if (problem := ghost_sdp(body["sdp"])) is not None:  # it could never connect, and would hold a slot
            await session.close()
            return error(400, problem)
        if "room" in body:
            try:
                translation = session.pipelines.get("translation")
                self.rooms.join(body["room"], session,
                                participant_options(body, translation.options if translation else None))
            except RoomError as exc:
                await session.close()
                return error(exc.status, exc.message)
        if self.settings.resume_seconds > 0:
            session.resume_token = self.resume_tokens.token(session.id)
        self._opened(session, request.get(CLIENT))
        if record:
            session.record(recording.Recorder(
                Path(self.settings.record_dir), session.id, list(session.pipelines),
                int(self.settings.record_max_mb * 1024 * 1024), self.settings.record_max_seconds, session.emit))
        try:
            answer = await session.answer(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        except Exception as exc:  # aiortc raises ValueError & co. for SDP it cannot use
            log.info("bad offer: %s", exc)
            await session.close()
            return error(400, f"malformed SDP: {exc}")
        log.info("session %s started with pipelines %s", session.id, list(session.pipelines))
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session.id,
                                  "server_id": self.server_id})

    async def new_room(self, request: web.Request) -> web.Response:
        """``POST /rooms``: an unguessable room name for a share link (the room itself is made
        by its first offer, and vanishes with its last participant)."""
        return web.json_response({"room": new_room_name(), "size": self.settings.room_size})

    async def resume(self, request: web.Request, body: dict) -> web.Response:
        """``POST /offer`` with ``{"resume": token}``: a new peer connection for a WebRTC session
        whose connection dropped (``ready`` gave the token); the same ``session_id`` answers."""
        session_id = self.resume_tokens.session_id(body["resume"]) if self.settings.resume_seconds > 0 else None
        if session_id is None:
            return error(404, "unknown resume token" if self.settings.resume_seconds > 0
                         else "this server does not resume sessions (--resume-seconds 0)")
        session = self.sessions.get(session_id)
        if not isinstance(session, WebRTCSession) or session.closing:
            return error(410, "the session has ended (closed, or not resumed within "
                         f"{self.settings.resume_seconds:g} s); start a new one")
        try:
            request[GRANT].check(list(session.pipelines))
        except AuthError as exc:
            return error(exc.status, exc.message)
        if (problem := malformed_sdp(body["sdp"]) or ghost_sdp(body["sdp"])) is not None:
            return error(400, problem)
        try:
            answer = await session.resume(RTCSessionDescription(sdp=body["sdp"], type="offer"))
        except Exception as exc:  # aiortc raises ValueError & co. for SDP it cannot use
            log.info("bad resume offer: %s", exc)
            return error(400, f"malformed SDP: {exc}")
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session.id,
                                  "server_id": self.server_id})
