"""`xmpp-active-users run`: wires store, tracker, commands and component, and owns their lifecycle.

Start-up: open the store (refusing a second writer), load the index, close sessions a previous
crash left open, open the HTTP listener (/metrics, the status page), connect. Shutdown on
SIGTERM/SIGINT: close the listener, disconnect, flush, release the store, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from slixmpp.jid import JID

from ..activity.peaks import stored_peaks, with_peaks
from ..activity.tracker import ActivityTracker
from ..admin.commands import CommandSet, Figures
from ..admin.history import Day, day_snapshot, last_days, utc_day
from ..admin.notify import CallbackEdge, Notifier, Sources
from ..config import Settings
from ..core.counter import DAY, Counts, window_label
from ..storage.shelf import store_files
from ..storage.store import Store, flush_periodically, inactive_users
from ..web.connections import descriptor_budget
from ..web.metrics import ActivityCollector, MetricsPage, Snapshot
from ..web.nodeinfo import PUBLIC_PATHS, NodeInfoPages
from ..web.nodeinfo import WINDOWS as NODEINFO_WINDOWS
from ..web.server import Handler, WebServer
from ..web.statuspage import HISTORY_DAYS, Health, StatusView, status_page
from ..xmpp.component import ActiveUsersComponent, ConnectionFatal, Timing
from ..xmpp.liveness import LivenessSettings
from .supervisor import DEFAULT_BACKOFF, EXIT_DUTY_FAILED, Backoff, DutyFailed, supervise

EXIT_NOT_SAVED = 2  # the store could not be written at shutdown: changes were lost

log = logging.getLogger("bot.daemon")  # its name from before the layers: admins grep it


def figures_source(
    tracker: ActivityTracker,
    clock: Callable[[], float],
    windows: tuple[int, ...] | None = None,
) -> Callable[[], Figures]:
    """Fresh figures on every call (the index answers in microseconds), for `windows` (by
    default the tracker's)."""

    def figures() -> Figures:
        now = int(clock())
        return Figures(
            total=tracker.counts(now, windows), by_domain=tracker.counts_by_domain(now, windows)
        )

    return figures


async def count_periodically(
    tracker: ActivityTracker,
    settings: Settings,
    clock: Callable[[], float] = time.time,
    jitter: Callable[[float], float] = lambda upper: random.uniform(0, upper),
    after_count: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Log the figures shortly after start, then every interval plus jitter, like the seed;
    `after_count` keeps the day's history snapshot up to date."""
    await asyncio.sleep(settings.first_count_after)
    while True:
        started = time.perf_counter()
        counts = tracker.counts(int(clock()))
        took_us = (time.perf_counter() - started) * 1e6
        figures = ", ".join(f"{n} ({window_label(w)})" for w, n in counts.active.items())
        log.info(
            "Active users (took %.0f µs): %s; online: %d users, %d sessions; known: %d",
            took_us,
            figures,
            counts.online_users,
            counts.online_sessions,
            counts.known_users,
        )
        if after_count is not None:
            await after_count()
        await asyncio.sleep(settings.count_interval + jitter(settings.count_jitter))


async def retain_periodically(
    apply_retention: Callable[[], Awaitable[object]],
    settings: Settings,
    jitter: Callable[[float], float] = lambda upper: random.uniform(0, upper),
) -> None:
    """Forget the users inactive beyond `retention_days`, shortly after start, then every
    count interval: a duty of its own, so that a failing pass never stops the counts."""
    await asyncio.sleep(settings.first_count_after)
    while True:
        await apply_retention()
        await asyncio.sleep(settings.count_interval + jitter(settings.count_jitter))


async def run(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    timing: Timing | None = None,
) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await Bot(settings, clock=clock, timing=timing).serve(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


class Bot:
    """Store, tracker, commands and component, built in order (inside the running loop).

    The store is open from construction until `serve` returns (or `close`, if never served).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        timing: Timing | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.backoff = backoff
        self.duty_restarts: Counter[str] = Counter()  # duty -> restarts, for the metrics
        self.history_failures = 0  # updates of the day's snapshot that failed (see _history)
        self._history_faults: set[str] = set()  # the kinds logged, each once
        self.store = Store(settings.store_path, pseudonym_key=settings.pseudonym_key, clock=clock)
        self.started_at = clock()
        self.last_presence_at = self.started_at  # the last login or logout tracked
        self.web: WebServer | None = None
        try:
            self.tracker = ActivityTracker(
                self.store,
                settings.domains,
                exclude=settings.exclude,
                windows=settings.windows,
                # NodeInfo's 180 days: the index keeps them (its figures and the ad-hoc answer)
                extra_windows=NODEINFO_WINDOWS if settings.nodeinfo else (),
                read_in_threads=True,  # offline users' records are read off the event loop
            )
            self._loaded_heartbeat = self.store.heartbeat
            self._load()
            now = int(clock())
            # The snapshots of the days whose peaks may still rise (see record_today): as stored,
            # from yesterday on (the clock may step back a day, or have been ahead before), then
            # every one this run writes. No other writer runs meanwhile.
            since = utc_day(now - DAY)
            self._days: dict[str, dict[str, Any]] = {
                day: snapshot for day, snapshot in self.store.days().items() if day >= since
            }
            self.tracker.peaks.start(now, stored_peaks(self._days.get(utc_day(now))))
            self.notifier = self._notifier()
            self.component = self._component(timing)
            self.component.add_event_handler("presence_tracked", self._presence_tracked)
            if self.notifier.enabled:  # the admins' reports and alerts (notify.py)
                self.component.add_event_handler("session_start", self._link_up)
                self.component.add_event_handler("disconnected", self._link_down)
                self.component.add_event_handler(
                    "privileges_checked", self.notifier.privileges_checked
                )
        except BaseException:
            self.store.close()  # never connected: the heartbeat stays what it was
            raise

    def heartbeat_clock(self) -> float:
        """The time the store's heartbeat records: the last time the bot knew who was online
        (not during an outage: sessions left open must end when the connection dropped)."""
        return self.component.sessions_known_until(int(self.clock()), self._loaded_heartbeat)

    def _notifier(self) -> Notifier:
        settings = self.settings
        return Notifier(
            settings.reports,
            settings.alerts,
            admins=settings.admins,
            domains=settings.domains,
            windows=settings.windows,
            store=self.store,
            edge=CallbackEdge(self._send_chat, lambda: self.component.connected_since is not None),
            sources=Sources(
                days=self.store.days_off_loop,
                client_figures=lambda: self.tracker.client_counts(int(self.clock())),
                store_health=lambda: (self.store.last_write_at, self.store.failed_writes),
                duty_restarts=lambda: self.duty_restarts,
            ),
            clock=self.clock,
        )

    def _send_chat(self, to_bare_jid: str, text: str) -> None:
        """A chat message to a bare JID: the server keeps it for an admin who is offline."""
        component = self.component
        component.send_message(
            mto=JID(to_bare_jid), mbody=text, mtype="chat", mfrom=component.boundjid.bare
        )

    def _link_up(self, _event: object) -> None:
        self.notifier.link_up()

    def _link_down(self, _event: object) -> None:
        self.notifier.link_down()

    def _presence_tracked(self, _change: object) -> None:
        self.last_presence_at = self.clock()

    def _duties(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The background duties, each supervised (see `supervisor`)."""
        settings, component = self.settings, self.component
        duties: dict[str, Callable[[], Awaitable[None]]] = {
            "flush": lambda: flush_periodically(
                self.store,
                settings.flush_interval,
                self.heartbeat_clock,
                before_flush=lambda: self._history(self.record_peak_if_risen),
            ),
            "count": lambda: count_periodically(
                self.tracker, settings, self.clock, after_count=self.after_count
            ),
            # Every session's pings, or (liveness off) those of sessions that said unavailable
            # but still answered.
            "liveness": component.liveness.run_forever,
        }
        backoffs = {name: self.backoff for name in duties}
        if settings.retention_days:
            duties["retention"] = lambda: retain_periodically(self.apply_retention, settings)
            # The bot runs on without retention (it only keeps data longer): retried with a
            # backoff up to the count interval, never a reason to exit.
            backoffs["retention"] = dataclasses.replace(
                self.backoff,
                max_delay=max(self.backoff.first_delay, settings.count_interval),
                max_failures=None,
            )
        if self.notifier.enabled:
            duties["notify"] = self.notifier.run_forever
            # Reports and alerts are extras: the counting bot never exits for them.
            backoffs["notify"] = dataclasses.replace(self.backoff, max_failures=None)
        return {
            name: supervise(name, duty, self.duty_restarts, backoffs[name])
            for name, duty in duties.items()
        }

    def _component(self, timing: Timing | None) -> ActiveUsersComponent:
        settings = self.settings
        commands = CommandSet(
            admins=settings.admins,
            figures=figures_source(self.tracker, self.clock, self.answered_windows()),
            history=self.history,
            windows=settings.windows,
            client_figures=lambda: self.tracker.client_counts(int(self.clock())),
            notices=self.notifier if self.notifier.enabled else None,
        )
        return ActiveUsersComponent(
            jid=settings.component_jid,
            secret=settings.secret,
            secret_source=settings.secret_source,
            host=settings.server_host,
            port=settings.server_port,
            tracker=self.tracker,
            commands=commands,
            clock=self.clock,
            timing=timing,
            liveness=LivenessSettings(
                interval=settings.liveness_interval,
                timeout=settings.liveness_timeout,
                max_rate=settings.liveness_max_rate,
            ),
            announces_sessions=settings.announces_sessions,
            loaded_sessions_alive_until=self.store.heartbeat,
        )

    def _load(self) -> None:
        started = time.perf_counter()
        # Sessions left open by the last run: a server that re-announces who is online gets
        # them closed now (it will say who is still there); otherwise pings decide, later.
        # With pseudonymize, the store has no address to ping: those sessions are closed too.
        keep_sessions = (
            not self.settings.announces_sessions
            and self.settings.liveness_interval > 0
            and self.settings.pseudonym_key is None
        )
        report = self.tracker.load(int(self.clock()), close_stale_sessions=not keep_sessions)
        log.info(
            "Loaded %d users of %s from %s in %.2f s",
            report.users,
            ", ".join(self.settings.domains),
            self.settings.store_path,
            time.perf_counter() - started,
        )
        if self.settings.exclude:
            log.info(
                "Exclusions (%s) hide %d stored users; they are neither counted nor updated",
                ", ".join(self.settings.exclude),
                report.hidden,
            )
        if report.recovered_sessions:
            log.info(
                "%d sessions left open by the last stop were closed at its last sign of life (%s)",
                report.recovered_sessions,
                time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.closed_at)),
            )

    def record_today(self) -> None:
        """Rewrite today's history snapshot with the current figures (UTC days), and give the
        days that ended since the last call the peak of users online that happened on them.
        A day the clock stepped back into keeps the higher of its two peaks. Reads nothing
        from the store: the snapshots are the ones this run holds."""
        now = int(self.clock())
        peaks = self.tracker.peaks
        peaks.take_rose()  # written now
        peaks.roll(now, back=True)  # `now` is the clock's: it may step back into a day
        for day_number, final in peaks.ended().items():
            self._record_final_peaks(utc_day(day_number * DAY), final)
            peaks.written(day_number)
        today = utc_day(now)
        by_domain = self.tracker.counts_by_domain(now)
        snapshot = day_snapshot(by_domain, peaks.today(stored=self._days.get(today)))
        self.store.put_day(today, snapshot)
        self._days[today] = snapshot  # one per day of this run: a step back may reach it

    def _history(self, update: Callable[[], None]) -> None:
        """Run an update of the day's history snapshot. Its fault costs the snapshot (the day's
        peak), never the records: it is counted for /metrics, logged once per kind, and the
        flush, the count or the shutdown that called it goes on."""
        try:
            update()
        except Exception as exc:
            self.history_failures += 1
            kind = f"{type(exc).__name__}: {exc}"
            if kind not in self._history_faults and len(self._history_faults) < 100:
                self._history_faults.add(kind)
                log.exception(
                    "Updating the day's history snapshot failed (logged once); the records are "
                    "written regardless"
                )

    def record_peak_if_risen(self) -> None:
        """Before each flush: today's snapshot again if its peak rose (or a day began), so
        that the peak is on disk as soon as the records that made it."""
        if self.tracker.peaks.take_rose():
            self.record_today()

    def _record_final_peaks(self, day: str, peaks: dict[str, int]) -> None:
        held = self._days.get(day)
        if held is None:
            return  # no count that day: its figures are unknown, it stays a gap
        snapshot = with_peaks(held, peaks)  # a copy: the held one may be in a batch being written
        self.store.put_day(day, snapshot)
        self._days[day] = snapshot

    async def after_count(self) -> None:
        """The hourly housekeeping: the figures in the admins' contact lists, today's history
        snapshot. (Retention is a duty of its own.)"""
        self.component.refresh_contacts()
        self._history(self.record_today)

    async def apply_retention(self) -> int:
        days = self.settings.retention_days
        if not days:
            return 0
        active_since = int(self.clock()) - days * 86_400
        candidates = await asyncio.to_thread(
            inactive_users, self.settings.store_path, active_since
        )  # the scan reads the file on another connection; the loop only forgets
        forgotten = await self.tracker.forget_inactive_soon(candidates, active_since)
        if forgotten:
            log.info("Retention: forgot %d users inactive for over %d days", forgotten, days)
        return forgotten

    async def history(self, days: int) -> list[Day]:
        """The last `days` days: the store's scan runs in a worker thread."""
        return last_days(await self.store.days_off_loop(), utc_day(self.clock()), days)

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
            duty_restarts=dict(self.duty_restarts),
            duties=self.duty_names(),
            last_presence_at=self.last_presence_at,
            store_last_write_at=self.store.last_write_at or self.started_at,
            store_failed_writes=self.store.failed_writes,
            http=self.web.stats() if self.web is not None else None,
            history_failures=self.history_failures,
            count_seconds=time.perf_counter() - started,
        )

    def duty_names(self) -> tuple[str, ...]:
        retention = ("retention",) if self.settings.retention_days else ()
        notify = ("notify",) if self.notifier.enabled else ()
        return ("flush", "count", "liveness", *retention, *notify)

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

    def answered_windows(self) -> tuple[int, ...]:
        """The windows of the admins' answer: the configured ones, and with NodeInfo on, the
        windows it publishes (so that the admin reads there what the network reads)."""
        if self.settings.nodeinfo is None:
            return self.settings.windows
        return tuple(sorted({*self.settings.windows, *NODEINFO_WINDOWS}))

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

    async def _start_web(self) -> WebServer | None:
        if self.settings.metrics_listen is None:
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
        return server

    async def serve(self, stop: asyncio.Event) -> int:
        """Stay connected until `stop` is set; then disconnect, write and close the store.

        Returns the exit status: 0 after `stop`; 1 when retrying cannot help; 70 when a duty
        kept failing; 2 when the last changes could not be written (the log says what is lost).
        """
        web: WebServer | None = None
        status = 1
        try:
            try:
                web = self.web = await self._start_web()
            except ConnectionFatal as exc:
                log.error("%s", exc)
                return status
            log_descriptor_budget(web)
            status = await _serve_until_stopped(self.component, self._duties(), stop)
        finally:
            if web is not None:
                await web.close()
            budget = self.component.timing.shutdown_write_budget
            if waiting := await self.tracker.until_applied(budget):
                log.error(
                    "Stopped before reading the records of %d changes: they are lost", waiting
                )
            self._history(self.record_today)  # its fault must not keep the records from disk
            saved = await self._close_store()
        return status if saved else (status or EXIT_NOT_SAVED)

    async def _close_store(self) -> bool:
        """Write what is pending, retrying for a while (a disk may have filled up), then close.
        False: some changes could not be written; they are lost, and the log says so."""
        budget = self.component.timing.shutdown_write_budget
        deadline = asyncio.get_running_loop().time() + budget
        store, problem = self.store, ""
        while True:
            try:
                await store.flush_off_loop(int(self.heartbeat_clock()), heartbeat_interval=0)
                break
            except Exception as exc:  # StoreError, or a bug: either way, retry, then say so
                problem = str(exc)
                if asyncio.get_running_loop().time() >= deadline:
                    break
                log.warning("Writing the store at shutdown failed (%s); retrying", problem)
                await asyncio.sleep(min(1.0, budget / 10))
        lost = store.discard_pending()
        # All written: the index is the store's, and its snapshot spares the next start a scan.
        then = None if lost else self.tracker.snapshot_writer(int(self.clock()))
        with contextlib.suppress(Exception):  # nothing pending: at most the heartbeat is lost
            await asyncio.to_thread(store.close, then=then)  # its checkpoint writes, the snapshot
        if lost:
            log.error(
                "Stopped without writing the changes of %d users: %s. They are lost: the "
                "figures will miss those logins and logouts",
                lost,
                problem,
            )
            return False
        log.info("Store flushed and closed: %s", self.settings.store_path)
        return True


async def _serve_until_stopped(
    component: ActiveUsersComponent,
    duties: dict[str, Coroutine[Any, Any, None]],
    stop: asyncio.Event,
) -> int:
    """Serve until `stop` is set (0), retrying cannot help (1), or a duty keeps failing (70)."""
    serving = asyncio.create_task(component.serve(), name="xmpp")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    helpers = [asyncio.create_task(duty, name=name) for name, duty in duties.items()]
    try:
        await asyncio.wait([serving, stopping, *helpers], return_when=asyncio.FIRST_COMPLETED)
        for helper in helpers:
            if helper.done() and isinstance(helper.exception(), DutyFailed):
                log.error("%s", helper.exception())
                return EXIT_DUTY_FAILED
        if serving.done():
            error = serving.exception()
            if isinstance(error, ConnectionFatal):
                log.error("%s", error)
                return 1
            if error is not None:
                raise error
        log.info("Stopping")
        return 0
    finally:
        tasks = (stopping, serving, *helpers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # outcomes were handled above
        component.cancel_background()
        if component.is_connected():
            component.leave_contacts()  # admins' clients show the bot offline, not old figures
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(component.disconnect(wait=1), 3)


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
