"""Our own faults in the XMPP edge: one policy for every handler (counted, logged, never answered).

A fault of ours is counted by place (`xmpp_internal_errors_total{where}`, watched by an alert
rule in contrib/prometheus), logged with its traceback once per place, kind of error and period
(a fault that every presence hits must not flood the log, and one that comes back tomorrow must
be seen again), and never reaches the sender as an error stanza: slixmpp answers a handler's
exception with "Slixmpp got into trouble", so every handler is wrapped by `guard` before slixmpp
sees it. An `XMPPError` we raise on purpose (forbidden, bad-request) passes through: it is the
answer.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from slixmpp.exceptions import XMPPError

LOG_PERIOD = 600.0  # seconds: one traceback per place and kind of error in each


class InternalErrors:
    """Counts and logs faults of ours, by place; `guard` wraps a handler in this policy."""

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,  # an interval clock
        *,
        period: float = LOG_PERIOD,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._period = period
        self.counts: Counter[tuple[str, str]] = Counter()  # (where, error type) -> faults
        self.places: set[str] = set()  # every place guarded: exported at 0 until a fault
        self._logged_at: dict[tuple[str, str], float] = {}  # bounded: places x error types
        self._logged_count: dict[tuple[str, str], int] = {}  # the count at that line

    def by_place(self) -> dict[str, int]:
        """Faults so far by place: the `where` label of the metric."""
        places: Counter[str] = Counter(dict.fromkeys(self.places, 0))
        for (where, _kind), count in self.counts.items():
            places[where] += count
        return dict(places)

    def record(self, where: str, exc: BaseException) -> None:
        self.places.add(where)
        signature = (where, type(exc).__name__)
        self.counts[signature] += 1
        now = self._clock()
        last = self._logged_at.get(signature)
        if last is not None and now - last < self._period:
            return
        since = self.counts[signature] - self._logged_count.get(signature, 0) - 1
        self._logged_at[signature] = now
        self._logged_count[signature] = self.counts[signature]
        more = f"; {since} more since the last line" if since else ""
        self._logger.error(
            "Internal error while handling a %s (logged once per %.0f minutes%s)",
            where,
            self._period / 60,
            more,
            exc_info=exc,
        )

    def guard(self, where: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler` (plain or coroutine function) under this policy: an exception other than
        XMPPError is recorded and swallowed (the handler returns None)."""
        self.places.add(where)
        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await handler(*args, **kwargs)
                except XMPPError:
                    raise
                except Exception as exc:
                    self.record(where, exc)
                    return None

            return guarded_async

        @functools.wraps(handler)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except XMPPError:
                raise
            except Exception as exc:
                self.record(where, exc)
                return None

        return guarded
