"""The weekly report and the alerts, through a real Prosody to real clients, on the test's clock.

Each test runs its own bot (its own store) whose wall clock is the test's (`Clock`), so "the
scheduled time" is a moment the test chooses; the bot's notifier looks every 0.05 s here (20 s in
production). What an admin's client receives is what is asserted: the report's figures are
compared with the `history` command's for the same days, asked by the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import bot
from bot.admin.commands import ADHOC_HISTORY_NODE, CHAT_REFUSED
from bot.admin.forms import table_rows
from bot.core.counter import DAY
from bot.storage.store import Store
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.linkproxy import LinkProxy
from bot.testbed.sandbox import ProsodySandbox

from .support import ADMIN, USERS, Clock, LogWatch, RunningBot, bot_settings, bot_starter

pytestmark = pytest.mark.asyncio

COMPONENT = "active.example.test"
MONDAY_8 = int(datetime(2026, 12, 7, 8, tzinfo=UTC).timestamp())  # a Monday, 08:00 UTC
WEEKLY = {"enabled": True, "weekly": True, "weekday": "monday", "hour": 8}
REPO = Path(bot.__file__).resolve().parents[1]
CAPTURED = (
    Path(os.environ.get("CAPTURE_MESSAGES", "")) if os.environ.get("CAPTURE_MESSAGES") else None
)


def day(back: int) -> str:
    return (datetime.fromtimestamp(MONDAY_8, UTC).date() - timedelta(days=back)).isoformat()


def seeded_days(store_path: Path, domain: str, dau_by_day_back: dict[int, int]) -> None:
    """Daily snapshots (figures made from the DAU) for the days `back` days before MONDAY_8."""
    with Store(store_path) as store:
        for back, dau in dau_by_day_back.items():
            store.put_day(
                day(back),
                {
                    domain: {
                        "active": {"1d": dau, "7d": dau * 2 + back, "30d": dau * 4 + back},
                        "new": {"1d": back % 3, "7d": back + 1, "30d": back + 7},
                        "peak_online": dau // 2 + back,
                    }
                },
            )
        store.flush(MONDAY_8 - 3 * DAY)


# Two weeks before MONDAY_8: the week reported (1 to 7 days back; 4 days back, Thursday, the bot
# was not running) and the week before it (8 to 14).
TWO_WEEKS = {back: 10 + (back * 7) % 9 for back in range(1, 15) if back != 4}


class Inbox:
    """The chat messages a client receives from the bot, in order."""

    def __init__(self, client, on_message=None) -> None:
        self.messages: asyncio.Queue = asyncio.Queue()
        self.on_message = on_message
        client.add_event_handler("message", self._on_message)

    def _on_message(self, message) -> None:
        if message["from"].bare == COMPONENT and message["type"] == "chat":
            if self.on_message is not None:
                self.on_message(message)
            self.messages.put_nowait(message)

    async def next(self, timeout: float = 5):
        return await asyncio.wait_for(self.messages.get(), timeout)

    def assert_empty(self) -> None:
        assert self.messages.empty(), self.messages.get_nowait()["body"]


def fast(running: RunningBot) -> None:
    """The notifier looks every 0.05 s instead of every 20 s."""
    running.bot.notifier.tick = 0.05
    running.bot.notifier.wake()


async def checks(running: RunningBot, count: int = 5) -> None:
    """Wait until the notifier has looked `count` more times (at the clock as it is now)."""
    notifier = running.bot.notifier
    target = notifier.checks + count
    async with asyncio.timeout(5):
        while notifier.checks < target:
            await asyncio.sleep(0.02)


async def history_rows(client, days: int) -> list[dict[str, str]]:
    """The `history` ad-hoc command's rows for the last `days` days, oldest first."""
    adhoc = client.plugin["xep_0050"]
    first = await adhoc.send_command(jid=COMPONENT, node=ADHOC_HISTORY_NODE)
    form = first["command"]["form"]
    form["type"] = "submit"
    form.set_values({"days": str(days)})
    step = client.make_iq_set(ito=COMPONENT)
    step["command"]["node"] = ADHOC_HISTORY_NODE
    step["command"]["sessionid"] = first["command"]["sessionid"]
    step["command"]["action"] = "complete"
    step["command"].append(form)
    result = await step.send()
    rows = table_rows(result["command"]["form"])  # by date, oldest first
    return [{"date": date, **cells} for date, cells in rows.items()]


