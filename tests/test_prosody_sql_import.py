"""`import --from prosody-sql` on a table a real Prosody made (0.12 and 13), with
`storage = "sql"` (mod_storage_sql, SQLite through lua-dbi-sqlite3), mod_lastlog2 recording real
clients' logins and logouts, and older history set through Prosody's own storage API. The
admin's commands (`import`, then `count`) must give the figures of that history, which are also
those of Prosody's own mod_measure_active_users over the same database.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from bot.app.daemon import Bot
from bot.storage.store import Store
from bot.testbed.botconfig import write_config
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.sandbox import INSTALLS, ProsodySandbox

from .support import ADMIN, FAST, RunningBot, bot_settings, reference_figures

DAY = 86_400
LIVE = ("alice", "bob", "carol")  # real clients log in (and out)
# user -> (login, logout) ages in seconds, set through Prosody's storage API (None: no such key)
OLD = {"dave": (3 * DAY, 3 * DAY - 60), "erin": (None, 20 * DAY), "frank": (40 * DAY, 40 * DAY)}


@pytest.fixture(scope="module", params=tuple(INSTALLS), ids=[f"prosody-{v}" for v in INSTALLS])
def sql_prosody(request, tmp_path_factory):
    """A Prosody of this module's own, storing everything in SQLite, with the reference modules.
    `internal_hashed`: with `internal_plain`, 13.0.1's reference module cannot tell whether an
    account is enabled and counts only the users online (tests/test_reference_prosody.py)."""
    sandbox = ProsodySandbox(
        tmp_path_factory.mktemp("prosody-sql"),
        storage="sql",
        extra_modules=("lastlog2", "measure_active_users"),
        install=INSTALLS[request.param],
        authentication="internal_hashed",
    )
    sandbox.start()
    try:
        for user in (*LIVE, *OLD):
            sandbox.register(user, f"{user}pw")
        yield sandbox
    finally:
        sandbox.stop()


def lastlog2_rows(database) -> dict[str, dict[str, int]]:
    """user -> {"login": t, "logout": t}, read straight from mod_storage_sql's table."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT user, key, type, value FROM prosody WHERE host = 'example.test' "
            "AND store = 'lastlog2'"
        ).fetchall()
    result: dict[str, dict[str, int]] = {}
    for user, key, kind, value in rows:
        assert kind == "json", f"mod_storage_sql stored {user}'s {key} as {kind}: {value}"
        result.setdefault(user, {})[key] = json.loads(value)["timestamp"]
    return result


def cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.asyncio
async def test_import_of_a_real_prosody_sql_table_gives_its_figures(sql_prosody, tmp_path):
    now = int(time.time())
    for user, (login_age, logout_age) in OLD.items():  # written by Prosody itself, as SQL rows
        sets = "".join(
            f's:set("{user}", "{key}", {{ timestamp = {now - age} }}); '
            for key, age in (("login", login_age), ("logout", logout_age))
            if age is not None
        )
        sql_prosody.shell(
            f'> local s = require "core.storagemanager".open("example.test", "lastlog2", "map"); '
            f"{sets}"
        )

    # Real sessions, watched by a bot (with a store of its own): its word that a session ended
    # comes after Prosody's own (mod_lastlog2 writes in the same event that sends the
    # unavailable presence), so the rows are in the table when the test reads it.
    witness = await RunningBot(
        Bot(bot_settings(sql_prosody, tmp_path / "witness.db"), timing=FAST)
    ).start()
    sent: dict[str, list[float]] = {}  # user -> wall times around each of their events
    online = []
    try:

        async def session(user: str, *, stay: bool = False) -> None:
            sent.setdefault(user, []).append(time.time())
            client = await connect_client(sql_prosody, f"{user}@example.test", f"{user}pw")
            await witness.expect("available", f"{user}@example.test/test")
            sent[user].append(time.time())
            if stay:
                online.append(client)
                return
            await disconnect_client(client)
            await witness.expect("unavailable", f"{user}@example.test/test")
            sent[user].append(time.time())

        await session("alice")
        await session("carol")
        await session("carol")  # her second session's times are the ones kept
        await session("bob", stay=True)  # still online during the import

        rows = lastlog2_rows(sql_prosody.sql_database_path)
        # The rows are the real sessions' (each time between the test's acts: Prosody's time()
        # and Python's are the same clock, both truncated to seconds) and the old ones.
        for user in LIVE:
            times = sent[user][-3:] if user != "bob" else [*sent[user], time.time()]
            assert int(times[0]) <= rows[user]["login"] <= int(times[1]), (user, rows)
            if user != "bob":
                assert int(times[1]) <= rows[user]["logout"] <= int(times[2]), (user, rows)
        assert "logout" not in rows["bob"]
        assert rows["erin"] == {"logout": now - 20 * DAY}

        config = write_config(
            tmp_path / "import.toml",
            component_jid=sql_prosody.component_jid,
            domains=[sql_prosody.domain],
            admins=[ADMIN],
            store_path=tmp_path / "imported.db",
        )
        summary = cli(
            "import",
            "--config",
            str(config),
            "--from",
            "prosody-sql",
            str(sql_prosody.sql_database_path),
        )
        assert summary.startswith("Users imported: 6, updated: 0, unchanged: 0 (saved)"), summary
        assert "rejected" not in summary, summary
        figures = json.loads(cli("count", "--config", str(config), "--json"))
        reference = reference_figures(sql_prosody)  # Prosody's module over the same table
    finally:
        for client in online:
            await disconnect_client(client)
        await witness.stop()

    with Store(tmp_path / "imported.db", readonly=True) as store:  # each time as Prosody's
        for user, times in rows.items():
            record = store.get(f"{user}@example.test")
            assert (record.last_login, record.last_logout) == (
                times.get("login", 0),
                times.get("logout", 0),
            ), user
    # alice, bob and carol today; dave 3 days ago; erin 20 days ago; frank 40 days ago.
    ours = {key: figures[key] for key in ("dau", "wau", "mau")}
    assert ours == {"dau": 3, "wau": 4, "mau": 5}
    assert figures["known_users"] == 6
    assert ours == reference
