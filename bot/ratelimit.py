"""Per-sender token buckets: a flood from one JID is dropped without slowing anyone else."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """Allows `burst` messages at once per sender, then one every `1 / rate` seconds.

    Remembers at most `max_senders` senders (the least recently seen are dropped first), so a
    flood from many forged senders cannot grow memory without bound.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,  # an interval clock: never the wall clock
        *,
        burst: int = 5,
        rate: float = 0.5,
        max_senders: int = 10_000,
    ) -> None:
        self._clock = clock
        self._burst = burst
        self._rate = rate
        self._max_senders = max_senders
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def allow(self, sender: str) -> bool:
        now = self._clock()
        tokens, at = self._buckets.pop(sender, (float(self._burst), now))
        elapsed = max(0.0, now - at)  # a clock that steps back gives no tokens, takes none
        tokens = min(float(self._burst), tokens + elapsed * self._rate)
        allowed = tokens >= 1
        self._buckets[sender] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > self._max_senders:
            self._buckets.popitem(last=False)
        return allowed
