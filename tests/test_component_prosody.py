"""The bot against a real Prosody: real clients log in and out, ask, and chat.

One Prosody serves the whole session (conftest.py); each test runs its own bot with its own store,
and stops it and every client it started before the next test begins.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from slixmpp.exceptions import IqError

from bot.commands import (
    ADHOC_FORGET_NODE,
    ADHOC_HISTORY_NODE,
    ADHOC_STATS_NODE,
    CHAT_HELP,
    CHAT_REFUSED,
    CHAT_UNKNOWN,
)
from bot.component import COMMANDS_NODE
from bot.daemon import Bot
from bot.history import utc_day

from .support import FAST, Chat, ask_adhoc, bot_settings

pytestmark = pytest.mark.asyncio

# --- presence → figures ---------------------------------------------------------------------


async def test_two_resources_of_one_user_give_exact_figures(start_bot, clients):
    bot = await start_bot()
    admin = await clients.login("admin@example.test/desk")
    await bot.expect("available", "admin@example.test/desk")

    phone = await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    laptop = await clients.login("alice@example.test/laptop")
    await bot.expect("available", "alice@example.test/laptop")
    figures = await ask_adhoc(admin)
    assert figures["online_users"] == "2"  # admin and alice
    assert figures["online_sessions"] == "3"
    assert (figures["dau"], figures["wau"], figures["mau"]) == ("2", "2", "2")

    await clients.logout(laptop)
    await bot.expect("unavailable", "alice@example.test/laptop")
    assert (await ask_adhoc(admin))["online_users"] == "2"  # her phone is still online
    await clients.logout(phone)
    await bot.expect("unavailable", "alice@example.test/phone")
    figures = await ask_adhoc(admin)
    assert (figures["online_users"], figures["online_sessions"]) == ("1", "1")
    assert (figures["dau"], figures["known_users"]) == ("2", "2")  # alice was active today

    record = bot.bot.store.get("alice@example.test")
    assert record.sessions == ()
    assert record.last_logout >= record.last_login > 0


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


async def test_bot_restarted_while_users_stay_online_relearns_them(start_bot, clients, tmp_path):
    first = await start_bot()
    await clients.login("alice@example.test/phone")
    await first.expect("available", "alice@example.test/phone")
    assert await first.stop() == 0

    second = await start_bot()  # same store; Prosody re-sends the online users' presence
    await second.expect("available", "alice@example.test/phone")
    assert second.bot.tracker.online_sessions() == {("alice@example.test", "phone")}
    figures = second.figures()
    assert (figures.online_users, figures.known_users, figures.dau) == (1, 1, 1)


async def test_prosody_restart_reconnects_and_resyncs(start_bot, clients, prosody):
    bot = await start_bot()
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")

    resynced = asyncio.ensure_future(bot.component.wait_until("resynced", 30))
    reconnected = asyncio.ensure_future(bot.component.wait_until("session_start", 30))
    await asyncio.to_thread(prosody.restart)  # Prosody says alice went offline, then goes away
    await bot.expect("unavailable", "alice@example.test/phone")
    await reconnected
    clients.connected.clear()  # the restart disconnected them
    await clients.login("bob@example.test/pc")
    await bot.expect("available", "bob@example.test/pc")
    await resynced
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}
    figures = bot.figures()
    assert (figures.online_users, figures.dau, figures.known_users) == (1, 2, 2)


async def test_session_that_ended_while_disconnected_is_closed_at_the_drop(start_bot, clients):
    bot = await start_bot()
    alice = await clients.login("alice@example.test/phone")
    await clients.login("bob@example.test/pc")
    await bot.expect_set(
        {("available", "alice@example.test/phone"), ("available", "bob@example.test/pc")}
    )
    reconnected = asyncio.ensure_future(bot.component.wait_until("session_start", 30))
    resynced = asyncio.ensure_future(bot.component.wait_until("resynced", 30))
    bot.component.abort()  # the connection drops (as a network failure would)
    await clients.logout(alice)  # ... and alice leaves while nobody tells the bot
    await reconnected  # Prosody re-announces bob (no change: he never left), not alice
    assert await resynced == 1
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}
    alice_record = bot.bot.store.get("alice@example.test")
    assert alice_record.sessions == ()
    assert alice_record.last_logout >= alice_record.last_login


async def test_liveness_pings_close_sessions_that_ended_unseen(start_bot, clients):
    """As on a server that announces nothing on reconnect (ejabberd): pings decide."""
    bot = await start_bot(server_software="generic", liveness_interval=3600, liveness_timeout=5)
    alice = await clients.login("alice@example.test/phone")
    await clients.login("bob@example.test/pc")
    await bot.expect_set(
        {("available", "alice@example.test/phone"), ("available", "bob@example.test/pc")}
    )
    checked = asyncio.ensure_future(bot.component.wait_until("liveness_checked", 30))
    bot.component.abort()  # the bot's connection drops...
    await clients.logout(alice)  # ... and alice leaves unseen
    assert await checked == 1
    await bot.expect("gone", "alice@example.test/phone")  # her ping bounced
    assert bot.bot.tracker.online_sessions() == {("bob@example.test", "pc")}  # bob answered
    assert bot.component.liveness.pings_sent == 2
    record = bot.bot.store.get("alice@example.test")
    assert record.last_logout == record.last_login  # closed at her last sign of life


async def test_presence_of_other_domains_and_the_component_itself_is_ignored(start_bot, clients):
    bot = await start_bot()
    carol = await clients.login("carol@example.test/pc")
    await bot.expect("available", "carol@example.test/pc")
    # A directed presence from carol's client with a show value is a presence update, not a login.
    carol.send_presence(pshow="away")
    carol.send_presence(pto="active.example.test", ptype="probe")
    await clients.login("bob@example.test/pc")
    await bot.expect("available", "bob@example.test/pc")  # nothing was tracked in between
    assert bot.figures().online_sessions == 2


async def test_metrics_endpoint_serves_the_figures(start_bot, clients):
    bot = await start_bot(metrics_listen=("127.0.0.1", 0))  # a free port; the bot says which
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    await clients.login("alice@example.test/laptop")
    await bot.expect("available", "alice@example.test/laptop")
    metrics = bot.bot.metrics
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    domain = (("domain", "example.test"),)
    assert samples[("xmpp_active_users", (*domain, ("window", "1d")))] == 1
    assert samples[("xmpp_active_users", (*domain, ("window", "30d")))] == 1
    assert samples[("xmpp_new_users", (*domain, ("window", "7d")))] == 1
    assert samples[("xmpp_online_users", domain)] == 1
    assert samples[("xmpp_online_sessions", domain)] == 2
    assert samples[("xmpp_known_users", domain)] == 1
    assert samples[("xmpp_stickiness_ratio", domain)] == 1.0
    assert samples[("xmpp_presence_events_total", (("kind", "available"),))] >= 2
    assert samples[("xmpp_component_connected", ())] == 1
    assert samples[("xmpp_count_duration_seconds", ())] < 1


# --- who may ask --------------------------------------------------------------------------------


async def test_only_admins_see_and_run_the_command(start_bot, clients):
    await start_bot()
    admin = await clients.login("admin@example.test/desk")
    alice = await clients.login("alice@example.test/phone")

    async def command_nodes(client) -> set[str]:
        items = await client.plugin["xep_0030"].get_items(
            jid="active.example.test", node=COMMANDS_NODE
        )
        return {node for _, node, _ in items["disco_items"]["items"]}

    assert await command_nodes(admin) == {ADHOC_STATS_NODE, ADHOC_HISTORY_NODE, ADHOC_FORGET_NODE}
    assert await command_nodes(alice) == set()
    for node in (ADHOC_STATS_NODE, ADHOC_HISTORY_NODE, ADHOC_FORGET_NODE):
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
    rows = result["command"]["form"]["items"]
    assert [row["date"] for row in rows][-1] == utc_day(time.time())
    assert (rows[-1]["active_1d"], rows[-1]["peak_online"]) == ("1", "1")
    assert (rows[0]["active_1d"], rows[0]["peak_online"]) == ("", "")  # the bot did not run

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


# --- connection problems -------------------------------------------------------------------


async def test_wrong_secret_is_a_clear_error_and_exit_1(prosody, tmp_path, caplog):
    settings = bot_settings(prosody, tmp_path / "activity.db", secret="not-the-secret")
    caplog.set_level(logging.ERROR)
    bot = Bot(settings, timing=FAST)
    assert await asyncio.wait_for(bot.serve(asyncio.Event()), 15) == 1
    assert "refused the component secret for active.example.test" in caplog.text


async def test_nothing_listening_is_a_clear_error_and_exit_1(prosody, tmp_path, caplog):
    settings = bot_settings(prosody, tmp_path / "activity.db", server_port=prosody.c2s_port + 7)
    caplog.set_level(logging.ERROR)
    bot = Bot(settings, timing=FAST)
    assert await asyncio.wait_for(bot.serve(asyncio.Event()), 15) == 1
    assert "nothing accepts components there" in caplog.text
