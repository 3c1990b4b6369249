"""The component's connection: serve, reconnect with backoff, generations, the resync horizon.

One connection at a time. Each successful handshake begins a new generation: a task of an
earlier connection (a resync's timer, the pings after connecting) never acts on a later one
(`is_current`). After a drop, the bot re-learns who is online: the server re-announces its
sessions (Prosody: `begin_resync`, then `end_resync` after a grace) or each session is pinged
(ejabberd); until then, `sessions_known_until` says up to when it knew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from slixmpp import ComponentXMPP

from ..activity.tracker import ActivityTracker

log = logging.getLogger("bot.component")  # one logger for the edge: admins grep one name

RECONNECT_FIRST_DELAY = 1.0
RECONNECT_MAX_DELAY = 60.0


class ConnectionFatal(Exception):
    """Retrying cannot help (wrong secret, nothing listening at start): exit with this message."""


@dataclass
class Timing:
    """How long to wait for the server; tests shorten these."""

    privileges_grace: float = 5.0  # after the handshake, before warning that presence is missing
    resync_grace: float = 5.0  # after a reconnection, for the server to re-announce sessions
    handshake_timeout: float = 20.0
    shutdown_write_budget: float = 10.0  # at shutdown, how long to retry a failing store write
    # With liveness pings off: how often a session that said unavailable but still answered a
    # ping is pinged again (it ends when the server says it is gone).
    unavailable_recheck: float = 300.0
    # A session that said unavailable is online again if it answers a ping, and another this
    # much later (a client closing its stream may answer a ping that comes in between).
    unavailable_followup: float = 2.0


@dataclass
class _Attempt:
    """What we learn about one connection attempt, from slixmpp's events."""

    started: asyncio.Future[None]
    ended: asyncio.Future[str]
    stream_error: str | None = None
    stream_error_text: str = ""
    handshake_timed_out: bool = False  # connected, but the server did not answer in time


