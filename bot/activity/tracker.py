"""Sessions, logins and logouts: turns presence-shaped events into records and index updates.

Knows nothing of XMPP stanzas: the component hands it bare JIDs, resources and the time. Inside,
users and sessions are known by their store keys (`Store.key_of`, `Store.session_key`): the
JIDs themselves, or with `[privacy] pseudonymize` their pseudonyms, which is all a store holds.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import logging
import re
from array import array
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from time import perf_counter

from ..core.client_families import Families
from ..core.counter import (
    DAY,
    DEFAULT_WINDOWS,
    ActivityIndex,
    ClientCounts,
    ClientParts,
    Counts,
    SortedTimes,
)
from ..core.model import UserRecord, domain_of, with_client_activity
from ..storage import index_snapshot
from ..storage.codec import DamagedRecord, decode_record
from ..storage.index_snapshot import (
    ClientPart,
    DomainPart,
    FileState,
    IndexSnapshot,
    SnapshotRefused,
    Times,
)
from ..storage.store import Store

log = logging.getLogger("bot.activity")  # its name from before the layers: admins grep it

LOAD_FLOOR_MARGIN = DAY  # how far the clock may step back below the start-up load

READ_BATCH = 4096  # records read from the store per trip to a worker thread
READ_RETRY_DELAY = 1.0  # seconds before reading again after the store failed to answer
RETENTION_CHUNK = 1_000  # users re-checked by retention between two looks at the queue


@dataclass(frozen=True)
class LoadReport:
    users: int
    recovered_sessions: int  # sessions left online by a stop or crash, closed at the heartbeat
    closed_at: int
    hidden: int = 0  # stored users that the exclusions now hide
    snapshot: str = ""  # how the index was read: "" (every record), else the snapshot's path


def exclusion_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Bare JIDs and glob patterns (`*@bots.example.org`), case-insensitive, as one regex."""
    patterns = tuple(patterns)
    if not patterns:
        return lambda _bare_jid: False
    regex = re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns))
    return lambda bare_jid: regex.match(bare_jid.lower()) is not None


@dataclass
class _Loading:
    """One domain's ints while the store is read at start-up."""

    offline: list[int] = field(default_factory=list)
    first_seen: list[int] = field(default_factory=list)
    known_users: int = 0
    online_users: int = 0
    online_sessions: int = 0
    hidden: int = 0
    clients: dict[str, ClientParts] = field(default_factory=dict)
    # family -> its `offline` list's append: the scan's inner loop, one lookup per family
    client_appends: dict[str, Callable[[int], None]] = field(default_factory=dict)

    def client(self, family: str) -> ClientParts:
        parts = self.clients.get(family)
        if parts is None:
            parts = self.clients[family] = ClientParts()
            self.client_appends[family] = parts.offline.append
        return parts

    def client_append(self, family: str) -> Callable[[int], None]:
        append = self.client_appends.get(family)
        return self.client(family).offline.append if append is None else append

    def add_client_states(self, record: UserRecord, floor: int) -> None:
        """A user with sessions online: per family, online with it, or its last activity."""
        for family, (time, online) in record.client_states().items():
            parts = self.client(family)
            if online:
                parts.online_users += 1
                parts.online_sessions += online
            elif time > floor:
                parts.offline.append(time)

    def index(self, floor: int, horizon: int, windows_floor: int, windows: int) -> ActivityIndex:
        return ActivityIndex.from_parts(
            offline_last_active=self.offline,
            first_seen=self.first_seen,
            online_users=self.online_users,
            online_sessions=self.online_sessions,
            known_users=self.known_users,
            floor=floor,
            horizon=horizon,
            clients=self.clients,
            windows_floor=windows_floor,
            windows_horizon=windows,
        )


@dataclass
class _Scan:
    """What one pass over the store found, for all counted domains."""

    domains: dict[bytes, _Loading]
    stale: list[tuple[str, UserRecord]] = field(default_factory=list)  # sessions to close
    recovered_sessions: int = 0

    @property
    def hidden(self) -> int:
        return sum(part.hidden for part in self.domains.values())

    @property
    def families(self) -> set[str]:
        """The client families with activity the index keeps (or sessions online)."""
        return {family for part in self.domains.values() for family in part.clients}


