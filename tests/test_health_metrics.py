"""The metrics the alerting rules need (contrib/prometheus/alerts.yml) follow what really happens:
the last login or logout tracked, the store's last successful write and its failed writes, every
duty's restarts from 0. Read from the real /metrics document of a real Bot (never connected)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app.daemon import Bot
from bot.storage.pending import Batch
from bot.storage.store import StoreError
from bot.web.server import WebServer

from .support import T0, bot_settings

pytestmark = pytest.mark.asyncio


class FakeServer:
    """Settings for a Bot that is never connected."""

    component_jid = "active.example.test"
    component_secret = "s"
    component_port = 5347
    domain = "example.test"


async def scrape(server: WebServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_health_metrics_follow_presences_and_the_stores_writes(tmp_path):
    clock = [float(T0)]
    bot = Bot(bot_settings(FakeServer, tmp_path / "a.db"), clock=lambda: clock[0])
    component = bot.component
    tracked: asyncio.Queue[Any] = asyncio.Queue()
    component.add_event_handler("presence_tracked", tracked.put_nowait)
    server = WebServer("127.0.0.1", 0, bot.http_routes())
    await server.start()
    try:
        metrics = await scrape(server)
        assert metrics[("xmpp_last_presence_timestamp_seconds", ())] == T0  # the start
        assert metrics[("xmpp_store_last_write_timestamp_seconds", ())] == T0  # its opening
        assert metrics[("xmpp_store_write_failures_total", ())] == 0
        assert metrics[("xmpp_duty_restarts_total", (("duty", "count"),))] == 0
        assert metrics[("xmpp_duty_restarts_total", (("duty", "flush"),))] == 0
        for verdict in ("alive", "gone", "cannot tell"):  # from 0, for rate() and alerts
            assert metrics[("xmpp_session_pings_total", (("verdict", verdict),))] == 0
        assert metrics[("xmpp_pings_in_flight", ())] == 0

        clock[0] = T0 + 60
        component.presence.on_presence(component.make_presence(pfrom="alice@example.test/phone"))
        await asyncio.wait_for(tracked.get(), 5)
        clock[0] = T0 + 90
        real_write = bot.store.write_batch

        def disk_full(batch: Batch) -> None:
            raise StoreError("disk full")

        bot.store.write_batch = disk_full  # type: ignore[method-assign]
        for _ in range(2):
            with pytest.raises(StoreError):
                await bot.store.flush_off_loop(int(clock[0]))
        metrics = await scrape(server)
        assert metrics[("xmpp_last_presence_timestamp_seconds", ())] == T0 + 60
        assert metrics[("xmpp_store_last_write_timestamp_seconds", ())] == T0  # none since
        assert metrics[("xmpp_store_write_failures_total", ())] == 2

        bot.store.write_batch = real_write  # type: ignore[method-assign]
        clock[0] = T0 + 120
        assert await bot.store.flush_off_loop(int(clock[0])) == 1  # alice's record, kept
        metrics = await scrape(server)
        assert metrics[("xmpp_store_last_write_timestamp_seconds", ())] == T0 + 120
        assert metrics[("xmpp_store_write_failures_total", ())] == 2  # a counter: never back
    finally:
        await server.close()
        bot.store.close(int(clock[0]))