def expected_lines(rows: list[dict[str, str]]) -> list[str]:
    """The lines a report of these days must have, worked out from the history's rows."""
    dau = [int(row["active_1d"]) for row in rows if row["active_1d"]]
    last = [row for row in rows if row["active_1d"]][-1]
    gaps = [row["date"] for row in rows if not row["active_1d"]]
    peak = max(int(row["peak_online"]) for row in rows if row["peak_online"])
    average = sum(dau) / len(dau)
    return [
        f"Daily active users: average {average:,.1f}, min {min(dau)}, max {max(dau)} (",
        f"Weekly active: {last['active_7d']} · monthly active: {last['active_30d']} · "
        f"new users: {last['new_7d']}",
        f"Stickiness (DAU/MAU): {average / int(last['active_30d']):.0%} · peak online: {peak}",
        "Bot not running on: " + ", ".join(gaps),
    ]


def capture(name: str, text: str) -> None:
    """With CAPTURE_MESSAGES=FOLDER, keep a message as received (for the README)."""
    if CAPTURED is not None:
        CAPTURED.mkdir(parents=True, exist_ok=True)
        (CAPTURED / f"{name}.txt").write_text(text + "\n", encoding="utf-8")


# --- the weekly report --------------------------------------------------------------------------


async def test_weekly_report_arrives_at_its_time_with_the_history_commands_figures(
    prosody, tmp_path, clients
):
    store_path = tmp_path / "activity.db"
    seeded_days(store_path, prosody.domain, TWO_WEEKS)
    clock = Clock(MONDAY_8 - 30)
    async with bot_starter(prosody, store_path) as start:
        running = await start(clock=clock, reports=WEEKLY)
        fast(running)
        admin = await clients.login(f"{ADMIN}/desk")
        inbox = Inbox(admin)
        await checks(running)
        inbox.assert_empty()  # 30 s early: nothing

        clock.now = MONDAY_8 + 2
        report = (await inbox.next())["body"]
        capture("report", report)
        rows = (await history_rows(admin, 8))[:-1]  # today (the Monday) is not reported
        assert [row["date"] for row in rows] == [day(back) for back in range(7, 0, -1)]
        lines = report.splitlines()
        assert lines[0] == "*Weekly report*, Mon 30 Nov 2026 to Sun 06 Dec 2026 (UTC)"
        for line in expected_lines(rows):
            assert any(got.startswith(line) for got in lines), (line, report)
        previous = [TWO_WEEKS[b] for b in range(8, 15)]
        current = [TWO_WEEKS[b] for b in range(1, 8) if b != 4]
        change = (sum(current) / len(current)) / (sum(previous) / len(previous)) - 1
        assert f"({change:+.0%} vs the 7 days before)" in report
        assert "late" not in report
        await checks(running)
        inbox.assert_empty()  # once


async def test_exactly_once_across_restarts_around_the_scheduled_minute(prosody, tmp_path, clients):
    """Stopped 10 s before the time, back 20 s after it: sent then, once. Restarted again in the
    same minute: not again."""
    store_path = tmp_path / "activity.db"
    seeded_days(store_path, prosody.domain, TWO_WEEKS)
    admin = await clients.login(f"{ADMIN}/desk")
    inbox = Inbox(admin)
    clock = Clock(MONDAY_8 - 40)
    async with bot_starter(prosody, store_path) as start:
        first = await start(clock=clock, reports=WEEKLY)
        fast(first)
        await checks(first)
        clock.now = MONDAY_8 - 10
        await first.stop()
        clock.now = MONDAY_8 + 20
        second = await start(clock=clock, reports=WEEKLY)
        fast(second)
        assert (await inbox.next())["body"].startswith("*Weekly report*")
        await second.stop()
        clock.now = MONDAY_8 + 50
        third = await start(clock=clock, reports=WEEKLY)
        fast(third)
        await checks(third, 10)
        inbox.assert_empty()


_CHILD = """
    import asyncio, signal, sys, time
    from pathlib import Path
    from bot.xmpp.component import Timing
    from bot.config import load_settings
    from bot.app.daemon import Bot

    config, clock_file, slow_disk = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

    def clock():
        return float(clock_file.read_text()) if clock_file.name != "-" else time.time()

    async def main():
        settings = load_settings(config, environ={})
        bot = Bot(settings, clock=clock, timing=Timing(privileges_grace=0.5))
        bot.notifier.tick = 0.05
        write = bot.store.put_note_now

        def slow_write(name, value):  # a disk slow to commit: "just after" lasts a while
            time.sleep(slow_disk)
            write(name, value)

        bot.store.put_note_now = slow_write
        looked = bot.notifier.check

        async def check():
            await looked()
            print("checked", flush=True)

        bot.notifier.check = check
        bot.component.add_event_handler("session_start", lambda _: print("connected", flush=True))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        return await bot.serve(stop)

    sys.exit(asyncio.run(main()))
"""


