"""Acceptance: the history Prosody's older mod_lastlog keeps, written by a real Prosody, imported.

mod_lastlog keeps each user's last event only (login, logout, or registration). Users log in and
out, drop their connection, stay online; after `import --from prosody-lastlog`, each user's last
activity in the bot is what the module's own command says (`prosodyctl mod_lastlog USER`), and
the figures are the seed's rule applied to those answers. Run with -s to see both side by side.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from datetime import datetime

import pytest

from bot.__main__ import main
from bot.storage.store import Store
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.sandbox import ProsodySandbox
from bot.testbed.seed import seed_counts

from .support import MINIMAL, write

pytestmark = pytest.mark.asyncio

# user -> the last event the scenario leaves in mod_lastlog
LAST_EVENTS = {"leaves": "logout", "drops": "logout", "stays": "login", "relogs": "login"}


def lastlog_answer(prosody: ProsodySandbox, bare_jid: str) -> tuple[str, int]:
    """(event, Unix time) from `prosodyctl mod_lastlog`: "Last logout: 2026-12-02 10:48:07"
    (os.date: local time, as this process's)."""
    printed = prosody.prosodyctl("mod_lastlog", bare_jid).strip()
    label, _, when = printed.partition(": ")
    event = label.removeprefix("Last ")
    return event, int(datetime.strptime(when, "%Y-%m-%d %H:%M:%S").timestamp())


def answers_once_settled(prosody: ProsodySandbox, jids: dict[str, str], timeout: float = 10):
    """user -> (event, time) once mod_lastlog says what the scenario did: Prosody writes a
    logout when it has handled the end of the connection, with no event to wait for."""
    deadline = time.monotonic() + timeout
    while True:
        answers = {user: lastlog_answer(prosody, jid) for user, jid in jids.items()}
        if {user: event for user, (event, _) in answers.items()} == LAST_EVENTS:
            return answers
        assert time.monotonic() < deadline, f"mod_lastlog still says {answers}"


@pytest.fixture
def prosody_with_lastlog(tmp_path):
    sandbox = ProsodySandbox(tmp_path / "prosody", extra_modules=("lastlog",))
    sandbox.start()
    yield sandbox
    sandbox.stop()


async def test_lastlog_written_by_prosody_imported_equals_its_own_answer(
    prosody_with_lastlog, tmp_path
):
    prosody = prosody_with_lastlog
    jids = {user: prosody.register(user, "pw") for user in LAST_EVENTS}

    async def login(user: str):
        client = await connect_client(prosody, jids[user], "pw")
        await client.plugin["xep_0030"].get_info(jid=prosody.domain, timeout=5)  # a round trip
        return client

    await disconnect_client(await login("leaves"))
    (await login("drops")).abort()  # the TCP connection is gone, no stream close
    await disconnect_client(await login("relogs"))
    online = [await login("relogs"), await login("stays")]
    try:
        answers = answers_once_settled(prosody, jids)
        config = write(tmp_path, MINIMAL)
        assert (
            main(["import", "-c", str(config), "--from", "prosody-lastlog", str(prosody.data_path)])
            == 0
        )
        with Store(tmp_path / "data" / "activity.db", readonly=True) as store:
            stored = dict(store.users())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["count", "-c", str(config), "--json"]) == 0
    finally:
        for client in online:
            await disconnect_client(client)

    print(f"\n{'user':<8} {'prosodyctl mod_lastlog':<32} the bot (last login, last logout)")
    for user, (event, when) in answers.items():
        record = stored[jids[user]]
        print(f"{user:<8} {event + ' ' + str(when):<32} {record.last_login}, {record.last_logout}")
        expected = (when, 0) if event == "login" else (0, when)
        assert (record.last_login, record.last_logout) == expected, user

    figures = json.loads(out.getvalue())
    ours = (figures["dau"], figures["wau"], figures["mau"])
    login_or_logout = ((0, when, 0, ()) for _, when in answers.values())
    expected = seed_counts(login_or_logout, int(datetime.now().timestamp()))
    print(f"figures: the bot {ours}, the seed's rule on mod_lastlog's answers {expected}")
    assert ours == expected == (len(LAST_EVENTS),) * 3
