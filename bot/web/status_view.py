"""What the status page shows, gathered at one instant: the figures, their history, the health.

The bot gathers it (`Bot.status_view`); statuspage.py renders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..admin.history import Day
from ..core.counter import ClientCounts, Counts

HISTORY_DAYS = 90  # the charts' span, today included


@dataclass(frozen=True)
class Health:
    connected_since: float | None  # None: not connected now
    last_write_at: float | None  # the last successful write of the store; None: none yet
    failed_writes: int  # since the bot started
    store_bytes: int | None  # the store's file and its write-ahead log; None: unknown


@dataclass(frozen=True)
class StatusView:
    """Everything the page shows, gathered at one instant."""

    service: str  # the component's JID
    now: float
    by_domain: Mapping[str, Counts]  # live figures
    days: Sequence[Day]  # oldest first, today (live) last; None domains: the bot was down
    windows: tuple[int, ...]
    health: Health
    clients_by_domain: Mapping[str, Mapping[str, ClientCounts]] = field(default_factory=dict)