class ChildBot:
    """A bot in a process of its own (to be killed with SIGKILL), its clock read from a file."""

    def __init__(self, config: Path, clock_file: Path | None, slow_disk: float = 0.0) -> None:
        """`slow_disk`: seconds each write of the notifier's markers takes."""
        self.config, self.clock_file, self.slow_disk = config, clock_file, slow_disk
        self.process: asyncio.subprocess.Process | None = None

    def set_clock(self, now: float) -> None:
        assert self.clock_file is not None
        self.clock_file.with_suffix(".new").write_text(str(now))
        self.clock_file.with_suffix(".new").replace(self.clock_file)

    async def start(self) -> None:
        clock = "-" if self.clock_file is None else str(self.clock_file)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            textwrap.dedent(_CHILD),
            str(self.config),
            clock,
            str(self.slow_disk),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self.line("connected")

    async def line(self, wanted: str, count: int = 1) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async with asyncio.timeout(15):
            while count:
                got = (await self.process.stdout.readline()).decode().strip()
                assert got or self.process.returncode is None, "the bot ended"
                count -= got == wanted

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)
            self.kill()
            await self.process.wait()


async def test_exactly_once_across_a_kill_9_just_after_sending(prosody, tmp_path, clients):
    """At most once, as promised: the report's marker is on disk before the report is sent, so
    a bot killed the moment the admin has it does not send it again when it is back. Each of
    its marker writes takes 0.3 s here, so that the kill surely comes before any write that
    follows the sending (a bot that sent first would send again)."""
    store_path = tmp_path / "activity.db"
    seeded_days(store_path, prosody.domain, TWO_WEEKS)
    bot_settings(prosody, store_path, reports=WEEKLY)  # writes the config beside the store
    config = store_path.with_name(store_path.name + ".toml")
    child = ChildBot(config, tmp_path / "clock", slow_disk=0.3)
    child.set_clock(MONDAY_8 - 30)
    admin = await clients.login(f"{ADMIN}/desk")
    inbox = Inbox(admin, on_message=lambda _message: child.kill())  # at once, in the handler
    try:
        await child.start()
        await child.line("checked", 3)
        child.set_clock(MONDAY_8 + 1)
        assert (await inbox.next())["body"].startswith("*Weekly report*")
        assert await asyncio.wait_for(child.process.wait(), 5) == -signal.SIGKILL

        child.set_clock(MONDAY_8 + 30)
        await child.start()
        await child.line("checked", 20)
        inbox.assert_empty()
    finally:
        await child.stop()


async def test_an_admin_offline_at_the_time_gets_the_report_at_next_login(
    prosody, tmp_path, clients
):
    store_path = tmp_path / "activity.db"
    seeded_days(store_path, prosody.domain, TWO_WEEKS)
    clock = Clock(MONDAY_8 - 30)
    async with bot_starter(prosody, store_path) as start:
        with LogWatch("bot.notify") as log:
            running = await start(clock=clock, reports=WEEKLY)
            fast(running)
            clock.now = MONDAY_8 + 2
            await log.next(lambda text: text == "Sent the weekly report to 1 admins")
        admin = await connect_client(prosody, ADMIN, USERS["admin"], "phone", presence=False)
        try:
            inbox = Inbox(admin)
            admin.send_presence()  # the server delivers what it kept after the first presence
            message = await inbox.next()
            assert message["body"].startswith("*Weekly report*, Mon 30 Nov 2026")
            assert message["to"].bare == ADMIN
            kept = message.xml.find("{urn:xmpp:delay}delay")  # kept by the server: XEP-0203
            assert kept is not None, message
        finally:
            await disconnect_client(admin)


