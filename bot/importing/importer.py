"""Importing history: the entries, the checks of what they say, the merge, the report.

What every source shares, so that MAU is right on the first day: the entries a source yields
(`Activity`, `Rejected`, `Ignored`), the checks of a timestamp and a JID, opening a file only if it
is a regular one, the merge into the store and the report. The sources themselves: Prosody's
files in importing/prosody.py, its SQL database in importing/prosody_sql.py, ejabberd's in
importing/ejabberd.py; the list of all in importing/sources.py.

Merge rule: per user and field the newest timestamp wins (the oldest for first_seen), so importing
twice changes nothing. Users of domains not counted are skipped; unreadable files are reported and
the import goes on.

A timestamp must be plausible Unix seconds, or the user's record is rejected (reported, not
imported) and the import goes on: a number (not a string, not a table), finite (not inf or NaN,
which Prosody writes as `(1/0)`, `(0/0)` in its files and as "inf", "nan" in SQL), not before
EARLIEST (2000: no XMPP server recorded a login earlier; negative is refused), not above
MILLISECONDS_ABOVE (that is milliseconds: beyond year 5000 as seconds), and not more than
FUTURE_TOLERANCE after the import's clock (`now`): a timestamp in the future would make the user
active for as long as it lasts. (The store's own range, codec.TIMESTAMPS, holds all of these.)
A user name and domain must make a valid bare JID (slixmpp's rules: nodeprep, IDNA, at most
MAX_JID_PART bytes each), or the record is rejected the same way.

Input is bounded: only regular files are read (a FIFO would block, a device never ends; either
is a SourceError); one user's Prosody file may have MAX_DATA_FILE bytes, a record of an export
(a line, a term) MAX_RECORD bytes: larger is rejected, and memory stays bounded whatever the
input. The report lists MAX_LISTED rejected entries and counts all.
"""

from __future__ import annotations

import math
import os
import reprlib
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from slixmpp.jid import JID, InvalidJID

from ..activity.tracker import exclusion_matcher
from ..core.model import UserRecord, domain_of
from ..storage.codec import TIMESTAMPS
from ..storage.store import Store

_FLUSH_EVERY = 10_000  # records per transaction on large imports
FUTURE_TOLERANCE = 86_400  # seconds a timestamp may be ahead of the import's clock (clock skew)
MILLISECONDS_ABOVE = 10**11  # a "seconds" timestamp above this (year 5138) is milliseconds
EARLIEST = 946_684_800  # 2000-01-01 UTC: no XMPP server recorded a login before
MAX_JID_PART = 1023  # bytes of a user name, of a domain (RFC 7622)
MAX_DATA_FILE = 1 << 20  # bytes of one user's Prosody file (a few hundred in practice)
MAX_RECORD = 1 << 20  # bytes of one record of an export: a line, a term (a few hundred)
MAX_LISTED = 100  # rejected entries the report lists (it counts them all)
MAX_REASONS = 100  # distinct reasons for skipping users (one per domain): the rest lumped


class SourceError(Exception):
    """The source cannot be read at all (nothing is imported): a one-line reason with the fix."""


@dataclass(frozen=True)
class Activity:
    """What one source says about one user. Timestamps: Unix seconds, 0 for unknown."""

    bare_jid: str
    last_login: int = 0
    last_logout: int = 0
    registered: int = 0
    where: str = field(default="", compare=False)  # the file (and line) it was read from


@dataclass(frozen=True)
class Rejected:
    where: str  # a file, or a database row's host/user/store
    reason: str


@dataclass(frozen=True)
class Ignored:
    """A record of something else than users' activity, e.g. another table of a full dump."""

    reason: str


Entry = Activity | Rejected | Ignored


@dataclass
class ImportReport:
    imported: int = 0  # users new to the store
    updated: int = 0  # users whose record changed
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> users
    rejected: list[Rejected] = field(default_factory=list)  # the first MAX_LISTED
    rejected_count: int = 0  # all of them
    ignored: Counter[str] = field(default_factory=Counter)  # reason -> records

    def reject(self, entry: Rejected) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_LISTED:
            self.rejected.append(entry)

    def skip(self, reason: str, *, else_: str | None = None) -> None:
        """Count a skipped user; past MAX_REASONS reasons, a new one is counted as `else_`."""
        if else_ is not None and reason not in self.skipped and len(self.skipped) >= MAX_REASONS:
            reason = else_
        self.skipped[reason] += 1

    def summary(self, dry_run: bool) -> str:
        verb = "would be" if dry_run else "were"
        lines = [
            f"Users imported: {self.imported}, updated: {self.updated}, "
            f"unchanged: {self.unchanged} ({'dry run: nothing written' if dry_run else 'saved'})"
        ]
        for reason, users in sorted(self.skipped.items()):
            lines.append(f"Skipped {users} users: {reason}")
        for reason, records in sorted(self.ignored.items()):
            lines.append(f"Ignored {records} records: {reason}")
        if self.rejected_count:
            lines.append(f"{self.rejected_count} entries {verb} rejected:")
            lines += [f"  {entry.where}: {entry.reason}" for entry in self.rejected]
            if self.rejected_count > len(self.rejected):
                lines.append(f"  ... and {self.rejected_count - len(self.rejected)} more")
        return "\n".join(lines)


