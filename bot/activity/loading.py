"""The start-up load: the index built from every stored record, or from the index snapshot.

A writer whose last stop was clean reads the index snapshot that stop wrote (when it describes
the store as it is now), and the records of the users it says were online; otherwise one pass
over the store keeps a few ints per user. Sessions a stop or crash left open end at the store's
heartbeat. At a clean stop, `snapshot_writer` gives what writes the next start's snapshot.
"""

from __future__ import annotations

import gc
import logging
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter

from ..core.counter import DAY, ActivityIndex, ClientParts, SortedTimes
from ..core.model import UserRecord, domain_of
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
from .events import Activity, Exclusions, closed
from .full_scan import scan_store

log = logging.getLogger("bot.activity")  # its name from before the layers: admins grep it

LOAD_FLOOR_MARGIN = DAY  # how far the clock may step back below the start-up load


@dataclass(frozen=True)
class LoadReport:
    users: int
    recovered_sessions: int  # sessions left online by a stop or crash, closed at the heartbeat
    closed_at: int
    hidden: int = 0  # stored users that the exclusions now hide
    snapshot: str = ""  # how the index was read: "" (every record), else the snapshot's path


@dataclass
class Loaded:
    """What a load built, for the tracker's parts to take."""

    indexes: dict[str, ActivityIndex]
    hidden: dict[str, int]  # per domain, stored users the exclusions hide
    online: dict[str, UserRecord]  # the online users' records (live sessions: a reader)
    report: LoadReport


