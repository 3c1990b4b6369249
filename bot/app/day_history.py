"""The day's history snapshots this run writes: today's figures and peak, an ended day's final peak.

The flush asks for today's snapshot when its peak rose, the count once per pass, the shutdown
last; a fault here costs the snapshot (the day's peak), never the records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..activity.peaks import stored_peaks, with_peaks
from ..activity.tracker import ActivityTracker
from ..admin.history import Day, day_snapshot, last_days, utc_day
from ..core.counter import DAY
from ..storage.store import Store

log = logging.getLogger("bot.daemon")  # its name from before the layers: admins grep it


class DayHistory:
    """The snapshots of the days whose peaks may still rise, and the updates that write them.

    Built after the tracker's load: it hands the tracker's peaks today's stored peak.
    """

    def __init__(self, store: Store, tracker: ActivityTracker, clock: Callable[[], float]) -> None:
        self.store = store
        self.tracker = tracker
        self.clock = clock
        self.failures = 0  # updates of the day's snapshot that failed (see `guarded`)
        self._faults: set[str] = set()  # the kinds logged, each once
        now = int(clock())
        # The snapshots of the days whose peaks may still rise (see record_today): as stored,
        # from yesterday on (the clock may step back a day, or have been ahead before), then
        # every one this run writes. No other writer runs meanwhile.
        since = utc_day(now - DAY)
        self._days: dict[str, dict[str, Any]] = {
            day: snapshot for day, snapshot in store.days().items() if day >= since
        }
        tracker.peaks.start(now, stored_peaks(self._days.get(utc_day(now))))

    def record_today(self) -> None:
        """Rewrite today's history snapshot with the current figures (UTC days), and give the
        days that ended since the last call the peak of users online that happened on them.
        A day the clock stepped back into keeps the higher of its two peaks. Reads nothing
        from the store: the snapshots are the ones this run holds."""
        now = int(self.clock())
        peaks = self.tracker.peaks
        peaks.take_rose()  # written now
        peaks.roll(now, back=True)  # `now` is the clock's: it may step back into a day
        for day_number, final in peaks.ended().items():
            self._record_final_peaks(utc_day(day_number * DAY), final)
            peaks.written(day_number)
        today = utc_day(now)
        by_domain = self.tracker.counts_by_domain(now)
        snapshot = day_snapshot(by_domain, peaks.today(stored=self._days.get(today)))
        self.store.put_day(today, snapshot)
        self._days[today] = snapshot  # one per day of this run: a step back may reach it

    def guarded(self, update: Callable[[], None]) -> None:
        """Run an update of the day's history snapshot. Its fault costs the snapshot (the day's
        peak), never the records: it is counted for /metrics, logged once per kind, and the
        flush, the count or the shutdown that called it goes on."""
        try:
            update()
        except Exception as exc:
            self.failures += 1
            kind = f"{type(exc).__name__}: {exc}"
            if kind not in self._faults and len(self._faults) < 100:
                self._faults.add(kind)
                log.exception(
                    "Updating the day's history snapshot failed (logged once); the records are "
                    "written regardless"
                )

    def record_peak_if_risen(self) -> None:
        """Before each flush: today's snapshot again if its peak rose (or a day began), so
        that the peak is on disk as soon as the records that made it."""
        if self.tracker.peaks.take_rose():
            self.record_today()

    def _record_final_peaks(self, day: str, peaks: dict[str, int]) -> None:
        held = self._days.get(day)
        if held is None:
            return  # no count that day: its figures are unknown, it stays a gap
        snapshot = with_peaks(held, peaks)  # a copy: the held one may be in a batch being written
        self.store.put_day(day, snapshot)
        self._days[day] = snapshot

    async def last(self, days: int) -> list[Day]:
        """The last `days` days: the store's scan runs in a worker thread."""
        return last_days(await self.store.days_off_loop(), utc_day(self.clock()), days)
