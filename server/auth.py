"""Who may use the server, and from which web pages.

Authentication is off on loopback with nothing configured (``make run`` stays two commands).
Once an API key or a token secret is configured it is required everywhere, loopback included:

* API keys (``--api-key``, ``--api-key-file``, ``MMS_API_KEYS``): for server-to-server use; a key
  may use every pipeline.
* Signed session tokens (``--auth-secret`` / ``MMS_AUTH_SECRET``): an app's backend mints one per
  user with an expiry and the pipelines it allows, and hands it to the page:

      python -m server.auth --pipelines gender,translation --ttl 600     # secret from MMS_AUTH_SECRET

  A token is ``v1.<payload>.<signature>``: base64url JSON ``{"exp": unix seconds, "pipelines":
  [...] (absent: all), "room": name (absent: any room, or none)}`` and its HMAC-SHA256 under the
  secret. A token with a room joins that room only (``--room``).

Clients send ``Authorization: Bearer <key or token>``; where a browser cannot set headers
(WebSockets, a plain link) ``?token=<key or token>`` in the URL, or ``"token"`` in a WebSocket's
first message, does the same. 401: no or bad credentials; 403: good credentials, not allowed.

Origins: browsers send ``Origin``. ``POST`` requests and WebSocket upgrades from a page of another
origin than the server's own are refused with 403 unless ``--allowed-origin`` lists it; only
allowed origins get CORS headers. Clients that are not browsers send no ``Origin`` and are judged
by their credentials alone.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ipaddress
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from aiohttp import web

PUBLIC_PATHS = ("/", "/health")  # and everything under /static/
CORS_HEADERS = {"Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600"}


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Grant:
    """What one credential allows: every pipeline (``pipelines`` None) or the ones listed; any
    room (``room`` None) or only that one."""

    pipelines: frozenset[str] | None = None
    room: str | None = None

    def check(self, names: Iterable[str]) -> None:
        refused = sorted(set(names) - self.pipelines) if self.pipelines is not None else []
        if refused:
            raise AuthError(403, f"this token does not allow pipeline(s) {refused}")

    def check_room(self, room: str | None) -> None:
        if self.room is not None and room != self.room:
            raise AuthError(403, "this token allows only its own room")


OPEN = Grant()  # nothing configured: everything allowed
# A request's grant: None on public paths without credentials, and on a WebSocket that signs in
# with its first message.
GRANT = web.RequestKey("grant", Grant | None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_token(secret: str, ttl: float, pipelines: Iterable[str] | None = None, now: float | None = None,
               room: str | None = None) -> str:
    payload = {"exp": int((time.time() if now is None else now) + ttl)}
    if pipelines is not None:
        payload["pipelines"] = sorted(pipelines)
    if room is not None:
        payload["room"] = room
    body = "v1." + _b64(json.dumps(payload, separators=(",", ":")).encode())
    return body + "." + _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def verify_token(secret: str, token: str, now: float | None = None) -> Grant:
    try:
        version, payload_b64, signature = token.split(".")
        expected = hmac.new(secret.encode(), f"{version}.{payload_b64}".encode(), hashlib.sha256).digest()
        if version != "v1" or not hmac.compare_digest(_unb64(signature), expected):
            raise ValueError
        payload = json.loads(_unb64(payload_b64))
        exp, pipelines, room = payload["exp"], payload.get("pipelines"), payload.get("room")
        if not isinstance(exp, int) or (pipelines is not None and not (
                isinstance(pipelines, list) and all(isinstance(p, str) for p in pipelines))) or \
                not isinstance(room, (str, type(None))):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise AuthError(401, "invalid token") from None
    if exp < (time.time() if now is None else now):
        raise AuthError(401, "token expired")
    return Grant(None if pipelines is None else frozenset(pipelines), room)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Security:
    def __init__(self, settings):
        self.keys = set(settings.api_keys)
        if settings.api_key_file:
            try:
                lines = Path(settings.api_key_file).read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read --api-key-file: {exc}") from None
            self.keys |= {line.strip() for line in lines if line.strip() and not line.startswith("#")}
        self.secret = settings.auth_secret
        self.allowed_origins = {o.rstrip("/") for o in settings.allowed_origins}
        if not self.enabled and not is_loopback(settings.host) and not settings.insecure:
            raise ValueError(
                f"listening on {settings.host}, a non-loopback address, needs authentication: give "
                "--api-key KEY (or --api-key-file, MMS_API_KEYS) and/or --auth-secret SECRET "
                "(MMS_AUTH_SECRET) for signed session tokens, or --insecure to serve anyone who can "
                "reach the port (README, Deploying)")

    @property
    def enabled(self) -> bool:
        return bool(self.keys or self.secret)

    # --- credentials -------------------------------------------------------------------------
    def grant(self, credential: str | None) -> Grant:
        """What ``credential`` allows; raises AuthError (401) when it is missing or bad."""
        if not self.enabled:
            return OPEN
        if not credential:
            raise AuthError(401, "authentication required: send Authorization: Bearer <key or token>")
        if any(hmac.compare_digest(credential, key) for key in self.keys):
            return OPEN
        if self.secret and credential.count(".") == 2:
            return verify_token(self.secret, credential)
        raise AuthError(401, "invalid API key or token")

    @staticmethod
    def credential(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.query.get("token") or None

    # --- origins -----------------------------------------------------------------------------
    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser page
        parts = urlsplit(origin)
        return parts.netloc == request.host or origin.rstrip("/") in self.allowed_origins

    def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/") in self.allowed_origins and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    # --- the middleware ----------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler):
        public = request.path in PUBLIC_PATHS or request.path.startswith("/static/")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method == "OPTIONS":
            if not request.headers.get("Origin", "").rstrip("/") in self.allowed_origins:
                return web.json_response({"error": "origin not allowed"}, status=403)
            response = web.Response(status=204, headers=CORS_HEADERS)
            self._cors(request, response)
            return response
        if (request.method not in ("GET", "HEAD") or upgrade) and not self.origin_allowed(request):
            return web.json_response({"error": f"origin {request.headers['Origin']} is not allowed"}, status=403)
        credential = self.credential(request)
        try:
            if not self.enabled:
                request[GRANT] = OPEN
            else:  # None: a public page, or a WebSocket that sends its token in its first message
                request[GRANT] = self.grant(credential) if credential or not (public or upgrade) else None
        except AuthError as exc:
            return web.json_response({"error": exc.message}, status=exc.status,
                                     headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
        response = await handler(request)
        self._cors(request, response)
        return response


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.auth",
                                     description="Mint a signed session token for the media server.")
    parser.add_argument("--secret", default=os.environ.get("MMS_AUTH_SECRET"),
                        help="the server's --auth-secret (default: env MMS_AUTH_SECRET)")
    parser.add_argument("--ttl", type=float, default=600, help="seconds the token is valid (600)")
    parser.add_argument("--pipelines", help="comma-separated pipelines it allows (default: all)")
    parser.add_argument("--room", help="the one room it may join (default: any)")
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("no secret: give --secret or set MMS_AUTH_SECRET")
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()] if args.pipelines else None
    print(mint_token(args.secret, args.ttl, pipelines, room=args.room))
    return 0


if __name__ == "__main__":
    sys.exit(main())
