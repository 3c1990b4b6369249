"""What admins can ask, defined once and rendered twice: as an XEP-0004 form and as chat text.

No XMPP here beyond building a data form: the component routes requests to `CommandSet` and sends
back what it returns. Access is decided in one place, `CommandSet.allowed`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from slixmpp.plugins.xep_0004 import Form

from .client_families import describe
from .counter import DAY, DEFAULT_WINDOWS, ClientCounts, Counts, window_label, window_short
from .forms import Row, aligned, preformatted, rows_form
from .history import Day, chat_chart, history_form

ADHOC_STATS_NODE = "active-users"
ADHOC_CLIENTS_NODE = "clients"
ADHOC_HISTORY_NODE = "history"
ADHOC_FORGET_NODE = "forget-user"
HISTORY_DEFAULT_DAYS = 30
HISTORY_MAX_DAYS = 366
FORM_TYPE = "urn:xmpp-active-users:stats:1"


@dataclass(frozen=True)
class Figures:
    """One answer: the totals, and each domain's own when several are counted."""

    total: Counts
    by_domain: Mapping[str, Counts]


FiguresSource = Callable[[], Figures]
ClientFigures = Mapping[str, ClientCounts]  # by client family, all counted domains together


def iso_utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


# --- rendering ------------------------------------------------------------------------------

_FIELD_NAMES = {DAY: "dau", 7 * DAY: "wau", 30 * DAY: "mau"}


def percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.0%}"


def stats_form(figures: Figures) -> Form:
    """The XEP-0004 result of the `active-users` command."""
    counts = figures.total
    form = Form()
    form["type"] = "result"
    form["title"] = "Active users"
    form.add_field(var="FORM_TYPE", ftype="hidden", value=FORM_TYPE)

    def field(var: str, label: str, value: object) -> None:
        form.add_field(var=var, ftype="text-single", label=label, value=str(value))

    for window, active in counts.active.items():
        name = _FIELD_NAMES.get(window, f"active_{window_short(window)}")
        field(name, f"Active users, last {window_label(window)}", active)
    for window, new in counts.new_users.items():
        field(f"new_{window_short(window)}", f"New users, last {window_label(window)}", new)
    if counts.stickiness is not None:
        field("stickiness", "Stickiness (DAU/MAU)", percent(counts.stickiness))
    field("online_users", "Users online now", counts.online_users)
    field("online_sessions", "Sessions online now", counts.online_sessions)
    field("known_users", "Users on record", counts.known_users)
    field("computed_at", "Computed at (UTC)", iso_utc(counts.computed_at))
    if len(figures.by_domain) > 1:
        for domain, part in figures.by_domain.items():
            field(f"domain:{domain}", domain, stats_line(part))
    return form


def stats_line(counts: Counts) -> str:
    """One line of chat: 'Active users: 12 (24 hours), 40 (7 days), 85 (30 days); new: ...'."""

    def per_window(values: Mapping[int, int]) -> str:
        return ", ".join(f"{n} ({window_label(w)})" for w, n in values.items())

    parts = [f"Active users: {per_window(counts.active)}", f"new: {per_window(counts.new_users)}"]
    if counts.stickiness is not None:
        parts.append(f"DAU/MAU: {percent(counts.stickiness)}")
    parts.append(f"online now: {counts.online_users} users, {counts.online_sessions} sessions")
    return "; ".join(parts)


def stats_text(figures: Figures) -> str:
    lines = [stats_line(figures.total)]
    if len(figures.by_domain) > 1:
        lines += [f"{domain}: {stats_line(part)}" for domain, part in figures.by_domain.items()]
    return "\n".join(lines)


# --- tables: one definition, rendered as a data form and as chat text -------------------------


@dataclass(frozen=True)
class Table:
    """An answer made of rows: an XEP-0004 result form whose rows are fields (forms.py says why
    not `<reported>`/`<item>`), or lines of chat. `columns` are (field name, label); every row has
    a value for each. `key` is the column naming each row for scripts, `label` the columns that
    name it for people (the first as is, the others in parentheses)."""

    title: str
    columns: tuple[tuple[str, str], ...]
    rows: tuple[Mapping[str, str], ...]
    note: str  # what the figures mean (and, with no rows, why there are none)
    key: str = ""
    label: tuple[str, ...] = ()
    line: str = ""  # a row's figures as one short line: a str.format template over the row

    def row_label(self, row: Mapping[str, str]) -> str:
        first, *others = [row[name] for name in self.label]
        return first + "".join(f" ({other})" for other in others if other)

    def figures(self) -> tuple[tuple[str, str], ...]:
        """The columns shown as a row's figures: all but its key and label."""
        return tuple(c for c in self.columns if c[0] != self.key and c[0] not in self.label)

    def form(self) -> Form:
        rows = (
            Row(
                key=row[self.key],
                label=self.row_label(row),
                text=self.line.format_map(row),
                cells=row,
            )
            for row in self.rows
        )
        return rows_form(self.title, self.note, rows)


