"""contrib/: the Grafana dashboard, the systemd unit and the Prometheus scrape config, checked
against the code they depend on.

The dashboard's PromQL is compared with what the real ActivityCollector exports (scraped through
prometheus_client's own exposition and parser), the unit's command line with the real CLI, and
the paths and addresses of all three with config.example.toml.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot import __main__ as cli
from bot.config import SECRET_ENV, load_settings
from bot.counter import DAY, ActivityIndex, window_short
from bot.metrics import ActivityCollector, Snapshot
from bot.model import UserRecord
from bot.testbed.botconfig import write_config

from .support import MINIMAL, write

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "xmpp-active-users.json"
UNIT = ROOT / "contrib" / "systemd" / "xmpp-active-users.service"
SCRAPE = ROOT / "contrib" / "prometheus" / "scrape.yml"
EXAMPLE = ROOT / "config.example.toml"
PYPROJECT = ROOT / "pyproject.toml"

NOW = 1_800_000_000
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
GRAFANA_GLOBALS = re.compile(r"\$__\w+")  # $__rate_interval, $__interval...


# --- what the bot really exports ----------------------------------------------------------------


def scrape(windows: tuple[int, ...]) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values seen, from the real collector over real counts."""
    records = [
        UserRecord(NOW - 40 * DAY, NOW - 3600, NOW - 40 * DAY, ("phone",)),  # online now
        UserRecord(NOW - 5 * DAY, NOW - 3 * DAY, NOW - 3 * DAY + 60),  # active this week
        UserRecord(NOW - 90 * DAY, NOW - 20 * DAY, NOW - 20 * DAY + 60),  # active this month
    ]
    by_domain = {
        "example.org": ActivityIndex.build(records).counts(NOW, windows),
        "chat.example.org": ActivityIndex.build(records[:1]).counts(NOW, windows),
    }
    snapshot = Snapshot(
        by_domain=by_domain,
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


# --- the systemd unit ---------------------------------------------------------------------------


class _Repeatable(dict):
    """configparser's dict, keeping every line of a key given several times (systemd list
    settings such as SystemCallFilter=) joined by newlines instead of keeping the last one."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and isinstance(self.get(key), list):
            value = self[key] + value
        super().__setitem__(key, value)


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, dict_type=_Repeatable, empty_lines_in_values=False
    )
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text(encoding="utf-8"), source=str(UNIT))
    for section in ("Unit", "Service", "Install"):
        assert parser.has_section(section), f"{UNIT} has no [{section}] section"
    return parser


def service(unit: configparser.ConfigParser, key: str) -> list[str]:
    """Every value given to the [Service] key, in order ([] if absent)."""
    value = unit["Service"].get(key)
    return [] if value is None else value.split("\n")


def single(unit: configparser.ConfigParser, key: str) -> str:
    values = service(unit, key)
    assert len(values) == 1, f"[Service] {key}= should be given once, found {values}"
    return values[0].strip()


def yes(value: str) -> bool:
    return value.lower() in ("1", "yes", "true", "on")


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    return shlex.split(single(unit, "ExecStart").lstrip("-@:+!"))


def test_exec_start_is_the_installed_script(unit):
    program = PurePosixPath(exec_start(unit)[0])
    scripts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["scripts"]
    assert program.is_absolute(), f"ExecStart {program} must be an absolute path"
    assert scripts.get(program.name) == "bot.__main__:main", (
        f"ExecStart runs {program.name!r}, but pyproject.toml installs {scripts}"
    )


def test_exec_start_runs_the_bot_with_a_config_file_the_cli_accepts(unit):
    argv = exec_start(unit)[1:]
    assert argv[:1] == ["run"], f"ExecStart should run the `run` subcommand, not {argv}"
    helped = subprocess.run(
        [sys.executable, "-m", "bot", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert helped.returncode == 0, f"`python -m bot run --help` failed: {helped.stderr}"
    assert "--config FILE" in helped.stdout, f"`run --help` has no --config:\n{helped.stdout}"
    try:
        args = cli._parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the CLI rejects ExecStart's arguments {argv}")
    assert args.handler is cli._run, f"{argv} does not select the `run` command"
    config = PurePosixPath(args.config)
    config_dir = PurePosixPath("/etc") / single(unit, "ConfigurationDirectory")
    assert config.parent == config_dir, (
        f"ExecStart reads {config}, outside ConfigurationDirectory= ({config_dir})"
    )


def test_the_store_of_the_example_config_is_in_the_state_directory(unit):
    settings = load_settings(EXAMPLE, environ={}, need_secret=False)
    state_dir = Path("/var/lib") / single(unit, "StateDirectory")
    assert settings.store_path.parent == state_dir, (
        f"config.example.toml keeps the store in {settings.store_path.parent}, but the unit "
        f"may write only {state_dir} (StateDirectory=, under ProtectSystem=strict)"
    )


def test_restarts_after_a_crash_but_not_after_a_fatal_error(unit):
    assert single(unit, "Restart") == "on-failure", "Restart= should be on-failure"
    delay = re.fullmatch(r"(\d+)s?", single(unit, "RestartSec"))
    assert delay, f"RestartSec={single(unit, 'RestartSec')}: expected seconds such as 10"
    assert int(delay[1]) >= 1, "RestartSec= should be at least a second, not a tight loop"
    prevented = " ".join(service(unit, "RestartPreventExitStatus")).split()
    assert "1" in prevented, (
        f"RestartPreventExitStatus={prevented}: a wrong secret exits 1; restarts cannot fix it"
    )


def test_the_bot_exits_1_when_retrying_cannot_help(tmp_path):
    """What RestartPreventExitStatus=1 relies on. (The wrong secret, also exit 1, is tested
    against a real Prosody in test_prosody_connection_errors.py.)"""
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(
        tmp_path / "config.toml",
        component_jid="active.example.test",
        secret="s3cret",
        server_host="127.0.0.1",
        server_port=port,
        domains=["example.test"],
        admins=["admin@example.test"],
        metrics_listen="",
        store_path="data/activity.db",
    )
    env = {key: value for key, value in os.environ.items() if key != SECRET_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert "nothing accepts components" in result.stderr, result.stderr


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize(("key", "expected"), HARDENING.items())
def test_unit_is_hardened(unit, key, expected):
    assert key in unit["Service"], f"[Service] lacks {key}={expected}"
    value = single(unit, key)
    if expected == "yes":
        assert yes(value), f"[Service] {key}={value}, expected yes"
    else:
        assert value == expected, f"[Service] {key}={value!r}, expected {expected!r}"


def test_unit_runs_unprivileged_and_keeps_the_needed_sockets_only(unit):
    user = unit["Service"].get("User", "root")
    assert yes(unit["Service"].get("DynamicUser", "no")) or user not in ("root", "0"), (
        "the unit runs as root: set DynamicUser=yes or User= a dedicated account"
    )
    families = " ".join(service(unit, "RestrictAddressFamilies")).split()
    assert set(families) == {"AF_INET", "AF_INET6", "AF_UNIX"}, (
        f"RestrictAddressFamilies={families}: the bot needs TCP (XMPP, /metrics) and Unix only"
    )
    filters = [line.split() for line in service(unit, "SystemCallFilter")]
    allowed = [groups for groups in filters if not groups[0].startswith("~")]
    assert allowed, f"SystemCallFilter={filters}: no allow list (@system-service)"
    assert "@system-service" in allowed[0], (
        f"SystemCallFilter={filters}: the allow list should be @system-service"
    )


def test_systemd_accepts_the_unit(tmp_path):
    """`systemd-analyze verify` on a copy whose ExecStart points at an existing program (it
    refuses a missing one, and the script is not installed here): any warning about the unit's
    own lines (unknown key, bad value) fails. Works without systemd running as PID 1."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / UNIT.name
    text = UNIT.read_text(encoding="utf-8")
    copy.write_text(text.replace("/usr/local/bin/xmpp-active-users", sys.executable), "utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    about_the_unit = [
        line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line
    ]
    if any("sysinit.target" in line for line in about_the_unit):  # no systemd unit tree here
        pytest.skip(f"systemd-analyze verify cannot load its own units: {about_the_unit}")
    assert not about_the_unit, "systemd-analyze verify:\n" + "\n".join(about_the_unit)
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    if exposure is None:  # systemd < 250 has no --offline
        pytest.skip(f"systemd-analyze security --offline unavailable: {security.stderr.strip()}")
    assert float(exposure[1]) < 2.0, (
        f"systemd-analyze security rates the unit {exposure[1]} (want < 2, 'OK'):\n"
        + security.stdout
    )


# --- the Prometheus scrape config ---------------------------------------------------------------


def test_scrape_config_targets_the_default_metrics_address():
    config = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "xmpp-active-users" in jobs, f"no job xmpp-active-users in {sorted(jobs)}"
    job = jobs["xmpp-active-users"]
    host, port = load_settings(EXAMPLE, environ={}, need_secret=False).metrics_listen
    targets = [target for static in job["static_configs"] for target in static["targets"]]
    assert f"{host}:{port}" in targets, (
        f"targets {targets} miss {host}:{port}, config.example.toml's [metrics] listen"
    )
    assert job.get("metrics_path", "/metrics") == "/metrics", "the bot serves /metrics"

    def seconds(duration: str) -> int:
        amount, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()
        return int(amount) * SECONDS[unit]

    timeout, interval = job.get("scrape_timeout", "10s"), job.get("scrape_interval", "60s")
    assert seconds(timeout) <= seconds(interval), (
        f"scrape_timeout {timeout} > scrape_interval {interval}: Prometheus rejects the config"
    )
