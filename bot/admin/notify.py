"""What the bot tells its admins unasked: the periodic report, the alerts, and who wants which.

The scheduler and the delivery; the report's figures are in `reports.py`, the incidents in
`alerts.py`. The XMPP edge is reached through `Edge` only (send a chat message to a bare JID,
is the link up); the edge calls the `link_*` and `privileges_checked` hooks and routes the
admins' `reports on|off` / `alerts on|off` (chat and ad-hoc) here.

Once per period, at most once: a report's marker ("notify:report:<period>", the scheduled time
it answers) is written to the store in a transaction of its own *before* the report is sent. A
restart or a kill -9 after that write never sends it again; a crash between the write and the
send (a millisecond) loses that one report. At least once would need the opposite order, and a
bot that crashes right after sending (a crash loop) would then send the same report at every
restart: a stream, which this feature must never be. A report that could not be sent when due
(the bot was down, the link or the store failing) goes out when it can, marked late; only the
latest period's, never a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from slixmpp.plugins.xep_0004 import Form

from ..core.counter import DAY, ClientCounts
from .alerts import Alerts, AlertSettings
from .history import Day, utc_day
from .reports import (
    WEEKDAYS,
    ReportSettings,
    client_changes,
    latest_scheduled,
    period_days,
    report_text,
)

log = logging.getLogger("bot.notify")  # its name from before the layers: admins grep it

CHECK_EVERY = 20.0  # seconds between two looks at the clock, the store and the duties
FIRST_RUN_GRACE = 60  # a first run this soon after a scheduled time still sends that report
FAULT_LOG_EVERY = 600.0  # seconds between two log lines about the duty's own faults
OUTBOX_MAX = 20  # alerts waiting for the link; older ones are dropped (and logged)
KINDS = ("reports", "alerts")
ADHOC_NOTIFY_NODE = "notifications"
ADHOC_NOTIFY_NAME = "Reports and alerts"
_PERIOD_WINDOW = {"weekly": 7 * DAY, "monthly": 30 * DAY}


class Edge(Protocol):
    """What this module needs of the XMPP edge."""

    def send_message(self, to_bare_jid: str, text: str) -> None:
        """A chat message to a bare JID (so that the server keeps it for an offline admin)."""

    def link_is_up(self) -> bool: ...


@dataclass(frozen=True)
class CallbackEdge:
    """An `Edge` made of two functions (the daemon's wiring)."""

    send: Callable[[str, str], None]
    is_up: Callable[[], bool]

    def send_message(self, to_bare_jid: str, text: str) -> None:
        self.send(to_bare_jid, text)

    def link_is_up(self) -> bool:
        return self.is_up()


class NoteStore(Protocol):
    """What this module needs of the store: its "notify:" values."""

    def notes(self) -> dict[str, Any]: ...
    def put_note_now(self, name: str, value: Any) -> None: ...
    def in_thread(self, work: Callable[[], Any]) -> asyncio.Future[Any]: ...


@dataclass(frozen=True)
class Sources:
    """Where the figures and the bot's health come from (all read on the event loop)."""

    days: Callable[[], Awaitable[Mapping[str, Any]]]  # the stored daily snapshots, by date
    client_figures: Callable[[], Mapping[str, ClientCounts]]
    store_health: Callable[[], tuple[float | None, int]]  # (last write, failed writes)
    duty_restarts: Callable[[], Mapping[str, int]]


class Notifier:
    """The reports' schedule, the alerts' incidents and the admins' preferences."""

    def __init__(
        self,
        reports: ReportSettings,
        alerts: AlertSettings,
        *,
        admins: frozenset[str],
        domains: Sequence[str],
        windows: Sequence[int],
        store: NoteStore,
        edge: Edge,
        sources: Sources,
        clock: Callable[[], float] = time.time,
        tick: float = CHECK_EVERY,
    ) -> None:
        self.reports, self.alert_settings = reports, alerts
        self.admins, self.domains, self.windows = admins, tuple(domains), tuple(windows)
        self.store, self.edge, self.sources, self.clock = store, edge, sources, clock
        self.tick = tick
        self.alerts = Alerts(alerts)
        self.prefs: dict[str, dict[str, bool]] = {}
        self.handled: dict[str, int] = {}  # period -> the scheduled time last handled
        self.notes: dict[str, Any] = {}
        self.outbox: list[str] = []  # alerts waiting for the link
        self.checks = 0  # done so far (the tests wait for some)
        self._fault_logged_at = -FAULT_LOG_EVERY
        self.loaded = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.reports.enabled or self.alert_settings.enabled

    # --- who gets what ----------------------------------------------------------------------

    def recipients(self, kind: str) -> list[str]:
        """The admins who get `kind` now: the configured recipients, less those who said off."""
        settings = self.reports if kind == "reports" else self.alert_settings
        if not settings.enabled:
            return []
        chosen = settings.recipients if settings.recipients is not None else self.admins
        return sorted(jid for jid in chosen if self.wants(jid, kind))

    def wants(self, bare_jid: str, kind: str) -> bool:
        """Whether `bare_jid` gets `kind`: a configured recipient who did not say off."""
        return self._recipient(bare_jid, kind) and self.prefs.get(bare_jid, {}).get(kind, True)

    def _recipient(self, bare_jid: str, kind: str) -> bool:
        settings = self.reports if kind == "reports" else self.alert_settings
        chosen = settings.recipients if settings.recipients is not None else self.admins
        return settings.enabled and bare_jid in chosen and bare_jid in self.admins

    async def set_preference(self, bare_jid: str, kind: str, on: bool) -> bool:
        """Keep an admin's choice in the store; False if it could not be written."""
        prefs = self.prefs.get(bare_jid, {}) | {kind: on}
        if not await self._put(f"prefs:{bare_jid}", prefs):
            return False
        self.prefs[bare_jid] = prefs
        return True

    async def chat(self, bare_jid: str, text: str) -> str | None:
        """The reply to `reports on|off` / `alerts on|off` (or alone: the current choice) from
        an admin; None for any other message (or sender), which the commands answer."""
        words = text.strip().lower().split()
        if bare_jid not in self.admins or not words or words[0] not in KINDS:
            return None
        kind = words[0]
        settings = self.reports if kind == "reports" else self.alert_settings
        if len(words) > 2 or (len(words) == 2 and words[1] not in ("on", "off")):
            return f"Send '{kind} on' or '{kind} off' ('{kind}' alone says what you get)."
        if not settings.enabled:
            return f"The {kind} are off in my config ([{kind}] enabled = false): nobody gets any."
        if not self._recipient(bare_jid, kind):
            return f"You are not among the [{kind}] recipients in my config."
        if not await self._loaded():
            return "Sorry, I cannot read my store yet; try again later."
        if len(words) == 1:
            return self._describe(bare_jid, kind)
        if not await self.set_preference(bare_jid, kind, words[1] == "on"):
            return "Sorry, I could not save that: my store cannot be written (my log says why)."
        return self._describe(bare_jid, kind)

    def _describe(self, bare_jid: str, kind: str) -> str:
        if kind == "reports":
            what = f"{' and '.join(self.reports.periods)} reports ({_schedule(self.reports)})"
        else:
            what = "alerts"
        if self.wants(bare_jid, kind):
            return f"You get the {what}. Send '{kind} off' to stop them."
        return f"You do not get the {what}. Send '{kind} on' to get them."

    def preferences_form(self, bare_jid: str) -> Form:
        """The first step of the ad-hoc command: both choices, as they are."""
        form = Form()
        form["type"] = "form"
        form["title"] = ADHOC_NOTIFY_NAME
        form["instructions"] = (
            "Messages the bot sends you unasked: the periodic report and alerts. "
            "Kept across restarts."
        )
        for kind, label in (("reports", "Periodic reports"), ("alerts", "Alerts")):
            form.add_field(var=kind, ftype="boolean", label=label, value=self.wants(bare_jid, kind))
        return form

    async def submit_preferences(self, bare_jid: str, values: Mapping[str, Any]) -> str:
        """The second step: keep the submitted choices; the note to show."""
        if not await self._loaded():
            return "The bot cannot read its store yet; try again later."
        replies = []
        for kind in KINDS:
            value = values.get(kind)
            if value is None:
                continue
            on = value is True or str(value).lower() in ("1", "true")
            if on and not self._recipient(bare_jid, kind):
                replies.append(f"The {kind} are off for you in the bot's config.")
            elif not await self.set_preference(bare_jid, kind, on):
                return "Could not save: the store cannot be written (the bot's log says why)."
            else:
                replies.append(self._describe(bare_jid, kind))
        return " ".join(replies) or "Nothing changed."

    # --- hooks from the edge ------------------------------------------------------------------

    def link_down(self) -> None:
        self.alerts.link_down(self.clock())

    def link_up(self) -> None:
        self._queue(self.alerts.link_up(self.clock()))
        self.wake()

    def privileges_checked(self, missing: Sequence[str]) -> None:
        self._queue(self.alerts.privileges_checked(missing, self.clock()))
        self.wake()

    def wake(self) -> None:
        """Check now rather than at the next tick."""
        self._wake.set()

    # --- the duty -----------------------------------------------------------------------------

    async def _loaded(self, timeout: float = 5.0) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loaded.wait(), timeout)
        return self.loaded.is_set()

    async def run_forever(self) -> None:
        """The duty. Its own faults are logged (at most every 10 minutes) and it carries on:
        a report that cannot be made must not stop the bot that counts."""
        while True:
            try:
                if not self.loaded.is_set():
                    self._load(await self.store.in_thread(self.store.notes))
                await self.check()
            except Exception:
                now = time.monotonic()
                if now - self._fault_logged_at > FAULT_LOG_EVERY:
                    self._fault_logged_at = now
                    log.exception("Reports and alerts: a check failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)

    def _load(self, notes: Mapping[str, Any]) -> None:
        self.notes = dict(notes)
        for name, value in notes.items():
            kind, _, key = name.partition(":")
            if kind == "prefs" and isinstance(value, dict):
                self.prefs[key] = {k: v for k, v in value.items() if type(v) is bool}
            elif kind == "report" and isinstance(value, tuple) and value and type(value[0]) is int:
                self.handled[key] = value[0]
        dau = notes.get("alerts:dau")
        if isinstance(dau, tuple) and len(dau) == 2:
            self.alerts.dau_checked, self.alerts.dau_low_since = map(str, dau)
        self.loaded.set()

    async def check(self) -> None:
        """One look: the alerts' observations, then what is due, if the link is up."""
        self.checks += 1
        now = self.clock()
        if self.alert_settings.enabled:
            last_write, failed = self.sources.store_health()
            self._queue(self.alerts.store_health(last_write, failed, now))
            self._queue(self.alerts.duty_restarts(self.sources.duty_restarts(), now))
            await self._check_dau(now)
        if not self.edge.link_is_up():
            return
        self._deliver_alerts()
        for period in self.reports.periods:
            await self._report_if_due(period, now)

    async def _check_dau(self, now: float) -> None:
        ended = utc_day(now - DAY)
        if not self.alert_settings.dau_below or ended <= self.alerts.dau_checked:
            return
        before = (self.alerts.dau_checked, self.alerts.dau_low_since)
        messages = self.alerts.dau_day(ended, await self.sources.days())
        state = (self.alerts.dau_checked, self.alerts.dau_low_since)
        if not await self._put("alerts:dau", state):  # once per day, even across restarts
            self.alerts.dau_checked, self.alerts.dau_low_since = before
            return
        self._queue(messages)

    def _queue(self, messages: list[str]) -> None:
        for text in messages:
            log.warning("Alert for the admins: %s", text)
        self.outbox += messages
        if len(self.outbox) > OUTBOX_MAX:
            dropped = len(self.outbox) - OUTBOX_MAX
            log.error("%d alerts dropped unsent: the link stayed down", dropped)
            del self.outbox[:dropped]

    def _deliver_alerts(self) -> None:
        messages, self.outbox = self.outbox, []
        for text in messages:
            for jid in self.recipients("alerts"):
                self.edge.send_message(jid, text)

    async def _report_if_due(self, period: str, now: float) -> None:
        scheduled = latest_scheduled(period, self.reports, now)
        handled = self.handled.get(period)
        if handled is None and now - scheduled > FIRST_RUN_GRACE:
            # Reports were just switched on: the period that was due before is not sent late.
            if await self._put(f"report:{period}", (scheduled, 0)):
                self.handled[period] = scheduled
            return
        if handled is not None and handled >= scheduled:
            return
        text, clients = await self._report(period, scheduled, int(now))
        if not await self._put(f"report:{period}", (scheduled, int(now))):
            return  # tried again at the next check (then late, and said so)
        self.handled[period] = scheduled
        recipients = self.recipients("reports")
        for jid in recipients:
            self.edge.send_message(jid, text)
        log.info("Sent the %s report to %d admins", period, len(recipients))
        if await self._put(f"clients:{period}", clients):
            self.notes[f"clients:{period}"] = clients

    async def _report(self, period: str, scheduled: int, now: int) -> tuple[str, dict[str, int]]:
        stored = await self.sources.days()
        dates, previous_dates = period_days(period, scheduled)
        window = _PERIOD_WINDOW[period]
        if window not in self.windows:
            window = max(self.windows)
        current = self.sources.client_figures()
        before = self.notes.get(f"clients:{period}")
        before = before if isinstance(before, dict) else None
        text = report_text(
            period,
            scheduled,
            now,
            [Day(d, stored.get(d)) for d in dates],
            [Day(d, stored.get(d)) for d in previous_dates],
            self.domains,
            client_changes(current, before, window),
            clients_compared=before is not None,
        )
        return text, {family: c.active.get(window, 0) for family, c in current.items()}

    async def _put(self, name: str, value: Any) -> bool:
        try:
            await self.store.in_thread(lambda: self.store.put_note_now(name, value))
        except Exception as exc:  # StoreError mostly; whatever it is, the bot runs on
            log.warning("Could not store %r for the admins' messages: %s", name, exc)
            return False
        return True


def _schedule(settings: ReportSettings) -> str:
    """'Mondays at 08:00 UTC', 'the 1st of the month at 08:00 UTC', or both."""
    days = {"weekly": f"{WEEKDAYS[settings.weekday].capitalize()}s", "monthly": "the 1st"}
    return " and ".join(days[p] for p in settings.periods) + f" at {settings.hour:02d}:00 UTC"