def clients_table(clients: ClientFigures, windows: tuple[int, ...]) -> Table:
    """Active users by client family: one row per family with anyone active or online, the
    most used first (by the longest window)."""
    longest = max(windows)
    rows = []
    for family, counts in sorted(
        clients.items(), key=lambda item: (-item[1].active[longest], describe(item[0])[0])
    ):
        if not any(counts.active.values()) and not counts.online_users:
            continue
        name, platform = describe(family)
        row = {"client": name, "platform": platform or "", "family": family}
        row |= {f"active_{window_short(w)}": str(counts.active[w]) for w in windows}
        row["online_users"] = str(counts.online_users)
        rows.append(row)
    columns = (
        ("client", "Client"),
        ("platform", "Platform"),
        *((f"active_{window_short(w)}", window_label(w)) for w in windows),
        ("online_users", "online now"),
        ("family", "Metrics label"),
    )
    spans = " / ".join(window_label(w) for w in windows)
    note = (
        f"Each client: its users active in the last {spans} · online now. Active: online now "
        "with it, or their last login or logout with it within the window (XEP-0115 caps node "
        "of their sessions). A user on two clients counts for each."
    )
    line = " / ".join(f"{{active_{window_short(w)}}}" for w in windows) + " · {online_users} online"
    if not rows:
        note += " No client is known yet: each session's client is learnt at its login."
    return Table(
        "Active users by client",
        columns,
        tuple(rows),
        note,
        key="family",
        label=("client", "platform"),
        line=line,
    )


def clients_text(table: Table, windows: tuple[int, ...]) -> str:
    """The table as chat: a preformatted block whose columns line up (short column names, so
    that it fits a phone or a chat pane), then what it means.

        Active users by client (24h, 7d, 30d: in the last 24 hours, 7 days, 30 days):
        ```
        client                  24h  7d  30d  online
        Conversations (mobile)   12  30   45       8
        ```
    """
    if not table.rows:
        return f"{table.title}: none.\n{table.note}"
    shorts = [_short(w) for w in windows]
    spans = ", ".join(window_label(w) for w in windows)
    lines = aligned(
        ("client", *shorts, "online"),
        ((table.row_label(row), *(row[name] for name, _ in table.figures())) for row in table.rows),
    )
    title = f"{table.title} ({', '.join(shorts)}: in the last {spans}):"
    return f"{title}\n{preformatted(lines)}\n{table.note}"


def _short(window: int) -> str:
    return "24h" if window == DAY else window_short(window)


# The status line of the bot in a contact list: the figures for admins, a fixed text for others.
PLAIN_STATUS = "Counts the active users of this service (figures for its administrators)"
_STATUS_NAMES = {DAY: "DAU", 7 * DAY: "WAU", 30 * DAY: "MAU"}


def figures_status(counts: Counts) -> str:
    """The status line an admin's contact list shows: 'DAU 412 · WAU 1,950 · MAU 3,870 ·
    37 online' (other windows by their short name: '90d 5,012')."""
    parts = [f"{_STATUS_NAMES.get(w, window_short(w))} {n:,}" for w, n in counts.active.items()]
    parts.append(f"{counts.online_users:,} online")
    return " · ".join(parts)


def history_request_form() -> Form:
    """The first step of the `history` ad-hoc command."""
    form = Form()
    form["type"] = "form"
    form["title"] = "Activity history"
    form["instructions"] = "One row per UTC day, up to today. How many days?"
    form.add_field(var="days", ftype="text-single", label="Days", value=str(HISTORY_DEFAULT_DAYS))
    return form


def forget_request_form() -> Form:
    """The first step of the `forget-user` ad-hoc command."""
    form = Form()
    form["type"] = "form"
    form["title"] = "Forget a user"
    form["instructions"] = (
        "Removes everything stored about one user (for an account deletion request). "
        "It cannot be undone."
    )
    form.add_field(var="jid", ftype="jid-single", label="User (bare JID)", required=True)
    return form


# --- chat ---------------------------------------------------------------------------------------

