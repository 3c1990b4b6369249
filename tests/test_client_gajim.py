"""What an admin sees in Gajim 1.7.3 (Debian 12's `gajim`, with its nbxmpp), checked through
Gajim's own code: each ad-hoc command's answer as Gajim's ad-hoc window draws it (a form with its
rows), the bot as a contact (online, with the figures as its status line), the chat's tables and
charts in a monospaced block, and that a non-admin gets no command and no figure there either.

The stanzas are the real ones: the real bot answers through a real Prosody (0.12 and 13), and the
admin's client hands each stanza as it arrived to Gajim's code, run by Debian's Python under Xvfb
(tests/gajim_view.py says which parts of Gajim). docs/clients.md says what Gajim accepts and why.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from bot.admin.commands import (
    ADHOC_CLIENTS_NODE,
    ADHOC_FORGET_NODE,
    ADHOC_HISTORY_NODE,
    ADHOC_STATS_NODE,
)
from bot.admin.figures import PLAIN_STATUS, figures_status
from bot.admin.history import utc_day
from bot.xmpp.admin_commands import COMMANDS_NODE

from .support import Chat

pytestmark = pytest.mark.asyncio

COMPONENT = "active.example.test"
VIEW = Path(__file__).with_name("gajim_view.py")
DEBIAN_PYTHON = "/usr/bin/python3"  # Debian's, which has Debian's gajim and nbxmpp


async def gajim(request: dict[str, Any]) -> dict[str, Any]:
    """What Gajim shows of `request` (tests/gajim_view.py), run as an admin's Gajim would be:
    Debian's Python with Gajim's modules, on a virtual display."""
    assert shutil.which("xvfb-run"), "xvfb-run is missing: `make tools` installs Debian's xvfb"
    check = subprocess.run([DEBIAN_PYTHON, "-c", "import gajim, nbxmpp"], capture_output=True)
    assert check.returncode == 0, "Gajim is missing: `make tools` installs Debian's gajim"
    process = await asyncio.create_subprocess_exec(
        "xvfb-run", "-a", DEBIAN_PYTHON, str(VIEW),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(json.dumps(request).encode()), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def shown_stage(iq) -> dict[str, Any]:
    return await gajim({"kind": "stage", "iq": str(iq)})


async def run_command(client, node: str):
    return await client.plugin["xep_0050"].send_command(jid=COMPONENT, node=node)


def visible_fields(iq) -> list[list[str]]:
    """(label, value) of each field a person should see, as the admin's client parsed them."""
    return [
        [str(field["label"]), str(field["value"])]
        for field in iq["command"]["form"].get_fields().values()
        if field["type"] != "hidden"
    ]


