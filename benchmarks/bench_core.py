"""Benchmark of the core (store, index, tracker) against the seed's loop, on real stores.

    .venv/bin/python benchmarks/bench_core.py [--sizes 10000,100000,1000000] [--keep DIR]
                                              [--nodeinfo] [--spread-days 60]

For each size N: builds a store of N synthetic users through `Store` (put + flush in batches),
runs a port of the seed's loop over it, starts and stops the bot's core once in a fresh process
(a start that reads every record, as after an import; a clean stop, which writes the index
snapshot), then measures load (from the snapshot), memory, counts, index updates and event
throughput in another fresh Python process (so that memory is that process's alone). Progress
goes to stderr; the report (one markdown table, the machine, the targets) to stdout.
benchmarks/README.md says what each column means.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import random
import shelve
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from machine import bot_version, cpu_model, progress

from bot.activity.tracker import ActivityTracker
from bot.core.counter import DAY, DEFAULT_WINDOWS, ActivityIndex, Counts
from bot.core.model import UserRecord, with_client_activity
from bot.storage import index_snapshot
from bot.storage.sqlite_dict import SqliteDict
from bot.storage.store import Store
from bot.testbed.seed import SeedRecord, seed_counts

DOMAIN = "example.test"
# the store's key layout (bot/storage/store.py); the seed port reads it raw
USER_KEY_PREFIX = "user:"
SPREAD_DAYS = 60  # last activity of offline users: uniform over the past 60 days (--spread-days)
ONLINE_SHARE = 0.01  # ~1% online, with 1 or 2 sessions
NODEINFO_WINDOW = 180 * DAY  # --nodeinfo: the index also keeps NodeInfo's half year
# Client families of the synthetic users, by share (a realistic mix: a big mobile client, a few
# others, a host family, no caps); 15% of the users also use a second one.
FAMILIES = (
    ("conversations", 35),
    ("monal", 12),
    ("gajim", 10),
    ("dino", 8),
    ("cheogram", 6),
    ("siskin", 6),
    ("unknown", 8),
    ("profanity", 3),
    ("movim", 3),
    ("chat.example.net", 4),
    ("other", 5),
)
TWO_CLIENTS_SHARE = 0.15
CAPS_NODE = "http://conversations.im"  # what the sessions of the timed events announce
RESOURCES = ("phone", "laptop", "web", "tablet")
BUILD_BATCH = 50_000  # records put, then flushed in one transaction
WRITE_EVENTS = 200_000  # events of the store-write run
EVENTS_PER_FLUSH = 1_000  # one flush per simulated second at 1,000 events/s
COUNT_NUMBER, COUNT_REPEAT = 100, 100  # 10,000 calls of tracker.counts, median of 100 batches
PAIR_BATCH = 500  # online-and-back pairs per timed batch (index update, tracker event)
PAIR_USERS = 10_000  # distinct users for those pairs (fewer when N is smaller)
SEED_RUNS_UP_TO = 100_000  # 3 runs of the seed port up to this size, 1 above (it is slow)

TARGET_SIZE = 1_000_000


def jid(i: int) -> str:
    return f"u{i:06d}@{DOMAIN}"


def with_clients(rng: random.Random, record: UserRecord, client_share: float) -> UserRecord:
    """The client families of one synthetic user (none, for a `1 - client_share` of them, as
    users last seen before the bot learnt clients): one, sometimes two; online sessions run
    one of them."""
    if rng.random() >= client_share:
        return record
    names, weights = zip(*FAMILIES, strict=True)
    families = rng.choices(names, weights)
    if rng.random() < TWO_CLIENTS_SHARE:
        families += [f for f in rng.choices(names, weights) if f not in families]
    clients: tuple = ()
    for n, family in enumerate(families):  # the first one was used last
        clients = with_client_activity(clients, family, record.last_active - n * 3600)
    session_clients = tuple(families[n % len(families)] for n in range(len(record.sessions)))
    return record._replace(clients=clients, session_clients=session_clients)


def synthetic_record(
    rng: random.Random, now: int, i: int, spread: int, client_share: float = 1.0
) -> UserRecord:
    return with_clients(rng, synthetic_activity(rng, now, i, spread), client_share)


def synthetic_activity(rng: random.Random, now: int, i: int, spread: int) -> UserRecord:
    """One user: ~1% online; the others last active over the past `spread` seconds, some
    exactly on a window's edge (so that an off-by-one in either implementation shows), some
    with a lost logout (crash) or a missed login."""
    if rng.random() < ONLINE_SHARE:
        login = now - rng.randrange(12 * 3600)
        logout = login - rng.randrange(1, 7 * DAY)
        sessions = RESOURCES[:1] if rng.random() < 0.7 else RESOURCES[:2]
        return UserRecord(logout - rng.randrange(365 * DAY), login, logout, sessions)
    if i % 997 == 0:
        last_active = now - rng.choice(DEFAULT_WINDOWS) + rng.choice((-1, 0, 1))
    else:
        last_active = now - rng.randrange(spread)
    session = rng.randrange(60, 8 * 3600)
    roll = rng.random()
    if roll < 0.90:  # logged in, later out
        login, logout = last_active - session, last_active
    elif roll < 0.97:  # the logout was lost (crash): the login is the latest
        login, logout = last_active, last_active - session - rng.randrange(DAY)
    else:  # only a logout was ever seen (the login was missed)
        login, logout = 0, last_active
    first_seen = min(t for t in (login, logout) if t) - rng.randrange(365 * DAY)
    return UserRecord(first_seen, login, logout)


def build_store(path: Path, n: int, now: int, seed: int, spread: int, client_share: float) -> float:
    """N users written through Store: put BUILD_BATCH records, flush once, repeat."""
    rng = random.Random(seed)
    started = time.perf_counter()
    store = Store(path)
    try:
        for first in range(0, n, BUILD_BATCH):
            for i in range(first, min(n, first + BUILD_BATCH)):
                store.put(jid(i), synthetic_record(rng, now, i, spread, client_share))
            store.flush(now)
    finally:
        store.close(now)  # heartbeat = now: the writer was alive until now
    return time.perf_counter() - started


def stored_records(shelf: shelve.Shelf[Any]) -> Iterator[SeedRecord]:
    """The seed's reads over our store file: every key (`store:users()`), then one lookup and
    one unpickle per user (`store:get(username)`). Online users are those whose record lists
    sessions (the seed asks its live session table first; here the record is the only place
    that knows, so it is read for every user)."""
    for key in shelf:
        if not key.startswith(USER_KEY_PREFIX):
            continue
        try:
            # One lookup, like store:get. Not shelf.get(): Shelf.get asks `key in dict`
            # first, which SqliteDict answers with a second identical SELECT.
            lastlog_data = shelf[key]
        except KeyError:
            continue
        yield lastlog_data


def seed_port(path: Path, now: int) -> tuple[int, int, int]:
    """mod_measure_active_users' update_calculations() over our store file: the seed's loop
    (bot/testbed/seed.py), fed by the seed's per-user store reads."""
    shelf = shelve.Shelf(SqliteDict(path, readonly=True))
    try:
        return seed_counts(stored_records(shelf), now)
    finally:
        shelf.close()


