"""contrib/prometheus and contrib/grafana against a real Prometheus (Debian's) scraping the real
bot: the dashboard's queries answer what the bot's ad-hoc command says, the alerting rules load,
evaluate and name metrics the bot really exports. (promtool's checks of the same files are in
tests/test_contrib_prometheus.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.testbed.prometheus import PrometheusSandbox

from .support import World, seeded_world

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib" / "prometheus"
SCRAPE = CONTRIB / "scrape.yml"
ALERTS = CONTRIB / "alerts.yml"
DASHBOARDS = sorted((ROOT / "contrib" / "grafana").glob("*.json"))
JOB = "xmpp-active-users"
DOMAIN_REGEX = "example\\\\.test"  # what Grafana puts for $domain = example.test in a =~ matcher

pytestmark = pytest.mark.asyncio(loop_scope="module")


def prometheus_config(port: int) -> dict[str, Any]:
    """contrib/prometheus/scrape.yml as shipped, pointed at the bot's port, scraping and
    evaluating every second (the rules file is the shipped alerts.yml)."""
    config = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(CONTRIB / name) for name in config["rule_files"]]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    job |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    return config


@dataclass
class Scraped:
    world: World
    prometheus: PrometheusSandbox
    metrics_text: str  # the bot's /metrics, fetched over HTTP like Prometheus does


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scraped(prosody, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scraped")
    async with seeded_world(prosody, folder, metrics_listen=("127.0.0.1", 0)) as world:
        web = world.bot.bot.web
        scrapes: asyncio.Queue[int] = asyncio.Queue()
        web.observers.append(
            lambda path, status: scrapes.put_nowait(status) if path == "/metrics" else None
        )
        prometheus = PrometheusSandbox(folder / "prometheus", prometheus_config(web.port))
        await asyncio.to_thread(prometheus.start)
        try:
            # Prometheus stores a scrape before it starts the next one: after three scrapes the
            # first two are queryable (rate() needs two samples).
            for _ in range(3):
                assert await asyncio.wait_for(scrapes.get(), 30) == 200
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{web.url}/metrics") as response,
            ):
                text = await response.text()
            yield Scraped(world, prometheus, text)
        finally:
            await asyncio.to_thread(prometheus.stop)


async def query(scraped: Scraped, expr: str) -> dict[frozenset[tuple[str, str]], float]:
    """An instant query's series, by their labels (less those Prometheus adds to any target)."""
    series = await asyncio.to_thread(scraped.prometheus.query, expr)
    return {
        frozenset(
            (k, v) for k, v in s["metric"].items() if k not in ("__name__", "job", "instance")
        ): float(s["value"][1])
        for s in series
    }


# --- the Grafana dashboard --------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with $domain as Grafana fills it in) of every panel's target, in
    every dashboard of contrib/grafana."""
    assert DASHBOARDS, "no dashboard in contrib/grafana"
    queries = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for target in node.get("targets", []) if "gridPos" in node else []:
                expr = target["expr"].replace("${domain}", "$domain")
                queries.append((node["title"], expr.replace("$domain", DOMAIN_REGEX)))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for dashboard in DASHBOARDS:
        walk(json.loads(dashboard.read_text(encoding="utf-8"))["panels"])
    return queries


def one(value: float) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(): value}


def by(label: str, values: dict[str, float]) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset({(label, key)}): value for key, value in values.items()}


def expected_answers(adhoc: dict[str, str], clients: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What each of the dashboard's queries must answer, from the admin's ad-hoc answers
    (`active-users`, and `clients` by metrics label; a callable: a check of what cannot be known
    exactly, such as a rate)."""
    figure = {name: float(value) for name, value in adhoc.items() if value.isdigit()}
    dau, wau, mau = figure["dau"], figure["wau"], figure["mau"]
    domain = by("domain", {"example.test": dau / mau})
    d = DOMAIN_REGEX

    def presence_rates(answer: dict[frozenset[tuple[str, str]], float]) -> None:
        kinds = {dict(labels)["kind"] for labels in answer}
        assert {"available", "unavailable"} <= kinds, f"kinds with a rate: {kinds}"
        assert all(rate >= 0 for rate in answer.values()), answer

    def count_duration(answer: dict[frozenset[tuple[str, str]], float]) -> None:
        assert list(answer) == [frozenset()], answer
        assert 0 <= answer[frozenset()] < 1

    return {
        f'sum(xmpp_active_users{{domain=~"{d}", window="1d"}})': one(dau),
        f'sum(xmpp_active_users{{domain=~"{d}", window="7d"}})': one(wau),
        f'sum(xmpp_active_users{{domain=~"{d}", window="30d"}})': one(mau),
        f'sum(xmpp_active_users{{domain=~"{d}", window="1d"}}) / '
        f'sum(xmpp_active_users{{domain=~"{d}", window="30d"}})': one(dau / mau),
        f'sum(xmpp_online_users{{domain=~"{d}"}})': one(figure["online_users"]),
        f'sum(xmpp_online_sessions{{domain=~"{d}"}})': one(figure["online_sessions"]),
        f'sum(xmpp_known_users{{domain=~"{d}"}})': one(figure["known_users"]),
        "min(xmpp_component_connected)": one(1),
        "xmpp_component_connected": one(1),
        f'sum by (window) (xmpp_active_users{{domain=~"{d}"}})': by(
            "window", {"1d": dau, "7d": wau, "30d": mau}
        ),
        f'sum by (window) (xmpp_new_users{{domain=~"{d}"}})': by(
            "window", {w: figure[f"new_{w}"] for w in ("1d", "7d", "30d")}
        ),
        f'xmpp_stickiness_ratio{{domain=~"{d}"}}': domain,
        f'sum by (client) (xmpp_active_users_by_client{{domain=~"{d}", window="30d"}})': by(
            "client", {family: float(row["active_30d"]) for family, row in clients.items()}
        ),
        f'sum by (client) (xmpp_online_users_by_client{{domain=~"{d}"}})': by(
            "client", {family: float(row["online_users"]) for family, row in clients.items()}
        ),
        "sum by (kind) (rate(xmpp_presence_events_total[5m]))": presence_rates,
        "xmpp_count_duration_seconds": count_duration,
    }


