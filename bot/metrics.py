"""Prometheus metrics, computed at scrape time from the live index (prometheus_client).

prometheus_client serves HTTP from its own thread; the figures are computed in the event loop's
thread (`asyncio.run_coroutine_threadsafe`), never read from the index while the loop changes it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .counter import Counts, window_short

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Snapshot:
    by_domain: Mapping[str, Counts]
    presence_events: Mapping[str, int]
    connected: bool
    count_seconds: float  # how long computing these figures took
    duty_restarts: Mapping[str, int] = field(default_factory=dict)  # background duty -> restarts


class ActivityCollector(Collector):
    """Turns a Snapshot into metric families; `take_snapshot` runs in any thread."""

    def __init__(self, take_snapshot: Callable[[], Snapshot]) -> None:
        self._take_snapshot = take_snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._take_snapshot()
        yield from _figures(snapshot.by_domain)
        yield from _bot_health(snapshot)


def _figures(by_domain: Mapping[str, Counts]) -> Iterator[Metric]:
    """The figures, per domain (and window)."""
    active = GaugeMetricFamily(
        "xmpp_active_users",
        "Distinct users online now or whose last login or logout is within the window",
        labels=["domain", "window"],
    )
    new = GaugeMetricFamily(
        "xmpp_new_users", "Users first seen within the window", labels=["domain", "window"]
    )
    stickiness = GaugeMetricFamily(
        "xmpp_stickiness_ratio", "DAU divided by MAU (0 to 1)", labels=["domain"]
    )
    online_users = GaugeMetricFamily(
        "xmpp_online_users", "Users with at least one session online", labels=["domain"]
    )
    online_sessions = GaugeMetricFamily(
        "xmpp_online_sessions", "Sessions (full JIDs) online", labels=["domain"]
    )
    known = GaugeMetricFamily(
        "xmpp_known_users",
        "Users with a stored record: seen or imported, not yet removed by retention",
        labels=["domain"],
    )
    for domain, counts in by_domain.items():
        for window, value in counts.active.items():
            active.add_metric([domain, window_short(window)], value)
        for window, value in counts.new_users.items():
            new.add_metric([domain, window_short(window)], value)
        if counts.stickiness is not None:
            stickiness.add_metric([domain], counts.stickiness)
        online_users.add_metric([domain], counts.online_users)
        online_sessions.add_metric([domain], counts.online_sessions)
        known.add_metric([domain], counts.known_users)
    yield from (active, new, stickiness, online_users, online_sessions, known)


def _bot_health(snapshot: Snapshot) -> Iterator[Metric]:
    """How the bot itself is doing."""
    events = CounterMetricFamily(
        "xmpp_presence_events", "Presence stanzas received, by kind", labels=["kind"]
    )
    for kind, value in sorted(snapshot.presence_events.items()):
        events.add_metric([kind], value)
    yield events
    yield GaugeMetricFamily(
        "xmpp_component_connected",
        "1 while the component is connected to the XMPP server",
        value=int(snapshot.connected),
    )
    restarts = CounterMetricFamily(
        "xmpp_duty_restarts",
        "Restarts of a background duty (flush, count, liveness) after it failed",
        labels=["duty"],
    )
    for duty, value in sorted(snapshot.duty_restarts.items()):
        restarts.add_metric([duty], value)
    yield restarts
    yield GaugeMetricFamily(
        "xmpp_count_duration_seconds",
        "Time taken to compute the figures of this scrape",
        value=snapshot.count_seconds,
    )


def snapshot_from_loop(
    loop: asyncio.AbstractEventLoop, take_snapshot: Callable[[], Snapshot]
) -> Callable[[], Snapshot]:
    """A snapshot function safe to call from another thread: it runs `take_snapshot` in `loop`."""

    async def in_loop() -> Snapshot:
        return take_snapshot()

    def from_any_thread() -> Snapshot:
        return asyncio.run_coroutine_threadsafe(in_loop(), loop).result(SCRAPE_TIMEOUT)

    return from_any_thread


class MetricsServer:
    """The /metrics endpoint on its own registry (so tests and several bots never collide)."""

    def __init__(self, host: str, port: int, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host, self.port = host, self._httpd.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(SCRAPE_TIMEOUT)