# --- the measuring process ---------------------------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A memory figure of this process (VmRSS, VmHWM) in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def plan_events(rng: random.Random, n: int, count: int) -> list[tuple[bool, str, str]]:
    """Logins of random users (mostly offline: their record is read from the store) and logouts
    of random online sessions, about half each, with at most ~1% of N online."""
    target_online = max(1, int(n * ONLINE_SHARE))
    online: list[tuple[str, str]] = []
    online_set: set[tuple[str, str]] = set()
    events: list[tuple[bool, str, str]] = []
    while len(events) < count:
        if online and (len(online) >= target_online or rng.random() < 0.5):
            k = rng.randrange(len(online))
            online[k], online[-1] = online[-1], online[k]
            session = online.pop()
            online_set.discard(session)
            events.append((False, *session))
        else:
            session = (jid(rng.randrange(n)), rng.choice(RESOURCES))
            if session in online_set:
                continue
            online.append(session)
            online_set.add(session)
            events.append((True, *session))
    return events


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def figures(tracker: ActivityTracker, now: int) -> list[Any]:
    """Every figure at `now`, per domain and client family, as JSON compares them."""

    def plain(counts: Counts) -> list[Any]:
        return [
            sorted(counts.active.items()),
            counts.online_users,
            counts.online_sessions,
            counts.known_users,
            sorted(counts.new_users.items()),
        ]

    windows = tracker.windows + tracker.extra_windows
    clients = tracker.client_counts_by_domain(now)
    return [
        [domain, plain(counts)] for domain, counts in tracker.counts_by_domain(now, windows).items()
    ] + [
        [domain, family, sorted(c.active.items()), c.online_users, c.online_sessions]
        for domain, by_family in clients.items()
        for family, c in sorted(by_family.items())
    ]


