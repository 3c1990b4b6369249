"""Acceptance: after importing ejabberd's own history, each user's last activity in the bot is
what `ejabberdctl get_last` says, and the bot's figures are the seed's rule applied to those
answers.

A real ejabberd with mod_last and mod_admin_extra keeps the history: users log in, log out,
drop their connection, stay online (one of them since before any logout), only register; older
history is written by ejabberd's own `set_last`. The admin's commands export it: on Mnesia
`ejabberdctl dump_table FILE last_activity`; on SQL (SQLite here, both of ejabberd's schemas)
`sqlite3 -csv -header DB 'SELECT * FROM last'`; and `ejabberdctl connected_users` for who is
online (mod_last's table does not know). Run with -s to see both answers side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.__main__ import main
from bot.storage.store import Store
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.ejabberd import EjabberdSandbox
from bot.testbed.seed import seed_counts

from .support import MINIMAL, write

pytestmark = pytest.mark.asyncio

DAY = 86_400
EDGE = 120  # seconds either side of a window's edge: far more than the test takes
REGISTERED_ONLY = "Registered but didn't login"
# Older history, written by ejabberd itself (mod_admin_extra's set_last): user -> age in seconds.
# Each on one side of a window's edge: counted in 7d and 30d, in both, in 30d only, in none.
AGES = {
    "h1dout": DAY + EDGE,
    "h7din": 7 * DAY - EDGE,
    "h30din": 30 * DAY - EDGE,
    "h30dout": 30 * DAY + EDGE,
}
LIVE = ("leaves", "drops", "stays", "online", "registers")


@dataclass(frozen=True)
class LastAnswer:
    """What `ejabberdctl get_last USER HOST` printed: a time and a status (or ONLINE)."""

    when: int
    status: str

    @property
    def as_seed_record(self) -> tuple[int, int, int, tuple[str, ...]]:
        """The answer in the seed's terms: online now, a last logout, or nothing (registered
        but never logged in is no activity: neither a login nor a logout)."""
        if self.status == "ONLINE":
            return (0, 0, 0, ("online",))
        if self.status == REGISTERED_ONLY:
            return (0, 0, 0, ())
        return (0, 0, self.when, ())


def last_answer(printed: str) -> LastAnswer:
    when, _, status = printed.rstrip("\n").partition("\t")
    return LastAnswer(int(datetime.fromisoformat(when).timestamp()), status)


async def ctl_all(server: EjabberdSandbox, *commands: tuple[str, ...]) -> list[str]:
    """ejabberdctl commands, in one control node (starting one costs 0.3 s of CPU)."""
    return await asyncio.to_thread(server.ejabberdctl_many, *commands)


async def get_last(server: EjabberdSandbox, *users: str) -> list[LastAnswer]:
    printed = await ctl_all(server, *(("get_last", user, server.domain) for user in users))
    return [last_answer(answer) for answer in printed]


async def wait_until_offline(server: EjabberdSandbox, user: str, timeout: float = 10) -> None:
    """ejabberd has no event to wait for: ask get_last until the session's end is recorded."""
    deadline = time.monotonic() + timeout
    while (await get_last(server, user))[0].status == "ONLINE":
        assert time.monotonic() < deadline, f"{user} still online after {timeout} s"


async def wait_until_only_these_online(server, sessions: set[str], timeout: float = 10) -> None:
    """Sessions of earlier tests close asynchronously: wait until the server lists only ours."""
    deadline = time.monotonic() + timeout
    while set((await ctl_all(server, ("connected_users",)))[0].split()) != sessions:
        assert time.monotonic() < deadline, "other sessions are still connected"


async def make_history(server: EjabberdSandbox, prefix: str) -> list:
    """The scenario; returns the clients still online (to log out at the end)."""
    names = {name: f"{prefix}{name}" for name in (*LIVE, *AGES)}
    await ctl_all(server, *(("register", user, server.domain, "pw") for user in names.values()))
    now = int(time.time())
    await ctl_all(
        server,
        *(
            ("set_last", names[name], server.domain, str(now - age), f"away {age} s ago")
            for name, age in AGES.items()
        ),
    )

    async def login(name: str, resource: str = "pc"):
        client = await connect_client(server, f"{names[name]}@{server.domain}", "pw", resource)
        # A round trip: the server has handled the presence sent before it (a session that
        # never sent presence leaves no trace in mod_last).
        await client.plugin["xep_0030"].get_info(jid=server.domain, timeout=5)
        return client

    await disconnect_client(await login("leaves"))  # a clean logout
    (await login("drops")).abort()  # the TCP connection is gone, no stream close
    await disconnect_client(await login("stays", "phone"))
    for name in ("leaves", "drops", "stays"):
        await wait_until_offline(server, names[name])
    still_online = [await login("stays", "phone"), await login("online", "laptop")]
    await wait_until_only_these_online(
        server,
        {f"{names['stays']}@{server.domain}/phone", f"{names['online']}@{server.domain}/laptop"},
    )
    return still_online


