"""contrib/prometheus: the scrape config, checked against the metrics address of
config.example.toml, and by promtool (Debian's, the real one) with the alerting rules and their unit
tests. A real Prometheus runs them in tests/test_prometheus_real.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.config import load_settings
from bot.core.counter import DAY
from bot.testbed.prometheus import promtool

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib" / "prometheus"
SCRAPE = CONTRIB / "scrape.yml"
ALERTS = CONTRIB / "alerts.yml"
EXAMPLE = ROOT / "config.example.toml"

SECONDS = {"s": 1, "m": 60, "h": 3600, "d": DAY}


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


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_cover_what_an_admin_must_hear_about():
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {
        "XmppActiveUsersDown",
        "XmppActiveUsersDisconnected",
        "XmppActiveUsersNoPresence",
        "XmppActiveUsersStoreWritesFailing",
        "XmppActiveUsersDutyRestarting",
        "XmppActiveUsersInternalErrors",
    }


def test_promtool_accepts_the_shipped_config_and_its_rules():
    result = promtool("check", "config", SCRAPE.name, cwd=CONTRIB)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout + result.stderr


def test_the_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", "alerts.test.yml", cwd=CONTRIB)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
