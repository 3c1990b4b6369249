"""What admins are told: the same figures in chat and in the form, per domain when several."""

from __future__ import annotations

import asyncio

import pytest

from bot.admin.commands import (
    ADMIN_COMMANDS,
    CHAT_REFUSED,
    CHAT_UNKNOWN,
    CommandSet,
    chat_help,
    parse_days,
)
from bot.admin.figures import Figures, stats_form
from bot.admin.forms import table_rows
from bot.core.counter import DAY, DEFAULT_WINDOWS, ActivityIndex
from bot.core.model import UserRecord


def chat_reply(commands, who: str, text: str) -> str:
    """The chat answer, outside an event loop."""
    return asyncio.run(commands.chat_answer(who, text))


NOW = 1_800_000_000


def figures_of(**domains: list[UserRecord]) -> Figures:
    by_domain = {
        d.replace("_", "."): ActivityIndex.build(r).counts(NOW) for d, r in domains.items()
    }
    total = ActivityIndex.build([r for records in domains.values() for r in records]).counts(NOW)
    return Figures(total=total, by_domain=by_domain)


TWO_DOMAINS = figures_of(
    a_test=[UserRecord(NOW - 10 * DAY, NOW - 60, 0, ("phone",))],
    b_test=[UserRecord(NOW - 10 * DAY, NOW - 3 * DAY, NOW - 3 * DAY + 5)],
)


def test_several_domains_get_a_line_each_after_the_total():
    commands = CommandSet(admins=frozenset({"admin@a.test"}), figures=lambda: TWO_DOMAINS)
    lines = chat_reply(commands, "admin@a.test", "stats").splitlines()
    assert lines[0].startswith("Active users: 1 (24 hours), 2 (7 days), 2 (30 days)")
    assert lines[1].startswith("a.test: Active users: 1 (24 hours), 1 (7 days)")
    assert lines[2].startswith("b.test: Active users: 0 (24 hours), 1 (7 days)")
    values = stats_form(TWO_DOMAINS).get_values()
    assert (values["dau"], values["wau"], values["stickiness"]) == ("1", "2", "50%")
    assert values["domain:b.test"] == lines[2].removeprefix("b.test: ")


def test_one_domain_gets_no_per_domain_lines():
    single = figures_of(a_test=[UserRecord(NOW, NOW, 0, ("phone",))])
    commands = CommandSet(admins=frozenset({"admin@a.test"}), figures=lambda: single)
    assert len(chat_reply(commands, "admin@a.test", "stats").splitlines()) == 1
    assert not any(var.startswith("domain:") for var in stats_form(single).get_values())


def test_non_admin_never_gets_figures_whatever_they_send():
    commands = CommandSet(admins=frozenset({"admin@a.test"}), figures=lambda: TWO_DOMAINS)
    for text in ("stats", "STATS", "history", "history 3", "help", "", "🙂" * 1000):
        assert chat_reply(commands, "alice@a.test", text) == CHAT_REFUSED


def test_history_days_are_validated():
    assert parse_days("") == 30
    assert parse_days(" 7 ") == 7
    for bad in ("0", "-1", "367", "seven", "1.5"):
        with pytest.raises(ValueError, match="number of days must be 1 to 366"):
            parse_days(bad)
    commands = CommandSet(admins=frozenset({"admin@a.test"}), figures=lambda: TWO_DOMAINS)
    assert chat_reply(commands, "admin@a.test", "history lots").startswith("Sorry, the number")


def test_history_days_are_ascii_digits_of_a_sane_length():
    assert parse_days("007") == 7
    for other_digits in ("\u0663", "\u00b3", "\uff17", "\u0967"):  # Arabic-Indic, ³, full-width, ७
        with pytest.raises(ValueError, match="in digits 0-9, not"):
            parse_days(other_digits)
    with pytest.raises(ValueError, match="5000 characters") as huge:
        parse_days("5" * 5000)
    assert str(huge.value) == (
        "the number of days must be 1 to 366, in digits 0-9, "
        "not '55555555555555555555'... (5000 characters)"
    )
    commands = CommandSet(admins=frozenset({"admin@a.test"}), figures=lambda: TWO_DOMAINS)
    reply = chat_reply(commands, "admin@a.test", "history " + "9" * 5000)
    assert reply.startswith("Sorry, the number of days must be 1 to 366")
    assert "Exceeds the limit" not in reply
    assert len(reply) < 200