class Connection:
    def __init__(
        self,
        xmpp: ComponentXMPP,
        tracker: ActivityTracker,
        *,
        timing: Timing,
        clock: Callable[[], float],
        announces_sessions: bool,
        pings_every_session: bool,
        check_sessions: Callable[[], Awaitable[int]],
        spawn: Callable[[Any], None],
        secret_source: str = "[component] secret",
    ) -> None:
        """`announces_sessions`: the server re-sends every online user's presence when we
        connect (Prosody); otherwise (ejabberd) `check_sessions` pings them, if the pings are
        on. `spawn` runs a background task of the component. `secret_source` says where the
        secret came from (the config file, a secret file, the environment): the fix when the
        server refuses it."""
        self._xmpp = xmpp
        self._tracker = tracker
        self.timing = timing
        self._clock = clock
        self.announces_sessions = announces_sessions
        self._pings_every_session = pings_every_session
        self._check_sessions = check_sessions
        self._spawn = spawn
        self._secret_source = secret_source
        self.connected_since: float | None = None
        self.dropped_at: int | None = None  # when the last connection was lost
        self.catching_up = False  # re-learning who is online after (re)connecting
        self.generation = 0  # successful handshakes so far
        self._attempt: _Attempt | None = None

    # --- serving ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Stay connected until cancelled: reconnect with backoff after a drop.

        Raises ConnectionFatal when retrying cannot help: the secret is refused, or nothing
        accepts the first connection, or the server refuses it (a wrong host, port or component
        JID is more likely than an outage). A server too busy to finish the handshake in time
        is tried again, even the first time.
        """
        delay = RECONNECT_FIRST_DELAY
        ever_connected = False
        while True:
            attempt = await self._connect_once()
            if attempt is None:
                if not ever_connected:
                    raise ConnectionFatal(
                        f"cannot connect to {self.address()}: nothing accepts components "
                        "there. Check [server] host and port, and that the server listens "
                        "for components (Prosody: component_ports, component_interfaces)."
                    )
                log.warning("Reconnecting to %s failed; next try in %.0f s", self.address(), delay)
            elif not attempt.started.done():
                fatal = not ever_connected and not attempt.handshake_timed_out
                if fatal or attempt.stream_error == "not-authorized":
                    raise ConnectionFatal(self._handshake_failure(attempt))
                log.warning("%s; next try in %.0f s", self._handshake_failure(attempt), delay)
            else:
                ever_connected = True
                delay = RECONNECT_FIRST_DELAY
                reason = await attempt.ended
                self.dropped(int(self._clock()))
                if attempt.stream_error == "not-authorized":
                    raise ConnectionFatal(self._handshake_failure(attempt))
                log.warning("Disconnected from %s (%s); reconnecting", self.address(), reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def dropped(self, at: int) -> None:
        """The connection is gone (`serve` calls this when it ends)."""
        self.dropped_at = at
        self.connected_since = None

    async def _connect_once(self) -> _Attempt | None:
        """One attempt. None: no TCP connection. Otherwise `started` tells if the handshake
        succeeded; `ended` resolves when the connection is gone."""
        loop = asyncio.get_running_loop()
        attempt = _Attempt(started=loop.create_future(), ended=loop.create_future())
        self._attempt = attempt
        failed: asyncio.Future[None] = loop.create_future()

        def on_failure(_reason: object) -> None:
            if not failed.done():
                failed.set_result(None)

        xmpp = self._xmpp
        xmpp.add_event_handler("connection_failed", on_failure, disposable=True)
        try:
            xmpp.connect(self._host, self._port)
            waiting: list[asyncio.Future[Any]] = [attempt.started, attempt.ended, failed]
            done, _ = await asyncio.wait(
                waiting,
                timeout=self.timing.handshake_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            xmpp.del_event_handler("connection_failed", on_failure)
        if failed in done:
            xmpp.cancel_connection_attempt()  # our backoff, not slixmpp's own retry loop
            return None
        if not done:  # connected, but no handshake answer: treat as a drop
            attempt.handshake_timed_out = True
            xmpp.abort()
            await attempt.ended
        return attempt

    @property
    def _host(self) -> str:
        return str(self._xmpp.server_host)

    @property
    def _port(self) -> int:
        return int(self._xmpp.server_port)

    def address(self) -> str:
        return f"{self._host}:{self._port}"

    def _handshake_failure(self, attempt: _Attempt) -> str:
        jid = self._xmpp.boundjid.bare
        if attempt.stream_error == "not-authorized":
            return (
                f"the server at {self.address()} refused the component secret for "
                f"{jid}: make {self._secret_source} equal the server's "
                f'component_secret for that component (Prosody: in Component "{jid}")'
            )
        if attempt.stream_error == "conflict":
            return (
                f"the server at {self.address()} says another connection is already {jid}: "
                "is a second bot running with the same [component] jid (systemctl status "
                "xmpp-active-users, ps)? Stop it; a bot that just stopped is forgotten by the "
                "server within seconds"
            )
        if _client_port(attempt.stream_error, attempt.stream_error_text, self._port):
            return (
                f"{self.address()} is a port for clients, not for components: set [server] "
                "port to the server's component port (Prosody: component_ports, 5347 by "
                "default; ejabberd: the listener with module ejabberd_service)"
            )
        if attempt.handshake_timed_out:
            return (
                f"the server at {self.address()} accepted the connection but did not finish "
                f"the handshake within {self.timing.handshake_timeout:g} s: it may be too busy, "
                "or this may not be its component port"
            )
        return (
            f"the server at {self.address()} closed the stream before the handshake "
            f"({attempt.stream_error or 'no reason given'}): is {jid} "
            'declared as a component there (Prosody: Component "...")?'
        )

    # --- slixmpp's events -------------------------------------------------------------------

    def started(self) -> None:
        """The handshake succeeded (session_start): a new generation, and a resync."""
        attempt = self._attempt
        if attempt is not None and not attempt.started.done():
            attempt.started.set_result(None)
        self.connected_since = self._clock()
        self.generation += 1
        # Nothing to re-learn where neither the server nor pings will tell who left meanwhile.
        self.catching_up = self.dropped_at is not None and (
            self.announces_sessions or self._pings_every_session
        )
        log.info("Connected to %s as %s", self.address(), self._xmpp.boundjid.bare)
        if not self.announces_sessions:
            if self._pings_every_session:  # nobody re-announces: ask each session
                self._spawn(self._ping_sessions(self.generation))
        elif self.dropped_at is not None:
            # Before any stanza of the new stream is handled (and after the old stream's, if
            # any still wait for a record): the server re-announces the online sessions right
            # after the handshake. Those it does not ended at the drop, or earlier, if an
            # earlier connection dropped before they were re-announced.
            self._tracker.when_loaded(None, partial(self._tracker.begin_resync, self.dropped_at))
            self._spawn(self._finish_resync(self.generation))

    def on_disconnected(self, reason: object) -> None:
        attempt = self._attempt
        if attempt is not None and not attempt.ended.done():
            attempt.ended.set_result(str(reason or "connection closed"))

    def on_stream_error(self, error: Any) -> None:
        condition = str(error["condition"])
        if self._attempt is not None:
            self._attempt.stream_error = condition
            self._attempt.stream_error_text = str(error["text"])
        log.error("Stream error from the server: %s %s", condition, error["text"])

    # --- what depends on the connection -----------------------------------------------------

    def link_up(self) -> bool:
        attempt = self._attempt
        ended = attempt is not None and attempt.ended.done()
        return self.connected_since is not None and not ended

    def is_current(self, generation: int) -> bool:
        """Whether the connection of this generation is the one up now."""
        return generation == self.generation and self.link_up()

    def link_lost(self) -> asyncio.Future[str] | None:
        """Resolves when the current connection ends (None: no connection yet)."""
        return None if self._attempt is None else self._attempt.ended

    def sessions_known_until(self, now: int, before_connecting: int) -> int:
        """Up to when the bot knows who is online: `now` while connected and caught up; while
        disconnected or re-learning who is online, the drop, or the earlier time the sessions
        not re-announced since were last known; `before_connecting` (the store's heartbeat)
        until the first connection. The store's heartbeat is this time, so that sessions left
        open by a stop or crash end there."""
        if self.dropped_at is None:
            return now if self.connected_since is not None else before_connecting
        if self.connected_since is not None and not self.catching_up:
            return now
        unconfirmed_since = self._tracker.unconfirmed_since()
        if unconfirmed_since is None:
            return self.dropped_at
        return min(unconfirmed_since, self.dropped_at)

    async def _ping_sessions(self, generation: int) -> None:
        closed = await self._check_sessions()
        if not self.is_current(generation):
            return  # that connection dropped meanwhile: the next one checks again
        self.catching_up = False
        log.info("Checked the sessions believed online: %d had ended", closed)
        self._xmpp.event("liveness_checked", closed)

    async def _finish_resync(self, generation: int) -> None:
        """Sessions the server does not announce again soon after reconnecting have ended,
        when the bot last knew them (the drop, or an earlier one). Only for the connection
        that began it: if it dropped meanwhile, the next connection's resync takes over."""
        await asyncio.sleep(self.timing.resync_grace)

        def end_resync() -> None:  # after the changes received so far (some may wait)
            if not self.is_current(generation):
                log.debug("The resync of a connection that dropped since: left to the next one")
                self._xmpp.event("resync_abandoned", generation)
                return
            closed = self._tracker.end_resync()
            log.info(
                "Re-synced after reconnecting: %d sessions had ended while disconnected", closed
            )
            self.catching_up = False
            self._xmpp.event("resynced", closed)

        self._tracker.when_loaded(None, end_resync)


CLIENT_PORT = 5222  # RFC 6120's port for clients: never a component port


def _client_port(condition: str | None, text: str, port: int) -> bool:
    """Whether a refused handshake says we reached the server's port for clients: the standard
    port, a stream namespace the port does not take, or Prosody's c2s answer for a host it does
    not serve (its component port says "does not match any configured external components")."""
    if port == CLIENT_PORT or condition == "invalid-namespace":
        return True
    return condition == "host-unknown" and "does not serve" in text
