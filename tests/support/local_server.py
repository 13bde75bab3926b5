"""A provider's HTTP API played on 127.0.0.1: the part every fake shares."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake saw it: header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: str
    json: Any


class LocalHttpServer:
    """An aiohttp app on a free port of 127.0.0.1, started and stopped by tests.

    Use ``async with Fake() as fake:`` or ``await fake.start()`` /
    ``await fake.stop()``; ``base_url`` is where it listens. Subclasses add
    their routes in ``add_routes`` and may wait on ``stopping`` in a handler
    that hangs, so that stopping wakes it.
    """

    name = "fake server"

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``; only once started."""
        if self._base_url is None:
            raise RuntimeError(f"the {self.name} is not started")
        return self._base_url

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def record(
        self, request: web.Request, parse_float: Callable[[str], Any] = float
    ) -> ReceivedRequest:
        """Keep the request in ``requests``; its JSON is None when it has none."""
        body = await request.text()
        try:
            parsed: Any = json.loads(body, parse_float=parse_float)
        except ValueError:
            parsed = None
        received = ReceivedRequest(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            json=parsed,
        )
        self.requests.append(received)
        return received

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1 and return the base URL."""
        app = web.Application()
        self.add_routes(app)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        self._base_url = f"http://127.0.0.1:{port}"
        return self._base_url

    async def stop(self) -> None:
        """Wake any hanging request and stop listening."""
        self.stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
