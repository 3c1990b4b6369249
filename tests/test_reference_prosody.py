"""Acceptance: the bot and Prosody's own mod_measure_active_users give the same figures.

Prosody runs the reference module over mod_lastlog2's store; we write a history into that store,
import the same folder into the bot, log real clients in and out, and compare the reference's
three gauges (from /metrics) with the bot's ad-hoc result. On Prosody 0.12 (prosody-modules of
2023) and 13 (of 2025): the 2025 module counts only accounts that exist and are enabled, so the
history's users are real accounts here, as on a real server; disabled accounts are where the two
differ (last test).
"""

from __future__ import annotations

import random
import re
import time

import pytest

from bot.app.daemon import Bot
from bot.importing.importer import import_activities
from bot.importing.prosody import data_files, read_data_file
from bot.storage.store import Store
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.sandbox import PROSODY_13, ProsodySandbox, lua_string

from .support import FAST, RunningBot, ask_adhoc, bot_settings, reference_figures

pytestmark = pytest.mark.asyncio

DAY = 86_400
EDGE = 120  # seconds either side of a window edge: far more than the test takes


def fixed_history(now: int) -> dict[str, tuple[int | None, int | None]]:
    """user -> (login, logout) timestamps, None for absent."""
    history = {
        "h_2h": (now - 2 * 3600, now - 2 * 3600 + 60),
        "h_3d": (now - 3 * DAY, None),
        "h_20d": (None, now - 20 * DAY),
        "h_40d": (now - 40 * DAY, now - 40 * DAY + 5),
        "h_login_newer": (now - 2 * DAY, now - 9 * DAY),
        "h_logout_newer": (now - 35 * DAY, now - 6 * DAY),
    }
    for days in (1, 7, 30):
        history[f"h_{days}d_inside"] = (now - days * DAY + EDGE, None)
        history[f"h_{days}d_outside"] = (None, now - days * DAY - EDGE)
    return history


def random_history(now: int, seed: int) -> dict[str, tuple[int | None, int | None]]:
    rng = random.Random(seed)
    history = {}
    for n in range(60):

        def stamp() -> int | None:
            if rng.random() < 0.2:
                return None
            age = rng.randrange(0, 45 * DAY)
            if any(abs(age - days * DAY) < EDGE for days in (1, 7, 30)):
                age += 2 * EDGE  # keep clear of the edges: the two counts are seconds apart
            return now - age

        history[f"r{seed}_{n}"] = (stamp(), stamp())
    return history


def write_lastlog2(prosody, history) -> None:
    folder = prosody.data_path / "example%2etest" / "lastlog2"
    folder.mkdir(parents=True, exist_ok=True)
    for user, (login, logout) in history.items():
        fields = "".join(
            f'["{name}"] = {{ ["timestamp"] = {value}; }}; '
            for name, value in (("login", login), ("logout", logout))
            if value is not None
        )
        (folder / f"{prosody_encode(user)}.dat").write_text(
            f"return {{ {fields}}};\n", encoding="utf-8"
        )


def prosody_encode(name: str) -> str:
    """How Prosody's datamanager names files: every byte but [A-Za-z0-9] as %xx."""
    return re.sub(r"[^A-Za-z0-9]", lambda match: f"%{ord(match.group()):02x}", name)


def create_accounts(prosody, users) -> None:
    """`users` (localparts) as accounts of the running server, in one admin-shell call (one
    `prosodyctl register` each would take seconds)."""
    names = "; ".join(lua_string(user) for user in users)
    prosody.shell(
        '> local um = require "core.usermanager" '
        f"for _, name in ipairs({{ {names} }}) do "
        '  if not um.user_exists(name, "example.test") then '
        '    assert(um.create_user(name, "pw", "example.test")) '
        "  end "
        "end"
    )


async def compare_once(prosody, store_path, history) -> tuple[dict, dict]:
    create_accounts(prosody, history)
    write_lastlog2(prosody, history)
    with Store(store_path) as store:  # the admin's `import`, the bot stopped
        files = data_files("prosody-lastlog2", prosody.data_path)
        entries = (read_data_file("prosody-lastlog2", f, jid) for f, jid in files)
        report = import_activities(store, entries, ["example.test"], dry_run=False)
    assert not report.rejected

    bot = await RunningBot(Bot(bot_settings(prosody, store_path), timing=FAST)).start()
    clients = []
    try:

        async def login(bare: str, password: str, resource: str):
            client = await connect_client(prosody, bare, password, resource=resource)
            clients.append(client)
            await bot.expect("available", f"{bare}/{resource}")
            return client

        async def logout(client, full_jid: str):
            clients.remove(client)
            await disconnect_client(client)
            await bot.expect("unavailable", full_jid)

        admin = await login("admin@example.test", "adminpw", "desk")
        await login("alice@example.test", "alicepw", "phone")
        laptop = await login("alice@example.test", "alicepw", "laptop")
        await logout(laptop, "alice@example.test/laptop")
        bob = await login("bob@example.test", "bobpw", "pc")
        await logout(bob, "bob@example.test/pc")
        await login("carol@example.test", "carolpw", "pc")  # stays online

        ours = await ask_adhoc(admin)
        reference = reference_figures(prosody)
    finally:
        for client in clients:
            await disconnect_client(client)
        await bot.stop()
    return reference, {key: int(ours[key]) for key in ("dau", "wau", "mau")}


