"""Prometheus metrics, computed at scrape time from the live index (prometheus_client).

The collector runs in the event loop, inside the HTTP handler of /metrics (`MetricsPage`): the
figures are read while nothing else changes the index, and the index answers in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..core.counter import ClientCounts, Counts, window_short
from .connections import HttpStats


@dataclass(frozen=True)
class Snapshot:
    by_domain: Mapping[str, Counts]
    presence_events: Mapping[str, int]
    connected: bool
    count_seconds: float  # how long computing these figures took
    duty_restarts: Mapping[str, int] = field(default_factory=dict)  # background duty -> restarts
    duties: tuple[str, ...] = ()  # every duty, exported with 0 restarts until it has some
    last_presence_at: float | None = None  # the last login or logout tracked (Unix time)
    store_last_write_at: float | None = None  # the last successful write of the store
    store_failed_writes: int = 0
    # domain -> client family -> figures; the families are bounded (client_families.Families)
    clients_by_domain: Mapping[str, Mapping[str, ClientCounts]] = field(default_factory=dict)
    http: HttpStats | None = None  # the HTTP listener's connections and refusals
    history_failures: int = 0  # updates of the day's history snapshot (its peak) that failed
    # place in the XMPP edge -> faults of ours there (bot/xmpp/internal_errors.py); bounded places
    internal_errors: Mapping[str, int] = field(default_factory=dict)
    # Session pings (liveness.py): verdict ("alive", "gone", "cannot tell") -> pings, and the
    # pings waiting for their answer now.
    session_pings: Mapping[str, int] = field(default_factory=dict)
    pings_in_flight: int = 0


class ActivityCollector(Collector):
    """Turns a Snapshot into metric families."""

    def __init__(self, take_snapshot: Callable[[], Snapshot]) -> None:
        self._take_snapshot = take_snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._take_snapshot()
        yield from _figures(snapshot.by_domain)
        yield from _client_figures(snapshot.clients_by_domain)
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


def _client_figures(by_domain: Mapping[str, Mapping[str, ClientCounts]]) -> Iterator[Metric]:
    """Per domain and client family (a bounded set of labels: see client_families.py)."""
    active = GaugeMetricFamily(
        "xmpp_active_users_by_client",
        "Distinct users online now with this client, or whose last login or logout with it is "
        "within the window (a user on two clients counts for each)",
        labels=["domain", "client", "window"],
    )
    online = GaugeMetricFamily(
        "xmpp_online_users_by_client",
        "Users with at least one session of this client online",
        labels=["domain", "client"],
    )
    for domain, clients in by_domain.items():
        for client, counts in sorted(clients.items()):
            for window, value in counts.active.items():
                active.add_metric([domain, client, window_short(window)], value)
            online.add_metric([domain, client], counts.online_users)
    yield from (active, online)


def _bot_health(snapshot: Snapshot) -> Iterator[Metric]:
    """How the bot itself is doing (contrib/prometheus/alerts.yml alerts on these)."""
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
    if snapshot.last_presence_at is not None:
        yield GaugeMetricFamily(
            "xmpp_last_presence_timestamp_seconds",
            "Unix time of the last login or logout tracked (the bot's start until the first)",
            value=snapshot.last_presence_at,
        )
    restarts = {duty: 0 for duty in snapshot.duties} | dict(snapshot.duty_restarts)
    yield _counter_by(
        "xmpp_duty_restarts",
        "Restarts of a background duty (flush, count, liveness) after it failed",
        "duty",
        restarts,
    )
    yield _counter_by(
        "xmpp_internal_errors",
        "Faults of the bot's own in the XMPP edge, by place (the log has the traceback)",
        "where",
        snapshot.internal_errors,
    )
    yield _counter_by(
        "xmpp_session_pings",
        "Pings of sessions believed online, by verdict (gone: the session was closed)",
        "verdict",
        snapshot.session_pings,
    )
    yield GaugeMetricFamily(
        "xmpp_pings_in_flight",
        "Pings of sessions sent and not answered yet (bounded per user and in total)",
        value=snapshot.pings_in_flight,
    )
    if snapshot.store_last_write_at is not None:
        yield GaugeMetricFamily(
            "xmpp_store_last_write_timestamp_seconds",
            "Unix time of the last successful write of the store (its opening, until the first)",
            value=snapshot.store_last_write_at,
        )
    yield CounterMetricFamily(
        "xmpp_store_write_failures",
        "Writes of the store that failed (disk full, read-only); their records are retried",
        value=snapshot.store_failed_writes,
    )
    yield CounterMetricFamily(
        "xmpp_history_write_failures",
        "Updates of the day's history snapshot (its figures and peak) that failed; the records "
        "are written regardless",
        value=snapshot.history_failures,
    )
    if snapshot.http is not None:
        yield from _http_health(snapshot.http)
    yield GaugeMetricFamily(
        "xmpp_count_duration_seconds",
        "Time taken to compute the figures of this scrape",
        value=snapshot.count_seconds,
    )


def _http_health(http: HttpStats) -> Iterator[Metric]:
    """What strangers at the HTTP port cost: connections held, dropped, malformed requests."""
    yield GaugeMetricFamily(
        "xmpp_http_connections", "HTTP connections open now", value=http.open_connections
    )
    yield GaugeMetricFamily(
        "xmpp_http_connections_max",
        "HTTP connections allowed at once (from the descriptor budget, RLIMIT_NOFILE)",
        value=http.max_connections,
    )
    dropped = CounterMetricFamily(
        "xmpp_http_connections_dropped",
        "HTTP connections closed by the bot: cap_full (none idle to make room), evicted (an "
        "idle one closed for a newcomer), header_timeout (no complete request in time)",
        labels=["reason"],
    )
    for reason in sorted({"cap_full", "evicted", "header_timeout", *http.dropped}):
        dropped.add_metric([reason], http.dropped.get(reason, 0))
    yield dropped
    errors = CounterMetricFamily(
        "xmpp_http_client_errors",
        "HTTP requests that failed on the client's side (malformed, disconnected), not logged",
        labels=["kind"],
    )
    for kind in sorted({"malformed", "disconnected", *http.client_errors}):
        errors.add_metric([kind], http.client_errors.get(kind, 0))
    yield errors
    yield CounterMetricFamily(
        "xmpp_http_accept_failures",
        "Connections the listener could not accept (no file descriptor left)",
        value=http.accept_failures,
    )


class MetricsPage:
    """The /metrics document over its own registry (so that tests and several bots in one
    process never collide), in the format the scraper asks for; `handle` is the handler."""

    def __init__(self, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    async def handle(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})


def _counter_by(name: str, help_text: str, label: str, values: Mapping[str, int]) -> Metric:
    """A counter with one label, a sample per value, in the label's order."""
    family = CounterMetricFamily(name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family