async def compare(server: EjabberdSandbox, tmp_path: Path, export: Path, source: list[str]):
    """Import the export and the sessions online into a new store; compare with get_last."""
    online = tmp_path / "online.txt"
    online.write_text((await ctl_all(server, ("connected_users",)))[0])
    listed_at = int(online.stat().st_mtime)
    users = (await ctl_all(server, ("registered_users", server.domain)))[0].split()
    answers = dict(zip(users, await get_last(server, *users), strict=True))

    config = write(tmp_path, MINIMAL.replace('"example.test"', f'"{server.domain}"'))
    for args in (source, ["--from", "ejabberd-online", str(online)]):
        assert main(["import", "-c", str(config), *args]) == 0
    with Store(tmp_path / "data" / "activity.db", readonly=True) as store:
        stored = dict(store.users())

    print(f"\n{'user':<16} {'ejabberdctl get_last':<52} the bot (last login / last logout)")
    for user in users:
        record = stored.get(f"{user}@{server.domain}")
        answer = answers[user]
        said = f"{iso(answer.when)} {answer.status}"[:50]
        ours = "nothing (never active)" if record is None else (
            f"{iso(record.last_login) if record.last_login else '-'} / "
            f"{iso(record.last_logout) if record.last_logout else '-'}"
        )  # fmt: skip
        print(f"{user:<16} {said:<52} {ours}")
    for user, answer in answers.items():
        record = stored.get(f"{user}@{server.domain}")
        if answer.status == REGISTERED_ONLY:
            assert record is None, user
        elif answer.status == "ONLINE":  # as active as when the list of sessions was taken
            assert record is not None, user
            assert record.last_active == listed_at, user
            assert 0 <= answer.when - listed_at < 60, user
        else:
            assert record is not None, user
            assert (record.last_active, record.last_logout) == (answer.when, answer.when), user

    ours = count(config)
    now = int(time.time())
    expected = seed_counts((answer.as_seed_record for answer in answers.values()), now)
    print(f"figures: the bot {ours}, the seed's rule on get_last {expected}")
    assert ours == expected
    return stored, answers


def count(config: Path) -> tuple[int, int, int]:
    """The bot's figures from its store, as `xmpp-active-users count --json` prints them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["count", "-c", str(config), "--json"]) == 0
    figures = json.loads(out.getvalue())
    return figures["dau"], figures["wau"], figures["mau"]


def iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_mnesia_dump_imported_equals_get_last(ejabberd, tmp_path):
    prefix = f"m{secrets.token_hex(2)}"
    clients = await make_history(ejabberd, prefix)
    try:
        dump = tmp_path / "last.dump"
        await ctl_all(ejabberd, ("dump_table", str(dump), "last_activity"))
        stored, answers = await compare(
            ejabberd, tmp_path, dump, ["--from", "ejabberd-mnesia", str(dump)]
        )
    finally:
        for client in clients:
            await disconnect_client(client)
    # Every kind of history of the scenario is really in both answers.
    statuses = {answers[f"{prefix}{name}"].status for name in ("online", "stays", "registers")}
    assert statuses == {"ONLINE", REGISTERED_ONLY}
    assert answers[f"{prefix}drops"].status != answers[f"{prefix}leaves"].status
    assert len([user for user in stored if user.startswith(prefix)]) == len(LIVE) + len(AGES) - 1


@pytest.mark.parametrize("new_schema", [False, True], ids=["old-schema", "new-schema"])
async def test_sqlite_export_imported_equals_get_last(tmp_path, new_schema):
    sqlite3 = shutil.which("sqlite3")
    assert sqlite3, "the sqlite3 client is missing: apt-get install -y sqlite3 (make servers)"
    server = EjabberdSandbox(
        tmp_path / "ejabberd",
        extra_modules=("mod_last", "mod_admin_extra"),
        sql=True,
        new_sql_schema=new_schema,
    )
    await asyncio.to_thread(server.start)
    try:
        clients = await make_history(server, "s")
        try:
            export = tmp_path / "last.csv"
            with export.open("wb") as out:  # what the README tells the admin to run
                subprocess.run(
                    [sqlite3, "-csv", "-header", str(server.sqlite_path), "SELECT * FROM last"],
                    stdout=out, check=True, timeout=30,
                )  # fmt: skip
            header = export.read_text().splitlines()[0]
            assert ("server_host" in header) == new_schema
            source = ["--from", "ejabberd-sql", str(export)]
            if not new_schema:
                source += ["--host", server.domain]
            await compare(server, tmp_path, export, source)
        finally:
            for client in clients:
                await disconnect_client(client)
    finally:
        await asyncio.to_thread(server.stop)
