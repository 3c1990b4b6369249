"""Event transitions and the index: each change of a record, in the store and index together.

A login, a logout, a resumed session, a forget: each makes the user's new record from the one
before, then changes the domain's index and the store's pending writes together, or neither
(the index is changed first: a fault there leaves both as they were). Online users' records
stay in memory; the index answers every count.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..core.client_families import Families
from ..core.counter import ActivityIndex
from ..core.model import UserRecord, domain_of, with_client_activity
from ..storage import index_snapshot
from ..storage.store import Store
from .peaks import DayPeaks
from .read_queue import ReadQueue
from .resync import Resync


def exclusion_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Bare JIDs and glob patterns (`*@bots.example.org`), case-insensitive, as one regex."""
    patterns = tuple(patterns)
    if not patterns:
        return lambda _bare_jid: False
    regex = re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns))
    return lambda bare_jid: regex.match(bare_jid.lower()) is not None


@dataclass(frozen=True)
class Exclusions:
    """The accounts never counted nor stored (`exclude` in the config)."""

    excluded: Callable[[str], bool]
    any: bool  # whether there are any: the start-up scan skips the check otherwise
    id: str  # what the index snapshot records of them (see index_snapshot.exclusions_id)

    @classmethod
    def of(cls, patterns: Iterable[str]) -> Exclusions:
        patterns = tuple(patterns)
        return cls(
            exclusion_matcher(patterns), bool(patterns), index_snapshot.exclusions_id(patterns)
        )


class Activity:
    """One ActivityIndex per counted domain, the online users' records, and the transitions.

    Users are known by their store keys. Every change goes to the index and to the store
    (grouped writes): the store is what survives, the index is what answers.
    """

    def __init__(
        self,
        store: Store,
        domains: Iterable[str],
        exclusions: Exclusions,
        *,
        read_in_threads: bool,
    ) -> None:
        self._store = store
        self.exclusions = exclusions
        self.indexes: dict[str, ActivityIndex] = {domain: ActivityIndex() for domain in domains}
        self.online: dict[str, UserRecord] = {}  # store key -> record, online users only
        self.hidden: dict[str, int] = {}  # per domain, stored users the exclusions hide
        self.families = Families()
        self.peaks = DayPeaks(self.online_by_domain)
        self.resync = Resync()
        self.queue = ReadQueue(store, self.is_online, read_in_threads=read_in_threads)

    def install(
        self,
        indexes: dict[str, ActivityIndex],
        hidden: dict[str, int],
        online: dict[str, UserRecord],
    ) -> None:
        """The state a start-up load built."""
        self.indexes, self.hidden, self.online = indexes, hidden, online
        self.families = Families()
        self.families.admit_stored(family for index in indexes.values() for family in index.clients)

    def is_online(self, key: str) -> bool:
        return key in self.online

    def online_by_domain(self) -> dict[str, int]:
        return {domain: index.online_users for domain, index in self.indexes.items()}

    def online_sessions(self) -> set[tuple[str, str]]:
        """(key, session key) of every session online: with pseudonymize, pseudonyms."""
        return {(key, res) for key, record in self.online.items() for res in record.sessions}

    def start(self, key: str, session: str, now: int, caps_node: str | None = None) -> bool:
        self.resync.confirm(key, session)
        before = self.record(key)
        if before is not None and session in before.sessions:
            return False
        family = self.families.family_of(caps_node)
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

    def end(self, key: str, session: str, now: int) -> None:
        self.resync.confirm(key, session)
        before = self.record(key)
        if before is None:
            after = UserRecord(first_seen=now, last_login=0, last_logout=now)
        elif session not in before.sessions:  # its start was missed: its client is not known
            after = before._replace(last_logout=max(before.last_logout, now))
        else:
            after = ended(before, before.sessions.index(session), now)
        self._apply(key, before, after, now)

    def resume(self, key: str, session: str, now: int) -> bool:
        before = self.record(key)
        if before is None or session in before.sessions:
            return False
        # Its client is not known any more (NO_CLIENT, as `session_families` pads it).
        after = before._replace(
            sessions=(*before.sessions, session), session_clients=before.session_families()
        )
        self._apply(key, before, after, now)
        return True

    def forget(self, key: str) -> bool:
        before = self.record(key)
        if before is None:
            return False
        domain = domain_of(key)
        index = self.indexes.get(domain)
        if index is not None and not self.exclusions.excluded(key):
            index.replace(before, None)  # first: a fault here changes nothing
        elif index is not None and self.hidden.get(domain):
            self.hidden[domain] -= 1
        self.online.pop(key, None)
        self.queue.changed(key, None)
        self.resync.forget(key)  # not brought back
        self._store.delete(key)
        return True

    def forget_if_inactive(self, key: str, active_since: int) -> bool:
        record = self.record(key)
        if record is not None and not record.sessions and record.last_active < active_since:
            return self.forget(key)
        return False

    def record(self, key: str) -> UserRecord | None:
        # Online users' records stay in memory; others are read from the store (its pending
        # writes first, then one indexed SQLite lookup) only when they log in. Running, that
        # read was done in a worker thread (the read queue) before the change was applied.
        record = self.online.get(key)
        return record if record is not None else self.queue.record(key)

    def _apply(self, key: str, before: UserRecord | None, after: UserRecord, now: int) -> None:
        self.peaks.roll(now)  # a new day starts before this change
        domain = domain_of(key)
        index = self.indexes[domain]
        # The index first: it is the part that can fail (a bug); then nothing else changed,
        # and the store never runs ahead of the index. The rest cannot fail.
        index.replace(before, after)
        self.queue.changed(key, after)
        self._store.put(key, after)
        if after.sessions:
            self.peaks.note(domain, index.online_users)
            self.online[key] = after
        else:
            self.online.pop(key, None)


def ended(record: UserRecord, position: int, now: int) -> UserRecord:
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


def closed(record: UserRecord, at: int) -> UserRecord:
    """`record` with every session ended at `at` (left open by a stop or crash)."""
    for position in range(len(record.sessions) - 1, -1, -1):
        record = ended(record, position, at)
    return record
