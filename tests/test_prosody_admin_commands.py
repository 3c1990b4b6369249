"""What admins ask the bot through a real Prosody, and what everyone else gets: the ad-hoc
commands (figures, history, forget), the chat commands, and the refusals.

One Prosody serves the whole session (conftest.py); each test runs its own bot with its own store,
and stops it and every client it started before the next test begins.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from slixmpp.exceptions import IqError

from bot.admin.commands import (
    ADHOC_CLIENTS_NODE,
    ADHOC_FORGET_NODE,
    ADHOC_HISTORY_NODE,
    ADHOC_STATS_NODE,
    CHAT_HELP,
    CHAT_REFUSED,
    CHAT_UNKNOWN,
)
from bot.admin.forms import table_rows
from bot.admin.history import utc_day
from bot.xmpp.admin_commands import COMMANDS_NODE

from .support import Chat

pytestmark = pytest.mark.asyncio


async def test_adhoc_result_form_has_every_field_with_labels(start_bot, clients):
    await start_bot()
    admin = await clients.login("admin@example.test/desk")
    result = await admin.plugin["xep_0050"].send_command(
        jid="active.example.test", node=ADHOC_STATS_NODE
    )
    form = result["command"]["form"]
    assert form["type"] == "result"
    labels = {var: field["label"] for var, field in form.get_fields().items()}
    assert labels["dau"] == "Active users, last 24 hours"
    assert labels["wau"] == "Active users, last 7 days"
    assert labels["mau"] == "Active users, last 30 days"
    assert labels["new_1d"] == "New users, last 24 hours"
    assert labels["stickiness"] == "Stickiness (DAU/MAU)"
    assert {"online_users", "online_sessions", "known_users", "computed_at"} <= set(labels)
    assert form.get_values()["computed_at"].endswith("Z")


async def test_only_admins_see_and_run_the_command(start_bot, clients):
    await start_bot()
    admin = await clients.login("admin@example.test/desk")
    alice = await clients.login("alice@example.test/phone")

    async def command_nodes(client) -> set[str]:
        items = await client.plugin["xep_0030"].get_items(
            jid="active.example.test", node=COMMANDS_NODE
        )
        return {node for _, node, _ in items["disco_items"]["items"]}

    assert await command_nodes(admin) == set(COMMAND_NODES)
    assert await command_nodes(alice) == set()
    for node in COMMAND_NODES:
        with pytest.raises(IqError) as refused:
            await alice.plugin["xep_0050"].send_command(jid="active.example.test", node=node)
        assert refused.value.iq["error"]["condition"] == "forbidden"
        assert "dau" not in str(refused.value.iq)


async def test_non_admin_cannot_continue_an_admins_command_session(start_bot, clients):
    await start_bot()
    alice = await clients.login("alice@example.test/phone")
    iq = alice.make_iq_set(ito="active.example.test")
    iq["command"]["node"] = ADHOC_STATS_NODE
    iq["command"]["action"] = "next"
    iq["command"]["sessionid"] = "guessed-session-id"
    with pytest.raises(IqError) as refused:
        await iq.send()
    assert refused.value.iq["error"]["condition"] == "forbidden"


async def test_admin_chat_stats_help_and_unknown(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    chat = Chat(admin)
    assert await chat.ask("  STATS \n") == (
        "Active users: 1 (24 hours), 1 (7 days), 1 (30 days); "
        "new: 1 (24 hours), 1 (7 days), 1 (30 days); DAU/MAU: 100%; "
        "online now: 1 users, 1 sessions"
    )
    assert await chat.ask("help") == CHAT_HELP
    assert await chat.ask("what's up?") == CHAT_UNKNOWN


async def test_admin_gets_history_by_adhoc_in_two_steps_and_by_chat(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    bot.bot.record_today()  # what the periodic count does

    adhoc = admin.plugin["xep_0050"]
    first = await adhoc.send_command(jid="active.example.test", node=ADHOC_HISTORY_NODE)
    assert first["command"]["status"] == "executing"
    assert first["command"]["form"].get_fields()["days"]["value"] == "30"
    answer = first["command"]["form"]
    answer["type"] = "submit"
    answer.set_values({"days": "3"})
    step = admin.make_iq_set(ito="active.example.test")
    step["command"]["node"] = ADHOC_HISTORY_NODE
    step["command"]["sessionid"] = first["command"]["sessionid"]
    step["command"]["action"] = "complete"
    step["command"].append(answer)
    result = await step.send()
    assert result["command"]["status"] == "completed"
    rows = table_rows(result["command"]["form"])
    dates = list(rows)
    assert dates[-1] == utc_day(time.time())
    assert (rows[dates[-1]]["active_1d"], rows[dates[-1]]["peak_online"]) == ("1", "1")
    assert (rows[dates[0]]["active_1d"], rows[dates[0]]["peak_online"]) == ("", "")  # not running

    chart = await Chat(admin).ask("history 7")
    assert chart.startswith("Active users over the last 7 days")
    assert "   24 hours  ······█  (now 1, max 1)" in chart
    assert "peak online  ······█  (max 1)" in chart


async def test_admin_forgets_a_user_by_adhoc(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    bob = await clients.login("bob@example.test/pc")
    await bot.expect_set(
        {("available", "admin@example.test/desk"), ("available", "bob@example.test/pc")}
    )
    await clients.logout(bob)
    await bot.expect("unavailable", "bob@example.test/pc")

    async def forget(jid: str):
        first = await admin.plugin["xep_0050"].send_command(
            jid="active.example.test", node=ADHOC_FORGET_NODE
        )
        answer = first["command"]["form"]
        answer["type"] = "submit"
        answer.set_values({"jid": jid})
        step = admin.make_iq_set(ito="active.example.test")
        step["command"]["node"] = ADHOC_FORGET_NODE
        step["command"]["sessionid"] = first["command"]["sessionid"]
        step["command"]["action"] = "complete"
        step["command"].append(answer)
        return await step.send()

    result = await forget("bob@example.test")
    assert result["command"]["status"] == "completed"
    assert result["command"]["notes"] == [("info", "Forgot bob@example.test.")]
    assert bot.bot.store.get("bob@example.test") is None
    assert bot.figures().known_users == 1  # the admin only
    again = await forget("bob@example.test")
    assert again["command"]["notes"] == [("info", "Nothing was stored about bob@example.test.")]
    with pytest.raises(IqError) as refused:
        await forget("not a jid@@")
    assert refused.value.iq["error"]["condition"] == "bad-request"


async def test_non_admin_chat_gets_a_polite_refusal_without_figures(start_bot, clients):
    await start_bot()
    chat = Chat(await clients.login("alice@example.test/phone"))
    reply = await chat.ask("stats")
    assert reply == CHAT_REFUSED
    assert not any(ch.isdigit() for ch in reply)


async def test_error_and_groupchat_messages_get_no_reply(start_bot, clients):
    await start_bot()
    chat = Chat(await clients.login("admin@example.test/desk"))
    chat.client.send_message(mto="active.example.test", mbody="stats", mtype="error")
    chat.client.send_message(mto="active.example.test", mbody="stats", mtype="groupchat")
    # Replies come in order: if either had been answered, that answer would come first.
    assert await chat.ask("help") == CHAT_HELP


# --- what probing non-admins get, and what admins' bad input gets --------------------------------

COMMAND_NODES = (ADHOC_STATS_NODE, ADHOC_CLIENTS_NODE, ADHOC_HISTORY_NODE, ADHOC_FORGET_NODE)


async def disco_error(client, kind: str, node: str) -> tuple[str, str]:
    """The (condition, text) of the error a disco#info or #items request on `node` gets."""
    ask = (
        client.plugin["xep_0030"].get_info
        if kind == "info"
        else client.plugin["xep_0030"].get_items
    )
    with pytest.raises(IqError) as refused:
        await ask(jid="active.example.test", node=node)
    return refused.value.iq["error"]["condition"], refused.value.iq["error"]["text"]


