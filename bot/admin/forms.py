"""How a table reads in every client: an XEP-0004 result form whose rows are fields, and chat
text in an XEP-0393 preformatted block.

Why not `<reported>` and `<item>`, the XEP-0004 table: Gajim 1.7 (Debian 12) shows a result form
through nbxmpp's `extend_form`, which makes a form with `<reported>` a `MultipleDataForm`, and its
`DataFormWidget` then fails (`iter_fields` is a method of the single-item form only): the command
spins for ever. Profanity 0.13 shows only the `<field>` children of `<x>`, so a table is an empty
form there. So each row is one visible `text-single` field, its label the row's name (a client, a
date) and its value the row's figures as a short line; each figure is also a `hidden` field named
`ROW/COLUMN` (`gajim/active_7d`, `2027-01-15/peak_online`) for scripts. Every client we read
(Gajim, Profanity, Cheogram) skips hidden fields, as XEP-0004 asks. docs/clients.md has the
details and tests/test_client_gajim.py, tests/test_client_profanity.py check it in the clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from slixmpp.plugins.xep_0004 import Form

FENCE = "```"


@dataclass(frozen=True)
class Row:
    """One row of a table: `key` names it for scripts (a client family, a date: never a '/'),
    `label` for people, `text` is its figures as one short line, `cells` each figure by column."""

    key: str
    label: str
    text: str
    cells: Mapping[str, str]


def rows_form(title: str, instructions: str, rows: Iterable[Row]) -> Form:
    """A single-item XEP-0004 result: one visible field per row, then the cells, hidden."""
    rows = list(rows)
    form = Form()
    form["type"] = "result"
    form["title"] = title
    form["instructions"] = instructions
    for row in rows:
        form.add_field(var=row.key, ftype="text-single", label=row.label, value=row.text)
    for row in rows:
        for column, value in row.cells.items():
            form.add_field(var=f"{row.key}/{column}", ftype="hidden", value=value)
    return form


def table_rows(form: Form) -> dict[str, dict[str, str]]:
    """The cells of a form made by `rows_form`, by row key: what a script reads back."""
    rows: dict[str, dict[str, str]] = {}
    for var, field in form.get_fields().items():
        if field["type"] == "hidden" and "/" in var:
            key, _, column = var.rpartition("/")
            value = field["value"]  # slixmpp reads a hidden field as a list of values
            rows.setdefault(key, {})[column] = "".join(value) if isinstance(value, list) else value
    return rows


def preformatted(lines: Iterable[str]) -> str:
    """Lines as an XEP-0393 preformatted block: monospaced in Gajim, Conversations and Cheogram
    (a terminal client such as Profanity is monospaced anyway), so columns line up."""
    return "\n".join([FENCE, *lines, FENCE])


def aligned(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    """Columns padded to line up in a monospaced font: the first to the left, the others (the
    figures) to the right."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]
