"""Days' snapshots and the admins' notes as stored: primitives under "day:" and "notify:".

Read from the file only (any thread); a damaged value is logged and skipped, left in place.
The store lays the unwritten ones over these.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from .connection import StoreConnection
from .keys import DAY, NOTIFY
from .primitives import load_primitives

log = logging.getLogger("bot.store")


def stored_day(connection: StoreConnection, day: str) -> dict[str, Any] | None:
    """One day's snapshot on disk; None when there is none or it is damaged."""
    value = connection.value(DAY + day)
    if value is None:
        return None
    try:
        snapshot = load_primitives(value)
    except pickle.UnpicklingError as exc:
        log.error("Store snapshot of %s is damaged (%s); ignored, left in place", day, exc)
        return None
    return snapshot if isinstance(snapshot, dict) else None


def stored_days(connection: StoreConnection) -> dict[str, dict[str, Any]]:
    """Every day's snapshot on disk, by date (YYYY-MM-DD)."""
    stored = {}
    for key, value in connection.rows_with_rare_prefix(DAY):
        day = key[len(DAY) :].decode(errors="replace")
        try:
            snapshot = load_primitives(value)
        except Exception as exc:  # any unpickling failure, or a refused class
            log.error("Store snapshot of day %s is damaged (%s); ignored, left in place", day, exc)
            continue
        stored[day] = snapshot
    return stored


def stored_notes(connection: StoreConnection) -> dict[str, Any]:
    """Every "notify:" value, by name."""
    notes = {}
    for key, value in connection.rows_with_rare_prefix(NOTIFY):
        name = key[len(NOTIFY) :].decode(errors="replace")
        try:
            notes[name] = load_primitives(value)
        except pickle.UnpicklingError as exc:
            log.error("Store value %r is damaged (%s); ignored, left in place", name, exc)
    return notes