# --- reading files, checking what they say ----------------------------------------------------


def open_regular(path: Path) -> BinaryIO:
    """`path` open for reading, if it is a regular file; SourceError saying why not. Opened
    without blocking, then checked: a FIFO without a writer would block a plain open forever,
    and a device (/dev/zero) never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SourceError(not_regular(path, mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def not_regular(path: Path, mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISDIR: "a directory",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a plain file")
    return f"{path} is not a regular file ({kind}): give the file itself"


def checked_timestamp(value: Any, now: float, field: str = "timestamp") -> int:
    """`value` as Unix seconds; ValueError saying why if it is not a plausible timestamp (the
    rules: see the module's docstring). `field` names it in the reason."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} is not a number: {reprlib.repr(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} is not a finite number ({value})")
    if value < 0:
        raise ValueError(f"{field} is negative ({_shown(value)})")
    if value < EARLIEST:
        raise ValueError(f"{field} {value} is before 2000: no XMPP server recorded it")
    if value > MILLISECONDS_ABOVE * 1000:  # not even milliseconds
        raise ValueError(f"{field} is far too large for a timestamp ({_shown(value)})")
    if value > MILLISECONDS_ABOVE:
        raise ValueError(f"{field} {value} looks like milliseconds (as seconds: after year 5000)")
    if value > now + FUTURE_TOLERANCE:
        when = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise ValueError(
            f"{field} {value} ({when}) is in the future "
            f"(more than {FUTURE_TOLERANCE // 3600} h after the import's clock)"
        )
    if int(value) not in TIMESTAMPS:  # the store's range holds all of the above
        raise ValueError(f"{field} {value} is out of the range the store holds")
    return int(value)


def checked_jid(bare_jid: str) -> str:
    """`bare_jid` (user@domain) as slixmpp normalizes it; ValueError if it is not a valid one."""
    user, _, domain = bare_jid.rpartition("@")
    for part, name in ((user, "user name"), (domain, "domain")):
        size = len(part.encode("utf-8", errors="surrogatepass"))
        if size > MAX_JID_PART:  # checked first: stringprep on megabytes takes seconds
            raise ValueError(f"a {name} of {size} bytes (at most {MAX_JID_PART})")
    try:
        jid = JID(bare_jid)
    except InvalidJID as exc:
        raise ValueError(f"{reprlib.repr(bare_jid)} is not a valid JID ({exc})") from None
    if not jid.user or jid.resource:
        raise ValueError(f"{reprlib.repr(bare_jid)} is not a valid JID (not user@domain)")
    return str(jid.bare)


def _shown(value: float) -> str:
    """A number for a reason: a huge integer (Python refuses to print one of over 4300 digits)
    by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"of {value.bit_length()} bits"
    return str(value)


# --- merging into the store ------------------------------------------------------------------


def merge(existing: UserRecord | None, activity: Activity) -> UserRecord:
    """Newest login and logout win; first_seen is the oldest we know."""
    known = [t for t in (activity.registered, activity.last_login, activity.last_logout) if t]
    first_seen = min(known) if known else 0
    if existing is None:
        return UserRecord(first_seen, activity.last_login, activity.last_logout)
    if existing.first_seen and first_seen:
        first_seen = min(existing.first_seen, first_seen)
    return existing._replace(  # its sessions and clients stay (an import knows no client)
        first_seen=first_seen or existing.first_seen,
        last_login=max(existing.last_login, activity.last_login),
        last_logout=max(existing.last_logout, activity.last_logout),
    )


def import_activities(
    store: Store,
    entries: Iterable[Entry],
    domains: Iterable[str],
    *,
    dry_run: bool,
    exclude: Iterable[str] = (),
) -> ImportReport:
    """Merge the entries into the store; users of other domains, and those `[counting] exclude`
    matches (never counted nor stored), are skipped and counted in the report."""
    counted = set(domains)
    excluded = exclusion_matcher(exclude)
    report = ImportReport()
    for entry in entries:
        if isinstance(entry, Rejected):
            report.reject(entry)
            continue
        if isinstance(entry, Ignored):
            report.ignored[entry.reason] += 1
            continue
        try:
            bare_jid = checked_jid(entry.bare_jid)
        except ValueError as exc:
            report.reject(Rejected(entry.where or "a record", str(exc)))
            continue
        if domain_of(bare_jid) not in counted:
            report.skip(
                f"domain {domain_of(bare_jid)} is not counted",
                else_="other domains, not counted (too many to list)",
            )
            continue
        if excluded(bare_jid):
            report.skip("excluded by [counting] exclude")
            continue
        if not (entry.last_login or entry.last_logout):
            report.skip("no login or logout recorded (never active)")
            continue
        key = store.key_of(bare_jid)
        existing = store.get(key)
        merged = merge(existing, entry)
        if merged == existing:
            report.unchanged += 1
            continue
        if existing is None:
            report.imported += 1
        else:
            report.updated += 1
        if not dry_run:
            store.put(key, merged)
            if store.pending >= _FLUSH_EVERY:
                # An import is no sign of the bot's life: the heartbeat stays as it was.
                store.flush(store.heartbeat, heartbeat_interval=0)
    if dry_run:
        store.discard_pending()  # a damaged record read meanwhile stays where it is
    else:
        store.flush(store.heartbeat, heartbeat_interval=0)
    return report
