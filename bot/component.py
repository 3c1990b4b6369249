"""The XMPP edge: an external component (XEP-0114) on slixmpp.

Handlers stay thin: they turn a stanza into a call on the ActivityTracker or the CommandSet and
send back what those return. Anything unexpected in a handler is logged, never fatal.

slixmpp's own presence handling is switched off on purpose: it keeps a roster entry for every JID
that sends presence, a copy of per-user state that would grow with the whole user base. That, and
every other use of slixmpp beyond its public API, goes through `slixmpp_internals`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError, IqTimeout, XMPPError
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
    SOFTWARE_NAME,
    ContactPresence,
    OwnPresence,
    software_version,
)
from .liveness import GONE_CONDITIONS, LivenessChecker, LivenessSettings
from .ratelimit import RateLimiter, RefusalLog
from .slixmpp_internals import (
    NS_COMPONENT,
    end_command_session,
    error_condition,
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

# XEP-0115 entity capabilities in a presence: its `node` names the client (see clients.py).
CAPS = "{http://jabber.org/protocol/caps}c"

# Presence types counted by name in the metrics; anything else is "other" (bounded labels).
PRESENCE_KINDS = frozenset(
    {"unavailable", "error", "probe", "subscribe", "subscribed", "unsubscribe", "unsubscribed"}
)

RECONNECT_FIRST_DELAY = 1.0
RECONNECT_MAX_DELAY = 60.0

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


@dataclass
class _Connection:
    """What we learn about one connection attempt, from slixmpp's events."""

    started: asyncio.Future[None]
    ended: asyncio.Future[str]
    stream_error: str | None = None
    handshake_timed_out: bool = False  # connected, but the server did not answer in time


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
        # Sessions as real (bare JID, resource) -> last sign of life: what liveness pings. The
        # tracker knows sessions only by their store keys (pseudonyms, with pseudonymize).
        self._last_seen: dict[tuple[str, str], int] = {}
        if liveness is not None and liveness.interval > 0 and not tracker.pseudonymized:
            for session in tracker.online_sessions():  # loaded from the store: keys are JIDs
                self._last_seen[session] = loaded_sessions_alive_until
        self.liveness = (
            LivenessChecker(liveness, self._pingable_sessions, self._ping, self._session_gone)
            if liveness is not None and liveness.interval > 0
            else None
        )

        self._register_plugins()
        self._register_handlers()

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
        # Nothing to re-learn where neither the server nor pings will tell who left meanwhile.
        self._catching_up = self._dropped_at is not None and (
            self.announces_sessions or self.liveness is not None
        )
        self.privileges = {}
        log.info("Connected to %s as %s", self._address(), self.boundjid.bare)
        self._spawn(self._check_privileges(self.connected_since))
        if not self.announces_sessions:
            if self.liveness is not None:
                self._spawn(self._check_sessions())  # nobody re-announces: ask each session
        elif self._dropped_at is not None:
            # Before any stanza of the new stream is handled (and after the old stream's, if
            # any still wait for a record): the server re-announces the online sessions right
            # after the handshake.
            self.tracker.when_loaded(None, self.tracker.begin_resync)
            self._spawn(self._finish_resync(self._dropped_at))

    def sessions_known_until(self, now: int, before_connecting: int) -> int:
        """Up to when the bot knows who is online: `now` while connected and caught up; the
        time of the drop while disconnected or re-learning who is online after it;
        `before_connecting` (the store's heartbeat) until the first connection. The store's
        heartbeat is this time, so that sessions left open by a stop or crash end there."""
        if self._dropped_at is None:
            return now if self.connected_since is not None else before_connecting
        if self.connected_since is not None and not self._catching_up:
            return now
        return self._dropped_at

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
            changed = self.tracker.session_started(sender.bare, sender.resource, now, caps_node)
            if self.liveness is not None and self.tracker.is_counted(sender.bare):
                self._last_seen[(sender.bare, sender.resource)] = now  # only pings read it
            if changed:  # for observers (tests, metrics): cheap when nobody listens
                self.event("presence_tracked", ("available", sender))
        except Exception as exc:  # our fault: never an error stanza to the user's client
            self._internal_error("presence", exc)

    def _unavailable(self, sender: JID, now: int) -> None:
        try:
            changed = self.tracker.session_ended(sender.bare, sender.resource, now)
            self._last_seen.pop((sender.bare, sender.resource), None)
            if changed:
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
        if presence.status is None:
            self.send_presence(pto=presence.to, pfrom=self.boundjid.bare, ptype="unavailable")
        else:
            self.send_presence(pto=presence.to, pfrom=self.boundjid.bare, pstatus=presence.status)

    # --- liveness -------------------------------------------------------------------------

    async def _ping(self, full_jid: str) -> bool | None:
        """True: the session answered; False: it is gone; None: cannot tell (not connected)."""
        if self.connected_since is None or self.liveness is None:
            return None
        try:
            await self.plugin["xep_0199"].send_ping(
                JID(full_jid), ifrom=self.boundjid, timeout=self.liveness.settings.timeout
            )
        except IqError as error:
            if error_condition(error.iq.xml) not in GONE_CONDITIONS:
                return self._seen_alive(full_jid)  # the client itself answered
            return False
        except IqTimeout:
            return False if self.connected_since is not None else None
        return self._seen_alive(full_jid)

    async def _check_sessions(self) -> None:
        assert self.liveness is not None
        closed = await self.liveness.check_now()
        self._catching_up = False
        log.info("Checked the sessions believed online: %d had ended", closed)
        self.event("liveness_checked", closed)

    def _seen_alive(self, full_jid: str) -> bool:
        bare, _, resource = full_jid.partition("/")
        self._last_seen[(bare, resource)] = int(self.clock())
        return True

    def _pingable_sessions(self) -> set[tuple[str, str]]:
        """The sessions seen in this run (or loaded with their JIDs) that are still online."""
        gone = [s for s in self._last_seen if not self.tracker.is_online(*s)]
        for session in gone:  # ended some other way (presence, resync, forget)
            del self._last_seen[session]
        return set(self._last_seen)

    def _session_gone(self, session: tuple[str, str]) -> None:
        ended_at = (
            self._last_seen.pop(session, None)
            or self._loaded_sessions_alive_until
            or int(self.clock())
        )
        self.tracker.when_loaded(session[0], partial(self._close_gone_session, session, ended_at))

    def _close_gone_session(self, session: tuple[str, str], ended_at: int) -> None:
        if self.tracker.is_online(*session) and self.tracker.session_ended(*session, ended_at):
            bare, resource = session
            log.info(
                "Session %s/%s did not answer a ping: closed",
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

    async def _finish_resync(self, dropped_at: int) -> None:
        """Sessions the server does not announce again soon after reconnecting have ended,
        at the latest when the connection dropped."""
        await asyncio.sleep(self.timing.resync_grace)

        def end_resync() -> None:  # after the changes received so far (some may wait)
            closed = self.tracker.end_resync(dropped_at)
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
