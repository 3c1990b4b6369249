"""The XMPP edge: an external component (XEP-0114) on slixmpp.

Handlers stay thin: they turn a stanza into a call on the ActivityTracker or the CommandSet and
send back what those return. Anything unexpected in a handler is logged, never fatal.

slixmpp's own presence handling is switched off on purpose: it keeps a roster entry for every JID
that sends presence, a copy of per-user state that would grow with the whole user base. That, and
every other use of slixmpp beyond its public API, goes through `slixmpp_internals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.exceptions import XMPPError
from slixmpp.jid import JID, InvalidJID
from slixmpp.plugins.xep_0004 import Form
from slixmpp.plugins.xep_0030.stanza.items import DiscoItems
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from .activity import ActivityTracker
from .commands import (
    ADHOC_CLIENTS_NODE,
    ADHOC_FORGET_NODE,
    ADHOC_HISTORY_NODE,
    ADHOC_STATS_NODE,
    CommandSet,
    forget_request_form,
    history_request_form,
    parse_days,
)
from .contact import (
    IDENTITIES,
    IDENTITY_NAME,
    PRESENCE_RESOURCE,
    SOFTWARE_NAME,
    ContactPresence,
    OwnPresence,
    software_version,
)
from .liveness import LivenessChecker, LivenessSettings, Session, Verdict, verdict_of_error
from .pinger import Pinger
from .ratelimit import RateLimiter, RefusalLog
from .slixmpp_internals import (
    NS_COMPONENT,
    end_command_session,
    guard_adhoc_commands,
    registered_disco_info,
    registered_disco_items,
    take_over_presence,
)

log = logging.getLogger(__name__)

PRIVILEGE_NAMESPACES = ("urn:xmpp:privilege:2", "urn:xmpp:privilege:1")
COMMANDS_NODE = "http://jabber.org/protocol/commands"
# Presence permissions that send us every user's presence (XEP-0356 §presence).
PRESENCE_GRANTS = ("managed_entity", "roster")

# XEP-0115 entity capabilities in a presence: its `node` names the client (see client_families.py).
CAPS = "{http://jabber.org/protocol/caps}c"

# Presence types counted by name in the metrics; anything else is "other" (bounded labels).
PRESENCE_KINDS = frozenset(
    {"unavailable", "error", "probe", "subscribe", "subscribed", "unsubscribe", "unsubscribed"}
)

QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

RECONNECT_FIRST_DELAY = 1.0
RECONNECT_MAX_DELAY = 60.0
# Unavailable presences whose session is being asked by a ping whether it is still there; beyond
# this many (a server slow to answer), the presence is taken as it is, without asking.
MAX_PENDING_CONFIRMATIONS = 100

# An ad-hoc command left half-way (an admin closed the form) is forgotten this long after its
# last step; at most this many are kept (the oldest go first). Only admins can open one.
COMMAND_SESSION_TTL = 300.0
MAX_COMMAND_SESSIONS = 100


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
class _Connection:
    """What we learn about one connection attempt, from slixmpp's events."""

    started: asyncio.Future[None]
    ended: asyncio.Future[str]
    stream_error: str | None = None
    handshake_timed_out: bool = False  # connected, but the server did not answer in time


@dataclass(frozen=True, eq=False)
class _SaidUnavailable:
    """An unavailable presence whose session is being pinged: online again if it answers
    (eq=False: each one is itself, so that a newer presence can supersede it)."""

    sender: JID


