"""contrib/grafana: the dashboard, checked against the code it depends on.

Its PromQL is compared with what the real ActivityCollector exports (scraped through
prometheus_client's own exposition and parser), its windows with those of config.example.toml and
of the default, and its rate() ranges with the scrape interval of contrib/prometheus/scrape.yml.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.config import load_settings
from bot.core.counter import DAY, ActivityIndex, window_short
from bot.core.model import UserRecord
from bot.web.metrics import ActivityCollector, Snapshot

from .support import MINIMAL, write

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "xmpp-active-users.json"
SCRAPE = ROOT / "contrib" / "prometheus" / "scrape.yml"
EXAMPLE = ROOT / "config.example.toml"

NOW = 1_800_000_000
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
GRAFANA_GLOBALS = re.compile(r"\$__\w+")  # $__rate_interval, $__interval...


# --- what the bot really exports ----------------------------------------------------------------


def scrape(windows: tuple[int, ...]) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values seen, from the real collector over real counts."""
    records = [
        UserRecord(  # online now, with Conversations
            NOW - 40 * DAY,
            NOW - 3600,
            NOW - 40 * DAY,
            ("phone",),
            ("conversations", NOW - 3600),
            ("conversations",),
        ),
        UserRecord(NOW - 5 * DAY, NOW - 3 * DAY, NOW - 3 * DAY + 60),  # active this week
        UserRecord(NOW - 90 * DAY, NOW - 20 * DAY, NOW - 20 * DAY + 60),  # active this month
    ]
    indexes = {
        "example.org": ActivityIndex.build(records),
        "chat.example.org": ActivityIndex.build(records[:1]),
    }
    snapshot = Snapshot(
        by_domain={domain: index.counts(NOW, windows) for domain, index in indexes.items()},
        clients_by_domain={
            domain: index.client_counts(NOW, windows) for domain, index in indexes.items()
        },
        presence_events={"available": 5, "unavailable": 3},
        connected=True,
        count_seconds=0.001,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ActivityCollector(lambda: snapshot))
    exported: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = exported[sample.name]  # created even for a sample without labels
            for label, value in sample.labels.items():
                labels[label].add(value)
    return exported


def example_windows() -> tuple[int, ...]:
    return load_settings(EXAMPLE, environ={}, need_secret=False).windows


@pytest.fixture(scope="module")
def exported() -> dict[str, dict[str, set[str]]]:
    return scrape(example_windows())


def test_the_scrape_has_every_family_the_dashboard_is_built_for(exported):
    # Guards the checks below against an empty or partial scrape passing them vacuously.
    assert set(exported) >= {
        "xmpp_active_users",
        "xmpp_new_users",
        "xmpp_stickiness_ratio",
        "xmpp_online_users",
        "xmpp_online_sessions",
        "xmpp_known_users",
        "xmpp_active_users_by_client",
        "xmpp_online_users_by_client",
        "xmpp_presence_events_total",
        "xmpp_component_connected",
        "xmpp_count_duration_seconds",
    }, f"the collector exported only {sorted(exported)}"


# --- the Grafana dashboard ----------------------------------------------------------------------


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in the document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    try:
        return json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        pytest.fail(f"{DASHBOARD} is not valid JSON: {exc}")


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels, including those nested in rows."""
    return [node for node in walk(dashboard["panels"]) if "type" in node and "gridPos" in node]


def targets_of(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel."""
    return [
        (panel.get("title", "?"), target)
        for panel in panels_of(dashboard)
        for target in panel.get("targets", [])
    ]


def exprs_of(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(title, target["expr"]) for title, target in targets_of(dashboard) if "expr" in target]
    assert found, f"{DASHBOARD}: no panel has a PromQL expr"
    return found


