"""Sessions, logins and logouts: turns presence-shaped events into records and index updates.

Knows nothing of XMPP stanzas: the component hands it bare JIDs, resources and the time. Inside,
users and sessions are known by their store keys (`Store.key_of`, `Store.session_key`): the
JIDs themselves, or with `[privacy] pseudonymize` their pseudonyms, which is all a store holds.
"""

from __future__ import annotations

import fnmatch
import gc
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .counter import DAY, DEFAULT_WINDOWS, ActivityIndex, Counts
from .model import UserRecord, domain_of
from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadReport:
    users: int
    recovered_sessions: int  # sessions left online by a stop or crash, closed at the heartbeat
    closed_at: int
    hidden: int = 0  # stored users that the exclusions now hide


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

    def index(self, floor: int, horizon: int) -> ActivityIndex:
        return ActivityIndex.from_parts(
            offline_last_active=self.offline,
            first_seen=self.first_seen,
            online_users=self.online_users,
            online_sessions=self.online_sessions,
            known_users=self.known_users,
            floor=floor,
            horizon=horizon,
        )


@dataclass
class _Scan:
    """What one pass over the store found, for all counted domains."""

    domains: dict[bytes, _Loading]
    stale: list[tuple[str, UserRecord]] = field(default_factory=list)  # sessions to close
    recovered_sessions: int = 0
    hidden: int = 0