async def test_reports_off_stops_the_report_and_survives_a_restart(prosody, tmp_path, clients):
    store_path = tmp_path / "activity.db"
    seeded_days(store_path, prosody.domain, TWO_WEEKS)
    clock = Clock(MONDAY_8 - 60)
    admin = await clients.login(f"{ADMIN}/desk")
    inbox = Inbox(admin)
    async with bot_starter(prosody, store_path) as start:
        running = await start(clock=clock, reports=WEEKLY)
        admin.send_message(mto=COMPONENT, mbody="reports off", mtype="chat")
        assert (await inbox.next())["body"].startswith("You do not get the weekly reports")
        await running.stop()
        with LogWatch("bot.notify") as log:
            running = await start(clock=clock, reports=WEEKLY)
            fast(running)
            clock.now = MONDAY_8 + 2
            await log.next(lambda text: text == "Sent the weekly report to 0 admins")
        await checks(running)
        inbox.assert_empty()
        admin.send_message(mto=COMPONENT, mbody="reports", mtype="chat")
        assert (await inbox.next())["body"].startswith("You do not get")


async def test_non_admins_never_get_a_report_whatever_they_send(prosody, tmp_path, clients):
    store_path = tmp_path / "activity.db"
    seeded_days(store_path, prosody.domain, TWO_WEEKS)
    clock = Clock(MONDAY_8 - 30)
    alice = await clients.login("alice@example.test/phone")
    admin = await clients.login(f"{ADMIN}/desk")
    theirs, admins = Inbox(alice), Inbox(admin)
    async with bot_starter(prosody, store_path) as start:
        running = await start(clock=clock, reports=WEEKLY, alerts={"enabled": True})
        fast(running)
        # Five: the chat's burst per sender (more are dropped by the rate limit, unanswered).
        asked = ("reports on", "alerts on", "reports", "REPORTS ON please", "alerts off")
        for text in asked:
            alice.send_message(mto=COMPONENT, mbody=text, mtype="chat")
            assert (await theirs.next())["body"] == CHAT_REFUSED
        clock.now = MONDAY_8 + 2
        assert (await admins.next())["body"].startswith("*Weekly report*")
        await checks(running)
        theirs.assert_empty()
        assert running.bot.notifier.recipients("reports") == [ADMIN]


async def test_adhoc_command_sets_the_same_choices_as_chat(prosody, tmp_path, clients):
    async with bot_starter(prosody, tmp_path / "activity.db") as start:
        running = await start(reports=WEEKLY, alerts={"enabled": True})
        admin = await clients.login(f"{ADMIN}/desk")
        adhoc = admin.plugin["xep_0050"]
        first = await adhoc.send_command(jid=COMPONENT, node="notifications")
        form = first["command"]["form"]
        assert form.get_values() == {"reports": True, "alerts": True}
        form["type"] = "submit"
        form.set_values({"reports": True, "alerts": False})
        step = admin.make_iq_set(ito=COMPONENT)
        step["command"]["node"] = "notifications"
        step["command"]["sessionid"] = first["command"]["sessionid"]
        step["command"]["action"] = "complete"
        step["command"].append(form)
        result = await step.send()
        assert result["command"]["status"] == "completed"
        note = result["command"]["notes"][0][1]
        assert "You get the weekly reports" in note
        assert "You do not get the alerts" in note
        assert not running.bot.notifier.wants(ADMIN, "alerts")
        assert running.bot.notifier.wants(ADMIN, "reports")


# --- alerts -------------------------------------------------------------------------------------


def dau_history(sunday_dau: int) -> dict[int, int]:
    """Five Sundays: four ordinary ones, then yesterday's (`sunday_dau`); other days ordinary."""
    history = {back: 40 + back % 5 for back in range(1, 36)}
    history[1] = sunday_dau
    return history


@pytest.mark.parametrize(("sunday_dau", "alerted"), [(12, True), (38, False)])
async def test_dau_drop_alert_fires_on_a_low_day_and_stays_quiet_on_a_normal_one(
    prosody, tmp_path, clients, sunday_dau, alerted
):
    store_path = tmp_path / "activity.db"
    seeded_days(store_path, prosody.domain, dau_history(sunday_dau))
    admin = await clients.login(f"{ADMIN}/desk")
    inbox = Inbox(admin)
    alerts = {"enabled": True, "dau_below": 0.5}
    async with bot_starter(prosody, store_path) as start:
        running = await start(clock=Clock(MONDAY_8 - 3600), alerts=alerts)
        fast(running)
        if alerted:
            alert = (await inbox.next())["body"]
            capture("alert-dau", alert)
            assert alert.startswith(
                f"Alert: {day(1)} (Sunday) had 12 daily active users, below 50% of the usual 42"
            )
        await checks(running)
        assert running.bot.notifier.alerts.dau_checked == day(1)
        await running.stop()
        running = await start(clock=Clock(MONDAY_8), alerts=alerts)  # the same day, restarted
        fast(running)
        await checks(running)
        inbox.assert_empty()


