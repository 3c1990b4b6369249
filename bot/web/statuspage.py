"""The status page at `/`: today's figures per domain, their daily history as inline SVG charts,
and the bot's health. Server-rendered HTML: no JavaScript, no external assets, one request.

`render` is a pure function of a `StatusView` (status_view.py; tested without a server);
`status_page` makes the aiohttp handler that gathers the view (the bot's `status_view`) and
renders it. The charts' SVG is drawn by status_charts.py.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

from aiohttp import web

from ..admin.figures import Table, clients_table
from ..admin.history import Day
from ..core.counter import DAY, Counts, window_label, window_short
from .status_charts import Series, chart

# The page's input, imported with the page by those who gather it (`Bot.status_view`).
from .status_view import HISTORY_DAYS as HISTORY_DAYS
from .status_view import Health as Health
from .status_view import StatusView as StatusView

REFRESH_SECONDS = 300  # a wall display reloads itself (a meta refresh: no script)

_ACTIVE_NAMES = {DAY: "DAU", 7 * DAY: "WAU", 30 * DAY: "MAU"}
_COLORS = ("#2563eb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2")
_NEW_COLOR = "#db2777"


def status_page(
    view: Callable[[], Awaitable[StatusView]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of the page."""

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(
            text=render(await view()),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    return handler


# --- the page -----------------------------------------------------------------------------------

_STYLE = """
:root{color-scheme:light dark;--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--card:#f9fafb;
--bad:#b91c1c;--good:#047857}
@media(prefers-color-scheme:dark){:root{--fg:#f3f4f6;--muted:#9ca3af;--line:#374151;
--card:#1f2937;--bad:#f87171;--good:#34d399}body{background:#111827}}
body{font:16px/1.4 system-ui,sans-serif;color:var(--fg);margin:0 auto;max-width:56rem;
padding:0 .75rem 2rem}
h1{font-size:1.4rem;margin:1rem 0 0}h2{font-size:1.2rem;margin:1.5rem 0 .5rem}
h3{font-size:1rem;margin:1rem 0 .25rem}
.sub,figcaption,.muted{color:var(--muted);font-size:.875rem}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(8.5rem,1fr));gap:.5rem;
margin:0;padding:0;list-style:none}
.figure{background:var(--card);border:1px solid var(--line);border-radius:.5rem;
padding:.5rem .75rem}
.value{display:block;font-size:1.6rem;font-weight:600;font-variant-numeric:tabular-nums}
.label{display:block;font-size:.8rem;color:var(--muted)}
figure{margin:.75rem 0}svg{display:block;width:100%;height:auto}
svg text{fill:var(--muted);font-size:12px}
.grid{stroke:var(--line);stroke-width:1}.gap{fill:var(--line);opacity:.6}
.series path{fill:none;stroke-width:2;stroke-linejoin:round}
.legend{display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:.25rem 0 0;padding:0;
list-style:none;font-size:.875rem}
.key{display:inline-block;width:.8rem;height:.8rem;border-radius:.2rem;margin-right:.3rem;
vertical-align:-.1rem}.nodata{background:var(--line)}
.health{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
.health dt{color:var(--muted)}.health dd{margin:0}
.bad{color:var(--bad);font-weight:600}.good{color:var(--good);font-weight:600}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem;min-width:100%}
th,td{padding:.25rem .5rem;border-bottom:1px solid var(--line);text-align:right;
white-space:nowrap}th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
th{color:var(--muted);font-weight:500}td{font-variant-numeric:tabular-nums}
@media(max-width:36rem){svg text{font-size:20px}.health{grid-template-columns:1fr}
.health dd{margin-bottom:.5rem}}
"""


def render(view: StatusView) -> str:
    """The whole page."""
    title = f"Active users · {view.service}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="sub">{_utc(view.now)}; a user is active within a window if online now, or '
        "if their last login or logout is within it.</p></header><main>",
    ]
    for domain, counts in view.by_domain.items():
        clients = clients_table(view.clients_by_domain.get(domain, {}), view.windows)
        parts.append(_domain_section(domain, counts, view.days, view.windows, clients))
    parts.append(_health_section(view.health, view.now))
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _domain_section(
    domain: str, counts: Counts, days: Sequence[Day], windows: Iterable[int], clients: Table
) -> str:
    windows = tuple(windows)
    history = [None if day.domains is None else day.domains.get(domain) for day in days]
    active_series = [
        Series(
            key=f"active_{window_short(window)}",
            name=_active_name(window),
            color=_COLORS[i % len(_COLORS)],
            values=[_figure(data, "active", window) for data in history],
        )
        for i, window in enumerate(windows)
    ]
    new_series = [
        Series(
            key=f"new_{window_short(DAY)}",
            name="New users, 24 hours",
            color=_NEW_COLOR,
            values=[_figure(data, "new", DAY) for data in history],
        )
    ]
    dates = [day.date for day in days]
    gaps = [data is None for data in history]
    return "\n".join(
        [
            f'<section class="domain" data-domain="{_e(domain)}"><h2>{_e(domain)}</h2>',
            _figures(counts),
            chart(f"Active users, last {len(days)} days", active_series, dates, gaps),
            chart(f"New users per day, last {len(days)} days", new_series, dates, gaps),
            _clients_section(clients, windows),
            "</section>",
        ]
    )


