"""What strangers at the HTTP port can cost, bounded: descriptors, time and log lines.

Every connection the listener accepts passes through `ConnectionPool`, whose protocol wraps
aiohttp's own. The pool holds at most `Limits.max_connections` at once, well below the process's
descriptor budget (RLIMIT_NOFILE), so that the XMPP link, the store and reconnections always
find a descriptor. When it is full, a new connection takes the place of the oldest idle one
(no request being answered) of the source address holding the most connections: a flood from
one address only ever pushes out its own connections, and a scraper from another address keeps
its place. When no connection is idle, the new one is closed at once (a reset: its descriptor is
free immediately, nothing waits in the backlog). A connection must bring a complete request
within `header_timeout` seconds of connecting; between requests, aiohttp's keep-alive timeout
(`idle_timeout`) applies.

aiohttp's server logger gets `ServerLog`: a malformed request is counted, never logged (aiohttp
logs each one as an ERROR with a traceback and the escaped request line); anything else is
logged once per kind. `AcceptFailures` does the same for asyncio's "socket.accept() out of
system resource", at most one line a minute.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger("bot.web_connections")  # its name from before the layers: admins grep it

# The descriptors kept away from HTTP: the XMPP link and its reconnections, the store (SQLite,
# its write-ahead log, the read connections of worker threads), the log, Python's own; and one
# accept burst beyond the cap (asyncio accepts up to BACKLOG connections per loop turn before
# the pool sees them).
BACKLOG = 128
MAX_CONNECTIONS = 1024  # the most the listener ever holds, whatever the budget
MIN_CONNECTIONS = 8
UNLIMITED_BUDGET = 65_536  # what RLIM_INFINITY counts as


def descriptor_budget() -> int:
    """The process's soft limit on open file descriptors (RLIMIT_NOFILE)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_BUDGET if soft == resource.RLIM_INFINITY else soft


def connection_cap(budget: int) -> int:
    """HTTP connections allowed at once: a quarter of the descriptor budget (256 of systemd's
    default 1,024), leaving the rest for XMPP, the store and an accept burst."""
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, budget // 4))


@dataclass(frozen=True)
class Limits:
    max_connections: int
    header_timeout: float = 10.0  # from connecting to a complete first request
    idle_timeout: float = 15.0  # between two requests of a keep-alive connection
    linger: float = 1.0  # reading a request body nobody asked for, before closing


@dataclass(frozen=True)
class HttpStats:
    """What the listener refused and dropped, for /metrics."""

    open_connections: int
    max_connections: int
    dropped: dict[str, int]  # reason -> connections closed by the pool
    client_errors: dict[str, int]  # kind -> malformed requests and the like
    accept_failures: int


def source_of(transport: asyncio.BaseTransport) -> str:
    """The sender a connection counts against: its IPv4 address, or its IPv6 /64 (what one
    host usually holds)."""
    peer = transport.get_extra_info("peername")
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


class _Connection:
    __slots__ = ("busy", "requests", "source", "timer", "transport")

    def __init__(self, transport: asyncio.Transport, source: str) -> None:
        self.transport = transport
        self.source = source
        self.busy = 0  # requests being answered now
        self.requests = 0  # requests that reached the handlers
        self.timer: asyncio.TimerHandle | None = None