def first_start(path: Path, n: int, now: int, nodeinfo: bool) -> dict[str, Any]:
    """The bot's core started on a store it has never seen (every record read: as after the
    build, an import, or a crash), then stopped cleanly at `now` (the index snapshot written).
    The sessions stored online stay online (as with ejabberd's pings), so that the snapshot
    has users online, as a stop of a running bot has."""
    importlib.import_module("bot.app.daemon")
    started = time.perf_counter()
    store = Store(path)
    extra_windows = (NODEINFO_WINDOW,) if nodeinfo else ()
    tracker = ActivityTracker(store, [DOMAIN], extra_windows=extra_windows)
    report = tracker.load(now, close_stale_sessions=False)
    load_s = time.perf_counter() - started
    if report.users != n or report.snapshot:
        raise AssertionError(f"the first start found {report.users} users, {report.snapshot!r}")
    # What the next start must find: every record read again, the sessions closed at the
    # heartbeat (a reader beside the writer: nothing is written).
    with Store(path, readonly=True) as reader:
        scanned = ActivityTracker(reader, [DOMAIN], extra_windows=extra_windows)
        scanned.load(now)
        result = figures(scanned, now)
        del scanned
    started = time.perf_counter()
    store.close(now, then=tracker.snapshot_writer(now))
    snapshot_s = time.perf_counter() - started
    snapshot_bytes = index_snapshot.path_for(path).stat().st_size
    return {
        "scan_load_s": load_s,
        "figures": result,
        "close_s": snapshot_s,
        "snapshot_bytes": snapshot_bytes,
    }