async def test_gajim_shows_every_commands_answer_as_a_form_with_its_rows(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk", caps_node="https://gajim.org")
    await bot.expect("available", "admin@example.test/desk")
    bot.bot.record_today()  # what the periodic count does: today has figures

    stats = await run_command(admin, ADHOC_STATS_NODE)
    shown = await shown_stage(stats)
    assert "error" not in shown, shown["error"]
    assert (shown["page"], shown["title"]) == ("Completed", "Active users")
    assert ["Active users, last 24 hours", "1"] in shown["rows"]
    assert ["Users online now", "1"] in shown["rows"]
    assert shown["rows"] == visible_fields(stats)

    by_client = await run_command(admin, ADHOC_CLIENTS_NODE)
    shown = await shown_stage(by_client)
    assert "error" not in shown, shown["error"]
    assert (shown["page"], shown["title"]) == ("Completed", "Active users by client")
    assert shown["rows"] == [["Gajim (desktop)", "1 / 1 / 1 · 1 online"]]
    assert "A user on two clients counts for each." in shown["instructions"]

    days = await run_command(admin, ADHOC_HISTORY_NODE)
    shown = await shown_stage(days)
    assert (shown["page"], shown["rows"]) == ("Stage", [["Days", "30"]])  # the form to fill in
    answer = days["command"]["form"]
    answer["type"] = "submit"
    answer.set_values({"days": "3"})
    history = await admin.plugin["xep_0050"].send_command(
        jid=COMPONENT,
        node=ADHOC_HISTORY_NODE,
        action="complete",
        sessionid=days["command"]["sessionid"],
        payload=answer,
    )
    shown = await shown_stage(history)
    assert "error" not in shown, shown["error"]
    assert (shown["page"], shown["title"]) == ("Completed", "Active users, last 3 days (UTC)")
    labels = [label for label, _ in shown["rows"]]
    assert len(labels) == 3
    assert labels[-1] == utc_day(time.time())
    assert shown["rows"][-1][1] == "1 / 1 / 1 · new 1 / 1 / 1 · peak 1"
    assert shown["rows"][0][1] == "no figures: the bot was not running"

    forget = await run_command(admin, ADHOC_FORGET_NODE)
    shown = await shown_stage(forget)
    assert (shown["page"], shown["rows"]) == ("Stage", [["User (bare JID)", ""]])


async def test_gajim_shows_the_bot_online_with_the_figures_as_its_status(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    alice = await clients.login("alice@example.test/phone")
    await bot.expect_set(
        {("available", "admin@example.test/desk"), ("available", "alice@example.test/phone")}
    )
    received: dict[Any, list[str]] = {admin: [], alice: []}
    for client, presences in received.items():
        client.register_handler(
            Callback(
                "the bot's own presences",
                MatchXPath("{jabber:client}presence"),
                lambda p, presences=presences: (
                    p["from"].bare == COMPONENT
                    and p.xml.get("type") in (None, "unavailable")
                    and presences.append(str(p))
                ),
            )
        )
        client.auto_subscribe = False
        client.send_presence_subscription(pto=COMPONENT)  # adds the bot: Gajim's Add Contact
    try:
        for client, presences in received.items():
            for _ in range(50):
                if presences:
                    break
                await asyncio.sleep(0.1)
            # A barrier: the bot's stream keeps its order, so anything it sent came before this.
            await client.plugin["xep_0030"].get_info(jid=COMPONENT, timeout=5)

        shown = await gajim(
            {"kind": "contact", "account": "admin@example.test/desk", "contact": COMPONENT,
             "presences": received[admin]}
        )  # fmt: skip
        status = figures_status(bot.figures())
        assert status == "DAU 2 · WAU 2 · MAU 2 · 2 online"  # admin and alice
        assert (shown["available"], shown["show"]) == (True, "online"), (shown, received[admin])
        assert {r[2] for r in shown["resources"]} == {status}

        shown = await gajim(
            {"kind": "contact", "account": "alice@example.test/phone", "contact": COMPONENT,
             "presences": received[alice]}
        )  # fmt: skip
        assert (shown["available"], shown["show"]) == (True, "online"), (shown, received[alice])
        assert {r[2] for r in shown["resources"]} == {PLAIN_STATUS}  # a user: never a figure
    finally:
        for client in received:
            if COMPONENT in client.client_roster:
                await client.del_roster_item(COMPONENT)


async def test_gajim_lists_no_command_for_a_non_admin_and_shows_a_refusal(start_bot, clients):
    await start_bot()
    alice = await clients.login("alice@example.test/phone")
    admin = await clients.login("admin@example.test/desk")

    async def command_list(client) -> dict[str, Any]:
        iq = client.make_iq_get(ito=COMPONENT)
        iq["disco_items"]["node"] = COMMANDS_NODE
        return await gajim({"kind": "commands", "iq": str(await iq.send())})

    assert await command_list(admin) == {
        "commands": ["Active users", "Active users by client", "Activity history", "Forget a user"]
    }
    assert await command_list(alice) == {"commands": []}  # Gajim: "No commands available"
    with pytest.raises(IqError) as refused:
        await run_command(alice, ADHOC_STATS_NODE)
    assert await shown_stage(refused.value.iq) == {"error": "stanza error forbidden"}


async def test_gajim_draws_the_chat_tables_and_charts_monospaced(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk", caps_node="https://gajim.org")
    await bot.expect("available", "admin@example.test/desk")
    bot.bot.record_today()
    chat = Chat(admin)

    shown = await gajim({"kind": "chat", "text": await chat.ask("clients")})
    title, table, note = shown["blocks"]
    assert title["plain"].startswith("Active users by client (24h, 7d, 30d: in the last")
    assert table == {
        "code": "client           24h  7d  30d  online\nGajim (desktop)    1   1    1       1",
        "monospace": True,
    }
    assert "A user on two clients counts for each." in note["plain"]

    shown = await gajim({"kind": "chat", "text": await chat.ask("history 3")})
    title, chart = shown["blocks"]
    assert title["plain"].startswith("Active users over the last 3 days")
    assert chart["monospace"]
    lines = chart["code"].splitlines()
    assert [line.split("  ")[-1] for line in lines] == ["(now 1, max 1)"] * 3 + ["(max 1)"]
    assert len({re.search("[·▁▂▃▄▅▆▇█]", line).start() for line in lines}) == 1  # lined up
