"""What admins can ask, defined once and rendered twice: as an XEP-0004 form and as chat text.

No XMPP here beyond building a data form: the component routes requests to `CommandSet` and sends
back what it returns. Access is decided in one place, `CommandSet.allowed`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from slixmpp.jid import JID, InvalidJID
from slixmpp.plugins.xep_0004 import Form

from ..core.client_families import describe
from ..core.counter import DAY, DEFAULT_WINDOWS, ClientCounts, Counts, window_label, window_short
from .forms import Row, aligned, preformatted, rows_form
from .history import Day, chat_chart, history_form
from .notify import ADHOC_NOTIFY_NAME, ADHOC_NOTIFY_NODE, Notifier

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


async def _no_history(_days: int) -> list[Day]:
    return []


@dataclass(frozen=True)
class CommandSet:
    """Who may ask, and the answer to each question.

    The figures come from memory. The history is read from the store: the running bot gives
    `history`, which scans the store in a worker thread."""

    admins: frozenset[str]
    figures: FiguresSource
    history: Callable[[int], Awaitable[list[Day]]] = _no_history
    windows: tuple[int, ...] = DEFAULT_WINDOWS
    client_figures: Callable[[], ClientFigures] = dict
    # Forget a user (bare JID, asked by): whether anything was stored. The component gives it.
    forget_user: Callable[[str, str], Awaitable[bool]] | None = None
    notices: Notifier | None = None  # reports and alerts (notify.py), when set up

    def allowed(self, bare_jid: str) -> bool:
        return bare_jid in self.admins

    async def chat_answer(self, bare_jid: str, text: str) -> str:
        """The reply to a chat message: the chat front-end of `ADMIN_COMMANDS`."""
        if not self.allowed(bare_jid):
            return CHAT_REFUSED
        word, argument = _chat_command(text)
        if word in ("help", "?"):
            return chat_help()
        command = _BY_KEYWORD.get(word)
        if command is None:
            return CHAT_UNKNOWN
        try:
            answer = await command.run(self, Request(bare_jid, argument))
        except CommandError as exc:
            return f"Sorry, {exc}. Example: {command.example}"
        return answer.text()

    def asks_for_figures(self, bare_jid: str, text: str) -> bool:
        """Whether this chat message is an admin asking for the figures."""
        command = _BY_KEYWORD.get(_chat_command(text)[0])
        return self.allowed(bare_jid) and command is not None and command.shows_figures

    def presence_status(self, bare_jid: str) -> str:
        """The bot's status line as `bare_jid` sees it in a contact list: the figures for
        admins, `PLAIN_STATUS` for anyone else."""
        if not self.allowed(bare_jid):
            return PLAIN_STATUS
        return figures_status(self.figures().total)

    def stats_form(self) -> Form:
        return stats_form(self.figures())

    def clients_table(self) -> Table:
        return clients_table(self.client_figures(), self.windows)

    async def history_days(self, days: int) -> list[Day]:
        """The last `days` days of history (the bot reads them off the event loop)."""
        return await self.history(days)


# --- each admin command, defined once: rendered by the ad-hoc and the chat front-ends ----------


class CommandError(ValueError):
    """The request is wrong (its argument): said back to the admin, as bad-request in ad-hoc."""


@dataclass(frozen=True)
class Request:
    who: str  # the asker's bare JID (an admin: access is checked before `run`)
    argument: str = ""  # the chat word's argument, or the request form's field
    values: Mapping[str, Any] = field(default_factory=dict)  # ad-hoc: the whole request form


@dataclass(frozen=True)
class Answer:
    """What a command answers, rendered by each front-end: a data form, or chat text."""

    form: Callable[[], Form | None]
    text: Callable[[], str]
    note: str | None = None  # ad-hoc: a note beside (or instead of) the form


ADMINS = "admins"  # the only access level so far: `CommandSet.allowed`


@dataclass(frozen=True)
class Command:
    name: str  # the ad-hoc command's name, as clients list it
    node: str | None  # XEP-0050 node; None: chat only
    keyword: str | None  # the chat word; None: ad-hoc only
    help: str  # the chat help line (after the keyword)
    run: Callable[[CommandSet, Request], Awaitable[Answer]]
    # ad-hoc: the form that asks for `argument` first, as the asker (bare JID) sees it
    request_form: Callable[[CommandSet, str], Form] | None = None
    argument: str = ""  # the request form's field that is the argument
    example: str = ""  # chat: how to ask, quoted when the argument is wrong
    access: str = ADMINS
    shows_figures: bool = False  # the admin's contact list gets the same figures after it
    # Whether this bot offers the command at all (ad-hoc: registered only then).
    offered: Callable[[CommandSet], bool] = lambda _commands: True


async def _run_stats(commands: CommandSet, _request: Request) -> Answer:
    figures = commands.figures()
    return Answer(form=lambda: stats_form(figures), text=lambda: stats_text(figures))


async def _run_clients(commands: CommandSet, _request: Request) -> Answer:
    table = commands.clients_table()
    return Answer(form=table.form, text=lambda: clients_text(table, commands.windows))


async def _run_history(commands: CommandSet, request: Request) -> Answer:
    try:
        days = parse_days(request.argument)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    shown = await commands.history_days(days)
    return Answer(
        form=lambda: history_form(shown, commands.windows),
        text=lambda: chat_chart(shown, commands.windows),
    )


async def _run_forget(commands: CommandSet, request: Request) -> Answer:
    try:
        jid = JID(request.argument)
    except InvalidJID as exc:
        raise CommandError(f"not a valid JID: {exc}") from None
    if not jid.user or jid.resource:
        raise CommandError("give a bare JID such as alice@example.org")
    if commands.forget_user is None:
        raise CommandError("forgetting a user is not possible here")
    forgotten = await commands.forget_user(jid.bare, request.who)
    text = f"Forgot {jid.bare}." if forgotten else f"Nothing was stored about {jid.bare}."
    return Answer(form=lambda: None, text=lambda: text, note=text)


def _notices_of(commands: CommandSet) -> Notifier:
    if commands.notices is None:
        raise CommandError("reports and alerts are not set up here ([reports], [alerts])")
    return commands.notices


async def _run_notices(commands: CommandSet, request: Request, kind: str | None) -> Answer:
    """`reports on|off`, `alerts on|off` in chat (kind), or the ad-hoc form's choices (None)."""
    notices = _notices_of(commands)
    if kind is None:
        note = await notices.submit_preferences(request.who, request.values)
        return Answer(form=lambda: None, text=lambda: note, note=note)
    said = await notices.chat(request.who, f"{kind} {request.argument}")
    text = said or f"Send '{kind} on' or '{kind} off'."
    return Answer(form=lambda: None, text=lambda: text)


