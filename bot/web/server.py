"""The bot's HTTP listener: one aiohttp server in the bot's event loop, for every document.

The documents are a mapping of path -> aiohttp handler (`Bot.http_routes`): /metrics, the status
page at /, and whatever comes next is one more entry there. Handlers run in the event loop, so
they read the bot's state directly; anything slow (the disk) they hand to a worker thread.

With a token (`[metrics] token_file`), every request must carry it, as a bearer token
(`Authorization: Bearer TOKEN`, what Prometheus sends with `authorization.credentials_file`) or
as the password of basic auth, any user name (what a browser asks for). A request without it gets
a 401 that says nothing else: no figure, no path known or unknown. The exception: the `public`
paths, documents published for anyone (NodeInfo, when the admin turns it on).

What strangers can cost (descriptors, time, log lines) is bounded by `web_connections`: a cap on
connections well below the descriptor budget, header and keep-alive timeouts, aiohttp's logger
quiet for malformed requests, accept failures logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import BasicAuth, hdrs, web
from aiohttp.log import server_logger

from .connections import (
    BACKLOG,
    AcceptFailures,
    ConnectionPool,
    HttpStats,
    Limits,
    ServerLog,
    connection_cap,
    descriptor_budget,
)

log = logging.getLogger("bot.web")  # its name from before the layers: admins grep it

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REALM = "xmpp-active-users"
UNAUTHORIZED_TEXT = "401 Unauthorized: this listener needs its token ([metrics] token_file).\n"
CLOSE_TIMEOUT = 2.0  # seconds a request in progress may take to finish at shutdown


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (bearer, or basic auth's password)."""
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        given = credentials.strip()
    elif scheme.lower() == "basic":
        try:
            given = BasicAuth.decode(header).password
        except ValueError:
            return False
    else:
        return False
    # Digests of equal length: the comparison's time tells nothing about the token.
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(token.encode()).digest()
    )


def unauthorized() -> web.Response:
    return web.Response(
        status=401,
        text=UNAUTHORIZED_TEXT,
        headers={
            hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}", charset="UTF-8"',
            hdrs.CACHE_CONTROL: "no-store",
        },
    )


class WebServer:
    """Serves `routes` (GET, and HEAD) on host:port; port 0 takes any free port (`port` says
    which once started)."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Handler],
        token: str | None = None,
        public: frozenset[str] = frozenset(),
        limits: Limits | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.budget = descriptor_budget()
        self.limits = limits or Limits(max_connections=connection_cap(self.budget))
        self._pool: ConnectionPool | None = None
        self._listener: asyncio.Server | None = None
        self._accept_failures: AcceptFailures | None = None
        self._server_log = ServerLog(server_logger)
        self._token = token
        self._public = public & set(routes)  # served without the token
        self.observers: list[Callable[[str, int], None]] = []  # told (path, status) of answers
        self._internal_errors: Counter[tuple[str, str]] = Counter()
        app = web.Application(middlewares=[self._guard])
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        # No access log: a scrape every few seconds, or anyone knocking, must not fill the log.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=CLOSE_TIMEOUT,
            logger=self._server_log,
            keepalive_timeout=self.limits.idle_timeout,
            lingering_time=self.limits.linger,
        )

    async def start(self) -> None:
        """Listen; OSError when the address cannot be taken (in use, not on this machine)."""
        loop = asyncio.get_running_loop()
        await self._runner.setup()
        assert self._runner.server is not None
        self._pool = ConnectionPool(self.limits, loop)
        try:
            self._listener = await loop.create_server(
                self._pool.protocol(self._runner.server), self.host, self.port, backlog=BACKLOG
            )
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = self._listener.sockets[0].getsockname()[1]
        self._accept_failures = AcceptFailures(loop, self.budget)
        self._accept_failures.install()

    def stats(self) -> HttpStats:
        pool = self._pool
        return HttpStats(
            open_connections=pool.open_connections if pool else 0,
            max_connections=self.limits.max_connections,
            dropped=dict(pool.dropped) if pool else {},
            client_errors=dict(self._server_log.client_errors),
            accept_failures=self._accept_failures.count if self._accept_failures else 0,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()  # accept nothing more
        if self._pool is not None:
            self._pool.close()
        await self._runner.cleanup()
        if self._accept_failures is not None:
            self._accept_failures.uninstall()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authentication first, before any handler runs (aiohttp's 404 and 405 included), then
        the handler; observers hear of every answer (path, status)."""
        pool = self._pool
        if pool is not None:
            pool.request_started(request.transport)  # busy: not to be closed for a newcomer
        try:
            response = await self._answer(request, handler)
        except web.HTTPException as exc:  # 404, 405: aiohttp's own answers
            self._notify(request.path, exc.status)
            raise
        finally:
            if pool is not None:
                pool.request_ended(request.transport)
        self._notify(request.path, response.status)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The handler's answer; a fault of a handler is logged once per path and kind, and
        answered with a plain 500."""
        if (
            self._token is not None
            and request.path not in self._public
            and not authorized(request.headers.get(hdrs.AUTHORIZATION), self._token)
        ):
            return unauthorized()
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:  # our fault: one log line with the traceback, not one per hit
            signature = (request.path, type(exc).__name__)
            self._internal_errors[signature] += 1
            if self._internal_errors[signature] == 1:
                log.error("Internal error serving %s (logged once)", request.path, exc_info=exc)
            return web.Response(status=500, text="500 Internal Server Error: see the bot's log.\n")
        if isinstance(response, web.Response) and (response.content_length or 0) > 1024:
            response.enable_compression()  # only when the client accepts it (gzip, deflate)
        return response

    def _notify(self, path: str, status: int) -> None:
        for observer in self.observers:
            observer(path, status)
