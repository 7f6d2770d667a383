"""Media servers behind HAProxy: the configuration, and each server's side of the health checks.

WebRTC media flows straight to the process that answered the offer; HAProxy only carries HTTP:
the page, ``POST /offer``, WebSockets, the REST avatar API. It sends

* a new session (``/offer``, a WebSocket) to the server with most free capacity: ``/health``
  answers 503 when a server is full or draining (HAProxy marks it down for new sessions), and an
  agent-check port answers ``up N%`` (N: the share of free session slots) which HAProxy uses as
  the server's weight;
* everything else of a client to the server that holds its sessions: HAProxy sets the cookie
  ``MMS_SERVER`` to the server's name (= its ``--server-id``); clients without cookies send the
  header ``X-MMS-Server: <server_id>`` (``server_id`` is in every ``/offer`` answer and in
  ``/health``). REST avatar sessions and portraits (``/api/...``) and resume offers stay on their
  server even while it is full.

Media servers behind it take ``--trusted-proxy <HAProxy's address>`` so that their per-address
limits see the client's address (``X-Forwarded-For``).

``python -m server.balancer NAME=HOST:PORT[@AGENT_PORT] ... --port 8080`` prints a configuration
for servers on several machines; ``make cluster`` (server/cluster.py) writes one for its own.
"""
from __future__ import annotations

import argparse
import asyncio
import logging

log = logging.getLogger(__name__)


def agent_reply(sessions: int, max_sessions: int, draining: bool) -> str:
    """HAProxy agent-check answer: the weight is the share of free session slots."""
    if draining:
        return "drain\n"
    free = max(0, max_sessions - sessions)
    return f"up {max(0, min(100, round(100 * free / max(1, max_sessions))))}%\n"


async def serve_agent(server) -> None:
    """Answer HAProxy's agent-checks on ``--agent-port`` until cancelled."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(agent_reply(len(server.sessions), server.settings.max_sessions, server.draining).encode())
            await writer.drain()
        finally:
            writer.close()

    agent = await asyncio.start_server(answer, server.settings.host, server.settings.agent_port)
    try:
        await asyncio.Future()
    finally:
        agent.close()


def haproxy_config(servers: list[tuple[str, str, int, int]], *, bind: str = "127.0.0.1", port: int = 8080,
                   check_interval: str = "1s") -> str:
    """An HAProxy configuration for media servers ``(name, host, port, agent_port)``; ``name`` is
    each server's ``--server-id``. ``agent_port`` 0: no agent-check (health checks only)."""
    lines = [
        "# Media servers behind HAProxy (server/balancer.py generated this).",
        "global",
        "    maxconn 4096",
        "    log stdout format raw local0 notice  # state changes and errors, on its output",
        "defaults",
        "    mode http",
        "    log global",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout tunnel 1h  # WebSockets",
        "    timeout check 5s  # a busy server answers its health check late, not never",
        "frontend mms",
        f"    bind {bind}:{port}",
        "    default_backend media",
        "backend media",
        "    balance roundrobin  # weighted by each server's free capacity (agent-check)",
        "    option httpchk GET /health  # 503 when full or draining: no new sessions there",
        "    http-check expect status 200",
        "    retries 3",
        "    retry-on conn-failure empty-response 502  # a server that just died: the offer goes elsewhere",
        "    option redispatch 1",
        "    option forwardfor  # the client's address, for the servers' per-address limits (--trusted-proxy)",
        "    option http-buffer-request  # to see a resume offer's body",
        "    cookie MMS_SERVER insert indirect nocache httponly",
        "    # REST avatar sessions, portraits, resumed WebRTC sessions: to their server, even when it is full",
        "    force-persist if { path_beg /api/ } || { path /offer } { req.body -m sub \"resume\" }",
        f"    default-server inter {check_interval} fall 3 rise 1",
    ]
    for name, *_ in servers:
        lines.append(f"    use-server {name} if {{ req.hdr(x-mms-server) -m str {name} }}")
    for name, host, server_port, agent_port in servers:
        agent = f" agent-check agent-port {agent_port} agent-inter {check_interval}" if agent_port else ""
        lines.append(f"    server {name} {host}:{server_port} check cookie {name}{agent}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print an HAProxy configuration for media servers.")
    parser.add_argument("servers", nargs="+", metavar="NAME=HOST:PORT[@AGENT_PORT]")
    parser.add_argument("--bind", default="0.0.0.0", help="address HAProxy listens on")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    servers = []
    for item in args.servers:
        name, _, address = item.partition("=")
        address, _, agent = address.partition("@")
        host, _, port = address.rpartition(":")
        if not (name and host and port.isdigit() and (not agent or agent.isdigit())):
            parser.error(f"expected NAME=HOST:PORT[@AGENT_PORT], not {item!r}")
        servers.append((name, host, int(port), int(agent or 0)))
    print(haproxy_config(servers, bind=args.bind, port=args.port), end="")


if __name__ == "__main__":
    main()
