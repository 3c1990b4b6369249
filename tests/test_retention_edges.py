"""Retention's edge through `Bot.apply_retention` (the retention duty's pass), deterministically: a
user last active exactly `retention_days` ago is kept, one second earlier forgotten, one second
later kept; by the later of last login and last logout (the seed's rule); plain and
pseudonymized; with client families (the kept users keep theirs); the index forgets them too; a
user stale on disk but active in memory (not flushed yet) is kept.

The random model check (tests/test_model_core.py) reaches this edge only by chance."""

from __future__ import annotations

import pytest

from bot.app.daemon import Bot
from bot.config import load_settings
from bot.core.model import UserRecord
from bot.storage.store import Store

from .support import MINIMAL, T0, write

DAYS = 90
EDGE = T0 - DAYS * 86_400  # active at this second or later: kept
SECRET = "a pseudonym secret of 32 chars.."

# user -> (last login, last logout), all offline; the families' times follow the user's.
USERS = {
    "edge": (EDGE - 500, EDGE),  # exactly at the edge: kept
    "before": (EDGE - 500, EDGE - 1),  # one second beyond: forgotten
    "after": (EDGE - 500, EDGE + 1),  # one second within: kept
    "login-edge": (EDGE, EDGE - 500),  # the later of both counts
    "login-before": (EDGE - 1, EDGE - 500),
    "login-after": (EDGE + 1, EDGE - 500),
}
KEPT = {"edge", "after", "login-edge", "login-after"}


def jid(name: str) -> str:
    return f"{name}@example.test"


def seed(store_path, pseudonym_key: bytes | None, families: bool) -> None:
    with Store(store_path, pseudonym_key=pseudonym_key) as store:
        for name, (login, logout) in USERS.items():
            last = max(login, logout)
            clients: tuple[str | int, ...] = ("gajim", last, "conversations", last - 100)
            record = UserRecord(
                first_seen=EDGE - 10_000,
                last_login=login,
                last_logout=logout,
                clients=clients if families else (),
            )
            store.put(store.key_of(jid(name)), record)
        store.flush(EDGE + 1)  # the last run stopped long ago


def settings_for(tmp_path, pseudonymize: bool):
    text = MINIMAL + f"[privacy]\nretention_days = {DAYS}\n"
    if pseudonymize:
        text += f'pseudonymize = true\npseudonym_secret = "{SECRET}"\n'
    return load_settings(write(tmp_path, text), environ={})


@pytest.mark.asyncio
@pytest.mark.parametrize("families", [False, True], ids=["no-clients", "clients"])
@pytest.mark.parametrize("pseudonymize", [False, True], ids=["plain", "pseudonymized"])
async def test_retention_forgets_exactly_the_users_beyond_its_edge(
    tmp_path, pseudonymize, families
):
    settings = settings_for(tmp_path, pseudonymize)
    seed(settings.store_path, settings.pseudonym_key, families)
    bot = Bot(settings, clock=lambda: T0)
    try:
        assert bot.tracker.counts(T0).known_users == len(USERS)
        assert await bot.apply_retention() == len(USERS) - len(KEPT)
        store = bot.store
        kept = {name for name in USERS if store.get(store.key_of(jid(name))) is not None}
        assert kept == KEPT
        assert bot.tracker.counts(T0).known_users == len(KEPT)  # the index forgot them too
        assert await bot.apply_retention() == 0  # the next pass: nobody else
        store.flush(T0)
    finally:
        bot.store.close(T0)
    with Store(settings.store_path, readonly=True, pseudonym_key=settings.pseudonym_key) as disk:
        on_disk = {name for name in USERS if disk.get(disk.key_of(jid(name))) is not None}
        assert on_disk == KEPT
        if families:
            for name in KEPT:
                record = disk.get(disk.key_of(jid(name)))
                assert record is not None
                assert dict(record.client_times()) == {
                    "gajim": record.last_active,
                    "conversations": record.last_active - 100,
                }


@pytest.mark.asyncio
@pytest.mark.parametrize("pseudonymize", [False, True], ids=["plain", "pseudonymized"])
async def test_a_user_stale_on_disk_but_active_since_is_kept(tmp_path, pseudonymize):
    """The pass's candidates come from the file (a scan in a thread); the decision is taken on the
    record as it is now: a login not yet flushed keeps the user."""
    settings = settings_for(tmp_path, pseudonymize)
    seed(settings.store_path, settings.pseudonym_key, families=True)
    bot = Bot(settings, clock=lambda: T0)
    try:
        tracker, user = bot.tracker, jid("before")
        tracker.when_loaded(user, lambda: tracker.session_started(user, "phone", T0 - 10))
        tracker.when_loaded(user, lambda: tracker.session_ended(user, "phone", T0 - 5))
        await tracker.caught_up()
        assert bot.store.pending  # not on disk: the scan still finds the old record
        assert await bot.apply_retention() == 1  # only login-before
        assert bot.store.get(bot.store.key_of(jid("before"))) is not None
        assert bot.store.get(bot.store.key_of(jid("login-before"))) is None
    finally:
        bot.store.close(T0)
