"""What an admin sees in Profanity 0.13 (Debian 12's `profanity`, a terminal client), typed into
and read from its screen in a private tmux: each ad-hoc command's answer as a form with its rows,
the chat tables lined up, the bot as a contact online with its figures; and what a non-admin sees
there (no figure). The real bot, through a real Prosody (0.12 and 13).

Profanity shows only the `<field>` children of a result form (not `<reported>`/`<item>`), one per
line as `[fieldN] label: value` (src/ui/confwin.c); docs/clients.md has the details.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import pytest_asyncio

from bot.testbed.profanity import Profanity

from .support import USERS

pytestmark = pytest.mark.asyncio

COMPONENT = "active.example.test"
FIELD = re.compile(r"\[field\d+\] (.*?): (.*)$")


@pytest_asyncio.fixture
async def profanity():
    async with Profanity() as running:
        yield running


async def online(bot, bare_jid: str) -> None:
    """Until the bot tracked the login (Profanity picks its own resource)."""
    while True:
        kind, full_jid = await asyncio.wait_for(bot.tracked.get(), 10)
        if kind == "available" and full_jid.startswith(f"{bare_jid}/"):
            return


def fields_shown(screen: str, title: str) -> list[tuple[str, str]]:
    """The (label, value) rows of the last form titled `title` on the screen."""
    lines = screen.splitlines()
    start = max(i for i, line in enumerate(lines) if line.endswith(f"Form title: {title}"))
    rows = []
    for line in lines[start + 1 :]:
        if "Use '/form" in line:
            break
        if match := FIELD.search(line):
            rows.append((match[1], match[2]))
    return rows


def preformatted_block(screen: str, reply_start: str) -> list[str]:
    """The lines of the preformatted block of the last chat reply starting with `reply_start`,
    as the terminal shows them (indented under the reply's first line)."""
    lines = screen.splitlines()
    start = max(i for i, line in enumerate(lines) if f"{COMPONENT}: {reply_start}" in line)
    fences = [i for i in range(start, len(lines)) if lines[i].strip() == "```"]
    assert len(fences) >= 2, f"no ``` block in the reply:\n{chr(10).join(lines[start:])}"
    return lines[fences[0] + 1 : fences[1]]


async def test_profanity_shows_every_commands_answer_and_lines_up_the_chat(
    start_bot, prosody, profanity
):
    bot = await start_bot()
    await profanity.connect("admin@example.test", USERS["admin"], prosody.c2s_port)
    await online(bot, "admin@example.test")
    bot.bot.record_today()  # what the periodic count does: today has figures

    await profanity.type(f"/cmd exec active-users {COMPONENT}")
    rows = fields_shown(await profanity.wait_for("Use '/form cancel'"), "Active users")
    assert ("Active users, last 24 hours", "1") in rows
    assert ("Users online now", "1") in rows
    await profanity.type("/form cancel")

    await profanity.type(f"/cmd exec clients {COMPONENT}")
    screen = await profanity.wait_for("Form title: Active users by client")
    rows = fields_shown(await profanity.wait_for("Use '/form cancel'"), "Active users by client")
    assert rows == [("Profanity (desktop)", "1 / 1 / 1 · 1 online")], screen
    await profanity.type("/form cancel")

    await profanity.type(f"/cmd exec history {COMPONENT}")
    assert fields_shown(await profanity.wait_for("Use '/form submit'"), "Activity history") == [
        ("Days", "30")
    ]
    await profanity.type("/field1 3")
    await profanity.type("/form submit")
    title = "Active users, last 3 days (UTC)"
    screen = await profanity.wait_for(f"Form title: {title}")
    rows = fields_shown(await profanity.wait_for("Use '/form cancel'"), title)
    assert len(rows) == 3, screen
    assert rows[-1][1] == "1 / 1 / 1 · new 1 / 1 / 1 · peak 1"
    await profanity.type("/form cancel")

    await profanity.type(f"/msg {COMPONENT} clients")
    block = preformatted_block(
        await profanity.wait_for(f"{COMPONENT}: Active users by client"), "Active users by"
    )
    header, *rows = block
    assert header.split() == ["client", "24h", "7d", "30d", "online"]
    assert [row.split()[-4:] for row in rows] == [["1", "1", "1", "1"]]
    # Lined up: each figure ends where its column's name ends (a terminal is monospaced).
    ends = [m.end() for m in re.finditer(r"24h|7d|30d|online", header)]
    assert [m.end() for m in re.finditer(r"\b\d+\b", rows[0])] == ends

    await profanity.type("history 3")
    screen = await profanity.wait_for(f"{COMPONENT}: Active users over the last 3 days")
    block = preformatted_block(screen, "Active users over")
    assert [line.split("  ")[-1] for line in block] == ["(now 1, max 1)"] * 3 + ["(max 1)"]
    # Lined up: every sparkline starts in the same column.
    assert len({re.search("[·▁▂▃▄▅▆▇█]", line).start() for line in block}) == 1, block


async def test_profanity_shows_the_bot_online_with_its_figures(start_bot, prosody, profanity):
    bot = await start_bot()
    await profanity.connect("admin@example.test", USERS["admin"], prosody.c2s_port)
    await online(bot, "admin@example.test")
    try:
        await profanity.type(f"/roster add {COMPONENT}")
        await profanity.type(f"/sub request {COMPONENT}")
        # Profanity also showed the presence the bot sent before from its bare address (as a
        # resource "__prof_default": 'active.example.test is online, "DAU ..."'); from its
        # resource (contact.py, for Gajim) it is as right, the resource named.
        screen = await profanity.wait_for(" is online")
        shown = [line.split(" - ", 1)[-1] for line in screen.splitlines() if " is online" in line]
        assert set(shown) == {f'++ {COMPONENT} (bot) is online, "DAU 1 · WAU 1 · MAU 1 · 1 online"'}
    finally:  # the session's Prosody keeps rosters, and requests not answered, between tests
        await profanity.type(f"/sub deny {COMPONENT}")  # the bot's own request
        await profanity.type(f"/roster remove {COMPONENT}")
        await profanity.wait_for(f"Roster item removed: {COMPONENT}")


async def test_profanity_shows_a_non_admin_no_figure(start_bot, prosody, profanity):
    bot = await start_bot()
    await profanity.connect("alice@example.test", USERS["alice"], prosody.c2s_port)
    await online(bot, "alice@example.test")
    await profanity.type(f"/cmd exec active-users {COMPONENT}")
    screen = await profanity.wait_for("Error executing command active-users:")
    assert "Error executing command active-users: Only the administrators" in screen
    assert "Form title" not in screen
    await profanity.type(f"/msg {COMPONENT} stats")
    screen = await profanity.wait_for(f"{COMPONENT}: Sorry")
    reply = screen[screen.index(f"{COMPONENT}: Sorry") :]
    assert not any(ch.isdigit() for ch in reply.split("\n")[0])
