"""Per-address limits: how much one client address may ask of the server.

Checked in a middleware, before anything else is read (no body is decoded, no credential checked):

* sessions at once (WebRTC and WebSocket together): ``--max-sessions-per-address``
  (a ``POST /offer`` or WebSocket upgrade over it answers 429; re-checked when the session opens);
* ``POST /offer`` per second: ``--offers-per-second`` / ``--offer-burst`` (a token bucket);
* every other HTTP request but the page and ``/static/``, per second: ``--requests-per-second``
  / ``--request-burst``.

Over a limit: 429 ``{"error": ...}``, with ``Retry-After`` (seconds until the bucket holds a
token again) for the rates.

The client address is the peer's. Behind a reverse proxy, ``--trusted-proxy ADDR`` (an address or
a network, repeatable) makes the server read ``X-Forwarded-For`` from those peers: the rightmost
address in it that is not itself a trusted proxy is the client. IPv6 clients are counted by /64
(one subscriber usually holds a whole /64). Loopback clients (tests, benches, ``make run``) are
exempt unless ``--limit-loopback``; a loopback peer that sends ``X-Forwarded-For`` without being
a trusted proxy is a proxy nobody declared, and is limited like anyone.

The buckets' memory is bounded: a bucket untouched for ``burst / rate`` seconds is full again,
the same as none, and is dropped; past ``MAX_ADDRESSES`` addresses the least recently seen go.
"""
from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from typing import Callable

from aiohttp import web

MAX_ADDRESSES = 65536  # buckets kept per limit: ~300 bytes each, ~19 MB when full (measured)
CLIENT = web.RequestKey("client", str | None)  # the request's client key; None: exempt from limits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, max(1.0, burst), max(1.0, burst), now

    def take(self, now: float) -> float:
        """Take a token: 0.0, or the seconds until one is there (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Buckets:
    """One token bucket per key, in bounded memory (see the module's docstring)."""

    def __init__(self, rate: float, burst: float, capacity: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.capacity, self.clock = rate, burst, capacity, clock
        self.idle_after = max(1.0, burst) / rate if rate > 0 else math.inf
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0.0 when ``key`` may go on; else the seconds it must wait. A rate of 0: no limit."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        while self._buckets:  # the least recently used first: idle (full again) ones are dropped
            oldest = next(iter(self._buckets.values()))
            if now - oldest.stamp < self.idle_after and len(self._buckets) < self.capacity:
                break
            self._buckets.popitem(last=False)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


def parse_networks(specs: list[str]) -> list[Network]:
    networks = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {spec!r} is not an IP address or network") from None
    return networks


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address((text or "").strip().strip("[]"))
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def client_ip(peer: str | None, forwarded_for: str | None, trusted: list[Network]):
    """The client's address: the peer, or, where the peer is a trusted proxy, the rightmost address
    of ``X-Forwarded-For`` that is not a trusted proxy. None if there is none (a Unix socket)."""
    ip = _ip(peer)
    if ip is None or not forwarded_for or not any(ip in net for net in trusted):
        return ip
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:  # garbage a client wrote: the last good hop is the client
            return ip
        ip = hop_ip
        if not any(ip in net for net in trusted):
            return ip
    return ip


def client_key(ip) -> str:
    """What one client's limits are counted under: its IPv4 address, or its IPv6 /64."""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def too_many(message: str, wait: float | None = None) -> web.Response:
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait is not None else None
    return web.json_response({"error": message}, status=429, headers=headers)


class AddressLimits:
    """The per-address limits of one server. ``sessions_of(key)``: the sessions that client holds."""

    def __init__(self, settings, sessions_of: Callable[[str], int]):
        self.settings = settings
        self.trusted = parse_networks(settings.trusted_proxies)
        self.sessions_of = sessions_of
        self.offers = Buckets(settings.offers_per_second, settings.offer_burst)
        self.requests = Buckets(settings.requests_per_second, settings.request_burst)

    def client(self, request: web.Request) -> str | None:
        """The request's client key, or None when it is exempt (loopback, or no address)."""
        forwarded = request.headers.get("X-Forwarded-For")
        ip = client_ip(request.remote, forwarded, self.trusted)
        if ip is None:
            return None
        if ip.is_loopback and not self.settings.limit_loopback and (
                not forwarded or any(ip in net for net in self.trusted)):
            return None
        return client_key(ip)

    def session_refused(self, client: str | None) -> web.Response | None:
        """429 when ``client`` already holds its sessions; else None."""
        limit = self.settings.max_sessions_per_address
        if client is None or limit <= 0 or self.sessions_of(client) < limit:
            return None
        return too_many(f"too many sessions from your address ({limit} at once); close one first")

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        client = request[CLIENT] = self.client(request)
        if client is None or request.method == "OPTIONS" or request.path == "/" or request.path.startswith("/static/"):
            return await handler(request)
        if (wait := self.requests.take(client)):
            return too_many(f"too many requests from your address (at most {self.settings.requests_per_second:g} "
                            f"a second); retry in {math.ceil(wait)} s", wait)
        opens_session = (request.method == "POST" and request.path == "/offer") or (
            request.headers.get("Upgrade", "").lower() == "websocket")
        if opens_session:
            if (refused := self.session_refused(client)) is not None:
                return refused
        if request.method == "POST" and request.path == "/offer" and (wait := self.offers.take(client)):
            return too_many(f"too many offers from your address (at most {self.settings.offers_per_second:g} "
                            f"a second); retry in {math.ceil(wait)} s", wait)
        return await handler(request)