CHAT_HELP = (
    "I count the active users of this XMPP service. Send:\n"
    "  stats: users active in the last 24 hours, 7 days and 30 days, new users, DAU/MAU,\n"
    "         and who is online now\n"
    "  clients: active users by client software (Conversations, Gajim, ...)\n"
    "  history [DAYS]: a chart of the last DAYS days (30 by default)\n"
    "  help: this list\n"
    f"The same figures are in the ad-hoc commands '{ADHOC_STATS_NODE}' (Active users), "
    f"'{ADHOC_CLIENTS_NODE}' (Active users by client) and '{ADHOC_HISTORY_NODE}' "
    "(Activity history)."
)
CHAT_UNKNOWN = (
    "Sorry, I don't know that command. Send 'stats' for the figures, 'clients' for them by "
    "client, 'history' for a chart, or 'help'."
)
CHAT_REFUSED = (
    "Sorry, only the administrators of this service may ask me for statistics. "
    "If you are one, ask for your address to be added to [access] admins in my config."
)


# ASCII digits only: str.isdigit() (and int()) also take digits such as '٣' or '³', and int()
# of over 4,300 digits fails with Python's own message. Leading zeros are allowed ("007").
_DAYS = re.compile(r"[0-9]{1,6}")
_SHOWN_CHARS = 20  # of a refused value, quoted back in the error


def parse_days(text: str) -> int:
    """The N of 'history N': a whole number of days, 1 to HISTORY_MAX_DAYS."""
    text = text.strip() or str(HISTORY_DEFAULT_DAYS)
    if not _DAYS.fullmatch(text) or not 1 <= int(text) <= HISTORY_MAX_DAYS:
        shown = repr(text[:_SHOWN_CHARS])
        if len(text) > _SHOWN_CHARS:
            shown += f"... ({len(text)} characters)"
        raise ValueError(
            f"the number of days must be 1 to {HISTORY_MAX_DAYS}, in digits 0-9, not {shown}"
        )
    return int(text)


def _chat_command(text: str) -> tuple[str, str]:
    """A chat message as (command word, argument): 'History 7' -> ('history', '7')."""
    word, _, argument = text.strip().lower().partition(" ")
    return word, argument


@dataclass(frozen=True)
class CommandSet:
    """Who may ask, and the answer to each question.

    The figures come from memory. The history is read from the store: the running bot gives
    `history_off_loop` (it scans the store in a worker thread), used by `chat_answer` and
    `history_form_off_loop`; without it they call `history`."""

    admins: frozenset[str]
    figures: FiguresSource
    history: Callable[[int], list[Day]] = lambda _days: []
    windows: tuple[int, ...] = DEFAULT_WINDOWS
    history_off_loop: Callable[[int], Awaitable[list[Day]]] | None = None
    client_figures: Callable[[], ClientFigures] = dict

    def allowed(self, bare_jid: str) -> bool:
        return bare_jid in self.admins

    def chat_reply(self, bare_jid: str, text: str) -> str:
        """The reply to a chat message; figures only ever for admins."""
        days = self._history_asked(bare_jid, text)
        if isinstance(days, str):
            return days
        return chat_chart(self.history(days), self.windows)

    async def chat_answer(self, bare_jid: str, text: str) -> str:
        """`chat_reply` for the event loop: the history is read with `history_off_loop`."""
        days = self._history_asked(bare_jid, text)
        if isinstance(days, str):
            return days
        return chat_chart(await self._history_off_loop(days), self.windows)

    def asks_for_figures(self, bare_jid: str, text: str) -> bool:
        """Whether this chat message is an admin asking for the figures."""
        return self.allowed(bare_jid) and _chat_command(text)[0] == "stats"

    def presence_status(self, bare_jid: str) -> str:
        """The bot's status line as `bare_jid` sees it in a contact list: the figures for
        admins, `PLAIN_STATUS` for anyone else."""
        if not self.allowed(bare_jid):
            return PLAIN_STATUS
        return figures_status(self.figures().total)

    def _history_asked(self, bare_jid: str, text: str) -> int | str:
        """The days of history asked for, or the whole reply when it is not a history."""
        if not self.allowed(bare_jid):
            return CHAT_REFUSED
        word, argument = _chat_command(text)
        if word == "stats":
            return stats_text(self.figures())
        if word == "clients":
            return clients_text(self.clients_table(), self.windows)
        if word == "history":
            try:
                return parse_days(argument)
            except ValueError as exc:
                return f"Sorry, {exc}. Example: history 7"
        if word in ("help", "?"):
            return CHAT_HELP
        return CHAT_UNKNOWN

    def stats_form(self) -> Form:
        return stats_form(self.figures())

    def clients_table(self) -> Table:
        return clients_table(self.client_figures(), self.windows)

    def history_form(self, days: int) -> Form:
        return history_form(self.history(days), self.windows)

    async def history_form_off_loop(self, days: int) -> Form:
        return history_form(await self._history_off_loop(days), self.windows)

    async def _history_off_loop(self, days: int) -> list[Day]:
        if self.history_off_loop is None:
            return self.history(days)
        return await self.history_off_loop(days)
