"""Daily snapshots: recorded per UTC day, gaps stay gaps, rendered as a chart, a table and CSV."""

from __future__ import annotations

import subprocess
import sys
import time

from bot.admin.forms import table_rows
from bot.admin.history import (
    GAP,
    chart_lines,
    chat_chart,
    day_snapshot,
    history_csv,
    history_form,
    last_days,
    sparkline,
    utc_day,
)
from bot.core.counter import DEFAULT_WINDOWS, ActivityIndex
from bot.core.model import UserRecord
from bot.storage.store import Store

from .support import MINIMAL, write

NOW = 1_800_000_000  # 2027-01-15


def snapshot(online: int, offline_ages: list[int]) -> dict:
    records = [UserRecord(NOW - 100, NOW - age, 0) for age in offline_ages]
    records += [UserRecord(NOW, NOW, 0, ("r",))] * online
    return day_snapshot({"example.test": ActivityIndex.build(records).counts(NOW)}, {})


def test_days_without_a_snapshot_are_gaps_not_zeros():
    stored = {"2027-01-13": snapshot(1, [3600]), "2027-01-15": snapshot(0, [60])}
    days = last_days(stored, "2027-01-15", 4)
    assert [d.date for d in days] == ["2027-01-12", "2027-01-13", "2027-01-14", "2027-01-15"]
    assert [d.total("active", "1d") for d in days] == [None, 2, None, 1]
    assert sparkline(d.total("active", "1d") for d in days) == f"{GAP}█{GAP}▄"


def test_a_window_a_day_did_not_count_is_a_gap_not_a_zero():
    """A window added to the config later: the days before it have no figure for it."""
    (day,) = last_days({"2027-01-15": snapshot(1, [])}, "2027-01-15", 1)
    assert (day.total("active", "1d"), day.total("active", "365d")) == (1, None)
    assert sparkline([None, None]) == GAP * 2


def test_table_has_a_row_per_day_and_empty_cells_on_gap_days():
    days = last_days({"2027-01-15": snapshot(2, [])}, "2027-01-15", 2)
    form = history_form(days, DEFAULT_WINDOWS)
    assert form.get_reported() == {}  # no <reported>: Gajim 1.7 cannot show it (forms.py)
    shown = [
        (field["label"], field["value"])
        for field in form.get_fields().values()
        if field["type"] != "hidden"
    ]
    assert shown == [
        ("2027-01-14", "no figures: the bot was not running"),
        ("2027-01-15", "2 / 2 / 2 · new 2 / 2 / 2 · peak 2"),
    ]
    rows = table_rows(form)
    assert list(rows) == ["2027-01-14", "2027-01-15"]
    assert list(rows["2027-01-15"]) == [
        "active_1d", "active_7d", "active_30d", "new_1d", "new_7d", "new_30d", "peak_online",
    ]  # fmt: skip
    assert set(rows["2027-01-14"].values()) == {""}
    today = rows["2027-01-15"]
    assert (today["active_30d"], today["new_1d"], today["peak_online"]) == ("2", "2", "2")


def test_chat_chart_is_a_preformatted_block_the_command_line_prints_bare():
    days = last_days({"2027-01-15": snapshot(2, [])}, "2027-01-15", 2)
    lines = chart_lines(days, DEFAULT_WINDOWS)
    assert lines[1:] == [
        f"   24 hours  {GAP}█  (now 2, max 2)",
        f"     7 days  {GAP}█  (now 2, max 2)",
        f"    30 days  {GAP}█  (now 2, max 2)",
        f"peak online  {GAP}█  (max 2)",
    ]
    assert chat_chart(days, DEFAULT_WINDOWS).splitlines() == [lines[0], "```", *lines[1:], "```"]


def test_csv_has_one_row_per_day_and_domain():
    stored = {"2027-01-15": {**snapshot(1, []), "b.test": snapshot(0, [10])["example.test"]}}
    text = history_csv(last_days(stored, "2027-01-15", 2), (86_400,), ["example.test", "b.test"])
    assert text.splitlines() == [
        "date,domain,active_1d,new_1d,peak_online",
        "2027-01-14,example.test,,,",
        "2027-01-14,b.test,,,",
        "2027-01-15,example.test,1,1,1",
        "2027-01-15,b.test,1,1,0",
    ]


def test_snapshots_persist_in_the_store(tmp_path):
    with Store(tmp_path / "a.db") as store:
        store.put_day("2027-01-15", snapshot(1, []))
        store.flush(NOW)
    with Store(tmp_path / "a.db", readonly=True) as store:
        assert store.days() == {"2027-01-15": snapshot(1, [])}


