"""A direct port of the seed's loop (mod_measure_active_users.lua), the oracle for our index."""

from __future__ import annotations

from collections.abc import Iterable

from bot.model import UserRecord

DAY = 86_400


def seed_counts(records: Iterable[UserRecord], now: int) -> tuple[int, int, int]:
    active_d1 = active_d7 = active_d30 = 0
    for record in records:
        if record.sessions:  # host_user_sessions[username]: active now
            active_d1, active_d7, active_d30 = active_d1 + 1, active_d7 + 1, active_d30 + 1
        else:
            last_active = max(record.last_login or 0, record.last_logout or 0)
            if now - last_active < DAY:
                active_d1 += 1
            if now - last_active < DAY * 7:
                active_d7 += 1
            if now - last_active < DAY * 30:
                active_d30 += 1
    return active_d1, active_d7, active_d30