class ActiveUsersComponent(ComponentXMPP):  # type: ignore[misc]  # slixmpp is untyped
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
    ) -> None:
        """`announces_sessions`: the server re-sends every online user's presence when we
        connect (Prosody); otherwise (ejabberd) sessions are re-checked by pings instead.
        `loaded_sessions_alive_until`: the store's heartbeat, the last time sessions loaded
        from it were known to be alive (when a ping finds one gone, it ended then).
        `clock` gives the time of events (wall clock); `monotonic` measures intervals (rate
        limits, expiry of command sessions): wall-clock steps do not move it."""
        super().__init__(jid, secret, host, port)
        self.tracker = tracker
        self.commands = commands
        self.contact = ContactPresence(commands)  # the bot's own presence (contact.py)
        self.clock = clock
        self.timing = timing or Timing()
        self.connected_since: float | None = None
        self._dropped_at: int | None = None  # when the last connection was lost
        self._catching_up = False  # re-learning who is online after (re)connecting
        # Connections so far: a task of an earlier connection (a resync's timer, the pings after
        # connecting) never acts on a later one.
        self._generation = 0
        self.privileges: dict[str, dict[str, str]] = {}  # server -> access -> type, this stream
        self.presence_events: Counter[str] = Counter()  # by kind, for the metrics
        self.internal_errors: Counter[tuple[str, str]] = Counter()  # (where, error type)
        self.monotonic = monotonic
        self.chat_limiter = RateLimiter(monotonic)
        # Refusals of outsiders' requests: logged, at a rate nobody outside can raise.
        self.refusals = RefusalLog(log, "refused requests", monotonic, schedule=self._call_later)
        # XEP-0356: only the server grants privileges: its counted domains (each VirtualHost
        # grants its own) and the domain the component is a subdomain of.
        parent_domain = JID(jid).domain.partition(".")[2]
        self._privilege_servers = frozenset(tracker.domains) | ({parent_domain} - {""})
        self._ignored_privileges = RefusalLog(
            log,
            "privilege advertisements ignored",
            monotonic,
            level=logging.DEBUG,
            schedule=self._call_later,
        )
        self._connection: _Connection | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.announces_sessions = announces_sessions
        self._loaded_sessions_alive_until = loaded_sessions_alive_until
        settings = liveness or LivenessSettings(interval=0)
        self.pings_every_session = settings.interval > 0
        self.ping_timeout = settings.timeout
        # Sessions as real (bare JID, resource) -> last sign of life: what liveness pings. The
        # tracker knows sessions only by their store keys (pseudonyms, with pseudonymize).
        self._last_seen: dict[Session, int] = {}
        if self.pings_every_session and not tracker.pseudonymized:
            for session in tracker.online_sessions():  # loaded from the store: keys are JIDs
                self._last_seen[session] = loaded_sessions_alive_until
        # An unavailable presence may be sent to the bot alone by a client that stays connected:
        # it looks exactly like a broadcast one (Prosody, ejabberd). So pings ask afterwards.
        self._said_unavailable: dict[Session, _SaidUnavailable] = {}
        # Sessions that said unavailable but answered: online again until the server says they
        # are gone (pinged with the others, or on their own when liveness pings are off).
        self._doubted: set[Session] = set()
        self.liveness = LivenessChecker(
            settings
            if self.pings_every_session
            else replace(settings, interval=self.timing.unavailable_recheck),
            self._pingable_sessions,
            self.ask_session,
            self._session_gone,
        )

        self._register_plugins()
        self._register_handlers()
        self.pinger = Pinger(self)

    def _register_plugins(self) -> None:
        for plugin in ("xep_0030", "xep_0004", "xep_0050"):
            self.register_plugin(plugin)
        # Keepalive: a silently dead TCP connection is noticed within interval + timeout.
        self.register_plugin("xep_0199", {"keepalive": True, "interval": 60, "timeout": 30})
        self.register_plugin(  # software version; no OS (nobody's business)
            "xep_0092", {"software_name": SOFTWARE_NAME, "version": software_version(), "os": ""}
        )

    def _register_handlers(self) -> None:
        take_over_presence(self, self._on_presence)  # see the module docstring
        guard_adhoc_commands(
            self,
            self._check_command_access,
            session_ttl=COMMAND_SESSION_TTL,
            max_sessions=MAX_COMMAND_SESSIONS,
            clock=self.monotonic,
        )
        for namespace in PRIVILEGE_NAMESPACES:
            self.register_handler(
                Callback(
                    f"Privilege {namespace}",
                    MatchXPath(f"{{{NS_COMPONENT}}}message/{{{namespace}}}privilege"),
                    self._on_privileges,
                )
            )
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("message", self._on_message)
        self.add_event_handler("session_bind", self._register_commands)
        self.add_event_handler("session_bind", self._register_identities)
        self.add_event_handler("session_start", self._refresh_contacts_on_reconnect)

    # --- connection lifecycle ----------------------------------------------------------------

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
            connection = await self._connect_once()
            if connection is None:
                if not ever_connected:
                    raise ConnectionFatal(
                        f"cannot connect to {self._address()}: nothing accepts components "
                        "there. Check [server] host and port, and that the server listens "
                        "for components (Prosody: component_ports, component_interfaces)."
                    )
                log.warning("Reconnecting to %s failed; next try in %.0f s", self._address(), delay)
            elif not connection.started.done():
                fatal = not ever_connected and not connection.handshake_timed_out
                if fatal or connection.stream_error == "not-authorized":
                    raise ConnectionFatal(self._handshake_failure(connection))
                log.warning("%s; next try in %.0f s", self._handshake_failure(connection), delay)
            else:
                ever_connected = True
                delay = RECONNECT_FIRST_DELAY
                reason = await connection.ended
                self._dropped_at = int(self.clock())
                self.connected_since = None
                if connection.stream_error == "not-authorized":
                    raise ConnectionFatal(self._handshake_failure(connection))
                log.warning("Disconnected from %s (%s); reconnecting", self._address(), reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _connect_once(self) -> _Connection | None:
        """One attempt. None: no TCP connection. Otherwise `started` tells if the handshake
        succeeded; `ended` resolves when the connection is gone."""
        loop = asyncio.get_running_loop()
        connection = _Connection(started=loop.create_future(), ended=loop.create_future())
        self._connection = connection
        failed: asyncio.Future[None] = loop.create_future()

        def on_failure(_reason: object) -> None:
            if not failed.done():
                failed.set_result(None)

        self.add_event_handler("connection_failed", on_failure, disposable=True)
        try:
            self.connect(self._host, self._port)
            done, _ = await asyncio.wait(
                [connection.started, connection.ended, failed],
                timeout=self.timing.handshake_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self.del_event_handler("connection_failed", on_failure)
        if failed in done:
            self.cancel_connection_attempt()  # our backoff, not slixmpp's own retry loop
            return None
        if not done:  # connected, but no handshake answer: treat as a drop
            connection.handshake_timed_out = True
            self.abort()
            await connection.ended
        return connection

    def data_received(self, data: bytes) -> None:
        _ack_at_once(self.transport)
        super().data_received(data)

    def reconnect(self, wait: float = 2.0, reason: str = "Reconnecting") -> None:
        """slixmpp's keepalive calls this on a ping timeout: drop the connection only, and
        let `serve` reconnect with its backoff (not a second, competing connection loop)."""
        log.warning("Dropping the connection: %s", reason)
        self.disconnect(wait, reason)

    @property
    def _host(self) -> str:
        return str(self.server_host)

    @property
    def _port(self) -> int:
        return int(self.server_port)

    def _address(self) -> str:
        return f"{self._host}:{self._port}"

    def _handshake_failure(self, connection: _Connection) -> str:
        if connection.stream_error == "not-authorized":
            return (
                f"the server at {self._address()} refused the component secret for "
                f"{self.boundjid.bare}: make [component] secret equal the server's "
                "component_secret for that component"
            )
        if connection.handshake_timed_out:
            return (
                f"the server at {self._address()} accepted the connection but did not finish "
                f"the handshake within {self.timing.handshake_timeout:g} s: it may be too busy, "
                "or this may not be its component port"
            )
        return (
            f"the server at {self._address()} closed the stream before the handshake "
            f"({connection.stream_error or 'no reason given'}): is {self.boundjid.bare} "
            'declared as a component there (Prosody: Component "...")?'
        )

    def _on_session_start(self, _event: object) -> None:
        connection = self._connection
        if connection is not None and not connection.started.done():
            connection.started.set_result(None)
        self.connected_since = self.clock()
        self._generation += 1
        # Nothing to re-learn where neither the server nor pings will tell who left meanwhile.
        self._catching_up = self._dropped_at is not None and (
            self.announces_sessions or self.pings_every_session
        )
        self.privileges = {}
        log.info("Connected to %s as %s", self._address(), self.boundjid.bare)
        self._spawn(self._check_privileges(self.connected_since))
        if not self.announces_sessions:
            if self.pings_every_session:  # nobody re-announces: ask each session
                self._spawn(self._check_sessions(self._generation))
        elif self._dropped_at is not None:
            # Before any stanza of the new stream is handled (and after the old stream's, if
            # any still wait for a record): the server re-announces the online sessions right
            # after the handshake. Those it does not ended at the drop, or earlier, if an
            # earlier connection dropped before they were re-announced.
            self.tracker.when_loaded(None, partial(self.tracker.begin_resync, self._dropped_at))
            self._spawn(self._finish_resync(self._generation))

    def sessions_known_until(self, now: int, before_connecting: int) -> int:
        """Up to when the bot knows who is online: `now` while connected and caught up; while
        disconnected or re-learning who is online, the drop, or the earlier time the sessions
        not re-announced since were last known; `before_connecting` (the store's heartbeat)
        until the first connection. The store's heartbeat is this time, so that sessions left
        open by a stop or crash end there."""
        if self._dropped_at is None:
            return now if self.connected_since is not None else before_connecting
        if self.connected_since is not None and not self._catching_up:
            return now
        unconfirmed_since = self.tracker.unconfirmed_since()
        if unconfirmed_since is None:
            return self._dropped_at
        return min(unconfirmed_since, self._dropped_at)

    def _is_current(self, generation: int) -> bool:
        """Whether the connection of this generation is the one up now."""
        return generation == self._generation and self._link_up()

    def _link_up(self) -> bool:
        connection = self._connection
        ended = connection is not None and connection.ended.done()
        return self.connected_since is not None and not ended

    def _on_disconnected(self, reason: object) -> None:
        connection = self._connection
        if connection is not None and not connection.ended.done():
            connection.ended.set_result(str(reason or "connection closed"))

    def _on_stream_error(self, error: Any) -> None:
        condition = str(error["condition"])
        if self._connection is not None:
            self._connection.stream_error = condition
        log.error("Stream error from the server: %s %s", condition, error["text"])

    # --- presence --------------------------------------------------------------------------

    def _on_presence(self, presence: Any) -> None:
        try:
            self._track_presence(presence)
        except Exception as exc:  # our fault: never an error stanza to the user's client
            self._internal_error("presence", exc)

    def _internal_error(self, where: str, exc: Exception) -> None:
        """Log a fault of ours with its traceback, once per place and kind of error (a fault
        that every presence hits must not flood the log)."""
        signature = (where, type(exc).__name__)
        self.internal_errors[signature] += 1
        if self.internal_errors[signature] == 1:
            log.error("Internal error while handling a %s (logged once)", where, exc_info=exc)

    def _track_presence(self, presence: Any) -> None:
        # Read the type attribute itself: slixmpp's presence["type"] gives the <show/> value.
        kind = presence.xml.get("type")
        if kind is None:
            self.presence_events["available"] += 1
        else:
            self.presence_events[kind if kind in PRESENCE_KINDS else "other"] += 1
        if kind in ("error", "probe", "subscribed", "unsubscribe", "unsubscribed"):
            if kind in ("probe", "unsubscribe"):
                self._on_contact_presence(kind, presence)
            return
        try:
            sender = presence["from"]
        except InvalidJID:
            log.debug("Presence with an invalid from ignored: %s", presence.xml.get("from"))
            return
        if not sender.user or sender.bare == self.boundjid.bare:
            return
        if kind == "subscribe":
            self._accept_subscription(sender)
            return
        if not sender.resource:  # from the account, not a session: Prosody answers the
            return  # subscription handshake of the fallback with an unavailable from the bare JID
        now = int(self.clock())
        if kind is None:
            caps_node = None
            for child in presence.xml:  # a few children: quicker than ElementTree's find
                if child.tag == CAPS:
                    caps_node = child.get("node")
                    break
            change = partial(self._available, sender, now, caps_node)
        elif kind == "unavailable":
            change = partial(self._unavailable, sender, now)
        else:
            log.debug("Presence of unknown type %r from %s ignored", kind, sender)
            return
        # Now, or (an offline user's record is read off the event loop) in a moment, in order.
        self.tracker.when_loaded(sender.bare, change)

    def _available(self, sender: JID, now: int, caps_node: str | None = None) -> None:
        try:
            session = (sender.bare, sender.resource)
            self._said_unavailable.pop(session, None)  # this newer presence decides
            self._doubted.discard(session)
            changed = self.tracker.session_started(sender.bare, sender.resource, now, caps_node)
            if self.pings_every_session and self.tracker.is_counted(sender.bare):
                self._last_seen[session] = now  # only pings read it
            else:
                self._last_seen.pop(session, None)  # pinged only while doubted
            if changed:  # for observers (tests, metrics): cheap when nobody listens
                self.event("presence_tracked", ("available", sender))
        except Exception as exc:  # our fault: never an error stanza to the user's client
            self._internal_error("presence", exc)

    def _unavailable(self, sender: JID, now: int) -> None:
        """An unavailable presence ends the session at once. But a client may send one to the
        bot alone (directed presence) and stay connected, and the server forwards it exactly
        like a broadcast one: so the session is asked by ping, and is online again if it is
        still there."""
        session = (sender.bare, sender.resource)
        try:
            was_online = self.tracker.is_online(*session)
        except Exception as exc:
            self._internal_error("presence", exc)
            return
        self._end_session(sender, now)
        if (
            was_online
            and self._link_up()
            and len(self._said_unavailable) < MAX_PENDING_CONFIRMATIONS
        ):
            said = _SaidUnavailable(sender)
            self._said_unavailable[session] = said
            self._spawn(self._confirm_unavailable(said))

    async def _confirm_unavailable(self, said: _SaidUnavailable) -> None:
        sender = said.sender
        session = (sender.bare, sender.resource)
        try:
            still_there = await self._still_there_after_unavailable(str(sender))
        except Exception as exc:
            self._internal_error("unavailable presence", exc)
            still_there = False
        if self._said_unavailable.get(session) is not said:
            return  # a newer presence of this session decided
        del self._said_unavailable[session]
        if still_there:
            self.tracker.when_loaded(sender.bare, partial(self._resume_session, sender))
        else:
            self.event("unavailable_confirmed", sender)  # for observers (tests)

    async def _still_there_after_unavailable(self, full_jid: str) -> bool:
        """Whether a session that said unavailable is still connected: it answers a ping, and
        again `unavailable_followup` seconds later. (A client leaving says unavailable, then
        closes its stream, often some milliseconds later: a ping that comes in between may be
        answered, or lost with the closing stream.)"""
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        first = asyncio.ensure_future(self.ask_session(full_jid))
        try:
            await asyncio.wait([first], timeout=self.timing.unavailable_followup)
        except BaseException:  # cancelled (a stop): the ping too
            first.cancel()
            raise
        if not first.done():
            first.cancel()  # lost, most likely: the next ping tells
        elif first.result() is not Verdict.ALIVE:
            return False  # gone, or no one can tell (our link is down): the presence stands
        await asyncio.sleep(asked_at + self.timing.unavailable_followup - loop.time())
        return await self.ask_session(full_jid) is Verdict.ALIVE

    def _resume_session(self, sender: JID) -> None:
        try:
            session = (sender.bare, sender.resource)
            if self.tracker.session_resumed(sender.bare, sender.resource, int(self.clock())):
                self._doubted.add(session)  # pinged until the server says it is gone
                log.debug("A session said unavailable but answers pings: online again")
                self.event("presence_tracked", ("resumed", sender))
        except Exception as exc:
            self._internal_error("presence", exc)

    def _end_session(self, sender: JID, now: int) -> None:
        try:
            session = (sender.bare, sender.resource)
            self._doubted.discard(session)
            self._last_seen.pop(session, None)
            if self.tracker.session_ended(sender.bare, sender.resource, now):
                self.event("presence_tracked", ("unavailable", sender))
        except Exception as exc:
            self._internal_error("presence", exc)

    def _accept_subscription(self, sender: JID) -> None:
        """The fallback without XEP-0356: a user who subscribes to us shares their presence.
        An admin may add the bot whatever their domain (it subscribes back to counted users)."""
        counted = self.tracker.is_counted(sender.bare)
        if not counted and not self.commands.allowed(sender.bare):
            self.refusals.refused(  # not a user of ours, so the JID may be logged
                sender.bare, "Subscription from %s refused: not a counted domain", sender.bare
            )
            self.send_presence(pto=sender.bare, pfrom=self.boundjid.bare, ptype="unsubscribed")
            return
        self.send_presence(pto=sender.bare, pfrom=self.boundjid.bare, ptype="subscribed")
        if counted:
            who = self.tracker.who(sender.bare)
            log.info("Subscription from %s accepted; subscribing back", who)
            self.send_presence(pto=sender.bare, pfrom=self.boundjid.bare, ptype="subscribe")
        else:
            log.info("Admin %s added the bot to their contacts", sender.bare)
        self._send_own_presence(self.contact.answer(sender.bare))

    # --- the bot as a contact: its identity and its own presence (see contact.py) -----------

    def _register_identities(self, _event: object) -> None:
        for category, itype in IDENTITIES:
            self.plugin["xep_0030"].add_identity(category, itype, name=IDENTITY_NAME)

    def _on_contact_presence(self, kind: str, presence: Any) -> None:
        """A probe (a contact's client came online, or asks) gets the bot's presence; an
        unsubscribe (a contact removed the bot) is noted. Strangers get nothing, as before."""
        try:
            sender = presence["from"]
        except InvalidJID:
            return
        if not self.tracker.is_counted(sender.bare) and not self.commands.allowed(sender.bare):
            return
        if kind == "probe":
            self._send_own_presence(self.contact.answer(str(sender)))
        elif (goodbye := self.contact.unsubscribed(sender.bare)) is not None:
            self._send_own_presence(goodbye)

    def refresh_contacts(self) -> None:
        """After a count, or when an admin asked: the figures to the admins (contact.py).
        Not while disconnected: slixmpp would queue stale figures for the next connection."""
        if self.connected_since is not None:
            for presence in self.contact.refresh():
                self._send_own_presence(presence)

    def leave_contacts(self) -> None:
        """Before a deliberate disconnection: the admins' clients show the bot offline."""
        if self.connected_since is not None:
            for presence in self.contact.goodbye():
                self._send_own_presence(presence)

    def _refresh_contacts_on_reconnect(self, _event: object) -> None:
        # After a drop (a server restart, say), admins may have seen the bot go offline. At the
        # first connection the first count, shortly after, sends the figures.
        if self._dropped_at is not None:
            self.refresh_contacts()

    def _send_own_presence(self, presence: OwnPresence) -> None:
        pfrom = f"{self.boundjid.bare}/{PRESENCE_RESOURCE}"  # contact.py says why a resource
        if presence.status is None:
            self.send_presence(pto=presence.to, pfrom=pfrom, ptype="unavailable")
        else:
            self.send_presence(pto=presence.to, pfrom=pfrom, pstatus=presence.status)

    # --- liveness -------------------------------------------------------------------------

    async def ask_session(self, full_jid: str) -> Verdict:
        """Ask a session whether it is there: a XEP-0199 ping to its full JID (`liveness` says
        what each verdict means). An answer is the session's latest sign of life."""
        connection = self._connection
        if not self._link_up():
            return Verdict.UNKNOWN  # sent now, it would wait for the next connection
        answer = asyncio.ensure_future(self.pinger.ping(full_jid, self.ping_timeout))
        link_lost = [] if connection is None else [connection.ended]
        try:
            await asyncio.wait([answer, *link_lost], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (a stop): the ping too
            answer.cancel()
            raise
        if not answer.done():
            answer.cancel()
            return Verdict.UNKNOWN  # our link dropped: the answer, if any, is lost
        try:
            condition = answer.result()
        except TimeoutError:
            verdict = Verdict.UNKNOWN  # a silent link, ours or the client's
        else:
            verdict = Verdict.ALIVE if condition is None else verdict_of_error(condition)
        if verdict is Verdict.ALIVE:
            self._seen_alive(full_jid)
        return verdict

    async def _check_sessions(self, generation: int) -> None:
        closed = await self.liveness.check_now()
        if not self._is_current(generation):
            return  # that connection dropped meanwhile: the next one checks again
        self._catching_up = False
        log.info("Checked the sessions believed online: %d had ended", closed)
        self.event("liveness_checked", closed)

    def _seen_alive(self, full_jid: str) -> None:
        bare, _, resource = full_jid.partition("/")
        self._last_seen[(bare, resource)] = int(self.clock())

    def _pingable_sessions(self) -> set[Session]:
        """The sessions to ping that are still online: every one seen in this run (or loaded
        with its JID) when liveness pings are on, else the doubted ones."""
        gone = [s for s in self._last_seen if not self.tracker.is_online(*s)]
        for session in gone:  # ended some other way (presence, resync, forget)
            del self._last_seen[session]
            self._doubted.discard(session)
        self._doubted.intersection_update(self._last_seen)
        return set(self._last_seen) if self.pings_every_session else set(self._doubted)

    def _session_gone(self, session: Session) -> None:
        self._doubted.discard(session)
        ended_at = (
            self._last_seen.pop(session, None)
            or self._loaded_sessions_alive_until
            or int(self.clock())
        )
        self.tracker.when_loaded(session[0], partial(self._close_gone_session, session, ended_at))

    def _close_gone_session(self, session: Session, ended_at: int) -> None:
        if self.tracker.is_online(*session) and self.tracker.session_ended(*session, ended_at):
            bare, resource = session
            log.info(
                "Session %s/%s is gone, says the server: closed",
                self.tracker.who(bare),
                self.tracker.who_session(resource),
            )
            self.event("presence_tracked", ("gone", JID(f"{bare}/{resource}")))

    # --- privileges ---------------------------------------------------------------------

    def _on_privileges(self, message: Any) -> None:
        server = message.xml.get("from", "")
        if server not in self._privilege_servers:  # anyone can send a message: not a grant
            self._ignored_privileges.refused(
                server,
                "Privilege advertisement from %r ignored: only %s grant privileges",
                server,
                ", ".join(sorted(self._privilege_servers)),
            )
            return
        for namespace in PRIVILEGE_NAMESPACES:
            element = message.xml.find(f"{{{namespace}}}privilege")
            if element is None:
                continue
            perms = {
                perm.get("access", "?"): perm.get("type", "?")
                for perm in element.iter(f"{{{namespace}}}perm")
            }
            self.privileges[server] = perms
            granted = ", ".join(f"{a}={t}" for a, t in sorted(perms.items())) or "nothing"
            log.info("Privileges granted by %s (%s): %s", server, namespace, granted)
            if namespace.endswith(":1"):
                log.warning(
                    "%s speaks the older %s; presence works the same, but consider upgrading",
                    server,
                    namespace,
                )

    async def _check_privileges(self, connected_since: float) -> None:
        await asyncio.sleep(self.timing.privileges_grace)
        if self.connected_since != connected_since:
            return  # that connection is gone; the next one checks again
        for domain in self.tracker.domains:
            presence = self.privileges.get(domain, {}).get("presence")
            if presence not in PRESENCE_GRANTS:
                log.warning(
                    "No presence permission from %s (got %s): the bot sees only users who "
                    "subscribe to it, so the figures will be low. In Prosody, enable "
                    'mod_privilege and add to VirtualHost "%s":\n'
                    '    modules_enabled = { "privilege" }\n'
                    '    privileged_entities = { ["%s"] = { presence = "managed_entity" } }\n'
                    'and to Component "%s": modules_enabled = { "privilege" }',
                    domain,
                    presence or "none",
                    domain,
                    self.boundjid.bare,
                    self.boundjid.bare,
                )
            elif presence == "roster":
                log.warning(
                    '%s grants presence = "roster": only users with %s in their roster are '
                    'seen; grant presence = "managed_entity" to see everyone',
                    domain,
                    self.boundjid.bare,
                )

    # --- after a reconnection --------------------------------------------------------------

    async def _finish_resync(self, generation: int) -> None:
        """Sessions the server does not announce again soon after reconnecting have ended,
        when the bot last knew them (the drop, or an earlier one). Only for the connection
        that began it: if it dropped meanwhile, the next connection's resync takes over."""
        await asyncio.sleep(self.timing.resync_grace)

        def end_resync() -> None:  # after the changes received so far (some may wait)
            if not self._is_current(generation):
                log.debug("The resync of a connection that dropped since: left to the next one")
                self.event("resync_abandoned", generation)
                return
            closed = self.tracker.end_resync()
            log.info(
                "Re-synced after reconnecting: %d sessions had ended while disconnected", closed
            )
            self._catching_up = False
            self.event("resynced", closed)

        self.tracker.when_loaded(None, end_resync)

    # --- admins: ad-hoc commands and chat ----------------------------------------------------

    def _register_commands(self, _event: object) -> None:
        for node, name, first_step in (
            (ADHOC_STATS_NODE, "Active users", self._adhoc_stats),
            (ADHOC_CLIENTS_NODE, "Active users by client", self._adhoc_clients),
            (ADHOC_HISTORY_NODE, "Activity history", self._adhoc_history),
            (ADHOC_FORGET_NODE, "Forget a user", self._adhoc_forget),
        ):
            self.plugin["xep_0050"].add_command(
                node=node, name=name, handler=self._guarded_step(first_step)
            )
        # Only admins see the command list; to anyone else a command's node is unknown.
        disco = self.plugin["xep_0030"]
        disco.set_node_handler("get_items", self.boundjid, COMMANDS_NODE, self._command_items)
        for node in (ADHOC_STATS_NODE, ADHOC_CLIENTS_NODE, ADHOC_HISTORY_NODE, ADHOC_FORGET_NODE):
            disco.set_node_handler("get_info", self.boundjid, node, self._command_node_info)
            disco.set_node_handler("get_items", self.boundjid, node, self._command_node_items)

    def _command_items(self, jid: JID, node: str, ifrom: JID | None, data: Any) -> DiscoItems:
        if ifrom is not None and self.commands.allowed(ifrom.bare):
            return registered_disco_items(self, jid, node, ifrom, data)
        items = DiscoItems()
        items["node"] = node
        return items

    def _command_node_info(self, jid: JID, node: str, ifrom: JID | None, data: Any) -> Any:
        self._admins_only_node(ifrom)
        return registered_disco_info(self, jid, node, ifrom, data)

    def _command_node_items(self, jid: JID, node: str, ifrom: JID | None, data: Any) -> Any:
        self._admins_only_node(ifrom)
        return registered_disco_items(self, jid, node, ifrom, data)

    def _admins_only_node(self, ifrom: JID | None) -> None:
        """To a non-admin, a command's node answers exactly as a node that does not exist."""
        if ifrom is None or not self.commands.allowed(ifrom.bare):
            raise XMPPError("item-not-found")

    def _check_command_access(self, iq: Any) -> None:
        """Every command stanza, whatever its step: admins only."""
        if not self.commands.allowed(iq["from"].bare):
            self.refusals.refused(
                iq["from"].bare,
                "Ad-hoc command %r refused to %s",
                iq["command"]["node"],
                iq["from"],
            )
            raise XMPPError("forbidden", text="Only the administrators of this service may ask.")

    def _guarded_step(self, step: Callable[[Any, dict[str, Any]], Any]) -> Callable[..., Any]:
        """A command step whose unexpected failure is logged (once) and answered with a plain
        internal-server-error, never slixmpp's "got into trouble" or a traceback. A coroutine,
        which slixmpp awaits: a step may be one (it reads the store off the event loop)."""

        async def guarded(first: Any, session: dict[str, Any]) -> Any:
            try:
                result = step(first, session)
                if inspect.isawaitable(result):
                    result = await result
            except XMPPError:
                end_command_session(self, session["id"])  # an error answer ends the command
                raise  # deliberate: bad-request, forbidden
            except Exception as exc:
                end_command_session(self, session["id"])
                self._internal_error("command", exc)
                raise XMPPError(
                    "internal-server-error", text="The bot failed to answer; its log says why."
                ) from None
            if isinstance(result, dict) and callable(result.get("next")):
                result["next"] = self._guarded_step(result["next"])
            return result

        return guarded

    async def _adhoc_stats(self, _iq: Any, session: dict[str, Any]) -> dict[str, Any]:
        await self.tracker.caught_up()  # the presences received before the question count
        answer = _answer(session, self.commands.stats_form())
        self.refresh_contacts()  # an admin asked: their contact list shows the same figures
        return answer

    async def _adhoc_clients(self, _iq: Any, session: dict[str, Any]) -> dict[str, Any]:
        await self.tracker.caught_up()
        return _answer(session, self.commands.clients_table().form())

    def _adhoc_history(self, _iq: Any, session: dict[str, Any]) -> dict[str, Any]:
        return _ask(session, history_request_form(), self._adhoc_history_result)

    async def _adhoc_history_result(self, payload: Any, session: dict[str, Any]) -> dict[str, Any]:
        try:
            days = parse_days(_submitted(payload, "days"))
        except ValueError as exc:
            raise XMPPError("bad-request", text=str(exc)) from None
        return _answer(session, await self.commands.history_form_off_loop(days))

    def _adhoc_forget(self, _iq: Any, session: dict[str, Any]) -> dict[str, Any]:
        return _ask(session, forget_request_form(), self._adhoc_forget_result)

    async def _adhoc_forget_result(self, payload: Any, session: dict[str, Any]) -> dict[str, Any]:
        try:
            jid = JID(_submitted(payload, "jid"))
        except InvalidJID as exc:
            raise XMPPError("bad-request", text=f"not a valid JID: {exc}") from None
        if not jid.user or jid.resource:
            raise XMPPError("bad-request", text="give a bare JID such as alice@example.org")
        forgotten = await self.tracker.forget_soon(jid.bare)
        log.info(
            "Forget %s, asked by %s: %s", self.tracker.who(jid.bare), session["from"], forgotten
        )
        text = f"Forgot {jid.bare}." if forgotten else f"Nothing was stored about {jid.bare}."
        return _answer(session, None, note=text)

    async def _on_message(self, message: Any) -> None:
        if message["type"] not in ("chat", "normal"):
            return  # never answer errors or groupchat: no loops
        sender = message["from"]
        if not self.chat_limiter.allow(sender.bare):
            log.debug("Chat from %s dropped: over the rate limit", sender)
            return
        try:
            await self.tracker.caught_up()  # the presences received before the question count
            reply = await self.commands.chat_answer(sender.bare, message["body"])
        except Exception as exc:  # our fault: a plain apology to admins, nothing to others
            self._internal_error("chat message", exc)
            if not self.commands.allowed(sender.bare):
                return
            reply = "Sorry, I could not answer that: an internal error (my log says why)."
        message.reply(reply).send()
        if self.commands.asks_for_figures(sender.bare, message["body"]):
            self.refresh_contacts()  # an admin asked: their contact list shows the same figures

    # --- background tasks -----------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = self.loop.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Background task %s failed", task.get_name(), exc_info=task.exception())

    def _call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, callback)

    def cancel_background(self) -> None:
        for task in self._background:
            task.cancel()


def _ack_at_once(transport: asyncio.BaseTransport | None) -> None:
    """Acknowledge what was just read at once. Linux delays ACKs on a connection that also
    sends (our pings), and a server with Nagle's algorithm on (Prosody's default) then holds
    its next stanzas until that ACK: up to 40 ms more for every presence (benchmarks/
    bench_e2e.py: lag p50 2 ms -> 22 ms). TCP_QUICKACK (Linux) lasts until the next read."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


# --- XEP-0050 session steps: slixmpp's session dict, filled in one place --------------------


def _ask(session: dict[str, Any], form: Form, then: Callable[..., Any]) -> dict[str, Any]:
    """Show a form; the submitted answer goes to `then` (access is re-checked on that step)."""
    session.update(payload=form, next=then, has_next=False)
    return session


def _answer(session: dict[str, Any], form: Form | None, note: str | None = None) -> dict[str, Any]:
    """Complete the command with a result form and/or a note."""
    session.update(payload=form, next=None, has_next=False)
    if note is not None:
        session["notes"] = [("info", note)]
    return session


def _submitted(payload: Any, var: str) -> str:
    """One value of a submitted form ("" when absent or not a form)."""
    try:
        return str(payload["values"].get(var) or "")
    except (TypeError, KeyError, AttributeError):
        return ""
