"""The figures as admins see them: the stats form and chat text, the clients table, the status line.

Pure renderings of counts (`core.counter`): the commands (commands.py) and the status page
(web/statuspage.py) show the same figures, named the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from slixmpp.plugins.xep_0004 import Form

from ..core.client_families import describe
from ..core.counter import DAY, ClientCounts, Counts, window_label, window_short
from .forms import Row, aligned, preformatted, rows_form

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
