"""The core against a plain model: random histories of sessions, clock moves, flushes, restarts,
crashes, reconnections, liveness verdicts, imports, forget and retention, in both pseudonymize
settings and three server profiles (Prosody; ejabberd with liveness pings; generic with the pings
off).

What is driven, in-process and without a network (the real objects, not their calls re-enacted):
- the real `Bot` (bot/app/daemon.py) on a real store file: its start-up load (`Bot._load`: stored
  sessions closed at the heartbeat, or kept for the pings), `record_today`, `after_count`
  (today's snapshot), then `apply_retention` (the retention duty's pass, whose candidates a
  worker thread reads from the file), and at a clean stop what `Bot.serve` does on its way
  out (`record_today`, then `store.close` at `Bot.heartbeat_clock()`, the last time it knew
  who was online). A crash drops the Bot without a flush, releasing the writer's lock as the
  kernel does (`store._unlock()`, as tests/test_activity.py does);
- the real `ActiveUsersComponent` that Bot builds: every presence is a stanza handed to its
  `presence.on_presence`; a (re)connection is `_on_session_start`, which begins the resync
  (Prosody) or starts the liveness check of every session (ejabberd), and the tasks it spawns
  run on the component's own event loop (`_finish_resync`, with the grace set to 0, or
  `LivenessChecker.check_now`); pings go through the real `_ping`, with slixmpp's XEP-0199
  `send_ping` answered by a fake server (an answer: alive; `service-unavailable`: gone; with the
  connection down `_ping` itself answers "cannot tell"). What `serve()` does when a connection
  ends (`Connection.dropped`) is called as it calls it;
- the index snapshot that a clean stop writes and the next start reads instead of every record
  (every clean restart uses it); the "snapshot" step kills the bot after its stop's last flush
  or while the snapshot is written, or damages it on disk, and the next start must read every
  record instead (the invariants check the figures either way);
- the real importer (`import_activities`, as `xmpp-active-users import` runs it on the stopped
  bot's store) and the CLI's `forget`; the ad-hoc "Forget a user" calls `tracker.forget`, as the
  component's handler does.

The reference is `Model`: per bare JID a record (first seen, last login, last logout, sessions
online, and per client family the last login or logout of the user's sessions of that client,
and the family of each session online) written from the README's rules only, never from the
code under test; the records as
the last flush left them on disk; the heartbeat; each session's last sign of life as the
component knows it; each UTC day's peak. The figures are the seed's loop
(`bot.testbed.seed.seed_counts`) over the model's records, and per client family the seed's rule
over that family's sessions (the README's "Active users by client").

Decisions where the README leaves room (here so that the engineer can disagree):
- A clock step back is taken as given: events carry the clock's time. "Last login" and "last
  logout" are the newest timestamps seen (max, as the importer's "newest timestamp wins"), and
  `first_seen` is the time of the event that created the record (the first time the bot saw
  them), even if a later event carries an earlier time. The seed's rule is then applied to
  those timestamps at the current clock, whatever its direction.
- The heartbeat: written by every flush that writes something (an event, a deletion, a day's
  snapshot) and, when idle, by a flush at least 30 s after the last one; by a clean stop; an
  import or the CLI's forget keep it as it was.
- A gone session ends at its last sign of life: its available presence or its last answered
  ping in this run, or, for a session loaded at start-up, the heartbeat, unless the connection
  had dropped before the stop (then the drop, the last time it was known).
- The hourly job (`after_count`) runs when a rule says so, and `record_today` runs, as the first
  count of a new UTC day does, whenever the clock crosses midnight (at exactly 00:00:00; other
  schedules are not modelled). A day's peak is the most users online at any moment of that UTC
  day the bot lived through, in any of its runs (including, during a resync, the sessions it
  still believes online until the grace ends).
- Retention reads its candidates from the file and re-checks them in memory: the model forgets
  the users inactive for more than `retention_days` both in the last flushed state and now.
- A session's client is the one its first available presence announced (CAPS below: the caps
  node, and the family the README's rules give it). A server re-announcing a session after a
  restart announces the node that session announced last. An unavailable presence of a session
  the bot does not know online changes no client's time (its client is not known).

Known faults: FAULTS names every fault this machine found in the code under test, with its
diagnosis; FAULT_EXAMPLES its shrunk example. While a fault is in KNOWN_FAULTS, the one scenario
or check that exhibits it is kept out of the machine (every `_excluded(...)` call says which)
and its example runs as a strict xfail whose reason is the diagnosis. Once the fault is fixed,
its example fails the suite (XPASS) until its name is taken off KNOWN_FAULTS.

Any history hypothesis prints can be replayed with `replay(profile, pseudonymize, steps)`.

Speed: by default 40 examples of up to 30 steps per profile and setting (240 in all, about 18 s
on 2 cores); MODEL_CHECK=heavy runs 500 of up to 80 steps each (3,000 in all, about 9 min).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from unittest import mock
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import xmlstream as slixmpp_xmlstream

from bot.activity.tracker import LOAD_FLOOR_MARGIN
from bot.admin.history import utc_day
from bot.app.daemon import Bot
from bot.config import Settings
from bot.core.model import UserRecord
from bot.importing.importer import Activity, import_activities
from bot.storage import index_snapshot
from bot.storage.pseudonym import Pseudonyms
from bot.storage.store import Store
from bot.testbed.seed import seed_counts
from bot.xmpp.component import Timing

from .support import T0

# --- known faults ------------------------------------------------------------------------------
# Every fault this machine found in the code under test: name -> diagnosis. Each has its shrunk
# example in FAULT_EXAMPLES (at the end), and turns off exactly one scenario or check, named in
# `CoreMachine._excluded`'s callers, while it is listed in KNOWN_FAULTS.

FAULTS: dict[str, str] = {
    "pseudonymized-loaded-sessions-pinged-by-pseudonym": (
        "pseudonymize with liveness pings (ejabberd, generic): the start-up load keeps the stored "
        "sessions keyed by the pseudonym (ActivityTracker._online['~hash@domain']); the bot "
        "pings ~hash@domain/resource, which the server reports gone, so a live session is "
        "closed at the heartbeat; a logout of the real JID meanwhile finds the same record "
        "through the store, and the online figures drop twice (online users -1)"
    ),
    "pseudonymized-resources-in-clear": (
        "pseudonymize: a record keeps the resources online in clear (first_seen, login, "
        "logout, (resource, ...)); the .db and -wal bytes hold 'pixel-phone' and, through the "
        "resource 'alice-thinkpad.gajim-desktop', the localpart (README: the store file alone "
        "reveals no address)"
    ),
    "import-stores-excluded-users": (
        "import_activities ignores [counting] exclude: an excluded user found in Prosody's "
        "history is stored (README: excluded JIDs are never counted nor stored); a plain store "
        "hides it at the next start, a pseudonymized one counts it (the load cannot match a "
        "pseudonym against the patterns)"
    ),
    "forget-during-resync": (
        "a user forgotten (ad-hoc 'Forget a user') within the resync grace after a reconnection "
        "is re-created by end_resync, which closes the sessions listed at begin_resync through "
        "session_ended: a new record (first_seen = last_logout = the drop), counted"
    ),
    "stop-during-outage": (
        "a stop or crash while the connection is down dates the stored sessions to the "
        "heartbeat, written after the drop (by flushes, and by the stop itself), not to the "
        "drop, the last time they were known: Prosody's start-up closes them there, ejabberd's "
        "pings close the gone ones there (README: sessions not re-announced close at the time "
        "of the drop); activity is overstated by up to the outage"
    ),
    "day-peak-lost-on-reset": (
        "reset_peaks, at start-up and at the first count of a UTC day, restarts the day's peak "
        "from the users online now and ignores the peak already stored for that day: a restart "
        "or crash (or a day entered again after a clock step back) rewrites that day's "
        "peak_online lower"
    ),
    "peak-not-on-disk-at-crash": (
        "a day's peak was written only by the hourly count (and at a stop): a crash lost the "
        "peak reached since the last count, although the records that made it were on disk "
        "(found by this machine once its crash reverted the peaks to the last flush)"
    ),
    "day-peak-lost-on-step-back": (
        "the daily peaks never rolled back: after a clock step back into yesterday, the count "
        "rewrote yesterday's snapshot with today's running peak, and a day entered again "
        "restarted its peak from who was online, not from the peak it had (found by this "
        "machine once the day-peak check covered days entered again)"
    ),
    "heartbeat-frozen-after-reconnect-without-liveness": (
        "with neither re-announcing server nor pings (generic, liveness off), a reconnection "
        "left the component 'catching up' forever: the heartbeat stayed at the drop, so at the "
        "next restart sessions that began after the reconnection were closed before their own "
        "login (found by reading, confirmed by this example)"
    ),
    "clock-back-below-load-floor": (
        "ActivityIndex kept no timestamp at or before its floor (load time - 30 days): once the "
        "clock stepped back below the last start-up load, users last active (or first seen) "
        "between the window's start and the floor were missing from the figures. Fixed for "
        "steps back of up to LOAD_FLOOR_MARGIN (a day, as this machine steps); further back is "
        "the README's stated limit, logged once (tests/test_window_edges.py)"
    ),
}

# Not fixed yet: take a name off once its fault is fixed (its example then has to pass).
KNOWN_FAULTS: frozenset[str] = frozenset()


class Killed(BaseException):
    """kill -9, in-process: nothing after it runs (not even `except Exception`)."""

    @classmethod
    def now(cls, *_args: object) -> None:
        raise cls


# --- the world ---------------------------------------------------------------------------------

DAY = 86_400
WINDOWS = (DAY, 7 * DAY, 30 * DAY)
HEARTBEAT_IDLE = 30  # the README: the heartbeat is written every 30 s when idle
RETENTION_DAYS = 31
COMPONENT_JID = "active.example.test"
DOMAINS = ("one.example.test", "two.example.test")
EXCLUDE = ("monitor-probe@one.example.test", "robot-*@two.example.test")
# Long, distinctive localparts and resources: the raw store file must never contain them when
# pseudonymized. The same localpart on both domains is two users.
COUNTED = (
    "alice-thinkpad@one.example.test",
    "bob-raspberry@one.example.test",
    "alice-thinkpad@two.example.test",
    "carol-kitchensink@two.example.test",
)
EXCLUDED = ("monitor-probe@one.example.test", "robot-lawnmower@two.example.test")
OUTSIDER = "eve-outsider@elsewhere.example"  # a domain not counted
USERS = COUNTED + EXCLUDED + (OUTSIDER,)
# Per user: two plain resources, one that contains the localpart, one with "/" and "@".
RESOURCES = ("pixel-phone", "work-laptop", "{local}.gajim-desktop", "tablet/kde@home")
SECRET = b"model-check pseudonym secret"
PROFILES = {
    # software, liveness interval: Prosody announces sessions; ejabberd and generic do not and
    # are checked by pings (generic here with the pings off: stored sessions close at load).
    "prosody": ("prosody", 0.0),
    "ejabberd": ("ejabberd", 300.0),
    "generic-no-liveness": ("generic", 0.0),
}

HEAVY = os.environ.get("MODEL_CHECK", "") == "heavy"

# The XEP-0115 caps nodes the sessions announce (None: no <c/>), and the client family each is
# counted under by the README's rules: a well-known client by its name, any other URL by its
# host, anything else "other", no caps "unknown".
CAPS = {
    None: "unknown",
    "http://conversations.im": "conversations",
    "https://gajim.org": "gajim",
    "https://dino.im/": "dino",
    "https://Chat.Example.NET/client#1.2": "chat.example.net",
    "urn:example:a-bot": "other",
}
NODES = tuple(CAPS)


def resource_of(bare: str, index: int) -> str:
    return RESOURCES[index].format(local=bare.partition("@")[0])


def domain_of(bare: str) -> str:
    return bare.rpartition("@")[2]


def is_counted(bare: str) -> bool:
    return domain_of(bare) in DOMAINS and bare not in EXCLUDED


def resources_of_the_store() -> set[bytes]:
    return {resource_of(bare, i).encode() for bare in USERS for i in range(len(RESOURCES))}


def secrets_of_the_store() -> set[bytes]:
    """What a pseudonymized store file must never contain: every localpart and resource."""
    return {bare.partition("@")[0].encode() for bare in USERS} | resources_of_the_store()


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    first_seen: int
    login: int
    logout: int
    sessions: frozenset[str] = frozenset()
    clients: dict[str, int] = field(default_factory=dict)  # family -> last login or logout
    session_family: dict[str, str] = field(default_factory=dict)  # session online -> family

    @property
    def last_active(self) -> int:
        return max(self.login, self.logout)

    def as_seed(self) -> tuple[int, int, int, tuple[str, ...]]:
        return (self.first_seen, self.login, self.logout, tuple(sorted(self.sessions)))


@dataclass
class Model:
    """What the bot should know, from the README's rules alone."""

    records: dict[str, Rec] = field(default_factory=dict)  # bare JID -> record
    flushed: dict[str, Rec] = field(default_factory=dict)  # what the last flush put on disk
    heartbeat: int = 0  # the heartbeat on disk
    outage_since: int | None = None  # the connection dropped then and is not re-synced yet
    pending: bool = False  # something happened since the last flush
    last_seen: dict[tuple[str, str], int] = field(default_factory=dict)  # session -> sign of life
    day_max: dict[str, dict[str, int]] = field(default_factory=dict)  # UTC day -> domain -> peak
    flushed_day_max: dict[str, dict[str, int]] = field(default_factory=dict)  # on disk
    nodes: dict[tuple[str, str], str | None] = field(default_factory=dict)  # session -> its node

    # events

    def start(self, bare: str, resource: str, now: int, node: str | None = None) -> None:
        """Available presence: a login, unless the session is already online (an update)."""
        if not is_counted(bare):
            return
        self.last_seen[(bare, resource)] = now
        record = self.records.get(bare)
        family = CAPS[node]
        if record is not None and resource in record.sessions:
            return
        self.nodes[(bare, resource)] = node
        if record is None:
            self.records[bare] = Rec(
                now, now, 0, frozenset({resource}), {family: now}, {resource: family}
            )
        else:
            self.records[bare] = replace(
                record,
                login=max(record.login, now),
                sessions=record.sessions | {resource},
                clients=with_time(record.clients, family, now),
                session_family={**record.session_family, resource: family},
            )
        self.pending = True

    def end(self, bare: str, resource: str, at: int) -> None:
        """Unavailable presence, or a session closed by the bot: always a logout (an unknown
        session's end still counts as activity, for no client)."""
        if not is_counted(bare):
            return
        self.last_seen.pop((bare, resource), None)
        record = self.records.get(bare)
        if record is None:
            self.records[bare] = Rec(at, 0, at)
        else:
            self.records[bare] = ended(record, resource, at)
        self.pending = True

    def forget(self, bare: str) -> None:
        if self.records.pop(bare, None) is not None:
            self.pending = True

    def merge_import(self, entry: Activity) -> None:
        """The README: per user and field the newest timestamp wins (first seen: the oldest);
        other domains, never-active users and excluded users are not stored."""
        if not is_counted(entry.bare_jid) or not (entry.last_login or entry.last_logout):
            return
        known = [t for t in (entry.registered, entry.last_login, entry.last_logout) if t]
        record = self.records.get(entry.bare_jid)
        if record is None:
            self.records[entry.bare_jid] = Rec(min(known), entry.last_login, entry.last_logout)
        else:
            self.records[entry.bare_jid] = replace(
                record,
                first_seen=min([record.first_seen, *known]) if record.first_seen else min(known),
                login=max(record.login, entry.last_login),
                logout=max(record.logout, entry.last_logout),
            )

    # the store

    def known_until(self, now: int) -> int:
        """The last time the bot knew who was online: now, or the drop during an outage (and
        until the server has re-announced who is online after it)."""
        return now if self.outage_since is None else self.outage_since

    def flush(self, now: int) -> None:
        known = self.known_until(now)
        if self.pending or known - self.heartbeat >= HEARTBEAT_IDLE:
            self.close(now)

    def close(self, now: int) -> None:
        """Everything is on disk: the records and the peaks so far."""
        self.flushed = dict(self.records)
        self.flushed_day_max = {day: dict(peaks) for day, peaks in self.day_max.items()}
        self.heartbeat = self.known_until(now)
        self.pending = False

    def crash(self) -> None:
        self.records = dict(self.flushed)
        self.day_max = {day: dict(peaks) for day, peaks in self.flushed_day_max.items()}
        self.pending = False

    def load(self, now: int, *, keep_sessions: bool) -> None:
        """Start-up: sessions left open close at the heartbeat (the last time the bot knew who
        was online: the drop, if it stopped during an outage), unless the server will not say
        who is online and pings will (then their last sign of life is the heartbeat)."""
        alive_until = self.heartbeat or now
        self.outage_since = None  # a new run: not connected yet, nothing dropped
        self.last_seen = {}
        for bare, record in list(self.records.items()):
            if not record.sessions:
                continue
            if keep_sessions:
                for resource in record.sessions:
                    self.last_seen[(bare, resource)] = alive_until
            else:
                for resource in record.sessions:
                    record = ended(record, resource, alive_until)
                self.records[bare] = record
                self.pending = True

    # figures

    def of_domain(self, domain: str) -> list[Rec]:
        return [r for bare, r in self.records.items() if domain_of(bare) == domain]

    def sessions(self) -> set[tuple[str, str]]:
        return {(bare, res) for bare, r in self.records.items() for res in r.sessions}

    def online_users(self, domain: str) -> int:
        return sum(1 for r in self.of_domain(domain) if r.sessions)

    def observe(self, now: int) -> None:
        """A moment the bot lives through: it counts for today's peak."""
        peaks = self.day_max.setdefault(utc_day(now), {})
        for domain in DOMAINS:
            peaks[domain] = max(peaks.get(domain, 0), self.online_users(domain))

    def client_figures(self, domain: str, now: int) -> dict[str, tuple]:
        """Per client family: (active per window, users online with it, its sessions online),
        families with all zero left out; by the seed's rule applied to each family's sessions."""
        figures = {}
        records = self.of_domain(domain)
        for family in {f for r in records for f in (*r.clients, *r.session_family.values())}:
            online = [sum(1 for f in r.session_family.values() if f == family) for r in records]
            active = tuple(
                sum(
                    1
                    for r, sessions in zip(records, online, strict=True)
                    if sessions or (family in r.clients and now - r.clients[family] < window)
                )
                for window in WINDOWS
            )
            entry = (active, sum(1 for n in online if n), sum(online))
            if any(active) or entry[1]:
                figures[family] = entry
        return figures


