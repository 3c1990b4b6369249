"""What admins can ask, defined once and rendered twice: as an XEP-0004 form and as chat text.

No XMPP here beyond building a data form: the component routes requests to `CommandSet` and sends
back what it returns. Access is decided in one place, `CommandSet.allowed`. The figures' renderings
(the stats form and text, the clients table, the status line) are in figures.py.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slixmpp.jid import JID, InvalidJID
from slixmpp.plugins.xep_0004 import Form

from ..core.counter import DEFAULT_WINDOWS
from .figures import (
    PLAIN_STATUS,
    ClientFigures,
    FiguresSource,
    Table,
    clients_table,
    clients_text,
    figures_status,
    stats_form,
    stats_text,
)
from .figures import Figures as Figures  # what `CommandSet.figures` gives, imported beside it
from .history import Day, chat_chart, history_form
from .notify import ADHOC_NOTIFY_NAME, ADHOC_NOTIFY_NODE, Notifier

ADHOC_STATS_NODE = "active-users"
ADHOC_CLIENTS_NODE = "clients"
ADHOC_HISTORY_NODE = "history"
ADHOC_FORGET_NODE = "forget-user"
HISTORY_DEFAULT_DAYS = 30
HISTORY_MAX_DAYS = 366


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
