"""The Prometheus endpoint of a bot running against a real Prosody serves its figures."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.asyncio


async def test_metrics_endpoint_serves_the_figures(start_bot, clients):
    bot = await start_bot(metrics_listen=("127.0.0.1", 0))  # a free port; the bot says which
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    await clients.login("alice@example.test/laptop")
    await bot.expect("available", "alice@example.test/laptop")
    metrics = bot.bot.web
    url = f"http://127.0.0.1:{metrics.port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    domain = (("domain", "example.test"),)
    assert samples[("xmpp_active_users", (*domain, ("window", "1d")))] == 1
    assert samples[("xmpp_active_users", (*domain, ("window", "30d")))] == 1
    assert samples[("xmpp_new_users", (*domain, ("window", "7d")))] == 1
    assert samples[("xmpp_online_users", domain)] == 1
    assert samples[("xmpp_online_sessions", domain)] == 2
    assert samples[("xmpp_known_users", domain)] == 1
    assert samples[("xmpp_stickiness_ratio", domain)] == 1.0
    assert samples[("xmpp_presence_events_total", (("kind", "available"),))] >= 2
    assert samples[("xmpp_component_connected", ())] == 1
    assert samples[("xmpp_count_duration_seconds", ())] < 1
