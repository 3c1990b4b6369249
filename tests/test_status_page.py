"""The status page's HTML (bot/web/statuspage.py, bot/web/status_charts.py), read with
html.parser, and how the bot serves it: from memory and worker threads, never waiting on the disk
in its event loop. (What a real browser shows of it: tests/test_status_page_browser.py.)
"""

from __future__ import annotations

import threading
from collections import defaultdict
from html.parser import HTMLParser
from typing import Any

import aiohttp
import pytest

from bot.admin.history import last_days
from bot.app import observed
from bot.app.daemon import Bot
from bot.core.counter import DAY, Counts
from bot.core.model import UserRecord
from bot.storage.store import Store
from bot.web.server import WebServer
from bot.web.status_view import Health, StatusView
from bot.web.statuspage import render

from .support import bot_settings

NOW = 1_800_000_000  # 2027-01-15 08:00 UTC
TODAY = "2027-01-15"
WINDOWS = (DAY, 7 * DAY, 30 * DAY)


class Page(HTMLParser):
    """What the tests read: figures, each series' point tooltips and path, gaps, and tags."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, str]] = defaultdict(dict)  # domain -> figure -> text
        self.points: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.paths: dict[str, dict[str, str]] = defaultdict(dict)
        self.gaps: dict[str, int] = defaultdict(int)
        self.health: dict[str, str] = {}
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self._domain = self._figure = self._series = self._health = None
        self._in_value = self._in_title = False
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if "data-domain" in a:
            self._domain = a["data-domain"]
        if "data-figure" in a:
            self._figure = a["data-figure"]
        if tag == "span" and a.get("class") == "value":
            self._in_value, self._text = True, []
        if "data-series" in a:
            self._series = a["data-series"]
        if tag == "path" and self._series:
            self.paths[self._domain][self._series] = a["d"]
        if tag == "title" and self._series:
            self._in_title, self._text = True, []
        if tag == "rect" and a.get("class") == "gap":
            self.gaps[self._domain] += 1
        if "data-health" in a:
            self._health, self._text = a["data-health"], []

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._in_value:
            self.figures[self._domain][self._figure] = "".join(self._text)
            self._in_value = False
        if tag == "title" and self._in_title:
            self.points[self._domain][self._series].append("".join(self._text))
            self._in_title = False
        if tag == "g":
            self._series = None
        if tag == "dd" and self._health:
            self.health[self._health] = "".join(self._text)
            self._health = None

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def counts(dau: int, wau: int, mau: int, *, online: int = 1, new: int = 1) -> Counts:
    return Counts(
        computed_at=NOW,
        active={DAY: dau, 7 * DAY: wau, 30 * DAY: mau},
        online_users=online,
        online_sessions=online + 1,
        known_users=mau + 10,
        new_users={DAY: new, 7 * DAY: 2 * new, 30 * DAY: 3 * new},
    )


def snapshot(dau: int, new: int = 0) -> dict[str, Any]:
    return {
        "active": {"1d": dau, "7d": dau * 2, "30d": dau * 4},
        "new": {"1d": new},
        "peak_online": 1,
    }


def view(by_domain, stored: dict[str, Any], **health: Any) -> StatusView:
    days = last_days(stored, TODAY, 90)
    return StatusView(
        service="active.example.org",
        now=NOW,
        by_domain=by_domain,
        days=days,
        windows=WINDOWS,
        health=Health(
            **(
                {"connected_since": NOW - 3700, "last_write_at": NOW - 1, "failed_writes": 0}
                | {"store_bytes": 1_234_567}
                | health
            )
        ),
    )


def test_figures_per_domain_with_thousands_separators():
    page = Page(
        render(view({"a.example": counts(1234, 2345, 34567), "b.example": counts(0, 0, 0)}, {}))
    )
    assert page.figures["a.example"] == {
        "active_1d": "1,234",
        "active_7d": "2,345",
        "active_30d": "34,567",
        "new_1d": "1",
        "new_7d": "2",
        "new_30d": "3",
        "stickiness": "4%",
        "online_users": "1",
        "online_sessions": "2",
        "known_users": "34,577",
    }
    assert "stickiness" not in page.figures["b.example"]  # no MAU: no ratio, not 0%
    assert page.figures["b.example"]["active_1d"] == "0"


def test_a_day_without_a_snapshot_is_a_gap_and_lines_break_there():
    stored = {
        "2027-01-10": {"a.example": snapshot(5, 1)},
        "2027-01-11": {"a.example": snapshot(7, 2)},
        "2027-01-13": {"a.example": snapshot(0, 0)},  # a real zero: a point at zero
        "2027-01-14": {"b.example": snapshot(9)},  # a snapshot without a.example: a gap for it
    }  # and today, the 15th, has none in this view (the bot puts today's live figures there)
    page = Page(render(view({"a.example": counts(3, 8, 20)}, stored)))
    points = page.points["a.example"]
    assert points["active_1d"] == ["DAU 2027-01-10: 5", "DAU 2027-01-11: 7", "DAU 2027-01-13: 0"]
    assert points["active_30d"] == ["MAU 2027-01-10: 20", "MAU 2027-01-11: 28", "MAU 2027-01-13: 0"]
    assert points["new_1d"] == [
        "New users, 24 hours 2027-01-10: 1",
        "New users, 24 hours 2027-01-11: 2",
        "New users, 24 hours 2027-01-13: 0",
    ]
    for series, path in page.paths["a.example"].items():
        # One stroke from the 10th to the 11th, a lone point on the 13th: never across a gap.
        assert (path.count("M"), path.count("L")) == (2, 1), f"{series}: {path}"
    # Per chart, the runs of days without data: up to the 9th, the 12th, the 14th and 15th.
    assert page.gaps["a.example"] == 2 * 3


def test_a_window_missing_from_a_days_snapshot_has_no_point_that_day():
    stored = {"2027-01-14": {"a.example": {"active": {"1d": 5}, "new": {}, "peak_online": 0}}}
    page = Page(render(view({"a.example": counts(3, 8, 20)}, stored)))
    assert page.points["a.example"]["active_1d"] == ["DAU 2027-01-14: 5"]
    assert page.points["a.example"]["active_7d"] == []
    assert page.points["a.example"]["new_1d"] == []


def test_no_history_at_all_is_one_gap_per_chart():
    page = Page(render(view({"a.example": counts(0, 0, 0)}, {})))
    assert all(points == [] for points in page.points["a.example"].values())
    assert page.paths["a.example"] == {}
    assert page.gaps["a.example"] == 2


def test_the_page_is_self_contained_and_escapes_what_it_shows():
    html = render(view({"<script>alert(1)</script>": counts(1, 1, 1)}, {}))
    page = Page(html)
    assert not page.tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert page.urls == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<meta name="viewport" content="width=device-width,initial-scale=1">' in html
    assert '<meta http-equiv="refresh" content="300">' in html  # a wall display, without script


@pytest.mark.parametrize(
    ("health", "shown"),
    [
        (
            {},
            {
                "connected": "connected since 2027-01-15 06:58:20 UTC (1 h 1 min)",
                "last_write": "2027-01-15 07:59:59 UTC (1 s ago)",
                "store_size": "1.2 MB",
            },
        ),
        (
            {
                "connected_since": None,
                "last_write_at": None,
                "failed_writes": 3,
                "store_bytes": 999,
            },
            {
                "connected": "not connected (reconnecting)",
                "last_write": "none yet 3 failed writes",
                "store_size": "999 bytes",
            },
        ),
        ({"store_bytes": None}, {"store_size": "unknown"}),
        ({"store_bytes": 3_400_000_000}, {"store_size": "3.4 GB"}),
    ],
    ids=["healthy", "disconnected, writes failing", "size unknown", "large"],
)
def test_health(health, shown):
    page = Page(render(view({"a.example": counts(1, 1, 1)}, {}, **health)))
    assert {key: page.health[key] for key in shown} == shown


# --- served by the bot: no disk on the event loop ----------------------------------------------


class FakeServer:
    """Settings for a Bot that is never connected."""

    component_jid = "active.example.test"
    component_secret = "s"
    component_port = 5347
    domain = "example.test"


@pytest.mark.asyncio
async def test_the_page_and_the_metrics_are_served_without_disk_io_on_the_loop(
    tmp_path, monkeypatch
):
    path = tmp_path / "a.db"
    with Store(path) as store:
        store.put("alice@example.test", UserRecord(NOW - 10 * DAY, NOW - 3 * DAY, NOW - 3 * DAY))
        store.put_day("2027-01-14", {"example.test": snapshot(4, 1)})
        store.flush(NOW)
    bot = Bot(bot_settings(FakeServer, path), clock=lambda: NOW)
    loop_thread = threading.get_ident()
    sqlite_threads: list[int] = []
    real_execute = bot.store._db._cx.execute

    class Noting:  # the store's connection, noting the thread of each call
        def __getattr__(self, name: str) -> Any:
            return getattr(real_cx, name)

        def execute(self, *args: Any) -> Any:
            sqlite_threads.append(threading.get_ident())
            return real_execute(*args)

    real_cx = bot.store._db._cx
    bot.store._db._cx = Noting()
    size_threads: list[int] = []
    real_file_bytes = observed.file_bytes

    def noting_file_bytes(store_path):
        size_threads.append(threading.get_ident())
        return real_file_bytes(store_path)

    monkeypatch.setattr(observed, "file_bytes", noting_file_bytes)
    server = WebServer("127.0.0.1", 0, bot.http_routes())
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/") as response:
                assert response.status == 200
                page = Page(await response.text())
            async with http.get(f"{server.url}/metrics") as response:
                assert response.status == 200
                assert 'xmpp_active_users{domain="example.test",window="7d"} 1.0' in (
                    await response.text()
                )
    finally:
        await server.close()
        bot.store._db._cx = real_cx
        bot.store.close(NOW)
    assert page.figures["example.test"]["active_7d"] == "1"
    assert page.points["example.test"]["active_1d"] == ["DAU 2027-01-14: 4", f"DAU {TODAY}: 0"]
    assert sqlite_threads, "the page did not read the store's history at all"
    assert loop_thread not in sqlite_threads, "SQLite on the event loop"
    assert size_threads, "the page did not read the store's size"
    assert loop_thread not in size_threads, "the store's size read on the event loop"
