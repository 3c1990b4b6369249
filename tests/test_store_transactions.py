"""A failed write never wedges the store, and a store that cannot get its journal mode says so."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3

import pytest

from bot.core.model import UserRecord
from bot.storage.errors import StoreError
from bot.storage.flushing import flush_periodically
from bot.storage.sqlite_dict import SqliteDict
from bot.storage.store import Store

from .support import T0

RECORD = UserRecord(T0, T0, 0)


def connection(store: Store) -> sqlite3.Connection:
    return store._db._cx  # fault injection only: the store's own SQLite connection


def make_commits_fail(cx: sqlite3.Connection) -> None:
    """Every write of a record now fails at COMMIT, as a deferred constraint does: SQLite then
    keeps the transaction open (the state a failed COMMIT leaves behind)."""
    cx.executescript(
        """
        PRAGMA foreign_keys = ON;
        CREATE TABLE parent (id INTEGER PRIMARY KEY);
        CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
        CREATE TRIGGER fail_at_commit AFTER INSERT ON Dict BEGIN
            INSERT INTO child VALUES (42);
        END;
        """
    )


def test_a_commit_that_fails_once_leaves_the_store_usable(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("first@example.test", RECORD)
        store.flush(T0)
        make_commits_fail(connection(store))
        store.put("alice@example.test", RECORD)
        with pytest.raises(StoreError, match="FOREIGN KEY constraint failed"):
            store.flush(T0 + 1)
        assert store.pending == 1  # kept for the next flush
        assert not connection(store).in_transaction
        connection(store).execute("DROP TRIGGER fail_at_commit")  # the cause is gone
        assert store.flush(T0 + 2) == 1
    with Store(path, readonly=True) as store:
        assert {jid for jid, _ in store.users()} == {"first@example.test", "alice@example.test"}
        assert store.heartbeat == T0 + 2


class _RefusesWal:
    """An SQLite connection on a file system without shared memory: WAL is refused."""

    def __init__(self, cx: sqlite3.Connection) -> None:
        self._cx = cx

    def execute(self, sql: str, *args):
        if sql.replace(" ", "").lower() == "pragmajournal_mode=wal":
            return self._cx.execute("PRAGMA journal_mode")  # answers "delete": unchanged
        return self._cx.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._cx, name)


def test_a_file_system_that_refuses_wal_is_a_clear_error(tmp_path, monkeypatch):
    real_init = SqliteDict.__init__

    def init(self, path, *, readonly):
        real_init(self, path, readonly=readonly)
        self._cx = _RefusesWal(self._cx)

    monkeypatch.setattr(SqliteDict, "__init__", init)
    with pytest.raises(StoreError, match=r"refused write-ahead logging.*local disk"):
        Store(tmp_path / "activity.db")


@pytest.mark.asyncio
async def test_a_store_that_keeps_failing_is_logged_once_then_its_recovery(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="bot.store")
    with Store(tmp_path / "activity.db") as store:
        connection(store).execute("PRAGMA query_only = 1")  # every write now fails
        store.put("alice@example.test", RECORD)
        attempts = 0
        failed_20_times, written = asyncio.Event(), asyncio.Event()
        real_flush_off_loop = store.flush_off_loop

        async def counted_flush(now: int, **kwargs) -> int:
            nonlocal attempts
            try:
                wrote = await real_flush_off_loop(now, **kwargs)
            except StoreError:
                attempts += 1
                if attempts == 20:
                    failed_20_times.set()
                raise
            if wrote:
                written.set()
            return wrote

        store.flush_off_loop = counted_flush  # type: ignore[method-assign]
        flushing = asyncio.create_task(flush_periodically(store, 0.01, lambda: T0))
        try:
            await asyncio.wait_for(failed_20_times.wait(), 10)  # logged once, not 20 times
            connection(store).execute("PRAGMA query_only = 0")
            await asyncio.wait_for(written.wait(), 10)
        finally:
            flushing.cancel()
        assert store.pending == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().endswith("kept in memory and retried at the next flush")
    (recovered,) = [r.getMessage() for r in caplog.records if "work again" in r.getMessage()]
    match = re.fullmatch(
        r"Store writes work again after (\d+) failed flushes .*; 1 users written", recovered
    )
    assert match is not None, recovered
    assert int(match[1]) == attempts >= 20