def measure(path: Path, n: int, now: int, seed: int, nodeinfo: bool) -> dict[str, Any]:
    """Everything but the build, the seed port and the first start, in this (fresh) process."""
    # The whole bot's code (slixmpp included) is loaded first, so that "whole process" is the
    # bot's process: the baseline is the interpreter with every module the daemon imports.
    importlib.import_module("bot.app.daemon")
    rss_before_open = proc_status_kib("VmRSS")

    # Load: the bot's start-up path (writer; sessions left open are closed at the heartbeat).
    started = time.perf_counter()
    store = Store(path)
    extra_windows = (NODEINFO_WINDOW,) if nodeinfo else ()
    tracker = ActivityTracker(store, [DOMAIN], extra_windows=extra_windows)
    report = tracker.load(now)
    load_s = time.perf_counter() - started
    rss_loaded = proc_status_kib("VmRSS")
    peak_loaded = proc_status_kib("VmHWM")
    if report.users != n:
        raise AssertionError(f"load found {report.users} users, the store has {n}")
    if not report.snapshot:
        raise AssertionError("the load did not use the index snapshot (the log says why)")
    loaded_figures = figures(tracker, now)

    # Counts: ours at `now` (compared with the seed port by the caller), then timed.
    counts = tracker.counts(now)
    active = [counts.active[window] for window in DEFAULT_WINDOWS]
    timer = timeit.Timer(lambda: tracker.counts(now))
    count_s = statistics.median(
        total / COUNT_NUMBER for total in timer.repeat(repeat=COUNT_REPEAT, number=COUNT_NUMBER)
    )
    families = len(tracker.client_counts(now))
    timer = timeit.Timer(lambda: tracker.client_counts(now))
    client_count_s = statistics.median(
        total / COUNT_NUMBER for total in timer.repeat(repeat=COUNT_REPEAT, number=COUNT_NUMBER)
    )
    nodeinfo_s = None
    if nodeinfo:
        windows = (30 * DAY, NODEINFO_WINDOW)
        timer = timeit.Timer(lambda: tracker.counts(now, windows))
        nodeinfo_s = statistics.median(
            total / COUNT_NUMBER for total in timer.repeat(repeat=COUNT_REPEAT, number=COUNT_NUMBER)
        )

    rng = random.Random(seed + 1)
    clock = now + 1
    store.flush(clock)  # the sessions closed by load(), untimed
    sample = [jid(i) for i in rng.sample(range(n), min(n, PAIR_USERS))]

    # Tracker event: an offline user logs in (record read from SQLite) and out again. Distinct
    # users, so none is among the pending writes; the flush after each batch is not timed here.
    event_s: list[float] = []
    for batch in batches(sample, PAIR_BATCH):
        started = time.perf_counter()
        for bare_jid in batch:
            tracker.session_started(bare_jid, "bench", clock, CAPS_NODE)
            tracker.session_ended(bare_jid, "bench", clock)
        event_s.append((time.perf_counter() - started) / (2 * len(batch)))
        clock += 1
        store.flush(clock)

    # Index update: ActivityIndex.replace for an offline user going online and back, on an index
    # of the same N users (built apart, so the tracker's own index is not touched from outside).
    # The sampled users are all offline here: load() closed the open sessions, the pairs ended.
    index = ActivityIndex.build(record for _, record in store.users())
    pairs = []
    for bare_jid in sample:
        before = store.get(bare_jid)
        if before is not None and not before.sessions:
            online = before._replace(
                last_login=clock,
                sessions=("bench",),
                clients=with_client_activity(before.clients, "conversations", clock),
                session_clients=("conversations",),
            )
            after = online._replace(
                last_logout=clock + 60,
                sessions=(),
                clients=with_client_activity(online.clients, "conversations", clock + 60),
                session_clients=(),
            )
            pairs.append((before, online, after))
    replace_s: list[float] = []
    for batch in batches(pairs, PAIR_BATCH):
        started = time.perf_counter()
        for before, online, after in batch:
            index.replace(before, online)
            index.replace(online, after)
        replace_s.append((time.perf_counter() - started) / (2 * len(batch)))
    del index, pairs

    # Store write: WRITE_EVENTS events, one flush (timed) per EVENTS_PER_FLUSH events.
    events = plan_events(rng, n, WRITE_EVENTS)
    flush_total = 0.0
    started = time.perf_counter()
    for batch in batches(events, EVENTS_PER_FLUSH):
        clock += 1
        for is_login, bare_jid, resource in batch:
            if is_login:
                tracker.session_started(bare_jid, resource, clock, CAPS_NODE)
            else:
                tracker.session_ended(bare_jid, resource, clock)
        flush_started = time.perf_counter()
        store.flush(clock)
        flush_total += time.perf_counter() - flush_started
    write_s = time.perf_counter() - started
    store.close(clock)

    return {
        "active": active,
        "figures": loaded_figures,
        "load_s": load_s,
        "rss_before_open_kib": rss_before_open,
        "rss_loaded_kib": rss_loaded,
        "peak_loaded_kib": peak_loaded,
        "count_s": count_s,
        "client_count_s": client_count_s,
        "families": families,
        "nodeinfo_count_s": nodeinfo_s,
        "event_s": statistics.median(event_s),
        "write_events": len(events),
        "write_s": write_s,
        "write_flush_s": flush_total,
        "replace_s": statistics.median(replace_s),
    }


def measure_in_subprocess(
    path: Path, n: int, now: int, seed: int, nodeinfo: bool, step: str = "--measure"
) -> dict[str, Any]:
    job = json.dumps({"path": str(path), "n": n, "now": now, "seed": seed, "nodeinfo": nodeinfo})
    done = subprocess.run(
        [sys.executable, __file__, step, job],
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the report -------------------------------------------------------------------------------


def cpu_count() -> int:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if line.startswith("processor"))


