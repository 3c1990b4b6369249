"""A flood from one sender is cut; others are not slowed; memory stays bounded."""

from __future__ import annotations

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
