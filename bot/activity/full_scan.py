"""The full scan at start-up: one pass over every stored record, a few ints kept per user.

Per user only ints are kept, and keys are decoded only for the few users online: a million
users load in seconds. Sessions a stop or crash left open end at the time given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.counter import ActivityIndex, ClientParts
from ..core.model import UserRecord
from ..storage.store import Store
from .events import Exclusions, closed


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
class Scan:
    """What one pass over the store found, for all counted domains."""

    domains: dict[bytes, _Loading]
    stale: list[tuple[str, UserRecord]] = field(default_factory=list)  # sessions to close
    online: dict[str, UserRecord] = field(default_factory=dict)  # live sessions (a reader)
    recovered_sessions: int = 0


def scan_store(
    store: Store,
    exclusions: Exclusions,
    domains: tuple[str, ...],
    floor: int,
    windows_floor: int,
    close_sessions_at: int | None,
) -> Scan:
    """One pass over the store for all domains; per user only ints are kept, and keys are
    decoded only for the few users online (a million users load in seconds)."""
    scan = Scan(domains={domain.encode(): _Loading() for domain in domains})
    excluded = exclusions.excluded if exclusions.any else None
    for raw_key, record in store.users_by_raw_key():
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
                scan.online[key] = record
                part.online_users += 1
                part.online_sessions += len(sessions)
                part.add_client_states(record, windows_floor)
                continue
            # Left open by a stop or crash: they ended at the last sign of life.
            scan.recovered_sessions += len(sessions)
            record = closed(record, close_sessions_at)
            logout, clients = record.last_logout, record.clients
            scan.stale.append((key, record))
        last_active = login if login > logout else logout
        if last_active > floor:
            part.offline.append(last_active)
        if not clients:
            continue
        # Per client family its time; one family, mostly, whose time is the user's last
        # activity: one int object in both lists. Dormant families are not kept (they free
        # their place among the host families, see client_families.Families).
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