async def test_non_admins_find_the_command_nodes_as_unknown_as_any_other(start_bot, clients):
    await start_bot()
    admin = await clients.login("admin@example.test/desk")
    alice = await clients.login("alice@example.test/phone")
    info = await admin.plugin["xep_0030"].get_info(
        jid="active.example.test", node=ADHOC_HISTORY_NODE
    )
    assert [identity[3] for identity in info["disco_info"]["identities"]] == ["Activity history"]
    for kind in ("info", "items"):
        unknown = await disco_error(alice, kind, "no-such-node")
        assert unknown[0] == "item-not-found"
        for node in COMMAND_NODES:
            assert await disco_error(alice, kind, node) == unknown, (kind, node)


async def test_1050_probes_of_a_non_admin_are_all_forbidden_and_logged_once(
    start_bot, clients, caplog
):
    await start_bot()
    admin = await clients.login("admin@example.test/desk")
    alice = await clients.login("alice@example.test/phone")
    opened = await admin.plugin["xep_0050"].send_command(
        jid="active.example.test", node=ADHOC_HISTORY_NODE
    )
    captured = opened["command"]["sessionid"]  # an admin's session, in progress
    caplog.set_level(logging.INFO, "bot.component")

    async def probe(node: str, action: str, sessionid: str) -> str:
        iq = alice.make_iq_set(ito="active.example.test")
        iq["command"]["node"] = node
        iq["command"]["action"] = action
        if sessionid:
            iq["command"]["sessionid"] = sessionid
        try:
            await iq.send(timeout=30)
        except IqError as refused:
            return refused.iq["error"]["condition"]
        return "answered"

    nodes = (*COMMAND_NODES, "no-such-node")
    actions = ("execute", "next", "prev", "complete", "cancel")
    sessionids = ["", captured, *(f"guess-{n}" for n in range(40))]
    answers = await asyncio.gather(
        *(probe(n, a, s) for n in nodes for a in actions for s in sessionids)
    )
    assert len(answers) == 1050
    assert set(answers) == {"forbidden"}
    refusal_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    # Stanzas of one stream arrive in order: the first probe is the one logged.
    assert [r.getMessage() for r in refusal_lines] == [
        "Ad-hoc command 'active-users' refused to alice@example.test/phone"
    ]
    # The admin's session survived the probes.
    answer = opened["command"]["form"]
    answer["type"] = "submit"
    answer.set_values({"days": "2"})
    result = await admin.plugin["xep_0050"].send_command(
        jid="active.example.test",
        node=ADHOC_HISTORY_NODE,
        action="complete",
        sessionid=captured,
        payload=answer,
    )
    assert result["command"]["status"] == "completed"


