"""What the HTTP listener shows of the running bot: its metrics, status view and NodeInfo figures.

The routes (one entry per document) and the listener's start are here too; the pages themselves
are the web layer's (metrics.py, statuspage.py, nodeinfo.py). The disk is read in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..activity.tracker import ActivityTracker
from ..admin.history import Day, day_snapshot, last_days, utc_day
from ..config import Settings
from ..core.counter import Counts
from ..storage.shelf import store_files
from ..storage.store import Store
from ..web.connections import descriptor_budget
from ..web.metrics import ActivityCollector, MetricsPage, Snapshot
from ..web.nodeinfo import PUBLIC_PATHS, NodeInfoPages
from ..web.nodeinfo import WINDOWS as NODEINFO_WINDOWS
from ..web.server import Handler, WebServer
from ..web.statuspage import HISTORY_DAYS, Health, StatusView, status_page
from ..xmpp.component import ActiveUsersComponent, ConnectionFatal
from .day_history import DayHistory
from .duties import Duties

log = logging.getLogger("bot.daemon")  # its name from before the layers: admins grep it


class Observed:
    """The running bot as the HTTP listener shows it; `web` is the listener once started."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float],
        started_at: float,
        store: Store,
        tracker: ActivityTracker,
        component: ActiveUsersComponent,
        day_history: DayHistory,
        duties: Duties,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.started_at = started_at
        self.last_presence_at = started_at  # the last login or logout tracked
        self.store = store
        self.tracker = tracker
        self.component = component
        self.day_history = day_history
        self.duties = duties
        self.web: WebServer | None = None
        component.add_event_handler("presence_tracked", self._presence_tracked)

    def _presence_tracked(self, _change: object) -> None:
        self.last_presence_at = self.clock()

    def metrics_snapshot(self) -> Snapshot:
        started = time.perf_counter()
        now = int(self.clock())
        by_domain = self.tracker.counts_by_domain(now)
        return Snapshot(
            by_domain=by_domain,
            clients_by_domain=self.tracker.client_counts_by_domain(now),
            presence_events=dict(self.component.presence_events),
            internal_errors=self.component.errors.by_place(),
            session_pings=self.component.liveness.verdicts(),
            pings_in_flight=self.component.pinger.waiting,
            connected=self.component.connected_since is not None,
            duty_restarts=dict(self.duties.restarts),
            duties=self.duties.names(),
            last_presence_at=self.last_presence_at,
            store_last_write_at=self.store.last_write_at or self.started_at,
            store_failed_writes=self.store.failed_writes,
            http=self.web.stats() if self.web is not None else None,
            history_failures=self.day_history.failures,
            count_seconds=time.perf_counter() - started,
        )

    async def status_view(self) -> StatusView:
        """What the status page shows: the figures as the ad-hoc command gives them (after the
        changes received so far), the stored history with today live, and the bot's health.
        The disk is read in worker threads."""
        await self.tracker.caught_up()
        stored = await self.store.days_off_loop()
        store_bytes = await asyncio.to_thread(file_bytes, self.settings.store_path)
        now = self.clock()
        by_domain = self.tracker.counts_by_domain(int(now))
        days = last_days(stored, utc_day(now), HISTORY_DAYS)
        days[-1] = Day(days[-1].date, day_snapshot(by_domain, self.tracker.peaks.today()))
        return StatusView(
            service=self.settings.component_jid,
            now=now,
            by_domain=by_domain,
            clients_by_domain=self.tracker.client_counts_by_domain(int(now)),
            days=days,
            windows=self.settings.windows,
            health=Health(
                connected_since=self.component.connected_since,
                last_write_at=self.store.last_write_at,
                failed_writes=self.store.failed_writes,
                store_bytes=store_bytes,
            ),
        )

    async def nodeinfo_figures(self) -> dict[str, Counts]:
        """Each domain's figures over NodeInfo's windows, after the changes received so far."""
        await self.tracker.caught_up()
        return self.tracker.counts_by_domain(int(self.clock()), NODEINFO_WINDOWS)

    def http_routes(self) -> dict[str, Handler]:
        """The documents of the HTTP listener, by path: a new document is one more entry."""
        routes: dict[str, Handler] = {
            "/": status_page(self.status_view),
            "/metrics": MetricsPage(ActivityCollector(self.metrics_snapshot)).handle,
        }
        if self.settings.nodeinfo is not None:
            routes |= NodeInfoPages(self.settings.nodeinfo, self.nodeinfo_figures).routes()
        return routes

    async def start_web(self) -> WebServer | None:
        """Open the HTTP listener (None: turned off); its start-up lines in the log.
        Raises ConnectionFatal when it cannot listen."""
        if self.settings.metrics_listen is None:
            log_descriptor_budget(None)
            return None
        host, port = self.settings.metrics_listen
        server = WebServer(
            host, port, self.http_routes(), token=self.settings.metrics_token, public=PUBLIC_PATHS
        )
        try:
            await server.start()
        except OSError as exc:  # asyncio words it at length; the errno says it in a few words
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConnectionFatal(
                f"cannot listen for HTTP on {host}:{port} ({why}): change [metrics] "
                'listen, or set it to "" to turn the metrics and the status page off'
            ) from None
        self.web = server
        log.info(
            "Status page on %s/ and Prometheus metrics on %s/metrics%s",
            server.url,
            server.url,
            " (token required)" if self.settings.metrics_token else "",
        )
        if self.settings.nodeinfo is not None:
            log.info(
                "NodeInfo of %s on %s/.well-known/nodeinfo (public, no token)",
                ", ".join(self.settings.nodeinfo.domains),
                server.url,
            )
        log_descriptor_budget(server)
        return server


def log_descriptor_budget(web: WebServer | None) -> None:
    """One start-up line: the descriptors the process may open, and the HTTP listener's share."""
    if web is None:
        log.info("File descriptors: %d (RLIMIT_NOFILE); no HTTP listener", descriptor_budget())
        return
    limits = web.limits
    log.info(
        "File descriptors: %d (RLIMIT_NOFILE); HTTP: at most %d connections, a request's "
        "headers within %.0f s, idle keep-alive %.0f s",
        web.budget,
        limits.max_connections,
        limits.header_timeout,
        limits.idle_timeout,
    )


def file_bytes(store_path: Path) -> int | None:
    """The size of the store on disk: its file and its write-ahead log (None: unreadable)."""
    database, wal, _index = store_files(store_path)
    try:
        return database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    except OSError:
        return None
