"""The store's worker thread: the event loop's SQLite work, one piece at a time, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class StoreThread:
    """One thread, started at its first piece of work: the SQLite work of the event loop is
    done in order, and its memory stays in one malloc arena (a thread per piece would make RSS
    creep)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Run `work` in the thread (from any thread)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="store")
        return self._executor.submit(work)

    def run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """`submit`, awaitable by the event loop."""
        return asyncio.wrap_future(self.submit(work))

    def shutdown(self) -> None:
        """No more work; what runs ends on its own (not waited for)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