async def test_the_seeded_figures_differ_per_window(scraped):
    # Guards the comparisons below: a panel asking the wrong window must give a wrong number.
    adhoc = scraped.world.adhoc
    assert (adhoc["dau"], adhoc["wau"], adhoc["mau"]) == ("3", "5", "6"), adhoc
    assert (adhoc["new_1d"], adhoc["new_7d"], adhoc["online_sessions"]) == ("3", "4", "3")
    assert adhoc["stickiness"] == "50%"
    rows = scraped.world.clients
    clients = {family: (row["active_7d"], row["active_30d"]) for family, row in rows.items()}
    online = {family: row["online_users"] for family, row in rows.items()}
    assert clients == {
        "conversations": ("2", "2"),  # alice, bob
        "gajim": ("2", "2"),  # alice, and week@ 3 days ago
        "chat.example.net": ("1", "1"),  # carol, gone
        "dino": ("0", "1"),  # month@, 20 days ago
    }
    assert online == {"conversations": "2", "gajim": "1", "chat.example.net": "0", "dino": "0"}


async def test_every_dashboard_query_answers_what_the_adhoc_command_says(scraped):
    expected = expected_answers(scraped.world.adhoc, scraped.world.clients)
    queries = dashboard_queries()
    assert len(queries) >= 10, queries
    for title, expr in queries:
        assert expr in expected, f"panel {title!r}: no expectation for {expr!r}; add one here"
        answer = await query(scraped, expr)
        assert answer, f"panel {title!r}: {expr!r} returned no data from a real Prometheus"
        check = expected[expr]
        if callable(check):
            check(answer)
        else:
            assert answer.keys() == check.keys(), f"panel {title!r}: {expr!r} gave {answer}"
            for labels, value in check.items():
                assert answer[labels] == pytest.approx(value), f"panel {title!r}: {expr!r}"


async def test_the_stickiness_panels_round_to_the_adhoc_percentage(scraped):
    d = DOMAIN_REGEX
    (ratio,) = (await query(scraped, f'xmpp_stickiness_ratio{{domain=~"{d}"}}')).values()
    assert f"{ratio:.0%}" == scraped.world.adhoc["stickiness"]


# --- the alerting rules -------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


async def test_every_metric_the_rules_use_is_in_the_bots_real_metrics(scraped):
    exported = {
        sample.name
        for family in text_string_to_metric_families(scraped.metrics_text)
        for sample in family.samples
    }
    used = {name for rule in alert_rules() for name in re.findall(r"\bxmpp_\w+", rule["expr"])}
    assert len(used) >= 5, used
    missing = used - exported
    assert not missing, f"alerts.yml uses {sorted(missing)}; the bot exports {sorted(exported)}"


async def test_the_rules_load_and_evaluate_in_a_real_prometheus_and_stay_quiet(scraped):
    groups = (await asyncio.to_thread(scraped.prometheus.api, "rules"))["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {rule["alert"] for rule in alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')} ({rule['health']})"
        assert rule["state"] == "inactive", f"{name} is {rule['state']} on a healthy bot"


async def test_the_disconnected_alert_sees_the_real_metric(scraped):
    # The rule's expression without its `for:`, on the live data: 0 series (connected); with
    # the comparison turned around, the bot's series (so the expression does match the metric).
    (rule,) = [r for r in alert_rules() if r["alert"] == "XmppActiveUsersDisconnected"]
    assert await query(scraped, rule["expr"]) == {}
    assert await query(scraped, rule["expr"].replace("== 0", "== 1")) == one(1)