async def test_bot_matches_prosodys_reference_module_on_the_same_history(prosody, tmp_path):
    store_path = tmp_path / "activity.db"
    now = int(time.time())
    reference, ours = await compare_once(prosody, store_path, fixed_history(now))
    print(f"fixed history: reference {reference}, bot {ours}")
    assert ours == reference
    # The history's own share (edges, ages, login/logout orders) is really in both figures.
    assert reference["mau"] - reference["dau"] >= 6

    seed = random.randrange(1_000_000)
    reference, ours = await compare_once(prosody, store_path, random_history(now, seed))
    print(f"random history (seed {seed}): reference {reference}, bot {ours}")
    assert ours == reference, f"random history with seed {seed} differs"


def import_lastlog2(prosody, store_path) -> None:
    """What Prosody's mod_lastlog2 has recorded, into the bot's store (the admin's `import`)."""
    with Store(store_path) as store:
        files = data_files("prosody-lastlog2", prosody.data_path)
        entries = (read_data_file("prosody-lastlog2", f, jid) for f, jid in files)
        report = import_activities(store, entries, ["example.test"], dry_run=False)
    assert not report.rejected


async def test_disabled_and_deleted_accounts_are_where_the_reference_and_the_bot_differ(
    prosody, tmp_path
):
    """An account that an admin disables (Prosody 13) or deletes stops counting at once for the
    reference; the bot, which sees presence only, goes on counting its user until their last
    activity leaves the window. Prosody 0.12 cannot disable an account. The server's only hint
    to a component is the status text of the unavailable presence it sends for a session it
    closes (none for an account that was offline), which any client can write too: the bot
    does not act on it."""
    version = prosody.install.version
    disabled, deleted = f"disabled_{version}", f"deleted_{version}"
    for user in (disabled, deleted):
        prosody.register(user, "pw")
    store_path = tmp_path / "activity.db"
    import_lastlog2(prosody, store_path)  # both start from the same history
    bot = await RunningBot(Bot(bot_settings(prosody, store_path), timing=FAST)).start()
    statuses = {}

    def note_status(stanza):
        if stanza.xml.tag == "{jabber:component:accept}presence" and stanza["status"]:
            statuses[stanza["from"].user] = stanza["status"]
        return stanza

    bot.component.add_filter("in", note_status)
    clients = {}
    try:
        for user in (disabled, deleted):  # both online when the admin acts
            clients[user] = await connect_client(
                prosody, f"{user}@example.test", "pw", resource="pc"
            )
            await bot.expect("available", f"{user}@example.test/pc")
        before = as_dict(bot.figures())
        assert reference_figures(prosody) == before

        if version == "13":
            assert "User disabled" in prosody.shell(f"user:disable('{disabled}@example.test')")
            await bot.expect("unavailable", f"{disabled}@example.test/pc")  # closed by Prosody
            assert statuses[disabled] == "Disconnected: Account disabled"
        else:  # 0.12 has no such command (nor usermanager.disable_user)
            with pytest.raises(RuntimeError, match="disable"):
                prosody.shell(f"user:disable('{disabled}@example.test')")
            await disconnect_client(clients[disabled])
            await bot.expect("unavailable", f"{disabled}@example.test/pc")
        # Through the running server: 0.12's `prosodyctl deluser` edits the files offline and
        # leaves the user's sessions open.
        assert "User deleted" in prosody.shell(f"user:delete('{deleted}@example.test')")
        await bot.expect("unavailable", f"{deleted}@example.test/pc")
        assert statuses[deleted] == "Disconnected: Account deleted"

        ours, reference = as_dict(bot.figures()), reference_figures(prosody)
        print(f"\nProsody {version}: reference {reference}, bot {ours}")
        assert ours == before  # the bot saw two logouts today: nothing changes in its figures
        not_counted = 2 if version == "13" else 1  # the deleted user; on 13 the disabled one too
        gap = {key: ours[key] - reference[key] for key in ours}
        assert gap == {"dau": not_counted, "wau": not_counted, "mau": not_counted}
    finally:
        for client in clients.values():
            await disconnect_client(client)
        await bot.stop()


def as_dict(figures) -> dict[str, int]:
    return {"dau": figures.dau, "wau": figures.wau, "mau": figures.mau}


async def test_prosody_13_reference_with_internal_plain_counts_only_users_online(tmp_path):
    """With `authentication = "internal_plain"`, Prosody 13.0.1 cannot tell whether an account
    is enabled (its user_is_enabled() answers "method not implemented"), and the 2025 module
    then leaves out every user who is not online: compare the bot with it on internal_hashed
    (Prosody's default, as the session's Prosody 13 runs), or set
    `measure_active_users_count_disabled = true`. 0.12's module counts everyone either way."""
    with ProsodySandbox(
        tmp_path / "prosody",
        install=PROSODY_13,
        authentication="internal_plain",
        extra_modules=("lastlog2", "measure_active_users"),
    ) as prosody:
        for user in ("alice", "bob"):
            prosody.register(user, f"{user}pw")
        bob = await connect_client(prosody, "bob@example.test", "bobpw")
        await disconnect_client(bob)  # active today, offline now
        alice = await connect_client(prosody, "alice@example.test", "alicepw")  # online
        try:
            last_active = prosody.shell(
                '> prosody.hosts["example.test"].modules.lastlog2.get_last_active("bob")'
            )
            assert int(last_active.removeprefix("Result: ")) > time.time() - 60  # recorded
            assert "method not implemented" in prosody.shell(
                '> select(2, require "core.usermanager".user_is_enabled("bob", "example.test"))'
            )
            assert reference_figures(prosody) == {"dau": 1, "wau": 1, "mau": 1}  # alice only
        finally:
            await disconnect_client(alice)