class ActivityTracker:
    """The live state: one ActivityIndex per counted domain, and the online users' records.

    Every change goes to the store (grouped writes) and to the index, in that order of truth:
    the store is what survives, the index is what answers.

    `windows` are the figures counted everywhere; `extra_windows` are longer ones that some
    figures need too (NodeInfo's 180 days): the index keeps what they need, the client
    families only what `windows` need.

    Two ways in. The methods below (`session_started`, ...) apply a change at once, reading a
    user's record from the store (its disk) when it is not in memory: the command line and the
    tests. With `read_in_threads` (the running bot), changes go in through `when_loaded` (and
    `forget_soon`, `forget_inactive_soon`): applied in the order given, each once the record
    it needs is in memory, so that an offline user's record is read in a worker thread, never
    on the event loop. A change whose record is in memory (an online user's, a recent one)
    is applied at once, unless changes given before it still wait for a read: then it waits
    too. Figures asked meanwhile simply do not include the waiting changes (milliseconds).
    """

    def __init__(
        self,
        store: Store,
        domains: Iterable[str],
        *,
        exclude: Iterable[str] = (),
        windows: Iterable[int] = DEFAULT_WINDOWS,
        extra_windows: Iterable[int] = (),
        read_in_threads: bool = False,
    ) -> None:
        self._store = store
        self._read_in_threads = read_in_threads
        # Changes waiting for a record, in the order given: (store key or None, change).
        self._queue: deque[tuple[str | None, Callable[[], None]]] = deque()
        self._waiting_for: dict[str, int] = {}  # key -> how many waiting changes need it
        # The records that waiting changes need (read from the store, or as they were changed
        # while changes wait); always current; dropped when no waiting change needs them.
        self._loaded: dict[str, UserRecord | None] = {}
        self._to_read: dict[str, None] = {}  # keys to read next (an ordered set)
        self._reading: dict[str, bool] = {}  # key being read -> unchanged since the read began
        # The read in the store's thread: its future and keys.
        self._read: tuple[Future[dict[str, bytes | None]], list[str]] | None = None
        self._read_paused = False  # after a failed read, until the retry
        self._read_problem = ""  # the store's last read failure, logged once
        exclude = tuple(exclude)
        self._exclusions_id = index_snapshot.exclusions_id(exclude)
        self._excluded = exclusion_matcher(exclude)
        self._has_exclusions = bool(exclude)
        self.windows = tuple(windows)
        self.extra_windows = tuple(extra_windows)
        self._families = Families()
        self._indexes: dict[str, ActivityIndex] = {domain: ActivityIndex() for domain in domains}
        self._online: dict[str, UserRecord] = {}  # store key -> record, online users only
        self._peaks = _DailyPeaks()
        # During a resync (see below): each session not re-announced yet -> the last time it
        # was known online; and how many sessions have each such time.
        self._unconfirmed: dict[tuple[str, str], int] | None = None
        self._unconfirmed_times: Counter[int] = Counter()
        self._exact_since = 0  # the figures are exact for clocks from then on (see load)
        self._clock_warned = False
        self._floors: tuple[int, int] | None = None  # the load's (floor, windows floor)
        self._hidden: dict[str, int] = {}  # per domain, stored users the exclusions hide
        self.load_report: LoadReport | None = None  # the last load's

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._indexes)

    def load(self, now: int, *, close_stale_sessions: bool = True) -> LoadReport:
        """Build the indexes from the store, closing sessions a stop or crash left open.

        Those sessions end at the store's heartbeat: the last time the writer was known alive.
        A reader of a store whose writer is running passes `close_stale_sessions=False`: there
        the stored sessions are live. Users of domains no longer configured stay, uncounted.
        """
        closed_at = self._store.heartbeat or now
        horizon = max(self.windows + self.extra_windows)
        windows_horizon = max(self.windows)
        # Older timestamps can never count (see ActivityIndex), unless the clock steps back: up
        # to LOAD_FLOOR_MARGIN back, every user is still there.
        floor = now - horizon - LOAD_FLOOR_MARGIN
        windows_floor = now - windows_horizon - LOAD_FLOOR_MARGIN
        self._exact_since = now - LOAD_FLOOR_MARGIN
        self._online.clear()
        self._floors = (floor, windows_floor)
        close_at = closed_at if close_stale_sessions else None
        gc.disable()  # a million short-lived tuples and no cycle: collecting would only cost time
        try:
            loaded = self._load_snapshot(floor, horizon, windows_floor, windows_horizon, close_at)
            if loaded is None:
                scan = self._scan_store(floor, windows_floor, close_at)
                indexes = {
                    domain: part.index(floor, horizon, windows_floor, windows_horizon)
                    for domain, part in zip(self._indexes, scan.domains.values(), strict=True)
                }
                hidden = {
                    domain: part.hidden
                    for domain, part in zip(self._indexes, scan.domains.values(), strict=True)
                }
                loaded = indexes, hidden, scan.stale, scan.recovered_sessions, ""
        finally:
            gc.enable()
        self._indexes, self._hidden, stale, recovered, source = loaded
        self._families = Families()
        self._families.admit_stored(
            family for index in self._indexes.values() for family in index.clients
        )
        for key, record in stale:
            self._store.put(key, record)
        self.load_report = LoadReport(
            users=sum(index.known_users for index in self._indexes.values()),
            recovered_sessions=recovered,
            closed_at=closed_at,
            hidden=sum(self._hidden.values()),
            snapshot=source,
        )
        return self.load_report

    def _load_snapshot(
        self,
        floor: int,
        horizon: int,
        windows_floor: int,
        windows_horizon: int,
        close_at: int | None,
    ) -> (
        tuple[dict[str, ActivityIndex], dict[str, int], list[tuple[str, UserRecord]], int, str]
        | None
    ):
        """The indexes from the index snapshot the last clean stop wrote, if it describes this
        store as it is now (see `index_snapshot`); None otherwise, saying why in one line.
        A writer only: it alone knows that nothing writes the store meanwhile."""
        store = self._store
        if store.readonly or store.file_state_at_open is None:
            return None
        path = index_snapshot.path_for(store.path)
        started = perf_counter()
        try:
            snapshot, size = index_snapshot.read(
                path,
                store.generation,
                store.file_state_at_open,
                exclude=self._exclusions_id,
                domains=self._indexes,
            )
            if snapshot.floor > floor or snapshot.windows_floor > windows_floor:
                raise SnapshotRefused(
                    "keeps too short a past for this start (a longer window, NodeInfo's 180 "
                    "days, or a clock set back)"
                )
            loaded = self._indexes_from(
                snapshot, floor, horizon, windows_floor, windows_horizon, close_at
            )
        except SnapshotRefused as refused:
            level = logging.INFO if refused.args[0].startswith("none") else logging.WARNING
            log.log(level, "Index snapshot %s: %s; reading every record instead", path, refused)
            return None
        log.info(
            "Index read from its snapshot %s (%.0f MiB) in %.2f s",
            path,
            size / 2**20,
            perf_counter() - started,
        )
        return (*loaded, str(path))

    def _indexes_from(
        self,
        snapshot: IndexSnapshot,
        floor: int,
        horizon: int,
        windows_floor: int,
        windows_horizon: int,
        close_at: int | None,
    ) -> tuple[dict[str, ActivityIndex], dict[str, int], list[tuple[str, UserRecord]], int]:
        """The snapshot's lists, cut at this load's floors, with the online users' records read
        from the store (closed at `close_at`, unless None: then kept online). The arrays stay
        packed: the index keeps them as they are (`counter.SortedTimes`)."""

        def kept(values: Times, after: int) -> array[int]:
            if not isinstance(values, array):  # read from the file: always packed
                raise TypeError(f"a snapshot's times are not packed: {type(values)}")
            return values[bisect_right(values, after) :]

        indexes: dict[str, ActivityIndex] = {}
        online: list[str] = []
        for domain in self._indexes:
            part = snapshot.domains[domain]
            clients = {
                family: ClientParts(
                    kept(client.offline, windows_floor),
                    client.online_users,
                    client.online_sessions,
                )
                for family, client in part.clients.items()
            }
            indexes[domain] = ActivityIndex.from_parts(
                offline_last_active=kept(part.offline, floor),
                first_seen=kept(part.first_seen, windows_floor),
                online_users=part.online_users,
                online_sessions=part.online_sessions,
                known_users=part.known_users,
                floor=floor,
                horizon=horizon,
                clients=clients,
                windows_floor=windows_floor,
                windows_horizon=windows_horizon,
            )
            online.extend(part.online)
        stale: list[tuple[str, UserRecord]] = []
        recovered = 0
        values = self._store.read_stored(online)
        sessions = Counter[str]()
        for key in online:
            try:
                record = decode_record(values[key])  # type: ignore[arg-type]
            except (DamagedRecord, TypeError):
                record = None
            domain = domain_of(key)
            if record is None or not record.sessions or domain not in indexes:
                raise SnapshotRefused(f"disagrees with the store (the record of {key})")
            sessions[domain] += len(record.sessions)
            if close_at is None:
                self._online[key] = record
                continue
            closed = _closed(record, close_at)
            indexes[domain].replace(record, closed)
            stale.append((key, closed))
            recovered += len(record.sessions)
        for domain, index in indexes.items():
            part = snapshot.domains[domain]
            if sessions[domain] != part.online_sessions or len(part.online) != part.online_users:
                raise SnapshotRefused(f"disagrees with the store (the sessions of {domain})")
            index.drop_empty_clients()
        hidden = {domain: snapshot.domains[domain].hidden for domain in indexes}
        return indexes, hidden, stale, recovered

    def snapshot_writer(self, now: int) -> Callable[[bytes, FileState], object] | None:
        """What writes the index snapshot (`Store.close(then=...)`): call it at a clean stop,
        once nothing changes the index any more, after the last change was handed to the
        store. It takes the index as it is (no copy: the writing thread reads the live lists).
        None before the first load."""
        if self._floors is None:
            return None
        # What the next start needs at the earliest (the clock moves on); no less than is kept.
        horizon = max(self.windows + self.extra_windows)
        floor = max(self._floors[0], now - horizon - LOAD_FLOOR_MARGIN)
        windows_floor = max(self._floors[1], now - max(self.windows) - LOAD_FLOOR_MARGIN)
        domains: dict[str, DomainPart] = {}
        online: dict[str, list[str]] = {domain: [] for domain in self._indexes}
        for key in self._online:
            online[domain_of(key)].append(key)
        for domain, index in self._indexes.items():
            offline, first_seen, clients = index.kept_lists()
            domains[domain] = DomainPart(
                known_users=index.known_users,
                online_users=index.online_users,
                online_sessions=index.online_sessions,
                hidden=self._hidden.get(domain, 0),
                offline=_Later(offline, floor),
                first_seen=_Later(first_seen, windows_floor),
                clients={
                    family: ClientPart(
                        _Later(times, windows_floor),
                        online_users,
                        online_sessions,
                    )
                    for family, (times, online_users, online_sessions) in clients.items()
                },
                online=online[domain],
            )
        snapshot = IndexSnapshot(floor, windows_floor, self._exclusions_id, domains)
        path = index_snapshot.path_for(self._store.path)

        def write(generation: bytes, state: FileState) -> None:
            started = perf_counter()
            size = index_snapshot.write(path, snapshot, generation, state)
            log.info(
                "Index snapshot written: %s (%.0f MiB) in %.2f s",
                path,
                size / 2**20,
                perf_counter() - started,
            )

        return write

    def _scan_store(self, floor: int, windows_floor: int, close_sessions_at: int | None) -> _Scan:
        """One pass over the store for all domains; per user only ints are kept, and keys are
        decoded only for the few users online (a million users load in seconds)."""
        scan = _Scan(domains={domain.encode(): _Loading() for domain in self._indexes})
        excluded = self._excluded if self._has_exclusions else None
        for raw_key, record in self._store.users_by_raw_key():
            first_seen, login, logout, sessions, clients, _session_clients = record
            part = scan.domains.get(raw_key[raw_key.rfind(b"@") + 1 :])
            if part is None:
                continue
            if excluded is not None and excluded(raw_key.decode(errors="replace")):
                part.hidden += 1
                continue
            part.known_users += 1
            if first_seen > windows_floor:
                part.first_seen.append(first_seen)
            if sessions:
                key = raw_key.decode(errors="replace")
                if close_sessions_at is None:  # live sessions: a reader of a running bot
                    self._online[key] = record
                    part.online_users += 1
                    part.online_sessions += len(sessions)
                    part.add_client_states(record, windows_floor)
                    continue
                # Left open by a stop or crash: they ended at the last sign of life.
                scan.recovered_sessions += len(sessions)
                record = _closed(record, close_sessions_at)
                logout, clients = record.last_logout, record.clients
                scan.stale.append((key, record))
            last_active = login if login > logout else logout
            if last_active > floor:
                part.offline.append(last_active)
            if not clients:
                continue
            # Per client family its time; one family, mostly, whose time is the user's last
            # activity: one int object in both lists. Dormant families are not kept (they free
            # their place among the host families, see clients.Families).
            # The ignores: `clients` alternates family (str) and time (int), checked by the
            # codec; mypy sees str | int, and a cast per item would cost in this hot loop.
            time = clients[1]
            if time > windows_floor:  # type: ignore[operator]
                append = part.client_appends.get(clients[0]) or part.client_append(clients[0])  # type: ignore[arg-type]
                append(last_active if time == last_active else time)  # type: ignore[arg-type]
            for i in range(2, len(clients), 2):
                time = clients[i + 1]
                if time > windows_floor:  # type: ignore[operator]
                    part.client_append(clients[i])(time)  # type: ignore[arg-type]
        return scan

    def _check_clock(self, now: int) -> None:
        """Figures are exact down to LOAD_FLOOR_MARGIN before the start-up load; a clock that
        stepped back further may miss users until the next start (logged once per run)."""
        if now < self._exact_since and not self._clock_warned:
            self._clock_warned = True
            log.warning(
                "The clock stepped back %d s before this run's start-up: users last active more "
                "than %d days before it may be missing from the figures until the bot restarts",
                self._exact_since + LOAD_FLOOR_MARGIN - now,
                max(self.windows) // DAY,
            )

    def counts(self, now: int, windows: Iterable[int] | None = None) -> Counts:
        """All counted domains together (domains never share a user, so the sums are exact)."""
        self._check_clock(now)
        windows = self.windows if windows is None else tuple(windows)
        parts = [index.counts(now, windows) for index in self._indexes.values()]
        new_windows = parts[0].new_users if parts else windows  # not NodeInfo's 180 days
        return Counts(
            computed_at=now,
            active={w: sum(part.active[w] for part in parts) for w in windows},
            online_users=sum(part.online_users for part in parts),
            online_sessions=sum(part.online_sessions for part in parts),
            known_users=sum(part.known_users for part in parts),
            new_users={w: sum(part.new_users[w] for part in parts) for w in new_windows},
        )

    def counts_by_domain(self, now: int, windows: Iterable[int] | None = None) -> dict[str, Counts]:
        self._check_clock(now)
        windows = self.windows if windows is None else tuple(windows)
        return {domain: index.counts(now, windows) for domain, index in self._indexes.items()}

    def client_counts_by_domain(self, now: int) -> dict[str, dict[str, ClientCounts]]:
        """Per domain and client family: users active with it per window (`windows`), users
        and sessions online with it."""
        self._check_clock(now)
        return {
            domain: index.client_counts(now, self.windows)
            for domain, index in self._indexes.items()
        }

    def client_counts(self, now: int) -> dict[str, ClientCounts]:
        """Per client family, all counted domains together (they never share a user)."""
        total: dict[str, ClientCounts] = {}
        for by_family in self.client_counts_by_domain(now).values():
            for family, counts in by_family.items():
                known = total.get(family)
                total[family] = counts if known is None else _sum_client_counts(known, counts)
        return total

    def online_sessions(self) -> set[tuple[str, str]]:
        """(key, session key) of every session online: with pseudonymize, pseudonyms."""
        return {(key, res) for key, record in self._online.items() for res in record.sessions}

    # --- events: real JIDs in, store keys inside ---------------------------------------------

    def is_counted(self, bare_jid: str) -> bool:
        """Whether this JID's activity is counted: a user of a counted domain, not excluded."""
        return (
            "@" in bare_jid
            and domain_of(bare_jid) in self._indexes
            and not self._excluded(bare_jid)
        )

    @property
    def pseudonymized(self) -> bool:
        return self._store.pseudonymized

    def who(self, bare_jid: str) -> str:
        """How to name a user in the log: the JID, or with pseudonymize its pseudonym."""
        return self._store.key_of(bare_jid)

    def who_session(self, resource: str) -> str:
        return self._store.session_key(resource)

    def is_online(self, bare_jid: str, resource: str) -> bool:
        record = self._online.get(self._store.key_of(bare_jid))
        return record is not None and self._store.session_key(resource) in record.sessions

    def session_started(
        self, bare_jid: str, resource: str, now: int, caps_node: str | None = None
    ) -> bool:
        """A session became available, announcing `caps_node` (XEP-0115; None: no caps), which
        names its client family. Returns False if nothing changed (not counted, or an already
        known session whose presence merely changed: its client stays the first one given)."""
        if not self.is_counted(bare_jid):
            return False
        key, session = self._store.key_of(bare_jid), self._store.session_key(resource)
        return self._start(key, session, now, caps_node)

    def session_ended(self, bare_jid: str, resource: str, now: int) -> bool:
        """A session became unavailable. An unknown session still counts as activity (its
        start was missed, for example while the connection was down)."""
        if not self.is_counted(bare_jid):
            return False
        self._end(self._store.key_of(bare_jid), self._store.session_key(resource), now)
        return True

    def session_resumed(self, bare_jid: str, resource: str, now: int) -> bool:
        """A session ended by its unavailable presence is still connected after all: online
        again, with no new login (its last logout stays when it said unavailable). Returns
        False if nothing changed: online again already, or the user was forgotten meanwhile."""
        if not self.is_counted(bare_jid):
            return False
        key, session = self._store.key_of(bare_jid), self._store.session_key(resource)
        before = self._record(key)
        if before is None or session in before.sessions:
            return False
        # Its client is not known any more (NO_CLIENT, as `session_families` pads it).
        after = before._replace(
            sessions=(*before.sessions, session), session_clients=before.session_families()
        )
        self._apply(key, before, after, now)
        return True

    def forget(self, bare_jid: str) -> bool:
        """Remove everything about one user (an account deletion request). False: unknown."""
        return self._forget(self._store.key_of(bare_jid))

    def forget_inactive(self, candidates: Iterable[str], active_since: int) -> int:
        """Forget the candidates (store keys) still offline and last active before
        `active_since` (re-checked here: they may have come back since they were listed)."""
        return sum(self._forget_if_inactive(key, active_since) for key in candidates)

    def _forget_if_inactive(self, key: str, active_since: int) -> bool:
        record = self._record(key)
        if record is not None and not record.sessions and record.last_active < active_since:
            return self._forget(key)
        return False

    # --- changes in order, records read in worker threads (the running bot) -------------------

    def when_loaded(self, bare_jid: str | None, change: Callable[[], None]) -> None:
        """Run `change` (which calls the methods above for `bare_jid`; None: for no user in
        particular) after every change given before it, once the user's record is in memory.
        At once without `read_in_threads`. `change` should not raise (it is logged)."""
        if bare_jid is None or not self.is_counted(bare_jid):
            self._submit(None, change)  # no record to read (an uncounted JID changes nothing)
        else:
            self._submit(self._store.key_of(bare_jid), change)

    async def forget_soon(self, bare_jid: str) -> bool:
        """`forget`, in turn with the other changes, the record read off the event loop."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._submit(self._store.key_of(bare_jid), _resolving(done, lambda: self.forget(bare_jid)))
        return await done

    async def forget_inactive_soon(self, candidates: Iterable[str], active_since: int) -> int:
        """`forget_inactive`, in turn with the other changes, a chunk of users at a time (other
        changes go between chunks), the records read off the event loop."""
        forgotten = 0
        candidates = iter(candidates)
        loop = asyncio.get_running_loop()
        while chunk := list(islice(candidates, RETENTION_CHUNK)):
            done: list[asyncio.Future[bool]] = []
            for key in chunk:
                future: asyncio.Future[bool] = loop.create_future()
                done.append(future)
                forget = _resolving(future, partial(self._forget_if_inactive, key, active_since))
                self._submit(key, forget)
            forgotten += sum(await asyncio.gather(*done))
        return forgotten

    async def caught_up(self) -> None:
        """Return once every change given before has been applied: figures asked for after a
        presence include it, as when changes were applied on arrival."""
        if self._queue:
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._submit(None, _resolving(done, lambda: True))
            await done

    @property
    def waiting(self) -> int:
        """Changes given to `when_loaded` and not applied yet."""
        return len(self._queue)

    async def until_applied(self, timeout: float) -> int:
        """Wait (at most `timeout` seconds) until every change given has been applied; returns
        how many still wait (the store cannot be read)."""
        try:
            await asyncio.wait_for(self.caught_up(), timeout)
        except TimeoutError:
            return len(self._queue) - 1  # not counting caught_up's own marker
        return 0

    def _submit(self, key: str | None, change: Callable[[], None]) -> None:
        if self._read is not None and self._read[0].done():
            self._read_done()  # before the loop's next turn: see `_start_read`
        if not self._read_in_threads or (not self._queue and (key is None or self._has(key))):
            _run(change)
            return
        self._queue.append((key, change))
        if key is None:
            return
        self._waiting_for[key] = self._waiting_for.get(key, 0) + 1
        if key in self._online or key in self._loaded:
            return
        if self._store.in_memory(key):  # kept: a flush may take it out of memory meanwhile
            self._loaded[key] = self._store.get(key)
        else:
            self._read_soon(key)  # read ahead: the changes before it may still wait

    def _has(self, key: str) -> bool:
        """Whether the record of `key` is in memory (so `_record` needs no disk)."""
        return key in self._online or key in self._loaded or self._store.in_memory(key)

    def _read_soon(self, key: str) -> None:
        if key in self._to_read or key in self._reading:
            return
        self._to_read[key] = None
        if self._read is None and not self._read_paused:
            self._start_read()

    def _start_read(self) -> None:
        """Read the records asked for so far in the store's worker thread. Their changes are
        applied as soon as the loop sees the read done: at its next turn, or at the next change
        given (`_submit` looks: at full load one turn of the loop may handle thousands of
        stanzas, and the changes waiting would pile up meanwhile)."""
        keys = list(islice(self._to_read, READ_BATCH))
        for key in keys:
            del self._to_read[key]
            self._reading[key] = True
        read = self._store.submit_in_thread(partial(self._store.read_stored, keys))
        self._read = (read, keys)
        asyncio.wrap_future(read).add_done_callback(self._read_noticed)

    def _read_noticed(self, wrapped: asyncio.Future[dict[str, bytes | None]]) -> None:
        if not wrapped.cancelled():
            wrapped.exception()  # retrieved; handled by _read_done
        self._read_done()

    def _read_done(self) -> None:
        """Apply a finished read (once: `_submit` may have seen it first)."""
        if self._read is None or not self._read[0].done():
            return
        (read, keys), self._read = self._read, None
        try:
            values = read.result()
        except Exception as exc:  # the store cannot be read: keep the changes, retry
            for key in keys:
                del self._reading[key]
            self._to_read = dict.fromkeys(keys) | self._to_read
            if str(exc) != self._read_problem:
                log.error("Reading users' records failed (%s); retrying", exc)
                self._read_problem = str(exc)
            self._read_paused = True
            asyncio.get_running_loop().call_later(READ_RETRY_DELAY, self._read_again)
            return
        if self._read_problem:
            log.warning("Reading users' records works again")
            self._read_problem = ""
        for key in keys:
            unchanged = self._reading.pop(key)
            if unchanged and key in self._waiting_for and not self._has(key):
                self._loaded[key] = self._store.record_from(key, values[key])
        if self._to_read:
            self._start_read()  # the keys asked for meanwhile
        self._apply_waiting()

    def _read_again(self) -> None:
        self._read_paused = False
        if self._to_read and self._read is None:
            self._start_read()

    def _apply_waiting(self) -> None:
        """Apply the waiting changes in order, up to the first whose record is not in memory."""
        queue, waiting_for = self._queue, self._waiting_for
        while queue:
            key, change = queue[0]
            if key is None:
                queue.popleft()
                _run(change)
                continue
            if not self._has(key):
                self._read_soon(key)  # its read was dropped: a change came before it ended
                return
            queue.popleft()
            if waiting_for[key] > 1:
                waiting_for[key] -= 1
                _run(change)
            else:
                del waiting_for[key]
                _run(change)
                self._loaded.pop(key, None)  # no waiting change needs it any more
        self._loaded.clear()  # nothing waits: no record is needed any more

    # --- reconnection ----------------------------------------------------------------------

    def begin_resync(self, known_until: int) -> None:
        """The connection came back: the server is about to re-announce every online session.
        Sessions it does not re-announce (or end) before `end_resync` are gone; they end at
        `known_until` (when the connection dropped), or earlier for those an earlier resync,
        cut short by another drop, had not seen re-announced yet. (The running bot gives both
        to `when_loaded`, so that changes of the old connection still waiting for a record
        come before them.)"""
        earlier = self._unconfirmed or {}
        self._unconfirmed = {
            session: earlier.get(session, known_until) for session in self.online_sessions()
        }
        self._unconfirmed_times = Counter(self._unconfirmed.values())

    def end_resync(self) -> int:
        """Close the sessions not re-announced since `begin_resync`, each at the last time it
        was known online. Returns how many were closed."""
        unconfirmed, self._unconfirmed = self._unconfirmed or {}, None
        self._unconfirmed_times = Counter()
        closed = 0
        for (key, session), ended_at in sorted(unconfirmed.items()):
            record = self._online.get(key)
            if record is not None and session in record.sessions:  # not forgotten meanwhile
                self._end(key, session, ended_at)
                closed += 1
        return closed

    def unconfirmed_since(self) -> int | None:
        """During a resync, the earliest time a session not re-announced yet was known online
        (None: every session is confirmed, or no resync)."""
        return min(self._unconfirmed_times) if self._unconfirmed_times else None

    def _confirm(self, key: str, session: str) -> None:
        if self._unconfirmed is not None:
            known_until = self._unconfirmed.pop((key, session), None)
            if known_until is not None:
                self._unconfirmed_times[known_until] -= 1
                if not self._unconfirmed_times[known_until]:
                    del self._unconfirmed_times[known_until]

    # --- internals: by key ---------------------------------------------------------------------

    def _start(self, key: str, session: str, now: int, caps_node: str | None = None) -> bool:
        self._confirm(key, session)
        before = self._record(key)
        if before is not None and session in before.sessions:
            return False
        family = self._families.family_of(caps_node)
        if before is None:
            after = UserRecord(now, now, 0, (session,), (family, now), (family,))
        else:  # positional: this runs for every login
            after = UserRecord(
                before.first_seen,
                max(before.last_login, now),
                before.last_logout,
                (*before.sessions, session),
                with_client_activity(before.clients, family, now),
                (*before.session_families(), family),
            )
        self._apply(key, before, after, now)
        return True

    def _end(self, key: str, session: str, now: int) -> None:
        self._confirm(key, session)
        before = self._record(key)
        if before is None:
            after = UserRecord(first_seen=now, last_login=0, last_logout=now)
        elif session not in before.sessions:  # its start was missed: its client is not known
            after = before._replace(last_logout=max(before.last_logout, now))
        else:
            after = _ended(before, before.sessions.index(session), now)
        self._apply(key, before, after, now)

    def _forget(self, key: str) -> bool:
        before = self._record(key)
        if before is None:
            return False
        domain = domain_of(key)
        index = self._indexes.get(domain)
        if index is not None and not self._excluded(key):
            index.replace(before, None)
        elif index is not None and self._hidden.get(domain):
            self._hidden[domain] -= 1
        self._online.pop(key, None)
        self._changed(key, None)
        if self._unconfirmed:
            for session in [s for s in self._unconfirmed if s[0] == key]:  # not brought back
                self._confirm(*session)
        self._store.delete(key)
        return True

    def _record(self, key: str) -> UserRecord | None:
        # Online users' records stay in memory; others are read from the store (its pending
        # writes first, then one indexed SQLite lookup) only when they log in. Running, that
        # read was done in a worker thread (`_loaded`) before the change was applied.
        record = self._online.get(key)
        if record is not None:
            return record
        if key in self._loaded and not self._store.in_memory(key):
            return self._loaded[key]
        return self._store.get(key)

    def _changed(self, key: str, record: UserRecord | None) -> None:
        """The record of `key` is now `record`: a record read before is out of date."""
        if key in self._waiting_for:
            self._loaded[key] = record  # for the changes still waiting
        elif self._loaded:
            self._loaded.pop(key, None)
        if self._reading and key in self._reading:
            self._reading[key] = False

    def start_peaks(self, now: int, stored_today: Mapping[str, int] | None = None) -> None:
        """Today's peak of users online starts from who is online now (after the load), or
        from the peak already stored for today (a restart must not lower it)."""
        self._peaks.start(now, self._online_by_domain())
        for domain, peak in (stored_today or {}).items():
            if domain in self._indexes:
                self._peaks.note(domain, peak)

    @property
    def peak_online(self) -> dict[str, int]:
        """Per domain, the most users online at once so far today (UTC)."""
        return self._peaks.today

    def take_peak_rose(self) -> bool:
        """Whether today's peak (or the day) changed since the last call: then it is due on
        disk, so that a crash loses no more of it than of the records."""
        rose, self._peaks.rose = self._peaks.rose, False
        return rose

    def ended_day_peaks(self, now: int) -> dict[int, dict[str, int]]:
        """The final peaks of the UTC days (numbers since the epoch) that ended before `now`
        and were not asked for yet: each day gets the peak that happened on it."""
        self._peaks.roll(now, self._online_by_domain, back=True)  # `now` is the clock's
        return self._peaks.take_ended()

    def _online_by_domain(self) -> dict[str, int]:
        return {domain: index.online_users for domain, index in self._indexes.items()}

    def _apply(self, key: str, before: UserRecord | None, after: UserRecord, now: int) -> None:
        self._peaks.roll(now, self._online_by_domain)  # a new day starts before this change
        self._changed(key, after)
        self._store.put(key, after)
        domain = domain_of(key)
        index = self._indexes[domain]
        index.replace(before, after)
        if after.sessions:
            self._peaks.note(domain, index.online_users)
            self._online[key] = after
        else:
            self._online.pop(key, None)


def _ended(record: UserRecord, position: int, now: int) -> UserRecord:
    """`record` after its session at `position` ended at `now`: a logout, for the user and
    for that session's client."""
    families = record.session_families()
    family = families[position]
    session_clients = families[:position] + families[position + 1 :]
    return UserRecord(  # positional: this runs for every logout
        record.first_seen,
        record.last_login,
        max(record.last_logout, now),
        record.sessions[:position] + record.sessions[position + 1 :],
        with_client_activity(record.clients, family, now) if family else record.clients,
        session_clients if any(session_clients) else (),
    )


