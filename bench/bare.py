"""The baseline: an aiohttp app that reads the body and answers 200, nothing else.

``python -m bench.bare PORT`` serves it on 127.0.0.1 the way webhook-ingest
serves itself: one process, ``asyncio.run`` with the default event loop policy,
an ``AppRunner`` without access log, and the same client body limit. It answers
with the same JSON ingest sends for an accepted IPN, so both move the same bytes.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

ACCEPTED = b'{"status": "accepted"}'


async def ipn(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ACCEPTED, content_type="application/json")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(body=b'{"status": "ok"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/webhooks/nowpayments/ipn", ipn)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(create_app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