class ActivityTracker:
    """The live state: one ActivityIndex per counted domain, and the online users' records.

    Every change goes to the store (grouped writes) and to the index, in that order of truth:
    the store is what survives, the index is what answers.
    """

    def __init__(
        self,
        store: Store,
        domains: Iterable[str],
        *,
        exclude: Iterable[str] = (),
        windows: Iterable[int] = DEFAULT_WINDOWS,
    ) -> None:
        self._store = store
        exclude = tuple(exclude)
        self._excluded = exclusion_matcher(exclude)
        self._has_exclusions = bool(exclude)
        self.windows = tuple(windows)
        self._indexes: dict[str, ActivityIndex] = {domain: ActivityIndex() for domain in domains}
        self._online: dict[str, UserRecord] = {}  # store key -> record, online users only
        self._peaks = _DailyPeaks()
        self._unconfirmed: set[tuple[str, str]] | None = None  # during a resync, see below

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
        horizon = max(self.windows)
        floor = now - horizon  # older timestamps can never count: not kept (see ActivityIndex)
        self._online.clear()
        gc.disable()  # a million short-lived tuples and no cycle: collecting would only cost time
        try:
            scan = self._scan_store(floor, closed_at if close_stale_sessions else None)
        finally:
            gc.enable()
        self._indexes = {
            domain: part.index(floor, horizon)
            for domain, part in zip(self._indexes, scan.domains.values(), strict=True)
        }
        for key, record in scan.stale:
            self._store.put(key, record)
        return LoadReport(
            users=sum(index.known_users for index in self._indexes.values()),
            recovered_sessions=scan.recovered_sessions,
            closed_at=closed_at,
            hidden=scan.hidden,
        )

    def _scan_store(self, floor: int, close_sessions_at: int | None) -> _Scan:
        """One pass over the store for all domains; per user only ints are kept, and keys are
        decoded only for the few users online (a million users load in seconds)."""
        scan = _Scan(domains={domain.encode(): _Loading() for domain in self._indexes})
        excluded = self._excluded if self._has_exclusions else None
        for raw_key, (first_seen, login, logout, sessions) in self._store.users_by_raw_key():
            part = scan.domains.get(raw_key[raw_key.rfind(b"@") + 1 :])
            if part is None:
                continue
            if excluded is not None and excluded(raw_key.decode(errors="replace")):
                scan.hidden += 1
                continue
            part.known_users += 1
            if first_seen > floor:
                part.first_seen.append(first_seen)
            if sessions:
                key = raw_key.decode(errors="replace")
                if close_sessions_at is None:  # live sessions: a reader of a running bot
                    self._online[key] = UserRecord(first_seen, login, logout, sessions)
                    part.online_users += 1
                    part.online_sessions += len(sessions)
                    continue
                # Left open by a stop or crash: they ended at the last sign of life.
                scan.recovered_sessions += len(sessions)
                logout = max(logout, close_sessions_at)
                scan.stale.append((key, UserRecord(first_seen, login, logout)))
            last_active = login if login > logout else logout
            if last_active > floor:
                part.offline.append(last_active)
        return scan

    def counts(self, now: int, windows: Iterable[int] | None = None) -> Counts:
        """All counted domains together (domains never share a user, so the sums are exact)."""
        windows = self.windows if windows is None else tuple(windows)
        parts = [index.counts(now, windows) for index in self._indexes.values()]
        return Counts(
            computed_at=now,
            active={w: sum(part.active[w] for part in parts) for w in windows},
            online_users=sum(part.online_users for part in parts),
            online_sessions=sum(part.online_sessions for part in parts),
            known_users=sum(part.known_users for part in parts),
            new_users={w: sum(part.new_users[w] for part in parts) for w in windows},
        )

    def counts_by_domain(self, now: int, windows: Iterable[int] | None = None) -> dict[str, Counts]:
        windows = self.windows if windows is None else tuple(windows)
        return {domain: index.counts(now, windows) for domain, index in self._indexes.items()}

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

    def session_started(self, bare_jid: str, resource: str, now: int) -> bool:
        """A session became available. Returns False if nothing changed (not counted, or an
        already known session whose presence merely changed)."""
        if not self.is_counted(bare_jid):
            return False
        return self._start(self._store.key_of(bare_jid), self._store.session_key(resource), now)

    def session_ended(self, bare_jid: str, resource: str, now: int) -> bool:
        """A session became unavailable. An unknown session still counts as activity (its
        start was missed, for example while the connection was down)."""
        if not self.is_counted(bare_jid):
            return False
        self._end(self._store.key_of(bare_jid), self._store.session_key(resource), now)
        return True

    def forget(self, bare_jid: str) -> bool:
        """Remove everything about one user (an account deletion request). False: unknown."""
        return self._forget(self._store.key_of(bare_jid))

    def forget_inactive(self, candidates: Iterable[str], active_since: int) -> int:
        """Forget the candidates (store keys) still offline and last active before
        `active_since` (re-checked here: they may have come back since they were listed)."""
        forgotten = 0
        for key in candidates:
            record = self._record(key)
            if record is not None and not record.sessions and record.last_active < active_since:
                forgotten += self._forget(key)
        return forgotten

    # --- reconnection ----------------------------------------------------------------------

    def begin_resync(self) -> None:
        """The connection came back: the server is about to re-announce every online session.
        Sessions it does not re-announce (or end) before `end_resync` are gone."""
        self._unconfirmed = self.online_sessions()

    def end_resync(self, ended_at: int) -> int:
        """Close the sessions not re-announced since `begin_resync`, at `ended_at` (the time
        the connection dropped). Returns how many were closed."""
        unconfirmed, self._unconfirmed = self._unconfirmed or set(), None
        closed = 0
        for key, session in sorted(unconfirmed):
            record = self._online.get(key)
            if record is not None and session in record.sessions:  # not forgotten meanwhile
                self._end(key, session, ended_at)
                closed += 1
        return closed

    # --- internals: by key ---------------------------------------------------------------------

    def _start(self, key: str, session: str, now: int) -> bool:
        if self._unconfirmed is not None:
            self._unconfirmed.discard((key, session))
        before = self._record(key)
        if before is not None and session in before.sessions:
            return False
        if before is None:
            after = UserRecord(first_seen=now, last_login=now, last_logout=0, sessions=(session,))
        else:
            after = before._replace(
                last_login=max(before.last_login, now), sessions=(*before.sessions, session)
            )
        self._apply(key, before, after, now)
        return True

    def _end(self, key: str, session: str, now: int) -> None:
        if self._unconfirmed is not None:
            self._unconfirmed.discard((key, session))
        before = self._record(key)
        if before is None:
            after = UserRecord(first_seen=now, last_login=0, last_logout=now)
        else:
            sessions = tuple(s for s in before.sessions if s != session)
            after = before._replace(last_logout=max(before.last_logout, now), sessions=sessions)
        self._apply(key, before, after, now)

    def _forget(self, key: str) -> bool:
        before = self._record(key)
        if before is None:
            return False
        index = self._indexes.get(domain_of(key))
        if index is not None and not self._excluded(key):
            index.replace(before, None)
        self._online.pop(key, None)
        self._store.delete(key)
        return True

    def _record(self, key: str) -> UserRecord | None:
        # Online users' records stay in memory; others are read from the store (its pending
        # writes first, then one indexed SQLite lookup) only when they log in.
        record = self._online.get(key)
        return record if record is not None else self._store.get(key)

    def start_peaks(self, now: int) -> None:
        """Today's peak of users online starts from who is online now (after the load)."""
        self._peaks.start(now, self._online_by_domain())

    @property
    def peak_online(self) -> dict[str, int]:
        """Per domain, the most users online at once so far today (UTC)."""
        return self._peaks.today

    def ended_day_peaks(self, now: int) -> dict[int, dict[str, int]]:
        """The final peaks of the UTC days (numbers since the epoch) that ended before `now`
        and were not asked for yet: each day gets the peak that happened on it."""
        self._peaks.roll(now, self._online_by_domain)
        return self._peaks.take_ended()

    def _online_by_domain(self) -> dict[str, int]:
        return {domain: index.online_users for domain, index in self._indexes.items()}

    def _apply(self, key: str, before: UserRecord | None, after: UserRecord, now: int) -> None:
        self._peaks.roll(now, self._online_by_domain)  # a new day starts before this change
        self._store.put(key, after)
        domain = domain_of(key)
        index = self._indexes[domain]
        index.replace(before, after)
        if after.sessions:
            self._peaks.note(domain, index.online_users)
            self._online[key] = after
        else:
            self._online.pop(key, None)


class _DailyPeaks:
    """Most users online at once, per domain and UTC day, credited to the day it happened."""

    def __init__(self) -> None:
        self._day: int | None = None  # days since the epoch (UTC)
        self.today: dict[str, int] = {}
        self._ended: dict[int, dict[str, int]] = {}

    def start(self, now: int, online: dict[str, int]) -> None:
        self._day, self.today = now // DAY, dict(online)

    def roll(self, now: int, online: Callable[[], dict[str, int]]) -> None:
        """At the first moment seen of a later day: close today, start from who is online."""
        day = now // DAY
        if self._day is None or day > self._day:  # a clock stepping back changes no day
            if self._day is not None:
                self._ended[self._day] = self.today
            self.start(now, online())

    def note(self, domain: str, online_users: int) -> None:
        if online_users > self.today.get(domain, 0):
            self.today[domain] = online_users

    def take_ended(self) -> dict[int, dict[str, int]]:
        ended, self._ended = self._ended, {}
        return ended
