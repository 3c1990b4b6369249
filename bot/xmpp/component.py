"""The XMPP edge: a thin external component (XEP-0114) on slixmpp that registers its parts.

Each part is one module with its own state: the connection (xmpp/connection.py), the session
watch (session_watch.py), the liveness rounds (liveness.py, pinger.py), privileges
(privileges.py), the presence stanzas (presence.py: to the tracker and the watch), the admin
commands (admin_commands.py, defined in commands.py) and the bot as a contact
(contact_stanzas.py, contact.py). This class wires them, registers their handlers and holds the
one error policy (internal_errors.py): every handler is guarded, and slixmpp's `exception()`
hook is overridden once. What each input can cost, per sender and in total:
docs/architecture.md.

slixmpp's own presence handling is switched off on purpose: it keeps a roster entry for every JID
that sends presence, a copy of per-user state that would grow with the whole user base. That, and
every other use of slixmpp beyond its public API, goes through `slixmpp_internals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.jid import JID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from ..activity.tracker import ActivityTracker
from ..admin.commands import CommandSet
from .admin_commands import AdminCommands
from .connection import Connection, ConnectionFatal, Timing
from .contact import SOFTWARE_NAME, software_version
from .contact_stanzas import ContactStanzas
from .internal_errors import InternalErrors
from .liveness import LivenessChecker, LivenessSettings, Session, Verdict
from .pinger import Pinger
from .presence import PresenceRouter
from .privileges import PRIVILEGE_NAMESPACES, Privileges
from .ratelimit import RefusalLog
from .session_checks import SessionChecks
from .session_watch import SessionWatch, WatchLimits
from .slixmpp_internals import NS_COMPONENT, take_over_presence

__all__ = ["ActiveUsersComponent", "ConnectionFatal", "Timing"]

log = logging.getLogger("bot.component")  # its name from before the layers: admins grep it

QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class ActiveUsersComponent(ComponentXMPP):
    def __init__(
        self,
        *,
        jid: str,
        secret: str,
        host: str,
        port: int,
        tracker: ActivityTracker,
        commands: CommandSet,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        timing: Timing | None = None,
        liveness: LivenessSettings | None = None,
        announces_sessions: bool = True,
        loaded_sessions_alive_until: int = 0,
        watch_limits: WatchLimits | None = None,
        secret_source: str = "[component] secret",
    ) -> None:
        """`announces_sessions`: the server re-sends every online user's presence when we
        connect (Prosody); otherwise (ejabberd) sessions are re-checked by pings instead.
        `loaded_sessions_alive_until`: the store's heartbeat, the last time sessions loaded
        from it were known to be alive (when a ping finds one gone, it ended then).
        `clock` gives the time of events (wall clock); `monotonic` measures intervals (rate
        limits, expiry of command sessions): wall-clock steps do not move it."""
        super().__init__(jid, secret, host, port)  # type: ignore[no-untyped-call]  # slixmpp's
        _register_plugins(self)
        self.tracker = tracker
        self.commands = replace(commands, forget_user=commands.forget_user or self._forget_user)
        self.clock = clock
        self.monotonic = monotonic
        self.timing = timing or Timing()
        self.errors = InternalErrors(log, monotonic)
        self._background: set[asyncio.Task[Any]] = set()
        settings = liveness or LivenessSettings(interval=0)
        self.pings_every_session = settings.interval > 0

        # Log lines an outsider can cause: each through a RefusalLog (a few lines per period).
        def bounded(what: str, level: int = logging.INFO) -> RefusalLog:
            return RefusalLog(log, what, monotonic, level=level, schedule=self._call_later)

        self.refusals = bounded("refused requests")
        ignored = bounded("stanzas ignored", logging.DEBUG)

        self.connection = Connection(
            self,
            tracker,
            timing=self.timing,
            clock=clock,
            announces_sessions=announces_sessions,
            pings_every_session=self.pings_every_session,
            check_sessions=lambda: self.liveness.check_now(),
            spawn=self._spawn,
            secret_source=secret_source,
        )
        self.pinger = Pinger(self, guard=partial(self.errors.guard, "ping answer"))
        self.checks = SessionChecks(
            pinger=self.pinger,
            connection=self.connection,
            tracker=tracker,
            errors=self.errors,
            clock=clock,
            ping_timeout=settings.timeout,
            loaded_sessions_alive_until=loaded_sessions_alive_until,
            event=self.event,
        )
        self.watch = self.checks.watch = SessionWatch(
            self.ask_session,
            pings_every_session=self.pings_every_session,
            # The presence router (built below, with the contact) resumes and logs.
            resumed=lambda session: self.presence.resumed(session),
            confirmed=lambda s: self.event("unavailable_confirmed", JID(f"{s[0]}/{s[1]}")),
            refused=lambda session, why: self.presence.unconfirmed(session, why),
            fault=partial(self.errors.record, "unavailable presence"),
            limits=watch_limits or WatchLimits(followup=self.timing.unavailable_followup),
            monotonic=monotonic,
            clock=clock,
        )
        if self.pings_every_session and not tracker.pseudonymized:
            for session in tracker.online_sessions():  # loaded from the store: keys are JIDs
                self.watch.available(session, loaded_sessions_alive_until)
        self.liveness = LivenessChecker(
            settings
            if self.pings_every_session
            else replace(settings, interval=self.timing.unavailable_recheck),
            self.sessions_to_ping,
            self.ask_session,
            self.checks.gone,
            self.watch.is_pinged,
        )
        advertisements = bounded("privilege advertisements ignored", logging.DEBUG)
        self.privileges_of = Privileges(jid, frozenset(tracker.domains), advertisements)
        self.admin = AdminCommands(
            self,
            tracker,
            errors=self.errors,
            refusals=self.refusals,
            ignored=ignored,
            monotonic=monotonic,
            figures_asked=self.refresh_contacts,
        )
        self.contacts = ContactStanzas(
            self,
            tracker,
            monotonic=monotonic,
            accepted=bounded("subscriptions accepted"),
            refusals=self.refusals,
            ignored=ignored,
            connected=lambda: self.connection.connected_since is not None,
        )
        self.presence = PresenceRouter(
            self,
            tracker,
            watch=self.watch,
            contacts=self.contacts,
            connection=self.connection,
            errors=self.errors,
            ignored=ignored,
            clock=clock,
            pings_every_session=self.pings_every_session,
        )
        self.presence_events = self.presence.events  # by kind, for the metrics
        self._register()

    def _register(self) -> None:
        guard = self.errors.guard
        take_over_presence(self, guard("presence", self.presence.on_presence))  # see the docstring
        for namespace in PRIVILEGE_NAMESPACES:
            self.register_handler(
                Callback(
                    f"Privilege {namespace}",
                    MatchXPath(f"{{{NS_COMPONENT}}}message/{{{namespace}}}privilege"),
                    guard("privilege advertisement", self.privileges_of.on_advertisement),
                )
            )
        connection = self.connection
        for event, where, handler in (
            ("session_start", "connection", self._on_session_start),
            ("disconnected", "connection", connection.on_disconnected),
            ("stream_error", "connection", connection.on_stream_error),
            ("message", "chat message", self.admin.on_message),
            ("session_bind", "commands", self.admin.register),
            ("session_bind", "identities", self.contacts.register_identities),
        ):
            self.add_event_handler(event, guard(where, handler))

    def exception(self, exception: Exception) -> None:
        """slixmpp's hook for what a handler let through: our fault, under the same policy.
        (Every handler is guarded, so that slixmpp never answers the sender itself.)"""
        self.errors.record("slixmpp handler", exception)

    @property
    def internal_errors(self) -> Counter[tuple[str, str]]:
        """Faults of ours by (place, error type); `errors.by_place()` for the metric."""
        return self.errors.counts

    # --- the connection (xmpp/connection.py) ------------------------------------------------

    async def serve(self) -> None:
        await self.connection.serve()

    @property
    def connected_since(self) -> float | None:
        return self.connection.connected_since

    @property
    def privileges(self) -> dict[str, dict[str, str]]:
        return self.privileges_of.granted

    def sessions_known_until(self, now: int, before_connecting: int) -> int:
        return self.connection.sessions_known_until(now, before_connecting)

    def _on_session_start(self, _event: object) -> None:
        connection = self.connection
        reconnected = connection.dropped_at is not None
        self.privileges_of.reset()
        connection.started()
        generation = connection.generation
        self._spawn(self._check_privileges(generation))
        if reconnected:
            # After a drop (a server restart, say), admins may have seen the bot go offline.
            # At the first connection the first count, shortly after, sends the figures.
            self.refresh_contacts()

    async def _check_privileges(self, generation: int) -> None:
        missing = await self.privileges_of.check_after(
            self.timing.privileges_grace, lambda: self.connection.is_current(generation)
        )
        if missing is not None:  # for the admins' alerts (notify.py)
            self.event("privileges_checked", missing)

    def data_received(self, data: bytes | str) -> None:
        _ack_at_once(self.transport)
        super().data_received(data)

    def reconnect(self, wait: float = 2.0, reason: str = "Reconnecting") -> None:
        """slixmpp's keepalive calls this on a ping timeout: drop the connection only, and
        let `serve` reconnect with its backoff (not a second, competing connection loop)."""
        log.warning("Dropping the connection: %s", reason)
        self.disconnect(wait, reason)

    # --- liveness (session_checks.py) -------------------------------------------------------

    def sessions_to_ping(self) -> list[Session]:
        return self.checks.sessions_to_ping()

    async def ask_session(self, full_jid: str) -> Verdict:
        return await self.checks.ask(full_jid)

    # --- admins and contacts ----------------------------------------------------------------

    async def _forget_user(self, bare_jid: str, asked_by: str) -> bool:
        forgotten = await self.tracker.forget_soon(bare_jid)  # its sessions leave the watch
        log.info("Forget %s, asked by %s: %s", self.tracker.who(bare_jid), asked_by, forgotten)
        return forgotten

    @property
    def contact(self) -> Any:
        return self.contacts.contact

    def refresh_contacts(self) -> None:
        self.contacts.refresh()

    def leave_contacts(self) -> None:
        self.contacts.leave()

    # --- background tasks -------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = self.loop.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.record("background task", task.exception())  # type: ignore[arg-type]

    def _call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, callback)

    def background_tasks(self) -> list[asyncio.Task[Any]]:
        """The component's tasks now: its own and the session watch's confirmations."""
        return [*self._background, *self.watch.confirmations()]

    def cancel_background(self) -> None:
        for task in self._background:
            task.cancel()
        self.watch.cancel_all()


def _register_plugins(xmpp: ComponentXMPP) -> None:
    for plugin in ("xep_0030", "xep_0004", "xep_0050"):
        xmpp.register_plugin(plugin)
    # Keepalive: a silently dead TCP connection is noticed within interval + timeout.
    xmpp.register_plugin("xep_0199", {"keepalive": True, "interval": 60, "timeout": 30})
    xmpp.register_plugin(  # software version; no OS (nobody's business)
        "xep_0092", {"software_name": SOFTWARE_NAME, "version": software_version(), "os": ""}
    )


def _ack_at_once(transport: asyncio.BaseTransport | None) -> None:
    """Acknowledge what was just read at once. Linux delays ACKs on a connection that also
    sends (our pings), and a server with Nagle's algorithm on (Prosody's default) then holds
    its next stanzas until that ACK: up to 40 ms more for every presence (benchmarks/
    bench_e2e.py: lag p50 2 ms -> 22 ms). TCP_QUICKACK (Linux) lasts until the next read."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
