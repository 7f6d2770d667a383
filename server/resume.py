"""Resume tokens: a WebRTC session's client may attach a new peer connection to it after its
connection dropped (``POST /offer`` with ``{"resume": token}``) for ``--resume-seconds``.

A token is ``<session id>.<HMAC-SHA256 of the id>`` under a key made when the server starts: it is
bound to its session, cannot be guessed or forged, and needs no state (a token of an earlier run
of the server is simply unknown). A valid token whose session is gone has expired."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


class ResumeTokens:
    def __init__(self, key: bytes | None = None):
        self._key = key or secrets.token_bytes(32)

    def _sign(self, session_id: str) -> str:
        digest = hmac.new(self._key, session_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, session_id: str) -> str:
        return f"{session_id}.{self._sign(session_id)}"

    def session_id(self, token) -> str | None:
        """The session a token was made for, or None for anything this server did not make."""
        if not isinstance(token, str) or not token.isascii() or token.count(".") != 1 or len(token) > 200:
            return None
        session_id, signature = token.split(".")
        return session_id if hmac.compare_digest(signature, self._sign(session_id)) else None
