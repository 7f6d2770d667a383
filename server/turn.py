"""The ICE servers a client's peer connection uses, with short-lived TURN credentials.

``GET /ice-servers`` (credentials required where authentication is on) answers
``{"ice_servers": [{"urls", "username"?, "credential"?}, ...], "expires_at": unix seconds | null}``:
the ``--stun`` servers, the static ``--turn`` ones, and each ``--turn-url`` with credentials made
from ``--turn-secret`` by the TURN REST API scheme that coturn implements (``use-auth-secret``,
``static-auth-secret=<secret>``): username ``<unix expiry>:<label>``, credential
``base64(HMAC-SHA1(secret, username))``. The TURN server checks them with the same secret and
refuses them after the expiry; nothing is stored on either side.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time


def turn_credentials(secret: str, ttl: float, label: str | None = None, now: float | None = None) -> dict:
    """``{"username", "credential", "expires_at"}`` for ``ttl`` seconds from ``now``."""
    expires_at = int((time.time() if now is None else now) + ttl)
    username = f"{expires_at}:{label or secrets.token_hex(6)}"
    credential = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return {"username": username, "credential": credential, "expires_at": expires_at}


def client_ice_servers(settings, static_servers, now: float | None = None) -> dict:
    """The answer of ``GET /ice-servers``; ``static_servers``: the server's RTCIceServer list."""
    servers = [{k: v for k, v in (("urls", i.urls), ("username", i.username), ("credential", i.credential)) if v}
               for i in static_servers]
    expires_at = None
    if settings.turn_urls and settings.turn_secret:
        creds = turn_credentials(settings.turn_secret, settings.turn_ttl, now=now)
        expires_at = creds.pop("expires_at")
        servers.append({"urls": list(settings.turn_urls), **creds})
    return {"ice_servers": servers, "expires_at": expires_at}
