"""A direct port of the seed's loop, update_calculations() of Prosody's community module
mod_measure_active_users: the oracle our index is checked against.

One loop serves both users of it. The property tests pass records (`UserRecord`s); the core
benchmark (benchmarks/bench_core.py) passes a generator that reads each user from a store file,
one lookup and one unpickle per user, as the seed's `store:get(username)` does, so that what it
times is the seed's real work.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DAY = 86_400  # the seed's own constant, not ours: an oracle shares no code with what it checks

# What the loop reads of one user: (first_seen, last_login, last_logout, sessions, ...), the
# layout of a record in the store (bot/storage/codec.py; what follows, the client families, the seed
# does not have). A `UserRecord` is such a tuple.
SeedRecord = tuple[Any, ...]


def seed_counts(records: Iterable[SeedRecord], now: int) -> tuple[int, int, int]:
    """(active in 24 hours, 7 days, 30 days) at `now`, by the seed's rule: online now, or the
    latest of the last login and the last logout less than the window ago."""
    active_d1 = active_d7 = active_d30 = 0
    for _first_seen, login, logout, sessions, *_clients in records:
        if sessions:  # host_user_sessions[username]: active now
            active_d1, active_d7, active_d30 = active_d1 + 1, active_d7 + 1, active_d30 + 1
        else:
            # Restarts and crashes lose some events: the latest of both is the last activity.
            last_active = max(login or 0, logout or 0)
            if now - last_active < DAY:
                active_d1 += 1
            if now - last_active < DAY * 7:
                active_d7 += 1
            if now - last_active < DAY * 30:
                active_d30 += 1
    return active_d1, active_d7, active_d30