def _closed(record: UserRecord, at: int) -> UserRecord:
    """`record` with every session ended at `at` (left open by a stop or crash)."""
    for position in range(len(record.sessions) - 1, -1, -1):
        record = _ended(record, position, at)
    return record


def _sum_client_counts(a: ClientCounts, b: ClientCounts) -> ClientCounts:
    return ClientCounts(
        active={window: a.active[window] + b.active[window] for window in a.active},
        online_users=a.online_users + b.online_users,
        online_sessions=a.online_sessions + b.online_sessions,
    )


def _run(change: Callable[[], None]) -> None:
    try:
        change()
    except Exception:  # the queue goes on: one change's fault is not the others'
        log.exception("Applying a change failed")


def _resolving(future: asyncio.Future[bool], change: Callable[[], bool]) -> Callable[[], None]:
    """`change`, its result (or exception) given to `future`."""

    def run() -> None:
        if future.done():
            return
        try:
            future.set_result(change())
        except Exception as exc:
            future.set_exception(exc)

    return run


class _DailyPeaks:
    """Most users online at once, per domain and UTC day, credited to the day it happened."""

    def __init__(self) -> None:
        self._day: int | None = None  # days since the epoch (UTC)
        self.today: dict[str, int] = {}
        self._ended: dict[int, dict[str, int]] = {}
        self.rose = False  # today's peak changed since the bot last wrote it

    def start(self, now: int, online: dict[str, int]) -> None:
        self._day, self.today = now // DAY, dict(online)

    def roll(self, now: int, online: Callable[[], dict[str, int]], *, back: bool = False) -> None:
        """At the first moment seen of a later day (or, with `back`, of an earlier one the clock
        stepped back into): close the day, start the new one from who is online. Events may
        carry earlier times (a session closed at its last sign of life): they never roll back."""
        day = now // DAY
        if self._day is None or day > self._day or (back and day < self._day):
            if self._day is not None:
                ended = self._ended.setdefault(self._day, {})  # a day may be left twice
                for domain, peak in self.today.items():
                    ended[domain] = max(ended.get(domain, 0), peak)
            self.start(now, online())
            self.rose = True

    def note(self, domain: str, online_users: int) -> None:
        if online_users > self.today.get(domain, 0):
            self.today[domain] = online_users
            self.rose = True

    def take_ended(self) -> dict[int, dict[str, int]]:
        ended, self._ended = self._ended, {}
        return ended


class _Later:
    """A sorted list's values after `floor`, packed when called (in the thread that writes the
    index snapshot, not on the event loop)."""

    def __init__(self, times: SortedTimes, floor: int) -> None:
        self._times, self._floor = times, floor

    def __call__(self) -> array[int]:
        return self._times.after(self._floor)