def remove_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock", ".index"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def bench_size(workdir: Path, n: int, now: int, args: argparse.Namespace) -> dict[str, Any]:
    seed = args.seed
    path = workdir / f"users-{n}.db"
    remove_store(path)
    progress(f"[{n:,}] building the store: {path}")
    build_s = build_store(path, n, now, seed, args.spread_days * DAY, args.client_share)
    store_bytes = path.stat().st_size
    progress(f"[{n:,}] built in {build_s:.1f} s ({store_bytes / 2**20:.0f} MiB)")

    runs = 3 if n <= SEED_RUNS_UP_TO else 1
    seed_times = []
    seed_active: tuple[int, int, int] = (0, 0, 0)
    for run in range(runs):
        started = time.perf_counter()
        seed_active = seed_port(path, now)
        seed_times.append(time.perf_counter() - started)
        progress(f"[{n:,}] seed port run {run + 1}/{runs}: {seed_times[-1]:.2f} s {seed_active}")

    progress(f"[{n:,}] first start (every record read), clean stop (subprocess)")
    first = measure_in_subprocess(path, n, now, seed, args.nodeinfo, "--first-start")
    progress(
        f"[{n:,}] load without snapshot {first['scan_load_s']:.2f} s; stop with snapshot "
        f"{first['close_s']:.2f} s ({first['snapshot_bytes'] / 2**20:.0f} MiB)"
    )
    progress(f"[{n:,}] load, counts, index updates, store writes (subprocess)")
    result = measure_in_subprocess(path, n, now, seed, args.nodeinfo)
    if tuple(result["active"]) != seed_active:
        raise AssertionError(
            f"N={n}, now={now}: our counts {tuple(result['active'])} differ from the seed "
            f"port's {seed_active} (24 h, 7 d, 30 d)"
        )
    if result["figures"] != first["figures"]:
        raise AssertionError(
            f"N={n}, now={now}: the figures loaded from the snapshot differ from those of the "
            "start that read every record (per domain or client family)"
        )
    progress(
        f"[{n:,}] ours == seed port's, client families equal to the full scan's; load "
        f"{result['load_s']:.2f} s"
    )
    del first["figures"]
    result.update(first)
    result.update(
        n=n,
        build_s=build_s,
        seed_s=statistics.median(seed_times),
        seed_runs=runs,
        store_bytes=store_bytes,
    )
    return result


def derived(row: dict[str, Any]) -> dict[str, float]:
    n = row["n"]
    return {
        "write_rate": row["write_events"] / row["write_s"],
        "rss_whole_b": row["rss_loaded_kib"] * 1024 / n,
        "rss_delta_b": (row["rss_loaded_kib"] - row["rss_before_open_kib"]) * 1024 / n,
        "speedup": row["seed_s"] / row["count_s"],
        "load_ratio": row["load_s"] / row["seed_s"],
    }