def test_history_command_prints_csv_from_the_store(tmp_path):
    config = write(tmp_path, MINIMAL)
    today = utc_day(time.time())
    with Store(tmp_path / "data" / "activity.db") as store:
        store.put_day(today, snapshot(3, []))
    result = subprocess.run(
        [sys.executable, "-m", "bot", "history", "-c", str(config), "--csv", "--days", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("date,domain,active_1d")
    assert lines[2].startswith(f"{today},example.test,3,3,3,")
    assert lines[1].endswith(",,,,,,,")  # yesterday: a gap


class FakeServer:
    component_jid = "active.example.test"
    component_secret = "s"
    component_port = 5347
    domain = "example.test"


def test_the_peak_between_the_last_count_of_a_day_and_midnight_is_that_days(tmp_path):
    """Counts at 23:10 and 00:30: the peak of 23:40 belongs to the day that ended, and the new
    day's peak starts from who was online at midnight."""
    from bot.app.daemon import Bot

    from .support import bot_settings

    midnight = 1_800_057_600  # 2027-01-16T00:00:00Z
    assert utc_day(midnight) == "2027-01-16"
    clock = [midnight - 50 * 60]
    bot = Bot(bot_settings(FakeServer, tmp_path / "a.db"), clock=lambda: clock[0])
    try:
        tracker = bot.tracker
        for n in range(3):
            tracker.session_started(f"u{n}@example.test", "r", clock[0])
        bot.record_today()  # the count of 23:10: 3 online
        for n in range(3, 5):
            tracker.session_started(f"u{n}@example.test", "r", midnight - 20 * 60)  # 23:40: 5
        for n in range(3):
            tracker.session_ended(f"u{n}@example.test", "r", midnight - 10 * 60)  # 23:50: 2
        tracker.session_started("u5@example.test", "r", midnight + 10 * 60)  # 00:10: 3
        clock[0] = midnight + 30 * 60
        bot.record_today()  # the first count of the new day
        days = bot.store.days()
    finally:
        bot.store.close(clock[0])
    assert days["2027-01-15"]["example.test"]["peak_online"] == 5
    assert days["2027-01-16"]["example.test"]["peak_online"] == 3


def test_a_restart_never_lowers_the_peak_already_stored_for_today(tmp_path):
    from bot.app.daemon import Bot

    from .support import bot_settings

    now = [NOW]
    settings = bot_settings(FakeServer, tmp_path / "a.db")
    bot = Bot(settings, clock=lambda: now[0])
    try:
        for n in range(4):
            bot.tracker.session_started(f"u{n}@example.test", "r", NOW)
        bot.record_today()  # peak 4 stored for today
    finally:
        bot.store.close(NOW)  # a stop: the sessions end at the next start
    now[0] = NOW + 60
    bot = Bot(settings, clock=lambda: now[0])
    try:
        bot.record_today()  # nobody online after the restart
        days = bot.store.days()
    finally:
        bot.store.close(now[0])
    assert days[utc_day(NOW)]["example.test"]["peak_online"] == 4


def test_an_ended_days_peak_whose_write_failed_is_written_at_the_next_count(tmp_path, monkeypatch):
    """The first count of a new day fails to write yesterday's final peak: the peak is not lost
    with it (reading the ended days no longer empties them); the next count writes it."""
    from bot.app.daemon import Bot

    from .support import bot_settings

    midnight = 1_800_057_600  # 2027-01-16T00:00:00Z
    clock = [midnight - 50 * 60]
    bot = Bot(bot_settings(FakeServer, tmp_path / "a.db"), clock=lambda: clock[0])
    try:
        tracker = bot.tracker
        tracker.session_started("u0@example.test", "r", clock[0])
        bot.record_today()  # the count of 23:10: 1 online
        for n in range(1, 4):
            tracker.session_started(f"u{n}@example.test", "r", midnight - 20 * 60)  # 23:40: 4
        for n in range(1, 4):
            tracker.session_ended(f"u{n}@example.test", "r", midnight - 10 * 60)  # 23:50: 1
        clock[0] = midnight + 30 * 60
        real_put_day = bot.store.put_day

        def full_disk(day: str, snapshot: dict) -> None:
            raise OSError("No space left on device")

        monkeypatch.setattr(bot.store, "put_day", full_disk)
        bot.day_history.guarded(bot.record_today)  # the first count of the new day: its write fails
        assert bot.history_failures == 1
        monkeypatch.setattr(bot.store, "put_day", real_put_day)
        bot.record_today()  # the next count
        days = bot.store.days()
    finally:
        bot.store.close(clock[0])
    assert days["2027-01-15"]["example.test"]["peak_online"] == 4
