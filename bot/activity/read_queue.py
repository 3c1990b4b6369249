"""The read queue: changes waiting, in arrival order, for offline users' records read off the loop.

The running bot never reads the disk on the event loop: a change whose user's record is not in
memory (online users', the store's pending writes) waits while the record is read in the
store's worker thread, batched with other reads; the changes given after it wait too, so that
every change is applied in the order it came. While changes wait, the records they need are
kept here, current (`changed`), and dropped when no waiting change needs them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from itertools import islice

from ..core.model import UserRecord
from ..storage.store import Store

log = logging.getLogger("bot.activity")  # its name from before the layers: admins grep it

READ_BATCH = 4096  # records read from the store per trip to a worker thread
READ_RETRY_DELAY = 1.0  # seconds before reading again after the store failed to answer


class ReadQueue:
    """Changes in order, each run once the record it needs is in memory."""

    def __init__(
        self, store: Store, is_online: Callable[[str], bool], *, read_in_threads: bool
    ) -> None:
        self._store = store
        self._is_online = is_online  # whether a key's record is held by the online users'
        self._read_in_threads = read_in_threads
        # Changes waiting for a record, in the order given: (store key or None, change).
        self._queue: deque[tuple[str | None, Callable[[], None]]] = deque()
        self._waiting_for: dict[str, int] = {}  # key -> how many waiting changes need it
        # The records that waiting changes need (read from the store, or as they were changed
        # while changes wait); always current; dropped when no waiting change needs them.
        self._loaded: dict[str, UserRecord | None] = {}
        self._to_read: dict[str, None] = {}  # keys to read next (an ordered set)
        self._reading: dict[str, bool] = {}  # key being read -> unchanged since the read began
        # The read in the store's thread: its future and keys.
        self._read: tuple[Future[dict[str, bytes | None]], list[str]] | None = None
        self._read_paused = False  # after a failed read, until the retry
        self._read_problem = ""  # the store's last read failure, logged once

    @property
    def waiting(self) -> int:
        """Changes submitted and not applied yet."""
        return len(self._queue)

    def record(self, key: str) -> UserRecord | None:
        """The record of an offline user: as a waiting change left it or as read off the loop,
        else from the store (its pending writes first, then one indexed SQLite lookup)."""
        if key in self._loaded and not self._store.in_memory(key):
            return self._loaded[key]
        return self._store.get(key)

    def changed(self, key: str, record: UserRecord | None) -> None:
        """The record of `key` is now `record`: a record read before is out of date."""
        if key in self._waiting_for:
            self._loaded[key] = record  # for the changes still waiting
        elif self._loaded:
            self._loaded.pop(key, None)
        if self._reading and key in self._reading:
            self._reading[key] = False

    async def caught_up(self) -> None:
        """Return once every change submitted before has been applied."""
        if self._queue:
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.submit(None, resolving(done, lambda: True))
            await done

    async def until_applied(self, timeout: float) -> int:
        """Wait (at most `timeout` seconds) until every change given has been applied; returns
        how many still wait (the store cannot be read)."""
        try:
            await asyncio.wait_for(self.caught_up(), timeout)
        except TimeoutError:
            return len(self._queue) - 1  # not counting caught_up's own marker
        return 0

    def submit(self, key: str | None, change: Callable[[], None]) -> None:
        """Run `change` after every change submitted before it, once the record of `key`
        (None: no record) is in memory: at once without `read_in_threads`."""
        if self._read is not None and self._read[0].done():
            self._read_done()  # before the loop's next turn: see `_start_read`
        if not self._read_in_threads or (not self._queue and (key is None or self._has(key))):
            _run(change)
            return
        self._queue.append((key, change))
        if key is None:
            return
        self._waiting_for[key] = self._waiting_for.get(key, 0) + 1
        if self._is_online(key) or key in self._loaded:
            return
        if self._store.in_memory(key):  # kept: a flush may take it out of memory meanwhile
            self._loaded[key] = self._store.get(key)
        else:
            self._read_soon(key)  # read ahead: the changes before it may still wait

    def _has(self, key: str) -> bool:
        """Whether the record of `key` is in memory (so `record` needs no disk)."""
        return self._is_online(key) or key in self._loaded or self._store.in_memory(key)

    def _read_soon(self, key: str) -> None:
        if key in self._to_read or key in self._reading:
            return
        self._to_read[key] = None
        if self._read is None and not self._read_paused:
            self._start_read()

    def _start_read(self) -> None:
        """Read the records asked for so far in the store's worker thread. Their changes are
        applied as soon as the loop sees the read done: at its next turn, or at the next change
        given (`_submit` looks: at full load one turn of the loop may handle thousands of
        stanzas, and the changes waiting would pile up meanwhile)."""
        keys = list(islice(self._to_read, READ_BATCH))
        for key in keys:
            del self._to_read[key]
            self._reading[key] = True
        read = self._store.submit_in_thread(partial(self._store.read_stored, keys))
        self._read = (read, keys)
        asyncio.wrap_future(read).add_done_callback(self._read_noticed)

    def _read_noticed(self, wrapped: asyncio.Future[dict[str, bytes | None]]) -> None:
        if not wrapped.cancelled():
            wrapped.exception()  # retrieved; handled by _read_done
        self._read_done()

    def _read_done(self) -> None:
        """Apply a finished read (once: `_submit` may have seen it first)."""
        if self._read is None or not self._read[0].done():
            return
        (read, keys), self._read = self._read, None
        try:
            values = read.result()
        except Exception as exc:  # the store cannot be read: keep the changes, retry
            for key in keys:
                del self._reading[key]
            self._to_read = dict.fromkeys(keys) | self._to_read
            if str(exc) != self._read_problem:
                log.error("Reading users' records failed (%s); retrying", exc)
                self._read_problem = str(exc)
            self._read_paused = True
            asyncio.get_running_loop().call_later(READ_RETRY_DELAY, self._read_again)
            return
        if self._read_problem:
            log.warning("Reading users' records works again")
            self._read_problem = ""
        for key in keys:
            unchanged = self._reading.pop(key)
            if unchanged and key in self._waiting_for and not self._has(key):
                self._loaded[key] = self._store.record_or_set_aside(key, values[key])
        if self._to_read:
            self._start_read()  # the keys asked for meanwhile
        self._apply_waiting()

    def _read_again(self) -> None:
        self._read_paused = False
        if self._to_read and self._read is None:
            self._start_read()

    def _apply_waiting(self) -> None:
        """Apply the waiting changes in order, up to the first whose record is not in memory."""
        queue, waiting_for = self._queue, self._waiting_for
        while queue:
            key, change = queue[0]
            if key is None:
                queue.popleft()
                _run(change)
                continue
            if not self._has(key):
                self._read_soon(key)  # its read was dropped: a change came before it ended
                return
            queue.popleft()
            if waiting_for[key] > 1:
                waiting_for[key] -= 1
                _run(change)
            else:
                del waiting_for[key]
                _run(change)
                self._loaded.pop(key, None)  # no waiting change needs it any more
        self._loaded.clear()  # nothing waits: no record is needed any more


def _run(change: Callable[[], None]) -> None:
    try:
        change()
    except Exception:  # the queue goes on: one change's fault is not the others'
        log.exception("Applying a change failed")


def resolving(future: asyncio.Future[bool], change: Callable[[], bool]) -> Callable[[], None]:
    """`change`, its result (or exception) given to `future`. A future cancelled meanwhile
    (its asker went away: an admin's disconnect, a stop) does not cancel the change: a forget
    asked is a forget applied. Its fault, with nobody left to tell, is logged."""

    def run() -> None:
        try:
            result = change()
        except Exception as exc:
            if future.done():
                log.error("Applying a change whose asker went away failed", exc_info=exc)
            else:
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    return run
