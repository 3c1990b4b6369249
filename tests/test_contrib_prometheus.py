"""contrib/prometheus: the scrape config, checked against the metrics address of
config.example.toml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.config import load_settings
from bot.counter import DAY

ROOT = Path(__file__).resolve().parent.parent
SCRAPE = ROOT / "contrib" / "prometheus" / "scrape.yml"
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