# --- active users by client ----------------------------------------------------------------

ALICE_TWO_CLIENTS = UserRecord(
    NOW - 10 * DAY,
    NOW - 60,
    NOW - 2 * DAY,
    ("phone",),
    ("conversations", NOW - 60, "gajim", NOW - 2 * DAY),
    ("conversations",),
)
BOB_GAJIM = UserRecord(
    NOW - 9 * DAY, NOW - 3 * DAY, NOW - 3 * DAY + 5, (), ("gajim", NOW - 3 * DAY + 5)
)
CAROL_IMPORTED = UserRecord(NOW - 9 * DAY, NOW - 3600, NOW - 3000)  # no client known


def client_commands() -> CommandSet:
    index = ActivityIndex.build([ALICE_TWO_CLIENTS, BOB_GAJIM, CAROL_IMPORTED])
    return CommandSet(
        admins=frozenset({"admin@a.test"}),
        figures=lambda: TWO_DOMAINS,
        client_figures=lambda: index.client_counts(NOW, DEFAULT_WINDOWS),
    )


def test_clients_are_one_table_rendered_as_a_form_and_as_chat():
    commands = client_commands()
    form = commands.clients_table().form()
    assert form["type"] == "result"
    assert form.get_reported() == {}  # no <reported>: Gajim 1.7 cannot show it (forms.py)
    shown = [
        (var, field["label"], field["value"])
        for var, field in form.get_fields().items()
        if field["type"] != "hidden"
    ]
    assert shown == [
        ("gajim", "Gajim (desktop)", "0 / 2 / 2 · 0 online"),
        ("conversations", "Conversations (mobile)", "1 / 1 / 1 · 1 online"),
    ]  # fmt: skip
    assert table_rows(form) == {
        "gajim": {
            "client": "Gajim",
            "platform": "desktop",
            "family": "gajim",
            "active_1d": "0",
            "active_7d": "2",
            "active_30d": "2",
            "online_users": "0",
        },
        "conversations": {
            "client": "Conversations",
            "platform": "mobile",
            "family": "conversations",
            "active_1d": "1",
            "active_7d": "1",
            "active_30d": "1",
            "online_users": "1",
        },
    }
    assert chat_reply(commands, "admin@a.test", " Clients ") == (
        "Active users by client (24h, 7d, 30d: in the last 24 hours, 7 days, 30 days):\n"
        "```\n"
        "client                  24h  7d  30d  online\n"
        "Gajim (desktop)           0   2    2       0\n"
        "Conversations (mobile)    1   1    1       1\n"
        "```\n" + commands.clients_table().note
    )
    assert "A user on two clients counts for each." in commands.clients_table().note


def test_no_client_known_yet_is_said_rather_than_an_empty_table():
    commands = CommandSet(admins=frozenset({"admin@a.test"}), figures=lambda: TWO_DOMAINS)
    reply = chat_reply(commands, "admin@a.test", "clients")
    assert reply.splitlines() == ["Active users by client: none.", commands.clients_table().note]
    assert "No client is known yet" in reply
    form = commands.clients_table().form()
    assert [f["type"] for f in form.get_fields().values()] == []
    assert "No client is known yet" in form["instructions"]


def test_non_admins_get_no_clients_either():
    assert chat_reply(client_commands(), "alice@a.test", "clients") == CHAT_REFUSED


def test_each_command_is_defined_once_and_both_front_ends_render_it():
    """The chat help, the chat words and the ad-hoc nodes all come from ADMIN_COMMANDS."""
    help_text = chat_help()
    keywords = [c.keyword for c in ADMIN_COMMANDS if c.keyword is not None]
    nodes = [c.node for c in ADMIN_COMMANDS if c.node is not None]
    assert len(set(nodes)) == len(nodes)
    for command in ADMIN_COMMANDS:
        if command.keyword is not None:
            assert f"  {command.keyword}: {command.help}" in help_text
        if command.keyword is not None and command.node is not None:
            assert f"'{command.node}' ({command.name})" in help_text
    commands = CommandSet(admins=frozenset({"admin@a.test"}), figures=lambda: TWO_DOMAINS)
    for keyword in keywords:
        reply = chat_reply(commands, "admin@a.test", keyword.split()[0])
        assert reply not in (CHAT_UNKNOWN, CHAT_REFUSED), keyword
    assert [c.keyword.split()[0] for c in ADMIN_COMMANDS if c.shows_figures] == ["stats"]
