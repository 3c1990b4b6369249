"""`xmpp-active-users run`: wires store, tracker, commands and component, and owns their lifecycle.

Start-up: open the store (refusing a second writer), load the index, close sessions a previous
crash left open, open the HTTP listener (/metrics, the status page), connect. Shutdown on
SIGTERM/SIGINT: close the listener, disconnect, flush, release the store, exit 0. The parts it
wires: the duties (duties.py), the day's history (day_history.py), the admins' notices
(notices.py), what the HTTP listener shows (observed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from ..activity.tracker import ActivityTracker
from ..admin.commands import CommandSet, Figures
from ..admin.history import Day
from ..config import Settings
from ..storage.store import Store
from ..web.metrics import Snapshot
from ..web.nodeinfo import WINDOWS as NODEINFO_WINDOWS
from ..web.server import Handler, WebServer
from ..web.statuspage import StatusView
from ..xmpp.component import ActiveUsersComponent, ConnectionFatal, Timing
from ..xmpp.liveness import LivenessSettings
from . import notices
from .day_history import DayHistory
from .duties import Duties
from .observed import Observed
from .supervisor import DEFAULT_BACKOFF, EXIT_DUTY_FAILED, Backoff, DutyFailed

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
        self.duty_restarts: Counter[str] = Counter()  # duty -> restarts, for the metrics
        self.store = Store(settings.store_path, pseudonym_key=settings.pseudonym_key, clock=clock)
        started_at = clock()
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
            self.day_history = DayHistory(self.store, self.tracker, clock)
            self.notifier = notices.notifier(
                settings,
                store=self.store,
                tracker=self.tracker,
                duty_restarts=self.duty_restarts,
                component=lambda: self.component,
                clock=clock,
            )
            self.component = self._component(timing)
            notices.listen(self.notifier, self.component)  # the admins' reports and alerts
            self.duties = Duties(
                settings,
                backoff=backoff,
                restarts=self.duty_restarts,
                clock=clock,
                store=self.store,
                tracker=self.tracker,
                component=self.component,
                notifier=self.notifier,
                day_history=self.day_history,
                heartbeat_clock=self.heartbeat_clock,
            )
            self.observed = Observed(
                settings,
                clock=clock,
                started_at=started_at,
                store=self.store,
                tracker=self.tracker,
                component=self.component,
                day_history=self.day_history,
                duties=self.duties,
            )
        except BaseException:
            self.store.close()  # never connected: the heartbeat stays what it was
            raise

    def heartbeat_clock(self) -> float:
        """The time the store's heartbeat records: the last time the bot knew who was online
        (not during an outage: sessions left open must end when the connection dropped)."""
        return self.component.sessions_known_until(int(self.clock()), self._loaded_heartbeat)

    def _component(self, timing: Timing | None) -> ActiveUsersComponent:
        settings = self.settings
        commands = CommandSet(
            admins=settings.admins,
            figures=figures_source(self.tracker, self.clock, answered_windows(settings)),
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

    # The parts' duties, under the names the tests, the testbed and the benchmarks call.

    def record_today(self) -> None:
        self.day_history.record_today()

    def record_peak_if_risen(self) -> None:
        self.day_history.record_peak_if_risen()

    @property
    def history_failures(self) -> int:
        return self.day_history.failures

    async def history(self, days: int) -> list[Day]:
        return await self.day_history.last(days)

    async def after_count(self) -> None:
        await self.duties.after_count()

    async def apply_retention(self) -> int:
        return await self.duties.apply_retention()

    def duty_names(self) -> tuple[str, ...]:
        return self.duties.names()

    @property
    def web(self) -> WebServer | None:
        return self.observed.web

    def metrics_snapshot(self) -> Snapshot:
        return self.observed.metrics_snapshot()

    async def status_view(self) -> StatusView:
        return await self.observed.status_view()

    def http_routes(self) -> dict[str, Handler]:
        return self.observed.http_routes()

    async def serve(self, stop: asyncio.Event) -> int:
        """Stay connected until `stop` is set; then disconnect, write and close the store.

        Returns the exit status: 0 after `stop`; 1 when retrying cannot help; 70 when a duty
        kept failing; 2 when the last changes could not be written (the log says what is lost).
        """
        web: WebServer | None = None
        status = 1
        try:
            try:
                web = await self.observed.start_web()
            except ConnectionFatal as exc:
                log.error("%s", exc)
                return status
            status = await _serve_until_stopped(self.component, self.duties.supervised(), stop)
        finally:
            if web is not None:
                await web.close()
            budget = self.component.timing.shutdown_write_budget
            if waiting := await self.tracker.until_applied(budget):
                log.error(
                    "Stopped before reading the records of %d changes: they are lost", waiting
                )
            # Its fault must not keep the records from disk.
            self.day_history.guarded(self.day_history.record_today)
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


def answered_windows(settings: Settings) -> tuple[int, ...]:
    """The windows of the admins' answer: the configured ones, and with NodeInfo on, the
    windows it publishes (so that the admin reads there what the network reads)."""
    if settings.nodeinfo is None:
        return settings.windows
    return tuple(sorted({*settings.windows, *NODEINFO_WINDOWS}))