async def test_bad_history_days_get_a_clear_error_and_leave_no_session(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    for days in ("5" * 5000, "\u0663", "0"):
        first = await admin.plugin["xep_0050"].send_command(
            jid="active.example.test", node=ADHOC_HISTORY_NODE
        )
        answer = first["command"]["form"]
        answer["type"] = "submit"
        answer.set_values({"days": days})
        with pytest.raises(IqError) as refused:
            await admin.plugin["xep_0050"].send_command(
                jid="active.example.test",
                node=ADHOC_HISTORY_NODE,
                action="complete",
                sessionid=first["command"]["sessionid"],
                payload=answer,
            )
        error = refused.value.iq["error"]
        assert error["condition"] == "bad-request"
        assert error["text"].startswith("the number of days must be 1 to 366, in digits 0-9, not")
        assert "Exceeds the limit" not in error["text"]
    assert len(bot.component.plugin["xep_0050"].sessions) == 0


async def test_chat_to_any_address_of_the_component_is_answered_from_that_address(
    start_bot, clients
):
    # Gajim's Start Chat takes only an address with an '@': stats@active.example.test is one.
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")
    replies: asyncio.Queue = asyncio.Queue()
    admin.add_event_handler("message", replies.put_nowait)
    admin.send_message(mto="stats@active.example.test", mbody="help", mtype="chat")
    reply = await asyncio.wait_for(replies.get(), 5)
    assert (str(reply["from"]), reply["body"]) == ("stats@active.example.test", CHAT_HELP)
    alice = await clients.login("alice@example.test/phone")
    alice.add_event_handler("message", replies.put_nowait)
    alice.send_message(mto="stats@active.example.test", mbody="stats", mtype="chat")
    reply = await asyncio.wait_for(replies.get(), 5)
    assert (str(reply["from"]), reply["body"]) == ("stats@active.example.test", CHAT_REFUSED)
