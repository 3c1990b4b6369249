"""The day's peak of users online, per domain and UTC day: its one owner.

Changes note it (`note`); a change or a count at a later day closes the day (`roll`); the
history asks what today's peak is (`today`), which ended days still await their final peak
(`ended`, read without changing anything) and says when one is written (`written`); the flush
asks whether the peak rose since it was last written (`take_rose`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..core.counter import DAY


def stored_peaks(snapshot: Mapping[str, Any] | None) -> dict[str, int]:
    """The peak of users online per domain in a stored day snapshot."""
    peaks = {}
    for domain, data in (snapshot or {}).items():
        if isinstance(data, dict) and type(data.get("peak_online")) is int:
            peaks[domain] = data["peak_online"]
    return peaks


def with_peaks(snapshot: Mapping[str, Any], peaks: Mapping[str, int]) -> dict[str, Any]:
    """A copy of a stored day snapshot (the held one may be in a batch being written), each
    domain's peak raised to `peaks` (never lowered)."""
    copy = {
        domain: dict(figures) if isinstance(figures, dict) else figures
        for domain, figures in snapshot.items()
    }
    for domain, peak in peaks.items():
        figures = copy.get(domain)
        if isinstance(figures, dict):
            figures["peak_online"] = max(figures.get("peak_online", 0), peak)
    return copy


class DayPeaks:
    """Most users online at once, per domain and UTC day, credited to the day it happened."""

    def __init__(self, online: Callable[[], dict[str, int]]) -> None:
        self._online = online  # per domain, the users online now
        self._day: int | None = None  # days since the epoch (UTC)
        self._today: dict[str, int] = {}
        self._ended: dict[int, dict[str, int]] = {}  # days closed, their final peak not written
        self._rose = False  # today's peak changed since the bot last wrote it

    def start(self, now: int, stored_today: Mapping[str, int] | None = None) -> None:
        """Today's peak starts from who is online now (after the load), or from the peak
        already stored for today (a restart must not lower it)."""
        self._day, self._today = now // DAY, self._online()
        for domain, peak in (stored_today or {}).items():
            if domain in self._today:
                self.note(domain, peak)

    def roll(self, now: int, *, back: bool = False) -> None:
        """At the first moment seen of a later day (or, with `back`, of an earlier one the clock
        stepped back into): close the day, start the new one from who is online. Events may
        carry earlier times (a session closed at its last sign of life): they never roll back."""
        day = now // DAY
        if self._day is None or day > self._day or (back and day < self._day):
            if self._day is not None:
                ended = self._ended.setdefault(self._day, {})  # a day may be left twice
                for domain, peak in self._today.items():
                    ended[domain] = max(ended.get(domain, 0), peak)
            self._day, self._today = day, self._online()
            self._rose = True

    def note(self, domain: str, online_users: int) -> None:
        if online_users > self._today.get(domain, 0):
            self._today[domain] = online_users
            self._rose = True

    def today(self, stored: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Per domain, the most users online at once so far today (UTC): never below who is
        online now, raised to the peaks of today's `stored` snapshot (the clock may have
        stepped back into it, or a restart begun it)."""
        peaks = dict(self._today)
        for domain, online in self._online().items():
            peaks[domain] = max(peaks.get(domain, 0), online)
        for domain, peak in stored_peaks(stored).items():
            peaks[domain] = max(peaks.get(domain, 0), peak)
        return peaks

    def ended(self) -> dict[int, dict[str, int]]:
        """The final peaks of the days (numbers since the epoch) closed and not written yet."""
        return {day: dict(peaks) for day, peaks in self._ended.items()}

    def written(self, day: int) -> None:
        """The final peak of `day` is on disk (or has nowhere to go)."""
        self._ended.pop(day, None)

    def take_rose(self) -> bool:
        """Whether today's peak (or the day) changed since the last call: then it is due on
        disk, so that a crash loses no more of it than of the records."""
        rose, self._rose = self._rose, False
        return rose
