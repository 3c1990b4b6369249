"""Import speed: ejabberd's mod_last history, 1,000,000 synthetic records, through the importer.

    .venv/bin/python benchmarks/bench_import.py [--records 1000000] [--keep DIR] [--seed 1]

Writes a synthetic dump in the layout `ejabberdctl dump_table FILE last_activity` gives on
ejabberd 23.01 (a `{tables,...}` header, then each record over two lines, names that are not
printable Latin-1 as byte lists), and the same table as `sqlite3 -csv -header` exports it. Then
times what `xmpp-active-users import` does with them (the source opened and read, the entries
merged into the store; no progress bar), each into a store of its own:

- dump, read only: the parse and the checks of every record, nothing stored;
- dump into an empty store: the first import;
- dump again into that store: every user unchanged (importing twice changes nothing);
- CSV into an empty store.

Progress goes to stderr; the report (the machine, the commit measured, one markdown table) to
stdout. benchmarks/README.md says what each column means.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from machine import bot_version, cpu_model, progress

from bot.importing.ejabberd import REGISTERED_ONLY
from bot.importing.importer import Activity, ImportReport, import_activities
from bot.importing.sources import open_source
from bot.storage.store import Store

DOMAIN = "example.test"
SPREAD = 60 * 86_400  # last logouts: uniform over the past 60 days
STATUSES = (  # (status, share): what mod_last records at a logout, and at registration
    ("", 0.30),
    ("Stream reset by peer", 0.30),
    ("Replaced by new connection", 0.15),
    ("Connection failed: connection closed", 0.10),
    ("Gone for the day, didn't say why", 0.05),
    (REGISTERED_ONLY, 0.10),
)


def user_name(i: int, rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.05:
        return f"łukasz{i}"  # not printable Latin-1: ~p writes the bytes as integers
    if draw < 0.10:
        return f"zoë{i}"  # printable Latin-1 bytes: written raw
    return f"u{i:07d}"


def synthetic(n: int, now: int, seed: int) -> Iterator[tuple[str, int, str]]:
    rng = random.Random(seed)
    statuses = [status for status, _ in STATUSES]
    shares = [share for _, share in STATUSES]
    for i in range(n):
        yield user_name(i, rng), now - rng.randrange(SPREAD), rng.choices(statuses, shares)[0]


def erlang_binary(text: str) -> bytes:
    raw = text.encode()
    if all(32 <= byte < 127 or byte >= 160 for byte in raw):
        return (
            b'<<"'
            + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"'", b"\\'")
            + b'">>'
        )
    return b"<<" + b",".join(str(byte).encode() for byte in raw) + b">>"


def write_dump(path: Path, records: Iterator[tuple[str, int, str]]) -> None:
    with path.open("wb") as out:
        out.write(
            b"{tables,[{last_activity,[{record_name,last_activity},\n"
            b"                         {attributes,[us,timestamp,status]}]}]}.\n"
        )
        for user, stamp, status in records:
            out.write(
                b"{last_activity,{" + erlang_binary(user) + b',<<"' + DOMAIN.encode() + b'">>},\n'
                b"               %d," % stamp + erlang_binary(status) + b"}.\n"
            )


def write_csv(path: Path, records: Iterator[tuple[str, int, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["username", "server_host", "seconds", "state"])
        writer.writerows((user, DOMAIN, stamp, status) for user, stamp, status in records)


def rss_anon_mib() -> float:
    """The process's private resident memory (a mapped file's pages are not in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_import(source: str, path: Path, store_path: Path | None, now: int) -> dict:
    """Read `path` as `source`; merge into the store at `store_path` (None: read only)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    entries = open_source(source, path, now=now).read(lambda _: None)
    if store_path is None:
        report = ImportReport()
        for entry in entries:
            report.imported += isinstance(entry, Activity)
    else:
        with Store(store_path) as store:
            report = import_activities(store, entries, [DOMAIN], dry_run=False)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "rss_anon_mib": rss_anon_mib(),
        "report": report,
    }


COLUMNS = (
    "run",
    "records",
    "s",
    "records/s",
    "CPU s",
    "records/CPU s",
    "private RSS after MiB",
    "imported",
    "unchanged",
    "skipped",
    "rejected",
)


def table(n: int, runs: list[tuple[str, dict]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- |" + " ---: |" * (len(COLUMNS) - 1)]
    for name, run in runs:
        report: ImportReport = run["report"]
        cells = (
            name,
            f"{n:,}",
            f"{run['seconds']:.1f}",
            f"{n / run['seconds']:,.0f}",
            f"{run['cpu_seconds']:.1f}",
            f"{n / run['cpu_seconds']:,.0f}",
            f"{run['rss_anon_mib']:.0f}",
            f"{report.imported:,}",
            f"{report.unchanged:,}",
            f"{sum(report.skipped.values()):,}",
            f"{report.rejected_count:,}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="default 1000000")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="write the files in DIR, keep them"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic data")
    args = parser.parse_args()
    now = int(time.time())
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench-import-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        dump, export = workdir / "last.dump", workdir / "last.csv"
        progress(f"writing {args.records:,} records to {dump} and {export}")
        write_dump(dump, synthetic(args.records, now, args.seed))
        write_csv(export, synthetic(args.records, now, args.seed))
        for store in ("dump.db", "csv.db"):
            for suffix in ("", "-wal", "-shm"):
                (workdir / (store + suffix)).unlink(missing_ok=True)
        runs = []
        for name, source, path, store in (
            ("dump, read only", "ejabberd-mnesia", dump, None),
            ("dump into an empty store", "ejabberd-mnesia", dump, workdir / "dump.db"),
            ("dump again (all unchanged)", "ejabberd-mnesia", dump, workdir / "dump.db"),
            ("CSV into an empty store", "ejabberd-sql", export, workdir / "csv.db"),
        ):
            progress(f"{name}...")
            runs.append((name, timed_import(source, path, store, now)))
            progress(f"  {runs[-1][1]['seconds']:.1f} s")
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        load = os.getloadavg()[0]
        sizes = f"dump {dump.stat().st_size / 1e6:.0f} MB, CSV {export.stat().st_size / 1e6:.0f} MB"
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"Machine: {cpu_model()}; Python {platform.python_version()}; "
        f"SQLite {sqlite3.sqlite_version}\n"
        f"Importer measured: {bot_version()}\n"
        f"Files: {sizes}; peak RSS of the run {peak_mib:.0f} MiB (the dump's pages mapped in "
        f"it included); load average at the end {load:.1f} on {os.cpu_count()} CPUs\n\n"
        + table(args.records, runs)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