ADMIN_COMMANDS: tuple[Command, ...] = (
    Command(
        "Active users",
        ADHOC_STATS_NODE,
        "stats",
        "users active in the last 24 hours, 7 days and 30 days, new users, DAU/MAU,\n"
        "         and who is online now",
        _run_stats,
        shows_figures=True,
    ),
    Command(
        "Active users by client",
        ADHOC_CLIENTS_NODE,
        "clients",
        "active users by client software (Conversations, Gajim, ...)",
        _run_clients,
    ),
    Command(
        "Activity history",
        ADHOC_HISTORY_NODE,
        "history [DAYS]",
        f"a chart of the last DAYS days ({HISTORY_DEFAULT_DAYS} by default)",
        _run_history,
        request_form=lambda _commands, _who: history_request_form(),
        argument="days",
        example="history 7",
    ),
    Command(
        "Forget a user",
        ADHOC_FORGET_NODE,
        None,
        "",
        _run_forget,
        request_form=lambda _commands, _who: forget_request_form(),
        argument="jid",
    ),
    Command(
        "Reports",
        None,
        "reports on|off",
        "the periodic report to you (if set up)",
        lambda commands, request: _run_notices(commands, request, "reports"),
        example="reports off",
    ),
    Command(
        "Alerts",
        None,
        "alerts on|off",
        "a message when something goes wrong, and when it is over (if set up)",
        lambda commands, request: _run_notices(commands, request, "alerts"),
        example="alerts off",
    ),
    Command(
        ADHOC_NOTIFY_NAME,
        ADHOC_NOTIFY_NODE,
        None,
        "",
        lambda commands, request: _run_notices(commands, request, None),
        request_form=lambda commands, who: _notices_of(commands).preferences_form(who),
        offered=lambda commands: commands.notices is not None,
    ),
)
_BY_KEYWORD = {c.keyword.split()[0]: c for c in ADMIN_COMMANDS if c.keyword is not None}


def chat_help() -> str:
    """The chat help: every command with a chat keyword, then those also in ad-hoc."""
    lines = ["I count the active users of this XMPP service. Send:"]
    lines += [f"  {c.keyword}: {c.help}" for c in ADMIN_COMMANDS if c.keyword is not None]
    lines.append("  help: this list")
    both = [c for c in ADMIN_COMMANDS if c.keyword is not None and c.node is not None]
    named = [f"'{c.node}' ({c.name})" for c in both]
    listed = ", ".join(named[:-1]) + f" and {named[-1]}" if len(named) > 1 else "".join(named)
    lines.append(f"The same figures are in the ad-hoc commands {listed}.")
    return "\n".join(lines)


CHAT_HELP = chat_help()