def _active_name(window: int) -> str:
    return _ACTIVE_NAMES.get(window) or f"Active, {window_label(window)}"


def _figure(data: Mapping[str, object] | None, part: str, window: int) -> int | None:
    """One figure of a day's snapshot; None when the day (or that window) has none."""
    if data is None:
        return None
    values = data.get(part)
    value = values.get(window_short(window)) if isinstance(values, Mapping) else None
    return value if type(value) is int else None


def _figures(counts: Counts) -> str:
    """Today's figures, each with `data-figure` named like the ad-hoc command's fields."""
    items: list[tuple[str, str, str]] = []
    for window, value in counts.active.items():
        items.append((f"active_{window_short(window)}", _number(value), _active_label(window)))
    for window, value in counts.new_users.items():
        items.append(
            (f"new_{window_short(window)}", _number(value), f"new users, {window_label(window)}")
        )
    if counts.stickiness is not None:
        items.append(("stickiness", f"{counts.stickiness:.0%}", "stickiness (DAU/MAU)"))
    items.append(("online_users", _number(counts.online_users), "users online now"))
    items.append(("online_sessions", _number(counts.online_sessions), "sessions online now"))
    items.append(("known_users", _number(counts.known_users), "users on record"))
    cells = "".join(
        f'<li class="figure" data-figure="{key}"><span class="value">{value}</span>'
        f'<span class="label">{_e(label)}</span></li>'
        for key, value, label in items
    )
    return f'<ul class="figures">{cells}</ul>'


def _active_label(window: int) -> str:
    name = _ACTIVE_NAMES.get(window)
    label = f"active users, {window_label(window)}"
    return f"{name}: {label}" if name else label


def _clients_section(table: Table, windows: tuple[int, ...]) -> str:
    """The `clients` command's table: a row per client family, `data-client` its metrics label,
    `data-client-figure` named like the command's fields."""
    head = "".join(
        f'<th scope="col">{_e(label)}</th>' for name, label in table.columns if name != "family"
    )
    figures = [f"active_{window_short(w)}" for w in windows] + ["online_users"]
    rows = []
    for row in table.rows:
        cells = f"<td>{_e(row['client'])}</td><td>{_e(row['platform'])}</td>"
        cells += "".join(
            f'<td data-client-figure="{name}">{_number(int(row[name]))}</td>' for name in figures
        )
        rows.append(f'<tr data-client="{_e(row["family"])}">{cells}</tr>')
    body = (
        f'<div class="scroll"><table class="clients"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        if rows
        else ""
    )
    return f'<h3>{_e(table.title)}</h3>{body}<p class="muted">{_e(table.note)}</p>'


# --- health ---------------------------------------------------------------------------------


def _health_section(health: Health, now: float) -> str:
    if health.connected_since is None:
        connected = '<span class="bad">not connected</span> (reconnecting)'
    else:
        connected = (
            f'<span class="good">connected</span> since {_utc(health.connected_since)} '
            f"({_duration(now - health.connected_since)})"
        )
    if health.last_write_at is None:
        written = "none yet"
    else:
        written = f"{_utc(health.last_write_at)} ({_duration(now - health.last_write_at)} ago)"
    if health.failed_writes:
        written += f' <span class="bad">{_number(health.failed_writes)} failed writes</span>'
    size = "unknown" if health.store_bytes is None else _size(health.store_bytes)
    rows = [
        ("connected", "XMPP server", connected),
        ("last_write", "Last successful write of the store", written),
        ("store_size", "Store size", size),
    ]
    cells = "".join(
        f'<dt>{label}</dt><dd data-health="{key}">{value}</dd>' for key, label, value in rows
    )
    return f'<section><h2>Health of the bot</h2><dl class="health">{cells}</dl></section>'


# --- formatting -----------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _number(value: int) -> str:
    return f"{value:,}"


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < DAY:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // DAY} d {seconds % DAY // 3600} h"


def _size(size: int) -> str:
    value, unit = float(size), "bytes"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"
