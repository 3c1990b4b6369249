"""The index behind the figures: any window's active-user count in O(log n), never a scan.

The seed's rule (mod_measure_active_users): a user is active within a window if online now, or if
`now - max(last login, last logout) < window`. So the index keeps the number of online users and a
sorted list of `last_active` for the users who are offline: the offline users active within the
window are those with `last_active > now - window`, which one bisection finds.

Per client family the same rule, applied to the user's sessions of that client (online now with
it, or its sessions' last login or logout within the window): a `ClientIndex` per family, so a
client's count is one bisection too, and a user on two clients is in both.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .model import UserRecord
from .sorted_times import SortedTimes

__all__ = [
    "DAY",
    "DEFAULT_WINDOWS",
    "ActivityIndex",
    "ClientCounts",
    "ClientIndex",
    "ClientParts",
    "Counts",
    "SortedTimes",  # importable here too: the index's lists (tracker, index snapshot)
    "window_label",
    "window_short",
]

DAY = 86_400
DEFAULT_WINDOWS: tuple[int, ...] = (DAY, 7 * DAY, 30 * DAY)


def window_label(seconds: int) -> str:
    """ "24 hours", "7 days", "90 days": how people say a window."""
    if seconds % DAY == 0 and seconds > DAY:
        return f"{seconds // DAY} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hours"
    return f"{seconds} seconds"


def window_short(seconds: int) -> str:
    """ "1d", "7d", "12h": for field and metric label names."""
    return f"{seconds // DAY}d" if seconds % DAY == 0 else f"{seconds // 3600}h"


@dataclass(frozen=True)
class Counts:
    """The figures at one instant. `active` and `new_users` map a window in seconds to a count."""

    computed_at: int
    active: Mapping[int, int]
    online_users: int
    online_sessions: int
    known_users: int
    new_users: Mapping[int, int] = field(default_factory=dict)  # first seen within the window

    @property
    def dau(self) -> int | None:
        return self.active.get(DAY)

    @property
    def wau(self) -> int | None:
        return self.active.get(7 * DAY)

    @property
    def mau(self) -> int | None:
        return self.active.get(30 * DAY)

    @property
    def stickiness(self) -> float | None:
        """DAU / MAU: the share of this month's users who were active today."""
        if self.dau is None or not self.mau:
            return None
        return self.dau / self.mau


@dataclass(frozen=True)
class ClientCounts:
    """One client family's figures: users active with it per window, users and sessions online."""

    active: Mapping[int, int]
    online_users: int
    online_sessions: int


@dataclass
class ClientParts:
    """One family's ints while the store is read at start-up (see `ActivityIndex.from_parts`)."""

    offline: list[int] | array[int] = field(default_factory=list)  # array: sorted already
    online_users: int = 0
    online_sessions: int = 0


@dataclass
class ClientIndex:
    """The users of one client family: those online with it, and a sorted list of the last
    login or logout of their sessions with it for the others (after `floor`, if set)."""

    _offline: SortedTimes = field(default_factory=SortedTimes)
    online_users: int = 0
    online_sessions: int = 0
    floor: int | None = None

    @classmethod
    def from_parts(cls, parts: ClientParts, floor: int | None) -> ClientIndex:
        return cls(
            _packed(parts.offline),
            online_users=parts.online_users,
            online_sessions=parts.online_sessions,
            floor=floor,
        )

    def add(self, state: tuple[int, int]) -> None:
        time, online = state
        if online:
            self.online_users += 1
            self.online_sessions += online
        elif self.floor is None or time > self.floor:
            self._offline.add(time)

    def remove(self, state: tuple[int, int]) -> None:
        time, online = state
        if online:
            self.online_users -= 1
            self.online_sessions -= online
        elif self.floor is None or time > self.floor:
            self._offline.remove(time)

    def is_empty(self) -> bool:
        return not self.online_users and not self._offline

    def active(self, now: int, window: int) -> int:
        offline = self._offline
        return self.online_users + len(offline) - offline.bisect_right(now - window)

    def counts(self, now: int, windows: Iterable[int]) -> ClientCounts:
        return ClientCounts(
            active={window: self.active(now, window) for window in windows},
            online_users=self.online_users,
            online_sessions=self.online_sessions,
        )


