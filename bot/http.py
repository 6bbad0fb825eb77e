"""The HTTP server every ``cardbot run`` serves its routes on (WeChat pushes, the Telegram
webhook), with the edges an open port needs (issue 12, item 5):

- **a deadline for the request head**: a connection that has not sent a whole request line and
  headers within ``header_seconds`` of opening (or of its previous response) is closed — so a
  slowloris client holding connections open with a byte now and then loses them. aiohttp's
  keep-alive timer does this: in aiohttp 3.14.5 (the lowest version allowed, see
  pyproject.toml) it starts when the connection is made — the change of aiohttp PR #13681 —
  and closes the connection while no complete request has arrived, so ``keepalive_timeout``
  is the header deadline; the slowloris test checks that this holds;
- **a deadline for the body**: a middleware reads the body within ``body_seconds`` before the
  handler runs (408 and the connection closed otherwise), under aiohttp's ``client_max_size``
  (413 beyond it); handlers then read it from memory;
- **a cap on open connections**: beyond ``max_connections`` a new connection is answered 503
  and closed at once, so the process's file descriptors and memory stay bounded; the
  operating system's backlog holds what arrives faster than it is accepted.

Tests: tests/security/test_http_edges.py (a slowloris against a small injected deadline).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
    b"Retry-After: 1\r\n\r\n"
)


@dataclass(frozen=True)
class HttpLimits:
    """How long a client may take and how many may be connected at once."""

    header_seconds: float = 10.0
    body_seconds: float = 10.0
    max_connections: int = 256
    max_body_bytes: int = 1024 * 1024


def _body_deadline(seconds: float) -> Middleware:
    @web.middleware
    async def read_body_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(seconds):
                    await request.read()  # kept by the request: handlers read it from memory
            except TimeoutError:
                log.info(
                    "HTTP %s %s: body not received in %.0f s",
                    request.method,
                    request.path,
                    seconds,
                )
                return web.Response(
                    status=408, text="request body too slow", headers={"Connection": "close"}
                )
        return await handler(request)

    return read_body_in_time


class _Busy(asyncio.Protocol):
    """What a connection over the cap gets: 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY)
        transport.close()


class HttpServer:
    """``routes`` served on one port within ``limits``."""

    def __init__(self, routes: Sequence[web.RouteDef], limits: HttpLimits | None = None) -> None:
        self.limits = limits or HttpLimits()
        self.app = web.Application(
            client_max_size=self.limits.max_body_bytes,
            middlewares=[_body_deadline(self.limits.body_seconds)],
        )
        self.app.add_routes(routes)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=self.limits.header_seconds,
            shutdown_timeout=5.0,
        )
        self._server: asyncio.Server | None = None
        self.refused = 0  # connections turned away at the cap

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0)."""
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None
        cap = self.limits.max_connections

        def protocol() -> asyncio.Protocol:
            if len(handlers.connections) >= cap:
                self.refused += 1
                if self.refused == 1 or self.refused % 100 == 0:
                    log.warning(
                        "HTTP: %d connections open, refusing more (%d so far)", cap, self.refused
                    )
                return _Busy()
            return handlers()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, host, port, backlog=128)
        bound = int(self._server.sockets[0].getsockname()[1])
        return bound

    async def close(self) -> None:
        """Stop accepting, let requests in hand finish (a few seconds), release everything."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._runner.cleanup()


__all__ = ["HttpLimits", "HttpServer"]
