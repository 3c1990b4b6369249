"""The status page at /, as a real headless Chromium (Debian's) shows it, served by the real bot
with a history: the figures equal the admin's ad-hoc answer, the charts have one point per day
with data and gaps elsewhere, it fits a phone, and it needs nothing but its one document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from bot.admin.history import utc_day
from bot.core.counter import DAY
from bot.testbed.chromium import Chromium
from bot.testbed.clients import connect_client, disconnect_client
from bot.web.status_view import HISTORY_DAYS

from .support import HISTORY_DAYS_BACK, USERS, World, history_figures, seeded_world

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The figures the page shows (data-figure) and the ad-hoc command's fields that must match them.
ADHOC_FIELD = {
    "active_1d": "dau",
    "active_7d": "wau",
    "active_30d": "mau",
    "new_1d": "new_1d",
    "new_7d": "new_7d",
    "new_30d": "new_30d",
    "stickiness": "stickiness",
    "online_users": "online_users",
    "online_sessions": "online_sessions",
    "known_users": "known_users",
}
SHOWN_FIGURES = """Object.fromEntries([...document.querySelectorAll('[data-figure]')].map(
    e => [e.dataset.figure, e.querySelector('.value').innerText]))"""
# Per series of the (only) domain: the tooltip of each point, and the line's path.
CHART_SERIES = """Object.fromEntries([...document.querySelectorAll('g[data-series]')].map(
    g => [g.dataset.series, {
        points: [...g.querySelectorAll('circle')].map(c => c.querySelector('title').textContent),
        path: g.querySelector('path') ? g.querySelector('path').getAttribute('d') : ''}]))"""


@dataclass
class Browsed:
    world: World
    browser: Chromium
    url: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browsed(prosody, tmp_path_factory):
    folder = tmp_path_factory.mktemp("browsed")
    async with (
        seeded_world(prosody, folder, metrics_listen=("127.0.0.1", 0)) as world,
        Chromium() as browser,
    ):
        yield Browsed(world, browser, f"{world.bot.bot.web.url}/")


async def open_page(browsed: Browsed, width: int = 1000, height: int = 900, mobile: bool = False):
    tab = await browsed.browser.new_page(width, height, mobile=mobile)
    assert await tab.goto(browsed.url) == 200
    return tab


async def test_the_page_shows_the_figures_of_the_adhoc_command(browsed):
    shown = await (await open_page(browsed)).evaluate(SHOWN_FIGURES)
    assert set(shown) == set(ADHOC_FIELD), shown
    adhoc = browsed.world.adhoc
    assert (adhoc["dau"], adhoc["wau"], adhoc["mau"]) == ("3", "5", "6")  # all different
    for figure, field in ADHOC_FIELD.items():
        assert shown[figure].replace(",", "") == adhoc[field], f"{figure}: {shown[figure]!r}"


async def test_the_charts_have_one_point_per_day_with_data_and_gaps_elsewhere(browsed):
    series = await (await open_page(browsed)).evaluate(CHART_SERIES)
    assert set(series) == {"active_1d", "active_7d", "active_30d", "new_1d"}
    now = browsed.world.bot.bot.clock()
    today = utc_day(now)
    days_with_data = [utc_day(now - back * DAY) for back in HISTORY_DAYS_BACK] + [today]
    adhoc = browsed.world.adhoc
    for key, chart in series.items():
        part, window = key.split("_")
        points = [re.fullmatch(r".* (\d{4}-\d\d-\d\d): ([\d,]+)", t) for t in chart["points"]]
        assert all(points), chart["points"]
        days = [point.group(1) for point in points]
        assert days == days_with_data, f"{key}: points on {days}"
        values = [int(point.group(2).replace(",", "")) for point in points]
        seeded = [history_figures(back)[part][window] for back in HISTORY_DAYS_BACK]
        field = {"1d": "dau", "7d": "wau", "30d": "mau"}[window] if part == "active" else key
        assert values == [*seeded, int(adhoc[field])], f"{key}: {values}"
        # A line never crosses a gap: one stroke per run of consecutive days (30 | 6 5 | 2 1 0).
        assert chart["path"].count("M") == 3, f"{key}: {chart['path']}"


async def test_days_without_data_are_shaded_not_drawn_as_zeros(browsed):
    tab = await open_page(browsed)
    gaps = await tab.evaluate("document.querySelectorAll('svg rect.gap').length")
    # Per chart, the runs of days without a snapshot: 89..31, 29..7, 4..3 days back.
    assert gaps == 2 * 3
    legend = await tab.evaluate("document.querySelector('.legend').innerText")
    assert "no data: the bot was not running" in legend
    assert HISTORY_DAYS == 90


async def test_the_health_section_says_since_when_connected_and_written(browsed):
    tab = await open_page(browsed)
    health = await tab.evaluate(
        "Object.fromEntries([...document.querySelectorAll('[data-health]')].map("
        "e => [e.dataset.health, e.innerText]))"
    )
    bot = browsed.world.bot.bot
    since = datetime.fromtimestamp(bot.component.connected_since, UTC)
    assert health["connected"].startswith("connected since " + since.strftime("%Y-%m-%d %H:%M:%S"))
    written = re.match(
        r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \((\d+) s ago\)", health["last_write"]
    )
    assert written, health["last_write"]
    at = datetime.strptime(written.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs(at.timestamp() - bot.clock()) < 5  # the bot writes at least every 30 s
    assert re.fullmatch(r"[\d.,]+ (bytes|kB|MB)", health["store_size"]), health["store_size"]


async def test_the_page_fits_a_phone_screen(browsed):
    tab = await open_page(browsed, 360, 740, mobile=True)
    layout = await tab.evaluate(
        """({page: document.documentElement.scrollWidth, screen: window.innerWidth,
            charts: [...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect().right),
            axis: Math.min(...[...document.querySelectorAll('svg text')].map(
                t => t.getBoundingClientRect().height)),
            figure: parseFloat(getComputedStyle(document.querySelector('.value')).fontSize)})"""
    )
    assert layout["page"] <= layout["screen"] == 360, layout  # no sideways scrolling
    assert max(layout["charts"]) <= 360, layout
    assert layout["axis"] >= 9, layout  # axis labels still readable, in CSS pixels
    assert layout["figure"] >= 20, layout


async def test_the_page_is_one_document_without_script(browsed):
    tab = await open_page(browsed)
    loaded = await tab.evaluate(
        """({scripts: document.scripts.length,
            resources: performance.getEntriesByType('resource').map(r => r.name),
            external: [...document.querySelectorAll('[src],[href],link,iframe,img,object')]
                .map(e => e.outerHTML)})"""
    )
    assert loaded == {"scripts": 0, "resources": [], "external": []}


async def test_the_page_follows_a_login_without_a_reload_of_the_bot(browsed, prosody):
    # The figures are live: a new session shows on the next load of the page.
    tab = await open_page(browsed)
    before = await tab.evaluate(SHOWN_FIGURES)
    client = await connect_client(prosody, "carol@example.test", USERS["carol"], "tablet")
    try:
        await browsed.world.bot.expect("available", "carol@example.test/tablet")
        assert await tab.goto(browsed.url) == 200
        after = await tab.evaluate(SHOWN_FIGURES)
        assert int(after["online_users"]) == int(before["online_users"]) + 1
        assert int(after["online_sessions"]) == int(before["online_sessions"]) + 1
    finally:
        await disconnect_client(client)
        await browsed.world.bot.expect("unavailable", "carol@example.test/tablet")
