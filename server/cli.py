"""The server's command: ``mms-server [--help]`` (``python webrtc_server.py`` in a checkout) serves
the page and the WebRTC endpoint.

SIGINT stops at once (sessions are closed cleanly); SIGTERM drains first: new sessions are
refused, the current ones are told ``shutdown`` and get ``--drain-seconds`` to finish. A second
signal stops at once.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from server.app import MediaServer
from server.config import parse_settings
from server.tls import server_context


async def serve(server: MediaServer, host: str, port: int, ssl_context=None) -> None:
    runner = web.AppRunner(server.app())
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    print(f"Serving on {'https' if ssl_context else 'http'}://{host}:{port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    draining: list[asyncio.Task] = []

    def on_sigterm() -> None:
        if draining:  # a second signal: stop now
            stop.set()
            return
        draining.append(loop.create_task(server.drain()))
        draining[0].add_done_callback(lambda _: stop.set())

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await stop.wait()
    finally:
        for task in draining:
            task.cancel()
        await runner.cleanup()  # closes the sessions left, stops the models
        logging.getLogger(__name__).info("stopped")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = MediaServer(settings, freeze_gc=True)
        ssl_context = server_context(settings)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    asyncio.run(serve(server, settings.host, settings.port, ssl_context))


if __name__ == "__main__":
    main()