COLUMNS = (
    "users",
    "build s",
    "store write events/s",
    "load s",
    "load ÷ seed count",
    "load without snapshot s",
    "RSS B/user (whole process)",
    "RSS B/user (added by load)",
    "count (ours) µs",
    "count (seed) s",
    "speed-up",
    "index update µs",
    "tracker event µs",
    "client counts µs (families)",
    "store B/user",
)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(" ---: " for _ in COLUMNS) + "|",
    ]
    for row in rows:
        d = derived(row)
        seed_runs = f" ({row['seed_runs']} run{'s' if row['seed_runs'] > 1 else ''})"
        cells = (
            f"{row['n']:,}",
            f"{row['build_s']:.1f}",
            f"{d['write_rate']:,.0f}",
            f"{row['load_s']:.2f}",
            f"{d['load_ratio']:.3f}",
            f"{row['scan_load_s']:.2f}",
            f"{d['rss_whole_b']:,.0f}",
            f"{d['rss_delta_b']:,.0f}",
            f"{row['count_s'] * 1e6:.1f}",
            f"{row['seed_s']:.3f}{seed_runs}",
            f"{d['speedup']:,.0f}x",
            f"{row['replace_s'] * 1e6:.2f}",
            f"{row['event_s'] * 1e6:.1f}",
            f"{row['client_count_s'] * 1e6:.1f} ({row['families']})",
            f"{row['store_bytes'] / row['n']:.0f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(row: dict[str, Any]) -> list[str]:
    d = derived(row)
    checks = (
        ("count (ours) < 50 µs", row["count_s"] * 1e6, 50, "<", "µs"),
        ("speed-up ≥ 100,000x", d["speedup"], 100_000, "≥", "x"),
        ("load < 3 s", row["load_s"], 3, "<", "s"),
        ("RSS (whole process) < 250 B/user", d["rss_whole_b"], 250, "<", "B/user"),
        ("store write ≥ 20,000 events/s", d["write_rate"], 20_000, "≥", "events/s"),
        ("index update < 20 µs", row["replace_s"] * 1e6, 20, "<", "µs"),
    )
    lines = []
    for label, value, limit, relation, unit in checks:
        met = value < limit if relation == "<" else value >= limit
        shown = f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
        shown += unit if unit == "x" else " " + unit
        lines.append(f"- {label}: {shown}: {'met' if met else 'NOT met'}")
    return lines


def report(rows: list[dict[str, Any]], total_s: float, args: argparse.Namespace) -> str:
    horizon = "30 days + NodeInfo's 180 days (--nodeinfo)" if args.nodeinfo else "30 days"
    out = [
        f"Machine: {cpu_model()}, {cpu_count()} CPUs; Python {platform.python_version()}; "
        f"SQLite {sqlite3.sqlite_version}; sortedcontainers {version('sortedcontainers')}",
        f"Core measured: {bot_version()}",
        f"Users last active over the past {args.spread_days} days; {args.client_share:.0%} with "
        f"client families; the index keeps {horizon}",
        "",
        table(rows),
        "",
    ]
    at = next((row for row in rows if row["n"] == TARGET_SIZE), None)
    if at is not None:
        out.append(f"Targets at {TARGET_SIZE:,} users:")
    else:
        at = max(rows, key=lambda row: row["n"])
        out.append(
            f"Targets (stated for {TARGET_SIZE:,} users; {TARGET_SIZE:,} was not run, so checked "
            f"at {at['n']:,} for information only):"
        )
    out.extend(targets(at))
    out.append("")
    for row in rows:
        out.append(
            f"N={row['n']:,}: peak RSS during load {row['peak_loaded_kib'] / 1024:.0f} MiB, "
            f"RSS before opening the store {row['rss_before_open_kib'] / 1024:.1f} MiB, "
            f"after load {row['rss_loaded_kib'] / 1024:.0f} MiB; "
            f"store write spent {row['write_flush_s'] / row['write_s']:.0%} in flush; "
            f"clean stop with the index snapshot {row['close_s']:.2f} s (snapshot "
            f"{row['snapshot_bytes'] / 2**20:.0f} MiB)"
            + (
                f"; NodeInfo's counts (30 and 180 days) {row['nodeinfo_count_s'] * 1e6:.1f} µs"
                if row.get("nodeinfo_count_s")
                else ""
            )
        )
    out.append(f"Total run time: {total_s:.0f} s")
    return "\n".join(out)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[10_000, 100_000, 1_000_000],
        help="comma-separated numbers of users (default: 10000,100000,1000000)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="build the stores in DIR and leave them there (as the benchmark left them: the "
        "store-write run adds its events); default: a temporary folder, removed at the end",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic data")
    parser.add_argument(
        "--nodeinfo",
        action="store_true",
        help="load the index as with [nodeinfo] enabled: it also keeps NodeInfo's 180 days",
    )
    parser.add_argument(
        "--spread-days",
        type=int,
        default=SPREAD_DAYS,
        help=f"offline users' last activity: uniform over this many days (default {SPREAD_DAYS})",
    )
    parser.add_argument(
        "--client-share",
        type=float,
        default=1.0,
        help="share of the users with client families in their record (default 1: all)",
    )
    parser.add_argument("--measure", metavar="JOB", help=argparse.SUPPRESS)  # the subprocess
    parser.add_argument("--first-start", metavar="JOB", help=argparse.SUPPRESS)  # another one
    args = parser.parse_args()

    if args.first_start:
        job = json.loads(args.first_start)
        result = first_start(Path(job["path"]), job["n"], job["now"], job["nodeinfo"])
        print(json.dumps(result))
        return 0
    if args.measure:
        job = json.loads(args.measure)
        result = measure(Path(job["path"]), job["n"], job["now"], job["seed"], job["nodeinfo"])
        print(json.dumps(result))
        return 0

    started = time.perf_counter()
    now = int(time.time())
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = args.keep
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-core-"))
    try:
        rows = []
        for n in args.sizes:
            rows.append(bench_size(workdir, n, now, args))
            if args.keep is None:
                remove_store(workdir / f"users-{n}.db")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(rows, time.perf_counter() - started, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
