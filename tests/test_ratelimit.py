"""A flood from one sender is cut; others are not slowed; memory stays bounded; refusals reach
the log at a rate no sender can raise."""

from __future__ import annotations

import logging
import time

from bot.xmpp.ratelimit import RateLimiter, RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_one_per_interval():
    clock = Clock()
    limiter = RateLimiter(clock, burst=3, rate=0.5)
    assert [limiter.allow("eve@x") for _ in range(5)] == [True, True, True, False, False]
    clock.now += 1.9
    assert not limiter.allow("eve@x")
    clock.now += 0.2  # two seconds: one token back
    assert limiter.allow("eve@x")
    assert not limiter.allow("eve@x")


def test_one_flooding_sender_does_not_block_another():
    limiter = RateLimiter(Clock(), burst=2)
    for _ in range(1000):
        limiter.allow("eve@x")
    assert limiter.allow("admin@x")


def test_many_senders_keep_memory_bounded():
    limiter = RateLimiter(Clock(), max_senders=100)
    for n in range(10_000):
        limiter.allow(f"u{n}@x")
    assert len(limiter._buckets) == 100


def test_a_full_table_of_senders_still_limits_the_one_flooding_now():
    """Forged senders fill the table: the least recently seen is dropped, never the sender
    being limited (its bucket forgotten, it would get a new burst at every message)."""
    limiter = RateLimiter(Clock(), burst=2, max_senders=3)
    for n in range(3):
        limiter.allow(f"forged{n}@x")
    assert [limiter.allow("eve@x") for _ in range(5)] == [True, True, False, False, False]
    limiter.allow("forged0@x")  # seen again: now eve is the least recently seen but one
    limiter.allow("forged9@x")  # a new sender: forged1 and forged2 are dropped first
    assert not limiter.allow("eve@x")


def test_a_clock_that_steps_back_an_hour_refuses_no_longer_than_one_interval():
    clock = Clock()
    limiter = RateLimiter(clock, burst=2, rate=0.5)
    assert limiter.allow("admin@x")
    clock.now -= 3600  # the clock stepped back
    assert limiter.allow("admin@x")  # the token left is still there
    assert not limiter.allow("admin@x")
    clock.now += 2.0  # one interval later: one token back, as without the step
    assert limiter.allow("admin@x")


def test_the_bot_limits_chat_on_the_monotonic_clock():
    assert RateLimiter()._clock is time.monotonic


# --- the log of refusals ------------------------------------------------------------------------


class Timers:
    """A stand-in for the event loop's call_later: the test fires what is due."""

    class Handle:
        def __init__(self, delay: float, callback) -> None:
            self.delay, self.callback, self.cancelled = delay, callback, False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.scheduled: list[Timers.Handle] = []

    def __call__(self, delay: float, callback) -> Handle:
        self.scheduled.append(Timers.Handle(delay, callback))
        return self.scheduled[-1]


def refusal_log(clock: Clock, schedule=None, **options) -> tuple[RefusalLog, logging.Logger]:
    logger = logging.getLogger("tests.refusals")
    return RefusalLog(logger, "refused requests", clock, schedule=schedule, **options), logger


def test_a_flood_from_one_sender_is_one_line_then_one_summary_on_time(caplog):
    clock, timers = Clock(), Timers()
    refusals, _ = refusal_log(clock, timers, period=600)
    caplog.set_level(logging.INFO, "tests.refusals")
    clock.now += 100
    for n in range(840):
        refusals.refused("eve@x", "Request %d refused to %s", n, "eve@x/r")
    assert caplog.messages == ["Request 0 refused to eve@x/r"]
    (timer,) = timers.scheduled  # one summary due, at the end of the period
    assert timer.delay == 500
    clock.now += 500
    timer.callback()
    assert caplog.messages[1:] == [
        "839 more refused requests in the last 10 minutes (only the first of each sender is logged)"
    ]
    refusals.refused("eve@x", "Request %d refused to %s", 840, "eve@x/r")  # a new period
    assert caplog.messages[2:] == ["Request 840 refused to eve@x/r"]


def test_many_senders_get_a_bounded_number_of_lines_per_period(caplog):
    clock = Clock()
    refusals, _ = refusal_log(clock, period=600, senders_per_period=10)
    caplog.set_level(logging.INFO, "tests.refusals")
    for _ in range(3):
        for n in range(10_000):
            refusals.refused(f"u{n}@x", "refused to %s", f"u{n}@x")
            clock.now += 0.01
        clock.now += 600
    lines_per_period = 10 + 1  # ten first refusals, one summary (at the next period's first)
    assert len(caplog.messages) == 3 * lines_per_period - 1
    assert caplog.messages[10] == (
        "9990 more refused requests in the last 12 minutes "
        "(only the first of each sender is logged)"
    )


def test_a_summary_written_by_a_refusal_cancels_the_timer(caplog):
    clock, timers = Clock(), Timers()
    refusals, _ = refusal_log(clock, timers, period=600)
    caplog.set_level(logging.INFO, "tests.refusals")
    refusals.refused("eve@x", "refused")
    refusals.refused("eve@x", "refused")
    clock.now += 600  # the loop was busy: a refusal comes before the timer fires
    refusals.refused("eve@x", "refused")
    assert timers.scheduled[0].cancelled
    assert caplog.messages == [
        "refused",
        "1 more refused requests in the last 10 minutes (only the first of each sender is logged)",
        "refused",
    ]


def test_levels_other_than_info_are_kept(caplog):
    refusals, _ = refusal_log(Clock(), level=logging.DEBUG)
    caplog.set_level(logging.DEBUG, "tests.refusals")
    refusals.refused("eve@x", "ignored")
    assert [record.levelno for record in caplog.records] == [logging.DEBUG]