async def test_link_down_longer_than_set_is_one_message_when_back(prosody, tmp_path, clients):
    admin = await clients.login(f"{ADMIN}/desk")
    inbox = Inbox(admin)
    clock = Clock(MONDAY_8)
    alerts = {"enabled": True, "link_down_for": 60}
    async with (
        LinkProxy(prosody.component_port) as proxy,
        bot_starter(prosody, tmp_path / "activity.db", server_port=proxy.port) as start,
    ):
        running = await start(clock=clock, alerts=alerts)
        fast(running)
        for outage, connection in ((30, 2), (300, 3)):
            proxy.hold()
            proxy.cut()
            await proxy.connection(connection)
            clock.now += outage
            started = asyncio.ensure_future(running.component.wait_until("session_start", 15))
            proxy.release()
            await started
            await checks(running)
            if outage == 30:
                inbox.assert_empty()  # shorter than the set time: nothing
        said = (await inbox.next())["body"]
        capture("alert-link", said)
        assert said.startswith(
            "Alert, over: the bot was disconnected from the XMPP server from "
            "2026-12-07 08:00:30 UTC to 2026-12-07 08:05:30 UTC (5 min)."
        )
        await checks(running)
        inbox.assert_empty()


def can_make_files_immutable(folder: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        return False
    probe = folder / "probe"
    probe.touch()
    try:
        subprocess.run(["chattr", "+i", str(probe)], check=True, capture_output=True)
        subprocess.run(["chattr", "-i", str(probe)], check=True, capture_output=True)
        return True
    except subprocess.CalledProcessError:
        return False
    finally:
        probe.unlink()


async def test_a_store_turned_read_only_gives_one_alert_and_one_over(prosody, tmp_path, clients):
    """The bot runs in a process of its own (as in test_store_readonly.py: an immutable store
    must never be written by pytest's own process)."""
    if not can_make_files_immutable(tmp_path):
        pytest.skip("needs root, chattr and a file system with immutable files")
    store_path = tmp_path / "activity.db"
    alerts = {"enabled": True, "store_failing_for": 1, "link_down_for": 0, "dau_below": 0}
    bot_settings(prosody, store_path, alerts=alerts, flush_interval=0.2)
    child = ChildBot(store_path.with_name(store_path.name + ".toml"), None)
    files = [str(store_path.with_name(store_path.name + s)) for s in ("", "-wal", "-shm")]
    admin = await clients.login(f"{ADMIN}/desk")
    inbox = Inbox(admin)
    try:
        await child.start()
        await child.line("checked", 3)
        subprocess.run(["chattr", "+i", *[f for f in files if Path(f).exists()]], check=True)
        bob = await clients.login("bob@example.test/pc")  # a change to write: it fails
        alert = (await inbox.next(10))["body"]
        capture("alert-store", alert)
        assert alert.startswith("Alert: the store has failed to write since")
        await clients.logout(bob)
        await child.line("checked", 20)
        inbox.assert_empty()  # one message, not a stream
        subprocess.run(["chattr", "-i", *files], check=False, capture_output=True)
        over = (await inbox.next(10))["body"]
        capture("alert-store-over", over)
        assert re.match(r"Over: the store writes again \(.* to .*\); nothing was lost\.", over)
        await child.line("checked", 20)
        inbox.assert_empty()
    finally:
        subprocess.run(["chattr", "-i", *files], check=False, capture_output=True)
        await child.stop()


async def test_a_server_granting_no_presence_privilege_gives_one_alert(tmp_path):
    """A Prosody of its own, without the grant: the admin is told once, after connecting."""
    with ProsodySandbox(
        tmp_path / "prosody", grant_presence=False, extra_modules=("offline",)
    ) as prosody:
        prosody.register("admin", USERS["admin"])
        admin = await connect_client(prosody, ADMIN, USERS["admin"], "desk")
        try:
            inbox = Inbox(admin)
            async with bot_starter(prosody, tmp_path / "activity.db") as start:
                running = await start(alerts={"enabled": True})
                fast(running)
                alert = (await inbox.next())["body"]
                capture("alert-privileges", alert)
                assert alert.startswith(
                    "Alert: no presence privilege from example.test (XEP-0356) since connecting"
                )
                await checks(running, 10)
                inbox.assert_empty()
        finally:
            await disconnect_client(admin)