SELECTOR = re.compile(r"\b(xmpp_[a-z_]+)\b(?:\s*\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
AGGREGATION = re.compile(r"\b(?:sum|min|max|avg|count|topk|bottomk|quantile)\b\s*(?:by|without|\()")
RANGE = re.compile(r"\[(\d+)([smhd])\]")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": DAY}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, operator, value)...]) for each xmpp_ selector of the expression."""
    return [(name, MATCHER.findall(body or "")) for name, body in SELECTOR.findall(expr)]


def test_dashboard_is_a_grafana_dashboard(dashboard):
    assert dashboard.get("title"), "the dashboard has no title"
    assert dashboard.get("uid"), "the dashboard has no uid (links to it would break on re-import)"
    assert 36 <= dashboard.get("schemaVersion", 0) <= 41, (
        f"schemaVersion {dashboard.get('schemaVersion')}: expected a Grafana 10/11 dashboard (~39)"
    )
    panels = panels_of(dashboard)
    ids = [panel.get("id") for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(map(str, ids))}"
    for panel in panels:
        assert panel.get("title"), f"panel {panel.get('id')} has no title"
        assert panel.get("description"), f"panel {panel['title']!r} has no description"


def test_dashboard_panels_do_not_overlap(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in panels_of(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], (
                    f"panels {other!r} and {panel['title']!r} overlap at x={x}, y={y}"
                )


def test_every_query_uses_a_defined_prometheus_datasource(dashboard):
    variables = {var["name"]: var for var in dashboard.get("templating", {}).get("list", [])}
    inputs = {item["name"] for item in dashboard.get("__inputs", [])}
    users = [(panel["title"], panel) for panel in panels_of(dashboard)] + targets_of(dashboard)
    users += [(f"variable {name}", var) for name, var in variables.items() if "datasource" in var]
    for title, user in users:
        datasource = user.get("datasource")
        assert isinstance(datasource, dict), f"{title!r}: no datasource (or a legacy string one)"
        assert datasource.get("type") == "prometheus", f"{title!r}: datasource {datasource}"
        uid = datasource.get("uid", "")
        name = uid.removeprefix("${").removesuffix("}").removeprefix("$")
        defined = name in inputs or variables.get(name, {}).get("type") == "datasource"
        assert defined, f"{title!r}: datasource uid {uid!r} is neither an input nor a variable"


def test_every_variable_used_in_a_query_is_defined(dashboard):
    variables = {var["name"] for var in dashboard["templating"]["list"]}
    for title, expr in exprs_of(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", GRAFANA_GLOBALS.sub("", expr)))
        assert used <= variables, f"{title!r}: {expr!r} uses undefined {sorted(used - variables)}"


def test_domain_variable_lists_the_exported_domain_label(dashboard, exported):
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert "domain" in variables, "no `domain` template variable"
    query = variables["domain"]["query"]
    query = query["query"] if isinstance(query, dict) else query
    match = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)\s*", query)
    assert match, f"the domain variable's query {query!r} is not label_values(metric, label)"
    metric, label = match.groups()
    assert metric in exported, f"the domain variable reads {metric}, which is not exported"
    assert label == "domain", f"the domain variable lists the label {label!r}, not domain"
    assert label in exported[metric], f"{metric} has no {label} label"


def test_every_metric_in_the_dashboard_is_exported(dashboard, exported):
    for title, expr in exprs_of(dashboard):
        used = {name for name, _ in selectors(expr)}
        assert used, f"{title!r}: {expr!r} uses no xmpp_ metric"
        missing = used - set(exported)
        assert not missing, (
            f"{title!r}: {expr!r} uses {sorted(missing)}, which the bot does not export "
            f"(it exports {sorted(exported)}; counters end in _total)"
        )


def test_every_label_matched_exists_on_its_metric(dashboard, exported):
    for title, expr in exprs_of(dashboard):
        for name, matchers in selectors(expr):
            labels = set(exported.get(name, {})) | TARGET_LABELS
            for label, _, _ in matchers:
                assert label in labels, (
                    f"{title!r}: {expr!r} matches {name} on label {label!r}, but {name} has "
                    f"only {sorted(labels)}"
                )


def test_every_label_grouped_or_shown_in_a_legend_exists(dashboard, exported):
    for title, target in targets_of(dashboard):
        expr = target["expr"]
        available = TARGET_LABELS.union(*(exported[name] for name, _ in selectors(expr)))
        grouped = {
            label.strip() for group in GROUPING.findall(expr) for label in group.split(",")
        } - {""}
        assert grouped <= available, (
            f"{title!r}: {expr!r} groups by {sorted(grouped - available)}, which its metrics lack"
        )
        # After an aggregation only the grouping labels are left for the legend.
        left = grouped if AGGREGATION.search(expr) else available
        shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert shown <= left, (
            f"{title!r}: legend {target['legendFormat']!r} shows {sorted(shown - left)}, "
            f"which {expr!r} does not return"
        )


@pytest.mark.parametrize("config", ["config.example.toml", "a config without windows"])
def test_window_values_in_the_dashboard_are_produced_by_the_default_windows(
    dashboard, config, tmp_path
):
    if config == "config.example.toml":
        windows = example_windows()
    else:
        assert "windows" not in MINIMAL, "MINIMAL should leave the windows to their default"
        windows = load_settings(write(tmp_path, MINIMAL), environ={}).windows
    produced = scrape(windows)["xmpp_active_users"]["window"]
    assert produced == {window_short(window) for window in windows}
    used = set()
    for title, expr in exprs_of(dashboard):
        for name, matchers in selectors(expr):
            for label, operator, value in matchers:
                if label != "window":
                    continue
                assert operator in ("=", "=~"), f"{title!r}: window{operator} in {expr!r}"
                values = set(value.split("|")) if operator == "=~" else {value}
                assert values <= produced, (
                    f"{title!r}: {expr!r} asks {name} for window {sorted(values - produced)}, "
                    f"but {config} yields only {sorted(produced)}"
                )
                used |= values
    assert {"1d", "7d", "30d"} <= used, f"DAU, WAU or MAU has no panel: windows used {used}"


@pytest.mark.parametrize(
    "metric",
    [
        "xmpp_active_users",
        "xmpp_new_users",
        "xmpp_stickiness_ratio",
        "xmpp_online_users",
        "xmpp_online_sessions",
        "xmpp_active_users_by_client",
        "xmpp_online_users_by_client",
        "xmpp_presence_events_total",
        "xmpp_component_connected",
        "xmpp_count_duration_seconds",
    ],
)
def test_dashboard_has_a_panel_for(dashboard, metric):
    titles = [title for title, expr in exprs_of(dashboard) if metric in dict(selectors(expr))]
    assert titles, f"no panel queries {metric}"


def test_presence_events_are_shown_as_a_rate_of_the_counter(dashboard):
    exprs = [expr for _, expr in exprs_of(dashboard) if "xmpp_presence_events" in expr]
    assert exprs, "no panel shows the presence events"
    for expr in exprs:
        assert re.search(r"\b(?:rate|irate|increase)\(\s*xmpp_presence_events_total\s*\[", expr), (
            f"{expr!r}: a counter only ever grows; show its rate"
        )


def test_rate_windows_cover_at_least_two_scrapes(dashboard):
    scrape_config = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    interval = scrape_config["scrape_configs"][0].get("scrape_interval", "60s")
    amount, unit = re.fullmatch(r"(\d+)([smhd])", interval).groups()
    interval_seconds = int(amount) * SECONDS[unit]
    ranges = [(expr, match) for _, expr in exprs_of(dashboard) for match in RANGE.findall(expr)]
    assert ranges, "no range vector (rate over [5m]) in the dashboard"
    for expr, (amount, unit) in ranges:
        assert int(amount) * SECONDS[unit] >= 2 * interval_seconds, (
            f"{expr!r}: a range shorter than two scrapes ({interval}) makes rate() return nothing"
        )


def test_stickiness_panels_are_in_percent(dashboard):
    panels = [
        panel
        for panel in panels_of(dashboard)
        if "stickiness" in panel["title"].lower()
        or any("xmpp_stickiness_ratio" in t.get("expr", "") for t in panel.get("targets", []))
    ]
    assert panels, "no stickiness panel"
    for panel in panels:
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit == "percentunit", (
            f"{panel['title']!r}: unit {unit!r}; the ratio is 0..1, so use percentunit"
        )


def test_component_connected_stat_is_red_when_down_and_green_when_up(dashboard):
    stats = [
        panel
        for panel in panels_of(dashboard)
        if panel["type"] == "stat"
        and any("xmpp_component_connected" in t.get("expr", "") for t in panel["targets"])
    ]
    assert stats, "no stat panel for xmpp_component_connected"
    for panel in stats:
        colors = {}
        for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
            if mapping.get("type") == "value":
                colors |= {value: o.get("color") for value, o in mapping["options"].items()}
        assert colors.get("0") == "red", f"{panel['title']!r}: 0 (disconnected) is {colors}"
        assert colors.get("1") == "green", f"{panel['title']!r}: 1 (connected) is {colors}"
