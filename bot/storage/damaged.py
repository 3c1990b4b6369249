"""Damaged records, said once: a reader leaves them in place, the writer sets them aside."""

from __future__ import annotations

import logging

from .codec import DamagedRecord
from .keys import DAMAGED

log = logging.getLogger("bot.store")


def log_damaged(raw_key: bytes, problem: DamagedRecord) -> None:
    """A damaged record a reader found: logged, left in place (only the writer sets aside)."""
    log.error(
        "Store record of %s is malformed (%s); ignored, left in place",
        raw_key.decode(errors="replace"),
        problem,
    )


def log_set_aside(key: str, problem: DamagedRecord) -> None:
    """A damaged record the writer sets aside under "damaged:" (`PendingWrites.set_aside`)."""
    log.error(
        "Store record of %s is damaged (%s); set aside as %r, the user is tracked afresh",
        key,
        problem,
        DAMAGED + key,
    )
