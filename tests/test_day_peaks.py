"""The day's peak of users online: one owner; reading the ended days changes nothing."""

from __future__ import annotations

from bot.activity.peaks import DayPeaks, stored_peaks, with_peaks
from bot.core.counter import DAY

from .support import T0


def test_reading_the_ended_days_changes_nothing_until_they_are_written():
    online = {"example.test": 2}
    peaks = DayPeaks(lambda: dict(online))
    peaks.start(T0 + 3600)
    peaks.note("example.test", 5)
    online["example.test"] = 1
    peaks.roll(T0 + DAY + 60)  # the first change of the next day closes this one
    assert peaks.ended() == {T0 // DAY: {"example.test": 5}}
    assert peaks.ended() == {T0 // DAY: {"example.test": 5}}  # asked again: still there
    assert peaks.today() == {"example.test": 1}
    peaks.written(T0 // DAY)
    assert peaks.ended() == {}


def test_a_change_carrying_an_earlier_time_never_rolls_back_but_the_clock_may():
    peaks = DayPeaks(lambda: {"example.test": 0})
    peaks.start(T0 + DAY + 10)
    peaks.note("example.test", 3)
    peaks.roll(T0 + 10)  # a session closed at its last sign of life, yesterday
    assert peaks.ended() == {}
    peaks.roll(T0 + 10, back=True)  # the clock stepped back into yesterday
    assert peaks.ended() == {T0 // DAY + 1: {"example.test": 3}}


def test_today_is_never_below_who_is_online_nor_below_what_is_stored_for_today():
    online = {"example.test": 4}
    peaks = DayPeaks(lambda: dict(online))
    peaks.start(T0, stored_today={"example.test": 2})
    assert peaks.today() == {"example.test": 4}
    stored = {"example.test": {"active": {}, "new": {}, "peak_online": 9}}
    assert peaks.today(stored=stored) == {"example.test": 9}
    assert peaks.take_rose() is False  # the start is not a rise
    peaks.note("example.test", 5)
    assert (peaks.take_rose(), peaks.take_rose()) == (True, False)


def test_a_final_peak_raises_a_stored_day_and_never_lowers_it():
    held = {"a.test": {"peak_online": 4}, "b.test": {"peak_online": 7}}
    raised = with_peaks(held, {"a.test": 6, "b.test": 2})
    assert stored_peaks(raised) == {"a.test": 6, "b.test": 7}
    assert stored_peaks(held) == {"a.test": 4, "b.test": 7}  # a copy: the held one unchanged