class StartUp:
    """Loads the index at start-up; owns what that load decided: its floors (how far back
    the index keeps times) and from when its figures are exact."""

    def __init__(
        self,
        store: Store,
        exclusions: Exclusions,
        windows: tuple[int, ...],
        extra_windows: tuple[int, ...],
    ) -> None:
        self._store = store
        self._exclusions = exclusions
        self._windows, self._extra_windows = windows, extra_windows
        self._floors: tuple[int, int] | None = None  # the load's (floor, windows floor)
        self._exact_since = 0  # the figures are exact for clocks from then on
        self._clock_warned = False

    def load(self, domains: Iterable[str], now: int, *, close_stale_sessions: bool) -> Loaded:
        """Build the indexes from the store, closing sessions a stop or crash left open (their
        records put in the store's pending writes).

        Those sessions end at the store's heartbeat: the last time the writer was known alive.
        A reader of a store whose writer is running passes `close_stale_sessions=False`: there
        the stored sessions are live. Users of domains no longer configured stay, uncounted.
        """
        domains = tuple(domains)
        closed_at = self._store.heartbeat or now
        horizon = max(self._windows + self._extra_windows)
        windows_horizon = max(self._windows)
        # Older timestamps can never count (see ActivityIndex), unless the clock steps back: up
        # to LOAD_FLOOR_MARGIN back, every user is still there.
        floor = now - horizon - LOAD_FLOOR_MARGIN
        windows_floor = now - windows_horizon - LOAD_FLOOR_MARGIN
        self._exact_since = now - LOAD_FLOOR_MARGIN
        self._floors = (floor, windows_floor)
        close_at = closed_at if close_stale_sessions else None
        gc.disable()  # a million short-lived tuples and no cycle: collecting would only cost time
        try:
            loaded = self._load_snapshot(
                domains, floor, horizon, windows_floor, windows_horizon, close_at
            )
            if loaded is None:
                scan = scan_store(
                    self._store, self._exclusions, domains, floor, windows_floor, close_at
                )
                indexes = {
                    domain: part.index(floor, horizon, windows_floor, windows_horizon)
                    for domain, part in zip(domains, scan.domains.values(), strict=True)
                }
                hidden = {
                    domain: part.hidden
                    for domain, part in zip(domains, scan.domains.values(), strict=True)
                }
                loaded = indexes, hidden, scan.online, scan.stale, scan.recovered_sessions, ""
        finally:
            gc.enable()
        indexes, hidden, online, stale, recovered, source = loaded
        for key, record in stale:
            self._store.put(key, record)
        report = LoadReport(
            users=sum(index.known_users for index in indexes.values()),
            recovered_sessions=recovered,
            closed_at=closed_at,
            hidden=sum(hidden.values()),
            snapshot=source,
        )
        return Loaded(indexes, hidden, online, report)

    def check_clock(self, now: int) -> None:
        """Figures are exact down to LOAD_FLOOR_MARGIN before the start-up load; a clock that
        stepped back further may miss users until the next start (logged once per run)."""
        if now < self._exact_since and not self._clock_warned:
            self._clock_warned = True
            log.warning(
                "The clock stepped back %d s before this run's start-up: users last active more "
                "than %d days before it may be missing from the figures until the bot restarts",
                self._exact_since + LOAD_FLOOR_MARGIN - now,
                max(self._windows) // DAY,
            )

    def _load_snapshot(
        self,
        domains: tuple[str, ...],
        floor: int,
        horizon: int,
        windows_floor: int,
        windows_horizon: int,
        close_at: int | None,
    ) -> (
        tuple[
            dict[str, ActivityIndex],
            dict[str, int],
            dict[str, UserRecord],
            list[tuple[str, UserRecord]],
            int,
            str,
        ]
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
                exclude=self._exclusions.id,
                domains=domains,
            )
            if snapshot.floor > floor or snapshot.windows_floor > windows_floor:
                raise SnapshotRefused(
                    "keeps too short a past for this start (a longer window, NodeInfo's 180 "
                    "days, or a clock set back)"
                )
            loaded = self._indexes_from(
                domains, snapshot, floor, horizon, windows_floor, windows_horizon, close_at
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
        domains: tuple[str, ...],
        snapshot: IndexSnapshot,
        floor: int,
        horizon: int,
        windows_floor: int,
        windows_horizon: int,
        close_at: int | None,
    ) -> tuple[
        dict[str, ActivityIndex],
        dict[str, int],
        dict[str, UserRecord],
        list[tuple[str, UserRecord]],
        int,
    ]:
        """The snapshot's lists, cut at this load's floors, with the online users' records read
        from the store (closed at `close_at`, unless None: then kept online). The arrays stay
        packed: the index keeps them as they are (`counter.SortedTimes`)."""

        def kept(values: Times, after: int) -> array[int]:
            if not isinstance(values, array):  # read from the file: always packed
                raise TypeError(f"a snapshot's times are not packed: {type(values)}")
            return values[bisect_right(values, after) :]

        indexes: dict[str, ActivityIndex] = {}
        online: list[str] = []
        for domain in domains:
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
        live: dict[str, UserRecord] = {}
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
                live[key] = record
                continue
            ended = closed(record, close_at)
            indexes[domain].replace(record, ended)
            stale.append((key, ended))
            recovered += len(record.sessions)
        for domain, index in indexes.items():
            part = snapshot.domains[domain]
            if sessions[domain] != part.online_sessions or len(part.online) != part.online_users:
                raise SnapshotRefused(f"disagrees with the store (the sessions of {domain})")
            index.drop_empty_clients()
        hidden = {domain: snapshot.domains[domain].hidden for domain in indexes}
        return indexes, hidden, live, stale, recovered

    def snapshot_writer(
        self, activity: Activity, now: int
    ) -> Callable[[bytes, FileState], object] | None:
        """What writes the index snapshot (`Store.close(then=...)`): call it at a clean stop,
        once nothing changes the index any more, after the last change was handed to the
        store. It takes the index as it is (no copy: the writing thread reads the live lists).
        None before the first load."""
        if self._floors is None:
            return None
        # What the next start needs at the earliest (the clock moves on); no less than is kept.
        horizon = max(self._windows + self._extra_windows)
        floor = max(self._floors[0], now - horizon - LOAD_FLOOR_MARGIN)
        windows_floor = max(self._floors[1], now - max(self._windows) - LOAD_FLOOR_MARGIN)
        domains: dict[str, DomainPart] = {}
        online: dict[str, list[str]] = {domain: [] for domain in activity.indexes}
        for key in activity.online:
            online[domain_of(key)].append(key)
        for domain, index in activity.indexes.items():
            offline, first_seen, clients = index.kept_lists()
            domains[domain] = DomainPart(
                known_users=index.known_users,
                online_users=index.online_users,
                online_sessions=index.online_sessions,
                hidden=activity.hidden.get(domain, 0),
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
        snapshot = IndexSnapshot(floor, windows_floor, self._exclusions.id, domains)
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


class _Later:
    """A sorted list's values after `floor`, packed when called (in the thread that writes the
    index snapshot, not on the event loop)."""

    def __init__(self, times: SortedTimes, floor: int) -> None:
        self._times, self._floor = times, floor

    def __call__(self) -> array[int]:
        return self._times.after(self._floor)
