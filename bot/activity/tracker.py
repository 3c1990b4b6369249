"""The tracker: the one face of the activity model that the rest of the bot calls.

Knows nothing of XMPP stanzas: the component hands it bare JIDs, resources and the time. Inside,
users and sessions are known by their store keys (`Store.key_of`, `Store.session_key`): the
JIDs themselves, or with `[privacy] pseudonymize` their pseudonyms, which is all a store holds.
Its parts, each owning its state: the transitions and the index (`events`), the read queue
(`read_queue`), the resync (`resync`), the day's peaks (`peaks`), the start-up load
(`loading`, `full_scan`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from functools import partial
from itertools import islice

from ..core.counter import DEFAULT_WINDOWS, ClientCounts, Counts
from ..core.model import domain_of
from ..storage.index_snapshot import FileState
from ..storage.store import Store
from .events import Activity, Exclusions, exclusion_matcher
from .loading import LOAD_FLOOR_MARGIN, LoadReport, StartUp
from .peaks import DayPeaks
from .read_queue import resolving

__all__ = ["LOAD_FLOOR_MARGIN", "ActivityTracker", "LoadReport", "exclusion_matcher"]

RETENTION_CHUNK = 1_000  # users re-checked by retention between two looks at the queue


class ActivityTracker:
    """The live state: one ActivityIndex per counted domain, and the online users' records.

    `windows` are the figures counted everywhere; `extra_windows` are longer ones that some
    figures need too (NodeInfo's 180 days): the index keeps what they need, the client
    families only what `windows` need.

    Two ways in. The methods below (`session_started`, ...) apply a change at once, reading a
    user's record from the store (its disk) when it is not in memory: the command line and the
    tests. With `read_in_threads` (the running bot), changes go in through `when_loaded` (and
    `forget_soon`, `forget_inactive_soon`): applied in the order given, each once the record
    it needs is in memory (see `read_queue`). Figures asked meanwhile simply do not include
    the waiting changes (milliseconds).
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
        self.windows = tuple(windows)
        self.extra_windows = tuple(extra_windows)
        exclusions = Exclusions.of(exclude)
        self._activity = Activity(store, domains, exclusions, read_in_threads=read_in_threads)
        self._queue = self._activity.queue
        self._startup = StartUp(store, exclusions, self.windows, self.extra_windows)
        self.load_report: LoadReport | None = None  # the last load's

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._activity.indexes)

    @property
    def peaks(self) -> DayPeaks:
        """The day's peak of users online: the count, the flush and the history ask it."""
        return self._activity.peaks

    def load(self, now: int, *, close_stale_sessions: bool = True) -> LoadReport:
        """Build the indexes from the store (see `loading.StartUp.load`)."""
        loaded = self._startup.load(
            self._activity.indexes, now, close_stale_sessions=close_stale_sessions
        )
        self._activity.install(loaded.indexes, loaded.hidden, loaded.online)
        self.load_report = loaded.report
        return loaded.report

    def snapshot_writer(self, now: int) -> Callable[[bytes, FileState], object] | None:
        """What writes the index snapshot at a clean stop (see `loading.StartUp`)."""
        return self._startup.snapshot_writer(self._activity, now)

    # --- figures --------------------------------------------------------------------------

    def counts(self, now: int, windows: Iterable[int] | None = None) -> Counts:
        """All counted domains together (domains never share a user, so the sums are exact)."""
        self._startup.check_clock(now)
        windows = self.windows if windows is None else tuple(windows)
        parts = [index.counts(now, windows) for index in self._activity.indexes.values()]
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
        self._startup.check_clock(now)
        windows = self.windows if windows is None else tuple(windows)
        indexes = self._activity.indexes
        return {domain: index.counts(now, windows) for domain, index in indexes.items()}

    def client_counts_by_domain(self, now: int) -> dict[str, dict[str, ClientCounts]]:
        """Per domain and client family: users active with it per window (`windows`), users
        and sessions online with it."""
        self._startup.check_clock(now)
        indexes = self._activity.indexes
        return {domain: index.client_counts(now, self.windows) for domain, index in indexes.items()}

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
        return self._activity.online_sessions()

    # --- events: real JIDs in, store keys inside -------------------------------------------

    def is_counted(self, bare_jid: str) -> bool:
        """Whether this JID's activity is counted: a user of a counted domain, not excluded."""
        return (
            "@" in bare_jid
            and domain_of(bare_jid) in self._activity.indexes
            and not self._activity.exclusions.excluded(bare_jid)
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
        record = self._activity.online.get(self._store.key_of(bare_jid))
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
        return self._activity.start(key, session, now, caps_node)

    def session_ended(self, bare_jid: str, resource: str, now: int) -> bool:
        """A session became unavailable. An unknown session still counts as activity (its
        start was missed, for example while the connection was down)."""
        if not self.is_counted(bare_jid):
            return False
        key, session = self._store.key_of(bare_jid), self._store.session_key(resource)
        self._activity.end(key, session, now)
        return True

    def session_resumed(self, bare_jid: str, resource: str, now: int) -> bool:
        """A session ended by its unavailable presence is still connected after all: online
        again, with no new login (its last logout stays when it said unavailable). Returns
        False if nothing changed: online again already, or the user was forgotten meanwhile."""
        if not self.is_counted(bare_jid):
            return False
        key, session = self._store.key_of(bare_jid), self._store.session_key(resource)
        return self._activity.resume(key, session, now)

    def forget(self, bare_jid: str) -> bool:
        """Remove everything about one user (an account deletion request). False: unknown."""
        return self._activity.forget(self._store.key_of(bare_jid))

    def forget_inactive(self, candidates: Iterable[str], active_since: int) -> int:
        """Forget the candidates (store keys) still offline and last active before
        `active_since` (re-checked here: they may have come back since they were listed)."""
        forget = self._activity.forget_if_inactive
        return sum(forget(key, active_since) for key in candidates)

    # --- changes in order, records read in worker threads (the running bot) ---------------

    def when_loaded(self, bare_jid: str | None, change: Callable[[], None]) -> None:
        """Run `change` (which calls the methods above for `bare_jid`; None: for no user in
        particular) after every change given before it, once the user's record is in memory.
        At once without `read_in_threads`. `change` should not raise (it is logged)."""
        if bare_jid is None or not self.is_counted(bare_jid):
            self._queue.submit(None, change)  # no record to read (an uncounted JID changes nothing)
        else:
            self._queue.submit(self._store.key_of(bare_jid), change)

    async def forget_soon(self, bare_jid: str) -> bool:
        """`forget`, in turn with the other changes, the record read off the event loop. The
        forget is applied even if the caller stops waiting (see `read_queue.resolving`)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        forget = resolving(done, lambda: self.forget(bare_jid))
        self._queue.submit(self._store.key_of(bare_jid), forget)
        return await done

    async def forget_inactive_soon(self, candidates: Iterable[str], active_since: int) -> int:
        """`forget_inactive`, in turn with the other changes, a chunk of users at a time (other
        changes go between chunks), the records read off the event loop."""
        forgotten = 0
        candidates = iter(candidates)
        loop = asyncio.get_running_loop()
        forget_if_inactive = self._activity.forget_if_inactive
        while chunk := list(islice(candidates, RETENTION_CHUNK)):
            done: list[asyncio.Future[bool]] = []
            for key in chunk:
                future: asyncio.Future[bool] = loop.create_future()
                done.append(future)
                forget = resolving(future, partial(forget_if_inactive, key, active_since))
                self._queue.submit(key, forget)
            forgotten += sum(await asyncio.gather(*done))
        return forgotten

    @property
    def waiting(self) -> int:
        """Changes given to `when_loaded` and not applied yet."""
        return self._queue.waiting

    async def caught_up(self) -> None:
        """Return once every change given before has been applied: figures asked for after a
        presence include it, as when changes were applied on arrival."""
        await self._queue.caught_up()

    async def until_applied(self, timeout: float) -> int:
        """Wait (at most `timeout` seconds) until every change given has been applied; returns
        how many still wait (the store cannot be read)."""
        return await self._queue.until_applied(timeout)

    # --- reconnection ---------------------------------------------------------------------

    def begin_resync(self, known_until: int) -> None:
        """The connection came back (see `resync`): every session online is in doubt until
        the server announces it again, or `end_resync`. (The running bot gives both to
        `when_loaded`, so that changes of the old connection still waiting for a record come
        before them.)"""
        self._activity.resync.begin(self._activity.online_sessions(), known_until)

    def end_resync(self) -> int:
        """Close the sessions not re-announced since `begin_resync`, each at the last time it
        was known online. Returns how many were closed."""
        closed = 0
        for (key, session), ended_at in self._activity.resync.end():
            record = self._activity.online.get(key)
            if record is not None and session in record.sessions:  # not forgotten meanwhile
                self._activity.end(key, session, ended_at)
                closed += 1
        return closed

    def unconfirmed_since(self) -> int | None:
        """During a resync, the earliest time a session not re-announced yet was known online
        (None: every session is confirmed, or no resync)."""
        return self._activity.resync.since()


def _sum_client_counts(a: ClientCounts, b: ClientCounts) -> ClientCounts:
    return ClientCounts(
        active={window: a.active[window] + b.active[window] for window in a.active},
        online_users=a.online_users + b.online_users,
        online_sessions=a.online_sessions + b.online_sessions,
    )