@dataclass
class ActivityIndex:
    """Counts for one set of users, updated in O(log n) per change of one user's record."""

    _offline_last_active: SortedTimes = field(default_factory=SortedTimes)
    _first_seen: SortedTimes = field(default_factory=SortedTimes)
    online_users: int = 0
    online_sessions: int = 0
    known_users: int = 0
    # Timestamps at or before `floor` are not kept: no window this index answers can reach them
    # (dormant accounts cost no memory and no sorting at start-up). See `from_parts`.
    floor: int | None = None
    horizon: int | None = None  # the longest window it answers
    clients: dict[str, ClientIndex] = field(default_factory=dict)  # by family
    # New users and the client families answer only the configured windows: their own floor
    # and horizon (shorter than the totals' when NodeInfo's 180 days are kept for them).
    windows_floor: int | None = None
    windows_horizon: int | None = None

    @classmethod
    def build(cls, records: Iterable[UserRecord]) -> ActivityIndex:
        """The index of many records at once: one sort instead of n insertions."""
        index = cls()
        index.load(records)
        return index

    def load(self, records: Iterable[UserRecord]) -> None:
        """Add many records; only ints are kept (records are streamed)."""
        offline: list[int] = []
        first_seen: list[int] = []
        for record in records:
            self.known_users += 1
            first_seen.append(record.first_seen)
            if record.sessions:
                self.online_users += 1
                self.online_sessions += len(record.sessions)
            else:
                offline.append(record.last_active)
            if record.clients or record.session_clients:
                for family, state in record.client_states().items():
                    self._client(family).add(state)
        self._offline_last_active = SortedTimes([*self._offline_last_active, *offline])
        self._first_seen = SortedTimes([*self._first_seen, *first_seen])

    @classmethod
    def from_parts(
        cls,
        *,
        offline_last_active: list[int] | array[int],
        first_seen: list[int] | array[int],
        online_users: int,
        online_sessions: int,
        known_users: int,
        floor: int,
        horizon: int,
        clients: Mapping[str, ClientParts] | None = None,
        windows_floor: int | None = None,
        windows_horizon: int | None = None,
    ) -> ActivityIndex:
        """The index from a start-up scan's lists (or the index snapshot's sorted arrays), which
        hold only timestamps after `floor` (= load time - `horizon`, the longest window; for
        first seen and the client families, after `windows_floor`). Lists are packed into
        arrays here (and emptied: their ints are freed as they go)."""
        index = cls(
            online_users=online_users,
            online_sessions=online_sessions,
            known_users=known_users,
            floor=floor,
            horizon=horizon,
            windows_floor=floor if windows_floor is None else windows_floor,
            windows_horizon=horizon if windows_horizon is None else windows_horizon,
        )
        index._offline_last_active = _packed(offline_last_active)
        index._first_seen = _packed(first_seen)
        index.clients = {
            family: ClientIndex.from_parts(parts, index.windows_floor)
            for family, parts in (clients or {}).items()
        }
        return index

    def kept_lists(
        self,
    ) -> tuple[SortedTimes, SortedTimes, dict[str, tuple[SortedTimes, int, int]]]:
        """The sorted lists it keeps (live, not copies: for the index snapshot at a clean stop,
        when nothing changes them any more): offline last activity, first seen, and per client
        family (its offline times, users online with it, their sessions)."""
        clients = {
            family: (index._offline, index.online_users, index.online_sessions)
            for family, index in self.clients.items()
        }
        return self._offline_last_active, self._first_seen, clients

    def drop_empty_clients(self) -> None:
        """Forget the families with nobody in them (as a start-up scan would not find them)."""
        for family in [f for f, index in self.clients.items() if index.is_empty()]:
            del self.clients[family]

    def _kept(self, timestamp: int) -> bool:
        return self.floor is None or timestamp > self.floor

    def _first_seen_kept(self, timestamp: int) -> bool:
        return self.windows_floor is None or timestamp > self.windows_floor

    def _client(self, family: str) -> ClientIndex:
        index = self.clients.get(family)
        if index is None:  # families are bounded (client_families.Families)
            index = self.clients[family] = ClientIndex(floor=self.windows_floor)
        return index

    def replace(self, before: UserRecord | None, after: UserRecord | None) -> None:
        """Account for one user's record changing from `before` to `after` (None: absent)."""
        # first_seen rarely changes: touch its list only when it does (or a user comes or goes).
        same_first_seen = (
            before is not None and after is not None and before.first_seen == after.first_seen
        )
        kept, first_seen_kept = self._kept, self._first_seen_kept
        if before is not None:
            self.known_users -= 1
            if not same_first_seen and first_seen_kept(before.first_seen):
                self._first_seen.remove(before.first_seen)
            if before.sessions:
                self.online_users -= 1
                self.online_sessions -= len(before.sessions)
            elif kept(before.last_active):
                self._offline_last_active.remove(before.last_active)
        if after is not None:
            self.known_users += 1
            if not same_first_seen and first_seen_kept(after.first_seen):
                self._first_seen.add(after.first_seen)
            if after.sessions:
                self.online_users += 1
                self.online_sessions += len(after.sessions)
            elif kept(after.last_active):
                self._offline_last_active.add(after.last_active)
        self._replace_clients(before, after)

    def _replace_clients(self, before: UserRecord | None, after: UserRecord | None) -> None:
        """The families whose (time, sessions online) changed: out with the old, in with the
        new. Users without client information cost one comparison; a user with one client
        (most users) no dict."""
        if before is not None and after is not None:
            one_before, one_after = before.only_client(), after.only_client()
            if one_before is not None and one_after is not None and one_before[0] == one_after[0]:
                if one_before[1] != one_after[1]:
                    index = self._client(one_before[0])
                    index.remove(one_before[1])
                    index.add(one_after[1])
                return
        if before is not None and not (before.clients or before.session_clients):
            before = None  # no client known: as if absent
        if after is not None and not (after.clients or after.session_clients):
            after = None
        if before is None and after is None:
            return  # nobody's client is known on either side
        if (
            before is not None
            and after is not None
            and before.clients == after.clients
            and before.session_clients == after.session_clients
        ):
            return
        old = {} if before is None else before.client_states()
        new = {} if after is None else after.client_states()
        for family, state in old.items():
            if new.get(family) != state:
                self._client(family).remove(state)
        for family, state in new.items():
            if old.get(family) != state:
                self._client(family).add(state)

    def _check_window(self, window: int) -> None:
        if self.horizon is not None and window > self.horizon:
            raise ValueError(f"this index answers windows up to {self.horizon} s, not {window} s")

    def active(self, now: int, window: int) -> int:
        """Users online now or with `now - last_active < window`."""
        self._check_window(window)
        offline = self._offline_last_active
        return self.online_users + len(offline) - offline.bisect_right(now - window)

    def new_users(self, now: int, window: int) -> int:
        """Users first seen within the window (`now - first_seen < window`)."""
        if not self._answers_new_users(window):
            raise ValueError(f"new users are counted for windows up to {self.windows_horizon} s")
        return len(self._first_seen) - self._first_seen.bisect_right(now - window)

    def client_counts(self, now: int, windows: Iterable[int]) -> dict[str, ClientCounts]:
        """Per client family: users active with it per window, users and sessions online."""
        windows = tuple(windows)
        if self.windows_horizon is not None and windows and max(windows) > self.windows_horizon:
            raise ValueError(
                f"client families are counted for windows up to {self.windows_horizon} s, "
                f"not {max(windows)} s"
            )
        return {family: index.counts(now, windows) for family, index in self.clients.items()}

    def _answers_new_users(self, window: int) -> bool:
        return self.windows_horizon is None or window <= self.windows_horizon

    def counts(self, now: int, windows: Iterable[int] = DEFAULT_WINDOWS) -> Counts:
        """The figures over `windows`; new users over those of them the index keeps first
        seen times for (not NodeInfo's 180 days)."""
        windows = tuple(windows)
        return Counts(
            computed_at=now,
            active={window: self.active(now, window) for window in windows},
            online_users=self.online_users,
            online_sessions=self.online_sessions,
            known_users=self.known_users,
            new_users={
                window: self.new_users(now, window)
                for window in windows
                if self._answers_new_users(window)
            },
        )


def _packed(values: list[int] | array[int]) -> SortedTimes:
    """A scan's list (sorted here, then emptied) or a snapshot's sorted array, packed."""
    if isinstance(values, array):
        return SortedTimes(values)
    values.sort()
    packed = array("q", values)
    values.clear()
    return SortedTimes(packed)