def with_time(clients: dict[str, int], family: str, at: int) -> dict[str, int]:
    return {**clients, family: max(clients.get(family, 0), at)}


def ended(record: Rec, resource: str, at: int) -> Rec:
    """A logout of one session: of the user, and of that session's client if it was online."""
    family = record.session_family.get(resource) if resource in record.sessions else None
    return replace(
        record,
        logout=max(record.logout, at),
        sessions=record.sessions - {resource},
        clients=record.clients if family is None else with_time(record.clients, family, at),
        session_family={s: f for s, f in record.session_family.items() if s != resource},
    )


def next_midnight(now: int) -> int:
    return (now // DAY + 1) * DAY


# --- the fake server behind the component's pings ------------------------------------------


def gone_error(component) -> IqError:
    """What the server answers for a full JID that has no session: service-unavailable."""
    iq = component.Iq()
    iq["type"] = "error"
    iq["error"]["condition"] = "service-unavailable"
    return IqError(iq)


def no_tls_context() -> SimpleNamespace:
    """slixmpp builds a TLS context (and loads the system's CA store, ~70 ms) for every
    component; these components never connect, so a stand-in saves that time."""
    return SimpleNamespace(
        check_hostname=True, verify_mode=None, set_default_verify_paths=lambda: None
    )


# --- the machine -------------------------------------------------------------------------------

user_index = st.integers(0, len(USERS) - 1)
resource_index = st.integers(0, len(RESOURCES) - 1)
verdict_list = st.lists(st.booleans(), max_size=10)  # per online session, sorted: True = alive
EVERYONE = [True] * len(USERS) * len(RESOURCES)  # every session still online answers
node_index = st.integers(0, len(NODES) - 1)
sessions_list = st.lists(st.tuples(user_index, resource_index, node_index), max_size=3)


class CoreMachine(RuleBasedStateMachine):
    profile = "prosody"
    pseudonymize = False
    excluded_faults: frozenset[str] = KNOWN_FAULTS

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.path = Path(self.folder.name) / "activity.db"
        self.loop = asyncio.new_event_loop()
        software, liveness = PROFILES[self.profile]
        self.liveness = liveness > 0
        self.announces = software == "prosody"
        # As Bot._load decides: stored sessions are kept for the pings where the server does
        # not re-announce them, unless pseudonymized (no address left to ping).
        self.pings = not self.announces and self.liveness  # who is online: asked by pings
        self.keep_sessions = self.pings and not self.pseudonymize
        self.settings = Settings(
            component_jid=COMPONENT_JID,
            secret="secret",
            server_host="127.0.0.1",
            server_port=5347,
            domains=DOMAINS,
            admins=frozenset({"admin@one.example.test"}),
            store_path=self.path,
            flush_interval=1.0,
            first_count_after=15.0,
            count_interval=3600.0,
            count_jitter=0.0,
            exclude=EXCLUDE,
            metrics_listen=None,
            server_software=software,
            liveness_interval=liveness,
            liveness_timeout=30.0,
            liveness_max_rate=1e6,
            retention_days=RETENTION_DAYS,
            pseudonym_key=SECRET if self.pseudonymize else None,
        )
        self.now = T0
        self.model = Model()
        self.alive: set[tuple[str, str]] = set()  # what the fake server answers pings for
        self.bot: Bot | None = None
        self.dead_stores: list[Store] = []  # of the crashed bots
        self.loaded_at = T0
        self._start_bot()
        self._connect()
        self.model.observe(self.now)
        self._hourly_job()  # the first count, shortly after the start: today is not a gap

    def teardown(self) -> None:
        try:
            if self.bot is not None:
                self._cancel_background()
                self.bot.store.close(self.now)
            for store in self.dead_stores:
                store._shelf.close()
        finally:
            self.loop.close()
            self.folder.cleanup()

    # --- known faults -------------------------------------------------------------------------

    def _excluded(self, fault: str) -> bool:
        """Whether the scenario or check that exhibits this known fault is kept out."""
        assert fault in FAULTS, fault
        return fault in self.excluded_faults

    def _may_restart(self) -> bool:
        """False where a known fault keeps restarts out: pseudonymized, in a profile whose
        pings check the stored sessions, with sessions online or stored."""
        if self.pseudonymize and self.pings:
            stored_sessions = any(r.sessions for r in self.model.flushed.values())
            if self.model.sessions() or stored_sessions:
                return not self._excluded("pseudonymized-loaded-sessions-pinged-by-pseudonym")
        return True

    # --- driving the real objects ---------------------------------------------------------

    def _start_bot(self) -> None:
        """What `xmpp-active-users run` does before connecting: open, load, build."""
        with mock.patch.object(slixmpp_xmlstream.ssl, "create_default_context", no_tls_context):
            self.bot = Bot(
                self.settings,
                clock=lambda: self.now,
                timing=Timing(privileges_grace=3600, resync_grace=0, handshake_timeout=1),
            )
        component = self.bot.component
        component.loop = self.loop
        component.pinger.ping = self._fake_ping
        self.loaded_at = self.now

    async def _fake_ping(self, full_jid: str, timeout: float) -> str | None:
        """A pong from a session alive, else the server's service-unavailable."""
        bare, _, resource = full_jid.partition("/")
        return None if (bare, resource) in self.alive else "service-unavailable"

    def _presence(self, bare: str, resource: str, available: bool, node: str | None = None) -> None:
        """A presence as Prosody forwards it: available ones with the caps `node` (if any)."""
        component = self.bot.component
        stanza = component.make_presence(
            pfrom=f"{bare}/{resource}",
            pto=COMPONENT_JID,
            ptype=None if available else "unavailable",
        )
        if not available:  # the client logs out: its session is gone (the bot's ping says so)
            self.alive.discard((bare, resource))
        if available and node is not None:
            ElementTree.SubElement(
                stanza.xml,
                "{http://jabber.org/protocol/caps}c",
                hash="sha-1",
                node=node,
                ver="QgayPKawpkPSDYmwT/WM94uAlu0=",
            )
        self._in_loop(component.presence.on_presence, stanza)
        if available:
            self.model.start(bare, resource, self.now, node)
        else:
            self.model.end(bare, resource, self.now)
        self.model.observe(self.now)

    def _in_loop(self, handler, *args) -> None:
        """Run a handler as slixmpp does, in the event loop; then wait until the tracker has
        applied what it queued (a record read in the store's thread)."""

        async def handle() -> None:
            handler(*args)
            await self.bot.tracker.caught_up()
            # An unavailable presence is confirmed by a ping first (a task of the component).
            confirming = self.bot.component.watch.confirmations()
            if confirming:
                await asyncio.gather(*confirming)
                await self.bot.tracker.caught_up()

        if self.loop.is_running():  # inside the handshake: it waits for the tracker itself
            handler(*args)
        else:
            self.loop.run_until_complete(handle())

    def _connect(
        self,
        announce: list[tuple[str, str]] = (),
        alive: set[tuple[str, str]] = frozenset(),
        forget: str | None = None,
        leave: list[tuple[str, str]] = (),
        fresh: dict[tuple[str, str], str | None] | None = None,
    ) -> None:
        """The handshake succeeded: the server re-announces `announce` (Prosody), or the
        component pings every stored session, `alive` answering (ejabberd). An admin may
        `forget` a user meanwhile (within the resync's grace, or before the pings). `fresh`:
        the caps nodes of sessions that began during the outage."""
        fresh = fresh or {}
        component = self.bot.component
        self.alive = set(alive)
        dropped_at = component.connection.dropped_at
        before = self.model.sessions()

        async def handshake() -> None:
            component._on_session_start(None)
            for bare, resource in announce:  # with the node each session announced last
                node = self.model.nodes.get((bare, resource), fresh.get((bare, resource)))
                self._presence(bare, resource, available=True, node=node)
            for bare, resource in leave:  # clients that log out before any ping or grace ends
                self._presence(bare, resource, available=False)
            await self.bot.tracker.caught_up()
            if forget is not None:
                self.bot.tracker.forget(forget)
                self.model.forget(forget)
            still = before & self.model.sessions()
            if self.announces and dropped_at is not None:
                # Still within the resync's grace: the bot believes these online.
                self.model.observe(self.now)
                for bare, resource in sorted(still - set(announce)):
                    self.model.end(bare, resource, dropped_at)
            elif self.pings:
                for session in sorted(still):
                    if session in self.alive:
                        self.model.last_seen[session] = self.now
                    else:
                        self.model.end(*session, self.model.last_seen.get(session, self.now))
            duties = [
                task
                for task in component.background_tasks()
                if task.get_coro().__name__ != "_check_privileges"  # the privileges' warning
            ]
            await asyncio.gather(*duties)

        self.loop.run_until_complete(handshake())
        self._cancel_background()
        self.model.outage_since = None  # re-synced, or pinged: the bot knows who is online
        self.model.observe(self.now)

    def _cancel_background(self) -> None:
        component = self.bot.component
        pending = component.background_tasks()
        component.cancel_background()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def _drop_connection(self) -> None:
        """What `ActiveUsersComponent.serve` does when a connection ends."""
        component = self.bot.component
        component.connection.dropped(int(self.now))
        if self.model.outage_since is None:
            self.model.outage_since = self.now

    def _stop_cleanly(self, killed_in_snapshot: bool = False) -> None:
        """What `Bot.serve` does on its way out (SIGTERM): the last flush, then the index
        snapshot (`Bot._close_store`). `killed_in_snapshot`: the process dies while writing
        it, before its rename."""
        self._cancel_background()
        self.bot.record_today()
        self._check_day_snapshot()
        then = self.bot.tracker.snapshot_writer(int(self.now))
        with contextlib.ExitStack() as stack:
            if killed_in_snapshot:
                stack.enter_context(mock.patch.object(index_snapshot.os, "replace", Killed.now))
                stack.enter_context(contextlib.suppress(Killed))
            self.bot.store.close(int(self.bot.heartbeat_clock()), then=then)
        self.model.close(self.now)
        self.bot = None
        self._check_file_equals(self.model.records)

    def _crash(self) -> None:
        """kill -9: nothing more is written; the kernel releases the lock."""
        self._cancel_background()
        store = self.bot.store
        store._unlock()
        # Its connection stays open, idle, until the teardown: nothing more is committed and,
        # as after kill -9, nothing checkpoints the write-ahead log either.
        self.dead_stores.append(store)
        self.bot = None
        self.model.crash()
        self._check_file_equals(self.model.flushed)

    def _restart(
        self,
        announce_mask: list[bool],
        alive_mask: list[bool],
        leave_mask: list[bool] = (),
    ) -> None:
        """Start the bot again on the same store, and connect: the server re-announces the
        sessions still online (Prosody), or the bot pings the stored ones (ejabberd)."""
        online_before = sorted(self.model.sessions())
        self._start_bot()
        self.model.load(self.now, keep_sessions=self.keep_sessions)
        self.model.observe(self.now)
        announce, alive = [], set()
        if self.announces:
            announce = [s for s, keep in zip(online_before, announce_mask, strict=False) if keep]
        elif self.keep_sessions:
            alive = {s for s, ok in zip(online_before, alive_mask, strict=False) if ok}
        leave = [s for s, gone in zip(online_before, leave_mask, strict=False) if gone]
        self._connect(announce=announce, alive=alive, leave=leave)
        self._hourly_job()  # the first count, shortly after the start

    # --- the clock ----------------------------------------------------------------------------

    def _hourly_job(self) -> None:
        self.loop.run_until_complete(self.bot.after_count())
        self.loop.run_until_complete(self.bot.apply_retention())  # its own duty, as often
        self.model.pending = True  # today's snapshot, taken before the retention pass
        self._check_day_snapshot()
        self._retention_model()

    def _retention_model(self) -> None:
        since = self.now - RETENTION_DAYS * DAY
        for bare, record in list(self.model.flushed.items()):
            if record.sessions or record.last_active >= since:
                continue
            current = self.model.records.get(bare)
            if current is not None and not current.sessions and current.last_active < since:
                self.model.forget(bare)

    def _record_today(self, check: bool = True) -> None:
        self.bot.record_today()
        self.model.pending = True
        if check:
            self._check_day_snapshot()

    def _move_clock(self, target: int) -> None:
        """The clock of a running bot moves; the daily job runs at each midnight crossed."""
        if target >= self.now:
            while next_midnight(self.now) <= target:
                self.now = next_midnight(self.now)
                self.model.observe(self.now)
                self._record_today(check=next_midnight(self.now) > target)  # the last one
            self.now = target
        else:
            day_before = utc_day(self.now)
            self.now = target
            day = utc_day(target)
            if day != day_before:
                self.model.observe(self.now)
                self._record_today()
        self.model.observe(self.now)

    def _may_step_back_to(self, target: int) -> bool:
        """The README's limit: exact figures for steps back of up to LOAD_FLOOR_MARGIN below
        the last start-up (steps further back are logged; tests/test_window_edges.py)."""
        return target >= self.loaded_at - LOAD_FLOOR_MARGIN

    @rule(seconds=st.integers(1, 3600))
    def tick(self, seconds):
        self._move_clock(self.now + seconds)

    @rule(days=st.integers(1, 40), seconds=st.integers(0, DAY - 1))
    def leap(self, days, seconds):
        self._move_clock(self.now + days * DAY + seconds)

    @rule(user=st.sampled_from(COUNTED), window=st.sampled_from(WINDOWS), delta=st.integers(-1, 1))
    def onto_window_edge(self, user, window, delta):
        """Exactly onto (or one second around) the moment a user leaves a window."""
        record = self.model.records.get(user)
        if record is None:
            return
        target = record.last_active + window + delta
        if target < self.now and not self._may_step_back_to(target):
            return
        self._move_clock(target)

    @rule(seconds=st.sampled_from([1, 30, 3600, DAY, 3 * DAY]) | st.integers(1, 40 * DAY))
    def clock_steps_back(self, seconds):
        target = self.now - seconds
        if self._may_step_back_to(target):
            self._move_clock(target)

    # --- presence -------------------------------------------------------------------------------

    @rule(user=user_index, resource=resource_index, node=node_index)
    def login(self, user, resource, node=0):
        bare = USERS[user]
        self._presence(bare, resource_of(bare, resource), available=True, node=NODES[node])

    @rule(user=user_index, resource=resource_index)
    def logout(self, user, resource):
        bare = USERS[user]
        self._presence(bare, resource_of(bare, resource), available=False)

    @rule(
        events=st.lists(
            st.tuples(st.booleans(), user_index, resource_index, node_index),
            min_size=2,
            max_size=6,
        )
    )
    def burst(self, events):
        """Several presences at the same second (True: available)."""
        for available, user, resource, node in events:
            bare = USERS[user]
            resource = resource_of(bare, resource)
            self._presence(bare, resource, available=available, node=NODES[node])

    @precondition(lambda self: self.model.sessions())
    @rule(pick=st.integers(0, 100))
    def logout_of_an_online_session(self, pick):
        sessions = sorted(self.model.sessions())
        self._presence(*sessions[pick % len(sessions)], available=False)

    # --- the store ------------------------------------------------------------------------

    @rule()
    def flush(self):
        # As `flush_periodically` does: the heartbeat is the last time the bot knew who was
        # online (the drop, during an outage).
        self.bot.record_peak_if_risen()
        self.bot.store.flush(int(self.bot.heartbeat_clock()))
        self.model.flush(self.now)

    @precondition(lambda self: self._may_restart())
    @rule(
        downtime=st.sampled_from([0, 1, 600, DAY]),
        announce=verdict_list,
        alive=verdict_list,
        leave=verdict_list,
    )
    def clean_restart(self, downtime, announce, alive, leave):
        self._stop_cleanly()
        self.now += downtime
        self._restart(announce, alive, leave)

    @precondition(lambda self: self._may_restart())
    @rule(
        downtime=st.sampled_from([0, 1, 600, DAY]),
        announce=verdict_list,
        alive=verdict_list,
        leave=verdict_list,
    )
    def crash_and_restart(self, downtime, announce, alive, leave):
        self._crash()
        self.now += downtime
        self._restart(announce, alive, leave)

    @precondition(lambda self: self._may_restart())
    @rule(
        user=st.sampled_from(COUNTED),
        delta=st.integers(-1, 1),
        announce=verdict_list,
        alive=verdict_list,
        leave=verdict_list,
    )
    def restart_onto_load_floor(self, user, delta, announce, alive, leave):
        """A restart exactly when a user's last activity is the longest window old: the load
        keeps only timestamps after now - 30 days."""
        record = self.model.records.get(user)
        if record is None:
            return
        target = record.last_active + max(WINDOWS) + delta
        if target < self.now:
            return
        self._stop_cleanly()
        self.now = target
        self._restart(announce, alive, leave)

    @precondition(lambda self: self._may_restart() and not self._excluded("stop-during-outage"))
    @rule(
        outage=st.sampled_from([5, 120, 3600]),
        flush_meanwhile=st.booleans(),
        crash=st.booleans(),
        downtime=st.sampled_from([0, 600]),
        announce=verdict_list,
        alive=verdict_list,
        leave=verdict_list,
    )
    def stop_during_outage(self, outage, flush_meanwhile, crash, downtime, announce, alive, leave):
        """The connection drops; before it comes back the bot is stopped (or crashes), then
        started again: what it knew of the sessions ends at the drop."""
        self._drop_connection()
        self._move_clock(self.now + outage)
        if flush_meanwhile:
            self.flush()
        if crash:
            self._crash()
        else:
            self._stop_cleanly()
        self.now += downtime
        self._restart(announce, alive, leave)

    @precondition(lambda self: self._may_restart())
    @rule(
        fault=st.sampled_from(["none", "killed after the last flush", "killed in it", "damaged"]),
        where=st.integers(0, 2**20),
        downtime=st.sampled_from([0, 1, 600, DAY]),
        announce=verdict_list,
        alive=verdict_list,
        leave=verdict_list,
    )
    def snapshot(self, fault, where, downtime, announce, alive, leave):
        """A clean stop writes the index snapshot and the next start reads it instead of every
        record (the invariants then check its figures). A kill -9 after the stop's last flush
        or while the snapshot is written, or a snapshot damaged on disk, makes the next start
        read every record: never a snapshot that disagrees with the store."""
        loaded_at = self.loaded_at
        if fault == "killed after the last flush":
            self._cancel_background()
            self.bot.record_today()
            self.bot.store.flush(int(self.bot.heartbeat_clock()), heartbeat_interval=0)
            self.model.close(self.now)
            self._crash()
        else:
            self._stop_cleanly(killed_in_snapshot=fault == "killed in it")
        if fault == "damaged":
            path = index_snapshot.path_for(self.path)
            data = bytearray(path.read_bytes())
            data[where % len(data)] ^= 1 << (where % 8)
            path.write_bytes(bytes(data))
        self.now += downtime
        self._restart(announce, alive, leave)
        used = bool(self.bot.tracker.load_report.snapshot)
        assert used == (fault == "none" and self.now >= loaded_at), (fault, used)

    # --- the connection -----------------------------------------------------------------------

    @rule(
        outage=st.sampled_from([1, 5, 120, 3600]),
        announce=verdict_list,
        alive=verdict_list,
        leave=verdict_list,
        newcomers=sessions_list,
        check_while_down=st.booleans(),
        forget=st.none() | st.integers(0, 100),
    )
    def reconnect(self, outage, announce, alive, leave, newcomers, check_while_down, forget):
        """The connection drops and comes back. Prosody re-announces who is online (here: some
        of the sessions, and newcomers); ejabberd says nothing and the bot pings. Right after
        the handshake, some clients log out (`leave`) and an admin may forget one of the
        users who were online (`forget`: which of them, in order)."""
        online_before = sorted(self.model.sessions())
        self._drop_connection()
        if check_while_down and self.bot.component.pings_every_session:
            # A periodic check while disconnected: every ping "cannot tell", nothing changes.
            self.loop.run_until_complete(self.bot.component.liveness.check_now())
        self._move_clock(self.now + outage)
        if forget is not None and self.announces and self._excluded("forget-during-resync"):
            forget = None
        leaving = [s for s, gone in zip(online_before, leave, strict=False) if gone]
        were_online = sorted({bare for bare, _resource in online_before})
        forgotten = (
            None if forget is None or not were_online else were_online[forget % len(were_online)]
        )
        if self.announces:
            kept = [s for s, keep in zip(online_before, announce, strict=False) if keep]
            fresh = {(USERS[u], resource_of(USERS[u], r)): NODES[n] for u, r, n in newcomers}
            announced = kept + [s for s in fresh if s not in kept]
            self._connect(announce=announced, leave=leaving, forget=forgotten, fresh=fresh)
        else:
            alive_set = {s for s, ok in zip(online_before, alive, strict=False) if ok}
            self._connect(alive=alive_set, leave=leaving, forget=forgotten)

    @precondition(lambda self: self.liveness)
    @rule(alive=verdict_list, cant_tell=st.booleans())
    def liveness_check(self, alive, cant_tell):
        """One round of pings: each session answers (alive) or the server says it is gone;
        with the connection down, no ping can tell, and nothing changes."""
        component = self.bot.component
        online = sorted(self.model.sessions())
        self.alive = {s for s, ok in zip(online, alive, strict=False) if ok}
        if cant_tell:
            component.connection.connected_since = None
        try:
            self.loop.run_until_complete(component.liveness.check_now())
        finally:
            if cant_tell:
                component.connection.connected_since = float(self.now)
        if not cant_tell:
            for session in online:
                if session in self.alive:
                    self.model.last_seen[session] = self.now
                else:
                    self.model.end(*session, self.model.last_seen.get(session, self.now))

    # --- admins and the hourly job ---------------------------------------------------------------

    @rule(user=user_index, while_running=st.booleans())
    def forget(self, user, while_running):
        """Forget a user: the ad-hoc command (the running bot), or `forget` on the stopped bot's
        store (then the bot starts again)."""
        bare = USERS[user]
        if not while_running and not self._may_restart():
            return
        if while_running:
            self.bot.tracker.forget(bare)
            self.model.forget(bare)
            return
        self._stop_cleanly()
        with Store(self.path, pseudonym_key=self.settings.pseudonym_key) as store:
            if store.get(store.key_of(bare)) is not None:
                store.delete(store.key_of(bare))
        self.model.forget(bare)
        self.model.flushed = dict(self.model.records)
        self.model.pending = False
        self._restart(EVERYONE, EVERYONE)

    @precondition(lambda self: self._may_restart())
    @rule(
        entries=st.lists(
            st.tuples(
                user_index,
                st.integers(0, 60 * DAY),
                st.integers(0, 60 * DAY),
                st.integers(0, 90 * DAY),
                st.sampled_from(["login", "logout", "both", "none"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def import_history(self, entries):
        """Stop the bot, import Prosody's history (per user: ages of the last login, logout and
        registration), start again."""
        activities = []
        for user, login_age, logout_age, registered_age, which in entries:
            if USERS[user] in EXCLUDED and self._excluded("import-stores-excluded-users"):
                continue
            activities.append(
                Activity(
                    USERS[user],
                    last_login=self.now - login_age if which in ("login", "both") else 0,
                    last_logout=self.now - logout_age if which in ("logout", "both") else 0,
                    registered=self.now - registered_age if registered_age % 2 else 0,
                )
            )
        self._stop_cleanly()
        with Store(self.path, pseudonym_key=self.settings.pseudonym_key) as store:
            import_activities(store, activities, DOMAINS, dry_run=False, exclude=EXCLUDE)
        for activity in activities:
            self.model.merge_import(activity)
        self.model.flushed = dict(self.model.records)
        self._check_file_equals(self.model.records)
        self._restart(EVERYONE, EVERYONE)

    @rule()
    def hourly_job(self):
        """Today's snapshot (`Bot.after_count`), then the retention pass."""
        self._hourly_job()

    # --- checks -------------------------------------------------------------------------------

    def _stored(self, store: Store) -> dict[str, tuple[int, int, int, tuple[str, ...]]]:
        return {bare: tuple(record) for bare, record in store.users()}

    def _identity(self, bare: str) -> str:
        return Pseudonyms(self.settings.pseudonym_key).user(bare)

    def _session_key(self, resource: str) -> str:
        return Pseudonyms(self.settings.pseudonym_key).session(resource)

    def _compare_records(self, stored: dict, records: dict[str, Rec], where: str) -> None:
        expected = {self._identity(bare): record for bare, record in records.items()}
        assert set(stored) == set(expected), (
            f"{where}: users stored {sorted(stored)} != model {sorted(expected)}"
        )
        for key, record in expected.items():
            first_seen, login, logout, sessions, clients, _ = stored[key]
            assert (first_seen, login, logout) == (
                record.first_seen,
                record.login,
                record.logout,
            ), f"{where}: {key}: stored {stored[key]} != model {record}"
            assert dict(zip(clients[::2], clients[1::2], strict=True)) == record.clients, (
                f"{where}: {key}: clients stored {clients} != model {record.clients}"
            )
            families = UserRecord(*stored[key]).session_families()
            if self.pseudonymize:
                assert len(sessions) == len(record.sessions), (where, key, sessions, record)
                assert sorted(families) == sorted(record.session_family.values()), (where, key)
            else:
                assert sorted(sessions) == sorted(record.sessions), (where, key, sessions, record)
                assert len(set(sessions)) == len(sessions), (where, key, sessions)
                assert dict(zip(sessions, families, strict=True)) == record.session_family, (
                    f"{where}: {key}: session families {families} != {record.session_family}"
                )

    def _check_file_equals(self, records: dict[str, Rec]) -> None:
        """What is on disk, read by another connection (as `count` reads it)."""
        with Store(self.path, readonly=True) as reader:
            stored = self._stored(reader)
        self._compare_records(stored, records, "the file")

    def _check_day_snapshot(self) -> None:
        """Today's snapshot (just rewritten): the figures at this moment, and the peak."""
        day = utc_day(self.now)
        self.model.observe(self.now)
        snapshot = self.bot.store.days()[day]
        for domain in DOMAINS:
            stored = snapshot[domain]
            expected = self._expected_figures((domain,))
            active = tuple(stored["active"][label] for label in ("1d", "7d", "30d"))
            new = tuple(stored["new"][label] for label in ("1d", "7d", "30d"))
            assert (active, new) == (expected["active"], expected["new"]), (
                f"snapshot of {domain} on {day}: active {active}, new {new}, model {expected}"
            )
            assert stored["peak_online"] == self.model.day_max[day][domain], (
                f"peak online of {domain} on {day}: stored {stored['peak_online']}, "
                f"model {self.model.day_max[day][domain]}"
            )

    def check_everything(self) -> None:
        self.figures_are_the_seeds()
        self.client_figures_are_the_seeds_per_client()
        self.online_sessions_are_the_models()
        self.store_equals_the_model()
        self.pseudonymized_file_holds_no_address()

    @invariant()
    def figures_are_the_seeds(self):
        """Per counted domain and in total: the seed's loop over the model's records; users
        and sessions online as in the model, never negative."""
        tracker, now = self.bot.tracker, self.now
        by_domain = tracker.counts_by_domain(now)
        expected_total = self._expected_figures(DOMAINS)
        for domain in DOMAINS:
            self._check_figures(f"{domain} at {now}", by_domain[domain], (domain,))
        got_total = self._figures_of(tracker.counts(now))
        assert got_total == expected_total, f"total at {now}: {got_total}, model {expected_total}"

    @invariant()
    def client_figures_are_the_seeds_per_client(self):
        """Per counted domain and client family: the seed's rule over that family's sessions
        in the model (online with it now, or their last login or logout within the window);
        in total, the sum over the domains."""
        tracker, now = self.bot.tracker, self.now
        by_domain = tracker.client_counts_by_domain(now)
        for domain in DOMAINS:
            got = {
                family: (tuple(c.active[w] for w in WINDOWS), c.online_users, c.online_sessions)
                for family, c in by_domain[domain].items()
                if any(c.active.values()) or c.online_users
            }
            expected = self.model.client_figures(domain, now)
            assert got == expected, f"clients of {domain} at {now}: {got}, model {expected}"
        total = {
            family: (tuple(c.active[w] for w in WINDOWS), c.online_users, c.online_sessions)
            for family, c in tracker.client_counts(now).items()
            if any(c.active.values()) or c.online_users
        }
        expected_total: dict[str, tuple] = {}
        for domain in DOMAINS:
            for family, (active, users, sessions) in self.model.client_figures(domain, now).items():
                known = expected_total.get(family, ((0, 0, 0), 0, 0))
                expected_total[family] = (
                    tuple(a + b for a, b in zip(known[0], active, strict=True)),
                    known[1] + users,
                    known[2] + sessions,
                )
        assert total == expected_total, f"clients in total at {now}: {total}, {expected_total}"

    def _expected_figures(self, domains) -> dict[str, tuple[int, ...]]:
        records = [r for domain in domains for r in self.model.of_domain(domain)]
        return {
            "active": seed_counts([r.as_seed() for r in records], self.now),
            "new": tuple(sum(self.now - r.first_seen < w for r in records) for w in WINDOWS),
            "online": (
                sum(1 for r in records if r.sessions),
                sum(len(r.sessions) for r in records),
            ),
            "known": (len(records),),
        }

    @staticmethod
    def _figures_of(counts) -> dict[str, tuple[int, ...]]:
        return {
            "active": tuple(counts.active[w] for w in WINDOWS),
            "new": tuple(counts.new_users[w] for w in WINDOWS),
            "online": (counts.online_users, counts.online_sessions),
            "known": (counts.known_users,),
        }

    def _check_figures(self, where: str, counts, domains) -> None:
        got = self._figures_of(counts)
        assert min(got["online"]) >= 0, f"{where}: online users, sessions {got['online']}"
        expected = self._expected_figures(domains)
        for figure in ("active", "online", "new", "known"):
            assert got[figure] == expected[figure], (
                f"{where}: {figure} {got[figure]}, model {expected[figure]}"
                + (" (the seed's loop)" if figure == "active" else "")
            )

    @invariant()
    def online_sessions_are_the_models(self):
        """The sessions the bot believes online are the users' real ones (by their keys: with
        pseudonymize, pseudonyms), and the ones it would ping are real addresses online."""
        believed = self.bot.tracker.online_sessions()
        expected = {
            (self._identity(bare), self._session_key(resource))
            for bare, resource in self.model.sessions()
        }
        assert believed == expected, (
            f"believed online {sorted(believed)} != model {sorted(expected)}"
        )
        if self.liveness:
            pingable = set(self.bot.component.sessions_to_ping())
            assert pingable <= self.model.sessions(), (
                f"would ping {sorted(pingable - self.model.sessions())}, not online"
            )

    @invariant()
    def store_equals_the_model(self):
        self._compare_records(self._stored(self.bot.store), self.model.records, "the store")

    @invariant()
    def pseudonymized_file_holds_no_address(self):
        if not self.pseudonymize:
            return
        for path in self.path.parent.iterdir():
            if not path.name.startswith(self.path.name) or path.name.endswith(".lock"):
                continue
            data = path.read_bytes()
            if self._excluded("pseudonymized-resources-in-clear"):
                # Look for localparts only outside the resources (some contain the localpart).
                for resource in sorted(resources_of_the_store(), key=len, reverse=True):
                    data = data.replace(resource, b"")
            found = sorted(word.decode() for word in secrets_of_the_store() if word in data)
            assert not found, f"{path.name} contains {found}"


# --- running it ----------------------------------------------------------------------------------

DEFAULT_RUN = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
HEAVY_RUN = settings(DEFAULT_RUN, max_examples=500, stateful_step_count=80)


def machine(profile: str, pseudonymize: bool, excluded: frozenset[str] | None = None) -> type:
    return type(
        f"CoreMachine_{profile}_{'pseudonymized' if pseudonymize else 'plain'}",
        (CoreMachine,),
        {
            "profile": profile,
            "pseudonymize": pseudonymize,
            "excluded_faults": KNOWN_FAULTS if excluded is None else excluded,
        },
    )


@pytest.mark.parametrize("pseudonymize", [False, True], ids=["plain", "pseudonymized"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_core_matches_the_model(profile, pseudonymize):
    run_state_machine_as_test(
        machine(profile, pseudonymize), settings=HEAVY_RUN if HEAVY else DEFAULT_RUN
    )


# --- replaying a history step by step ------------------------------------------------------------


def replay(profile: str, pseudonymize: bool, steps, excluded=frozenset()) -> None:
    """Run `steps` ((rule, arguments) pairs) on a machine, checking every invariant after each,
    as hypothesis does; `excluded` faults are kept out (none by default: everything checked)."""
    state = machine(profile, pseudonymize, excluded)()
    try:
        state.check_everything()
        for name, arguments in steps:
            getattr(state, name)(**arguments)
            state.check_everything()
    finally:
        state.teardown()


# --- the known faults, each on its shrunk example ------------------------------------------------
# Shrunk by hypothesis (some made shorter by hand), replayed with every check on. While a fault is
# in KNOWN_FAULTS its example must fail (strict xfail); once fixed, take it off the list.

NO_RESTART_CHOICE = {"announce": [], "alive": [], "leave": []}
FAULT_EXAMPLES = {
    "peak-not-on-disk-at-crash": (
        "prosody",
        False,
        [
            ("login", {"user": 0, "resource": 0}),
            ("flush", {}),
            ("crash_and_restart", {"downtime": 0, **NO_RESTART_CHOICE}),
        ],
    ),
    "day-peak-lost-on-step-back": (
        "prosody",
        False,
        [
            ("leap", {"days": 1, "seconds": 0}),
            ("login", {"user": 0, "resource": 0}),  # tomorrow's peak: 1
            ("logout", {"user": 0, "resource": 0}),
            ("clock_steps_back", {"seconds": DAY}),  # today's peak stays 0
        ],
    ),
    "heartbeat-frozen-after-reconnect-without-liveness": (
        "generic-no-liveness",
        False,
        [
            ("login", {"user": 0, "resource": 0}),
            (
                "reconnect",
                {
                    "outage": 5,
                    "newcomers": [],
                    "check_while_down": False,
                    "forget": None,
                    **NO_RESTART_CHOICE,
                },
            ),
            ("tick", {"seconds": 60}),
            ("login", {"user": 1, "resource": 0}),
            ("tick", {"seconds": 60}),
            ("clean_restart", {"downtime": 0, **NO_RESTART_CHOICE}),
        ],
    ),
    "stop-during-outage": (
        "prosody",
        False,
        [
            ("login", {"user": 0, "resource": 0}),
            (
                "stop_during_outage",
                {
                    "outage": 120,
                    "flush_meanwhile": False,
                    "crash": False,
                    "downtime": 0,
                    **NO_RESTART_CHOICE,
                },
            ),
        ],
    ),
    "import-stores-excluded-users": (
        "prosody",
        False,
        [("import_history", {"entries": [(4, 0, 0, 0, "login")]})],
    ),
    "clock-back-below-load-floor": (
        "prosody",
        False,
        [
            ("logout", {"user": 0, "resource": 0}),
            ("restart_onto_load_floor", {"user": COUNTED[0], "delta": 0, **NO_RESTART_CHOICE}),
            ("clock_steps_back", {"seconds": 1}),
        ],
    ),
    "day-peak-lost-on-reset": (
        "prosody",
        False,
        [
            ("login", {"user": 0, "resource": 0}),
            ("clean_restart", {"downtime": 0, **NO_RESTART_CHOICE}),
            ("hourly_job", {}),
        ],
    ),
    "pseudonymized-resources-in-clear": (
        "ejabberd",
        True,
        [("login", {"user": 0, "resource": 0}), ("flush", {})],
    ),
    "pseudonymized-loaded-sessions-pinged-by-pseudonym": (
        "ejabberd",
        True,
        [
            ("login", {"user": 0, "resource": 0}),
            # Alive, but she logs out before the ping: online users -1.
            ("clean_restart", {"downtime": 0, "announce": [], "alive": [True], "leave": [True]}),
        ],
    ),
    "forget-during-resync": (
        "prosody",
        False,
        [
            ("login", {"user": 0, "resource": 0}),
            (
                "reconnect",
                {
                    "outage": 5,
                    "newcomers": [],
                    "check_while_down": False,
                    "forget": 0,
                    **NO_RESTART_CHOICE,
                },
            ),
        ],
    ),
}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            fault,
            marks=pytest.mark.xfail(
                fault in KNOWN_FAULTS, reason=FAULTS[fault], raises=AssertionError, strict=True
            ),
        )
        for fault in sorted(FAULT_EXAMPLES)
    ],
)
def test_known_fault_example(fault):
    profile, pseudonymize, steps = FAULT_EXAMPLES[fault]
    replay(profile, pseudonymize, steps)


def test_every_fault_has_its_example():
    assert KNOWN_FAULTS <= set(FAULTS) == set(FAULT_EXAMPLES)
