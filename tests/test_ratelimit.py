"""A flood from one sender is cut; others are not slowed; memory stays bounded."""

from __future__ import annotations

import time

from bot.ratelimit import RateLimiter


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