class ConnectionPool:
    """The listener's connections, bounded (see the module's docstring). `protocol(make)` is
    the protocol factory for `loop.create_server`, around aiohttp's `make()`."""

    def __init__(self, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self._loop = loop
        self._all: dict[asyncio.BaseTransport, _Connection] = {}
        # the same connections by source, oldest first
        self._by_source: dict[str, OrderedDict[asyncio.BaseTransport, _Connection]] = {}
        self.dropped: Counter[str] = Counter()

    @property
    def open_connections(self) -> int:
        return len(self._all)

    def protocol(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Admitted(self, make)

    def admit(self, transport: asyncio.Transport) -> bool:
        """Whether `transport` may stay; makes room by closing an idle connection if needed."""
        if len(self._all) >= self.limits.max_connections and not self._evict_one():
            self.dropped["cap_full"] += 1
            return False
        connection = _Connection(transport, source_of(transport))
        self._all[transport] = connection
        self._by_source.setdefault(connection.source, OrderedDict())[transport] = connection
        connection.timer = self._loop.call_later(
            self.limits.header_timeout, self._headers_due, connection
        )
        return True

    def forget(self, transport: asyncio.BaseTransport) -> None:
        """The connection closed (whoever closed it); idempotent."""
        connection = self._all.pop(transport, None)
        if connection is None:
            return
        same_source = self._by_source[connection.source]
        del same_source[transport]
        if not same_source:
            del self._by_source[connection.source]
        if connection.timer is not None:
            connection.timer.cancel()

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and (connection := self._all.get(transport)) is not None:
            connection.busy += 1
            connection.requests += 1

    def request_ended(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and (connection := self._all.get(transport)) is not None:
            connection.busy = max(0, connection.busy - 1)

    def close(self) -> None:
        """No more timers (the listener is closing; aiohttp closes the connections)."""
        for connection in self._all.values():
            if connection.timer is not None:
                connection.timer.cancel()

    def _close(self, connection: _Connection, reason: str) -> None:
        self.forget(connection.transport)
        self.dropped[reason] += 1
        connection.transport.abort()  # a reset: the descriptor is free now, not after a linger

    def _evict_one(self) -> bool:
        """Close the oldest idle connection of the source holding the most; False: none idle."""
        for connections in sorted(self._by_source.values(), key=len, reverse=True):
            for connection in connections.values():  # oldest first
                if not connection.busy:
                    self._close(connection, "evicted")
                    return True
        return False

    def _headers_due(self, connection: _Connection) -> None:
        connection.timer = None
        if connection.requests == 0 and not connection.busy:
            self._close(connection, "header_timeout")


class _Admitted(asyncio.Protocol):
    """aiohttp's protocol for one connection, created only once the pool admits it."""

    def __init__(self, pool: ConnectionPool, make: Callable[[], asyncio.Protocol]) -> None:
        self._pool = pool
        self._make = make
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._pool.admit(transport):
            transport.abort()
            return
        self._transport = transport
        self._inner = self._make()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._pool.forget(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


CLIENT_ERRORS = (HttpProcessingError, RequestPayloadError, ConnectionError)


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, quiet for what clients do: a malformed request (aiohttp logs
    each with a traceback and the escaped request line) or a dropped connection is counted in
    `client_errors`; anything else, a fault on our side, is logged once per kind."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.client_errors: Counter[str] = Counter()
        self._seen: set[tuple[str, str]] = set()

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(error, CLIENT_ERRORS):
            kind = "malformed" if isinstance(error, HttpProcessingError) else "disconnected"
            self.client_errors[kind] += 1
            return
        if level < logging.WARNING:
            return  # aiohttp's debug notes: not ours to keep
        signature = (str(msg), type(error).__name__)
        if signature in self._seen or len(self._seen) >= 100:
            self.client_errors["other"] += 1
            return
        self._seen.add(signature)
        super().log(level, f"{msg} (logged once)", *args, **kwargs)


ACCEPT_FAILED = "socket.accept() out of system resource"


class AcceptFailures:
    """The event loop's exception handler while the listener is open: asyncio's "socket.accept()
    out of system resource" (no descriptor left; asyncio retries a second later) is counted and
    logged at most once per `period`; every other context goes to the handler before it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        budget: int,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self._budget = budget
        self._period = period
        self._clock = clock
        self._previous = loop.get_exception_handler()
        self._last_logged: float | None = None
        self._unlogged = 0
        self.count = 0

    def install(self) -> None:
        self._loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        self._unlogged += 1
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < self._period:
            return
        error = context.get("exception")
        log.error(
            "HTTP listener: %d connections could not be accepted since the last report (%s); "
            "the process may open %d descriptors (RLIMIT_NOFILE): raise LimitNOFILE",
            self._unlogged,
            error.strerror if isinstance(error, OSError) and error.strerror else error,
            self._budget,
        )
        self._last_logged, self._unlogged = now, 0
