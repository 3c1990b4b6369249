"""The admins' reports and alerts without XMPP: the schedule, the figures, the incidents, the
preferences, on the test's clock, with a real store and a recording edge."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.admin.alerts import Alerts, AlertSettings, Incident
from bot.admin.history import Day
from bot.admin.notify import FIRST_RUN_GRACE, Notifier, Sources
from bot.admin.reports import ReportSettings, figures, latest_scheduled, period_days
from bot.config import ConfigError, load_settings
from bot.core.counter import DAY, ClientCounts
from bot.storage.store import Store

from .support import MINIMAL, write

ADMIN = "admin@example.test"
MONDAY_8 = int(datetime(2026, 12, 7, 8, tzinfo=UTC).timestamp())  # a Monday, 08:00 UTC
WEEKLY = ReportSettings(enabled=True, weekday=0, hour=8)


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_the_weekly_report_is_due_on_its_weekday_at_its_hour_and_covers_the_week_before():
    assert latest_scheduled("weekly", WEEKLY, MONDAY_8) == MONDAY_8
    assert latest_scheduled("weekly", WEEKLY, MONDAY_8 - 1) == MONDAY_8 - 7 * DAY
    assert latest_scheduled("weekly", WEEKLY, MONDAY_8 + 6 * DAY) == MONDAY_8
    days, previous = period_days("weekly", MONDAY_8)
    assert days == [f"2026-11-{d}" for d in range(30, 31)] + [f"2026-12-0{d}" for d in range(1, 7)]
    assert previous[0] == "2026-11-23"
    assert previous[-1] == "2026-11-29"


def test_the_monthly_report_is_due_on_the_first_and_covers_the_month_before():
    monthly = ReportSettings(enabled=True, weekly=False, monthly=True, hour=6)
    assert latest_scheduled("monthly", monthly, ts("2026-12-07 12:00")) == ts("2026-12-01 06:00")
    assert latest_scheduled("monthly", monthly, ts("2027-01-01 05:59")) == ts("2026-12-01 06:00")
    days, previous = period_days("monthly", ts("2027-01-01 06:00"))
    assert (days[0], days[-1], len(days)) == ("2026-12-01", "2026-12-31", 31)
    assert (previous[0], previous[-1]) == ("2026-11-01", "2026-11-30")


def snapshot(dau: int, peak: int = 1, domain: str = "example.test") -> dict:
    return {
        domain: {
            "active": {"1d": dau, "7d": dau * 2, "30d": dau * 4},
            "new": {"1d": 1, "7d": 3, "30d": 9},
            "peak_online": peak,
        }
    }


def test_figures_of_a_week_with_a_gap_against_the_week_before():
    days = [Day(f"d{n}", snapshot(v, peak=v)) for n, v in enumerate((10, 12, 8))]
    days.insert(1, Day("gap", None))
    previous = [Day("p", snapshot(5))]
    fig = figures("weekly", days, previous)
    assert (fig.dau_average, fig.dau_min, fig.dau_max) == (10.0, 8, 12)
    assert fig.change == pytest.approx(1.0)  # 10 against 5: +100%
    assert (fig.wau, fig.mau, fig.new_users, fig.peak_online) == (16, 32, 3, 12)
    assert fig.gaps == ["gap"]
    assert fig.stickiness == pytest.approx(10 / 32)


# --- the scheduler, on the test's clock, with a real store --------------------------------------


class Edge:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.up = True

    def send_message(self, to_bare_jid: str, text: str) -> None:
        self.sent.append((to_bare_jid, text))

    def link_is_up(self) -> bool:
        return self.up


def notifier(store: Store, clock, edge: Edge, **changes) -> Notifier:
    async def days():
        return store.days()

    return Notifier(
        changes.pop("reports", WEEKLY),
        changes.pop("alerts", AlertSettings()),
        admins=frozenset({ADMIN, "other@example.test"}),
        domains=("example.test",),
        windows=(DAY, 7 * DAY, 30 * DAY),
        store=store,
        edge=edge,
        sources=Sources(
            days=days,
            client_figures=lambda: {"conversations": ClientCounts({7 * DAY: 3}, 1, 1)},
            store_health=lambda: (store.last_write_at, store.failed_writes),
            duty_restarts=dict,
        ),
        clock=clock,
    )


async def run_checks(store: Store, edge: Edge, times: list[int], **changes) -> Notifier:
    """One bot run: its notifier loads the store, then checks at each of `times`."""
    now = [times[0]]
    notes = await store.in_thread(store.notes)
    n = notifier(store, lambda: now[0], edge, **changes)
    n._load(notes)
    for moment in times:
        now[0] = moment
        await n.check()
    return n


def reports_sent(edge: Edge) -> list[str]:
    return [text.splitlines()[0] for to, text in edge.sent if to == ADMIN]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    checks=st.lists(st.integers(0, 35 * DAY), min_size=1, max_size=25),
    restarts=st.lists(st.integers(0, 35 * DAY), max_size=6),
)
def test_once_per_period_across_any_restarts(checks, restarts):
    """Whatever the moments the bot checks and restarts: a period's report is sent at most once,
    and exactly once if the bot checked at any time between it being due and the next one
    (unless it was due before the very first check: reports were not on yet)."""
    start = MONDAY_8 - 3 * DAY + 7  # a Friday: the run begins between two reports
    times = sorted(start + c for c in checks)
    cuts = sorted({start + r for r in restarts})
    edge = Edge()

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as folder:
            store = Store(Path(folder) / "activity.db")
            try:
                runs: list[list[int]] = [[]]
                for moment in times:
                    while cuts and cuts[0] <= moment:
                        cuts.pop(0)
                        runs.append([])
                    runs[-1].append(moment)
                for run in runs:
                    if run:
                        await run_checks(store, edge, run)
            finally:
                store.close()

    asyncio.run(scenario())
    sent = [text for to, text in edge.sent if to == ADMIN]
    titles = [text.splitlines()[0] for text in sent]
    assert len(titles) == len(set(titles)), titles  # never twice
    expected = []
    for week in range(6):
        due = MONDAY_8 + week * 7 * DAY
        first = times[0] - FIRST_RUN_GRACE
        if due >= first and any(due <= t < due + 7 * DAY for t in times):
            expected.append(due)
    assert len(sent) == len(expected)
    for due, text in zip(expected, sent, strict=True):
        first_day = datetime.fromtimestamp(due - 7 * DAY, UTC).strftime("%a %d %b %Y")
        assert first_day in text.splitlines()[0]


@pytest.mark.asyncio
async def test_a_report_sent_late_says_so_and_only_the_latest_period_is_sent(tmp_path):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        await run_checks(store, edge, [MONDAY_8 - DAY])  # first run: Sunday
        await run_checks(store, edge, [MONDAY_8 + 15 * DAY])  # back two weeks later
        assert len(reports_sent(edge)) == 1
        assert "(late: it was due Mon 21 Dec 08:00 UTC" in edge.sent[0][1]


@pytest.mark.asyncio
async def test_a_first_run_long_after_the_scheduled_time_waits_for_the_next_one(tmp_path):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        await run_checks(store, edge, [MONDAY_8 + 3600, MONDAY_8 + 2 * DAY])
        assert edge.sent == []
        await run_checks(store, edge, [MONDAY_8 + 7 * DAY])
        assert len(reports_sent(edge)) == 1


@pytest.mark.asyncio
async def test_no_report_while_the_link_is_down_then_it_goes_out(tmp_path):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        n = await run_checks(store, edge, [MONDAY_8 - 60])
        edge.up = False
        n.clock = lambda: MONDAY_8 + 5
        await n.check()
        assert edge.sent == []
        edge.up = True
        await n.check()
        assert len(reports_sent(edge)) == 1


@pytest.mark.asyncio
async def test_reports_off_is_kept_in_the_store_and_non_admins_are_never_answered(tmp_path):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        n = await run_checks(store, edge, [MONDAY_8 - 60])
        assert await n.chat("alice@example.test", "reports on") is None  # not an admin
        assert "alice@example.test" not in n.recipients("reports")
        assert (await n.chat(ADMIN, "Reports OFF")).startswith("You do not get")
        assert await n.chat(ADMIN, "stats") is None  # the commands answer that
        await run_checks(store, edge, [MONDAY_8 + 10])  # a restart, then the scheduled time
        assert [to for to, _ in edge.sent] == ["other@example.test"]


@pytest.mark.asyncio
async def test_report_recipients_default_to_admins_and_follow_the_config(tmp_path):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        only = ReportSettings(enabled=True, recipients=frozenset({ADMIN}))
        await run_checks(store, edge, [MONDAY_8 - 60, MONDAY_8], reports=only)
        assert [to for to, _ in edge.sent] == [ADMIN]


@pytest.mark.asyncio
async def test_a_store_that_cannot_write_the_marker_sends_nothing_yet(tmp_path):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        n = await run_checks(store, edge, [MONDAY_8 - 60])

        def refuse(name, value):
            raise OSError("read-only")

        n.store = type("S", (), {"in_thread": store.in_thread, "put_note_now": refuse})()
        n.clock = lambda: MONDAY_8
        await n.check()
        assert edge.sent == []  # at most once: no marker on disk, no report
        n.store = store
        await n.check()
        assert len(reports_sent(edge)) == 1


@pytest.mark.asyncio
async def test_an_admin_who_is_not_a_recipient_is_told_so_and_gets_nothing(tmp_path):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        only = ReportSettings(enabled=True, recipients=frozenset({ADMIN}))
        n = await run_checks(store, edge, [MONDAY_8 - 60], reports=only)
        said = await n.chat("other@example.test", "reports on")
        assert said == "You are not among the [reports] recipients in my config."
        assert n.recipients("reports") == [ADMIN]


@pytest.mark.asyncio
async def test_a_failing_check_is_logged_and_the_duty_carries_on(tmp_path, caplog):
    with Store(tmp_path / "a.db") as store:
        edge = Edge()
        n = notifier(store, lambda: MONDAY_8 - 60, edge)
        n.tick = 0.01

        async def broken():
            raise RuntimeError("no figures")

        n.sources = Sources(broken, dict, lambda: (None, 0), dict)
        n.clock = lambda: MONDAY_8 + 5  # a report is due: making it fails, again and again
        duty = asyncio.create_task(n.run_forever())
        try:
            async with asyncio.timeout(5):
                while n.checks < 5:
                    await asyncio.sleep(0.01)
            assert not duty.done()
        finally:
            duty.cancel()
        faults = [r for r in caplog.records if "a check failed" in r.getMessage()]
        assert len(faults) == 1  # logged once, not at every check
        assert edge.sent == []


# --- incidents ----------------------------------------------------------------------------------


def test_an_incident_is_said_once_when_it_has_lasted_and_once_when_over():
    incident = Incident(after=300)
    said = [incident.observe(bad, t) for bad, t in [(True, 0), (True, 299), (True, 300)]]
    said += [incident.observe(True, 900), incident.observe(False, 1000)]
    said += [incident.observe(False, 1100), incident.observe(True, 1200)]
    said += [incident.observe(False, 1300)]  # ended before it lasted: never said
    assert said == [None, None, "started", None, "over", None, None, None]


def test_store_failing_for_longer_than_set_gives_one_alert_and_one_over():
    alerts = Alerts(AlertSettings(enabled=True, store_failing_for=60))
    said = []
    said += alerts.store_health(100.0, 0, 100)
    said += alerts.store_health(100.0, 3, 110)  # failing since 110
    said += alerts.store_health(100.0, 9, 150)
    said += alerts.store_health(100.0, 20, 171)
    said += alerts.store_health(100.0, 30, 300)
    said += alerts.store_health(305.0, 30, 310)  # a write went through
    said += alerts.store_health(305.0, 30, 400)
    assert [s.split(":")[0] for s in said] == ["Alert", "Over"]


def test_link_down_longer_than_set_is_said_when_back_from_when_to_when():
    alerts = Alerts(AlertSettings(enabled=True, link_down_for=300))
    alerts.link_down(MONDAY_8)
    assert alerts.link_up(MONDAY_8 + 299) == []
    alerts.link_down(MONDAY_8)
    (said,) = alerts.link_up(MONDAY_8 + 600)
    assert "from 2026-12-07 08:00:00 UTC to 2026-12-07 08:10:00 UTC (10 min)" in said


def test_a_duty_restarting_repeatedly_is_one_alert_and_one_over():
    alerts = Alerts(AlertSettings(enabled=True, duty_restarts=3))
    said = []
    for t, count in [(0, 1), (100, 2), (200, 2), (300, 3), (400, 4), (4000, 4)]:
        said += alerts.duty_restarts({"flush": count}, t)
    assert [s.split(":")[0] for s in said] == ["Alert", "Over"]
    assert "'flush' restarted 3 times" in said[0]


def history(values_by_week: list[int], weekday_of: str = "2026-12-07") -> dict:
    """Snapshots of the same weekday, the oldest first, ending on `weekday_of`."""
    end = datetime.fromisoformat(weekday_of).date()
    weeks = len(values_by_week)
    from datetime import timedelta

    return {
        (end - timedelta(weeks=weeks - 1 - i)).isoformat(): snapshot(v)
        for i, v in enumerate(values_by_week)
    }


def test_dau_drop_fires_on_a_low_weekday_and_stays_quiet_on_a_normal_one():
    alerts = Alerts(AlertSettings(enabled=True, dau_below=0.5))
    assert alerts.dau_day("2026-12-07", history([40, 42, 38, 41, 35])) == []  # normal
    low = Alerts(AlertSettings(enabled=True, dau_below=0.5))
    (said,) = low.dau_day("2026-12-07", history([40, 42, 38, 41, 12]))
    assert "12 daily active users, below 50% of the usual 40" in said
    assert low.dau_day("2026-12-07", history([40, 42, 38, 41, 12])) == []  # that day: once
    over = history([42, 38, 41, 12, 39], "2026-12-14")
    assert low.dau_day("2026-12-14", over)[0].startswith("Over: 2026-12-14 had 39")


def test_dau_drop_needs_two_earlier_weeks_to_compare():
    alerts = Alerts(AlertSettings(enabled=True, dau_below=0.5))
    assert alerts.dau_day("2026-12-07", history([40, 1])) == []


# --- the config ---------------------------------------------------------------------------------


def test_reports_and_alerts_are_off_by_default(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert settings.reports.periods == ()
    assert not settings.alerts.enabled


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ('[reports]\nweekday = "mon"', "[reports] weekday must be a day of the week"),
        ("[reports]\nhour = 24", "[reports] hour must be an hour of the day, 0 to 23"),
        ("[reports]\ncolour = 1", "[reports] has unknown key 'colour'"),
        (
            '[reports]\nrecipients = ["alice@example.test"]',
            "[reports] recipients lists 'alice@example.test', who is not in [access] admins",
        ),
        ("[reports]\nenabled = true\nweekly = false", "weekly and monthly are both false"),
        ("[alerts]\ndau_below = 1.5", "[alerts] dau_below must be a share from 0"),
        ("[alerts]\nduty_restarts = -1", "[alerts] duty_restarts must be a whole number"),
    ],
)
def test_a_bad_reports_or_alerts_key_is_one_line(tmp_path, section, says):
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, MINIMAL + section), environ={})
    assert says in str(error.value)
    assert "\n" not in str(error.value)


def test_reports_and_alerts_sections_are_read(tmp_path):
    text = MINIMAL + (
        '[reports]\nenabled = true\nmonthly = true\nweekday = "Friday"\nhour = 18\n'
        "[alerts]\nenabled = true\nlink_down_for = 60\ndau_below = 0\n"
    )
    settings = load_settings(write(tmp_path, text), environ={})
    assert settings.reports.periods == ("weekly", "monthly")
    assert (settings.reports.weekday, settings.reports.hour) == (4, 18)
    assert settings.alerts.link_down_for == 60
    assert settings.alerts.dau_below == 0
