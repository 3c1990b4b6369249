"""The status page (and /metrics) at size: bytes served and time to serve, 1M users, 365 days.

    .venv/bin/python benchmarks/bench_status_page.py [--users 1000000] [--days 365] [--requests 40]

Builds a store of N synthetic users (bench_core's users: last activity over 60 days, ~1% online)
and a daily snapshot for each of the last D days, then runs the real `Bot` on it (loaded as at
start-up, never connected: nothing here needs an XMPP server) with its real HTTP listener on a
free port of 127.0.0.1. Then, one request at a time, in this order:

- `status_view`: gathering the page's data, as the handler does (the figures from the index; the
  stored days read in the store's worker thread; the store's size by a stat in a thread);
- `render`: turning it into HTML (CPU on the event loop);
- `GET /` and `GET /metrics` by a client in a separate process (Python's urllib), over real
  HTTP (plain, and asking for gzip as browsers do), while a 1 ms probe task on the bot's event
  loop notes how late it wakes up: the longest such stall is the most any request held the loop.

Progress goes to stderr; the report (the machine, one markdown table, the targets) to stdout.
benchmarks/README.md says what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench_core import DOMAIN, SPREAD_DAYS, build_store
from machine import bot_version, cpu_model, progress

from bot.admin.history import utc_day
from bot.app.daemon import Bot
from bot.config import load_settings
from bot.core.counter import DAY
from bot.storage.store import Store
from bot.testbed.botconfig import write_config
from bot.web.server import WebServer
from bot.web.statuspage import render

TARGET_USERS = 1_000_000
TARGET_PAGE_BYTES = 100_000  # per domain, before compression
TARGET_GET_P95_MS = 100
TARGET_STALL_MS = 20


def add_days(path: Path, days: int, now: int) -> None:
    """A snapshot for each of the last `days` days: every day the page's charts can show."""
    with Store(path) as store:
        for back in range(1, days):
            dau = 300_000 + (back * 7919) % 50_000
            figures = {
                "active": {"1d": dau, "7d": int(dau * 1.9), "30d": int(dau * 2.8)},
                "new": {"1d": 1_000 + back % 500, "7d": 7_000, "30d": 30_000},
                "peak_online": dau // 4,
            }
            store.put_day(utc_day(now - back * DAY), {DOMAIN: figures})
        store.flush(now)


async def timed(work: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    """Milliseconds of each run."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return times


# The HTTP client, in a process of its own started once (so that no fork of this big process
# stalls the loop being measured): reads "URL gzip|plain" lines, answers "ms bytes" lines.
CLIENT = """
import sys, time, urllib.request
for line in sys.stdin:
    url, encoding = line.split()
    headers = {"Accept-Encoding": "gzip"} if encoding == "gzip" else {}
    request = urllib.request.Request(url, headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    print(f"{(time.perf_counter() - started) * 1000} {len(body)}", flush=True)
"""


class Client:
    """GET requests made by the client process, one at a time."""

    async def __aenter__(self) -> Client:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        await self._process.wait()

    async def get(self, url: str, *, gzip_ok: bool) -> tuple[float, int]:
        """(ms until the whole answer was read, bytes received)."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(f"{url} {'gzip' if gzip_ok else 'plain'}\n".encode())
        answer = await self._process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the client process failed on {url}")
        ms, size = answer.decode().split()
        return float(ms), int(size)


class StallProbe:
    """A task that sleeps 1 ms again and again, noting how late it wakes (`late_ms`), and how
    much CPU the loop's thread used meanwhile (`own_ms`): what held the loop itself, apart from
    waiting for a CPU on a busy machine."""

    def __init__(self) -> None:
        self.late_ms: list[float] = []
        self.own_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wall, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(0.001)
            self.late_ms.append(max(0.0, loop.time() - wall - 0.001) * 1000)
            self.own_ms.append((time.thread_time() - cpu) * 1000)

    def __enter__(self) -> StallProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def measure(folder: Path, users: int, days: int, requests: int) -> dict[str, float]:
    now = int(time.time())
    store_path = folder / "activity.db"
    progress(f"Building a store of {users:,} users and {days} days of snapshots...")
    build_store(store_path, users, now, seed=1, spread=SPREAD_DAYS * DAY, client_share=1.0)
    add_days(store_path, days, now)
    config = write_config(
        folder / "config.toml",
        component_jid="active.example.test",
        secret="never used: the bot does not connect",
        domains=[DOMAIN],
        admins=[f"admin@{DOMAIN}"],
        store_path=store_path,
        metrics_listen="",  # the benchmark's own listener below, on a free port
    )
    progress("Loading it as the bot does at start...")
    bot = Bot(load_settings(config, environ={}))
    server = WebServer("127.0.0.1", 0, bot.http_routes())
    await server.start()
    try:
        progress(f"Measuring, {requests} requests of each kind...")
        view = await bot.status_view()
        page = render(view).encode()
        view_ms = await timed(bot.status_view, requests)

        async def render_once() -> None:
            render(view)

        render_ms = await timed(render_once, requests)
        async with Client() as client:
            await client.get(f"{server.url}/", gzip_ok=False)  # the client's own warm-up
            with StallProbe() as probe:
                get_ms, sizes = zip(
                    *[await client.get(f"{server.url}/", gzip_ok=False) for _ in range(requests)],
                    strict=True,
                )
                gzip_ms, gzip_sizes = zip(
                    *[await client.get(f"{server.url}/", gzip_ok=True) for _ in range(requests)],
                    strict=True,
                )
                metrics_ms, metrics_sizes = zip(
                    *[
                        await client.get(f"{server.url}/metrics", gzip_ok=False)
                        for _ in range(requests)
                    ],
                    strict=True,
                )
        points = page.count(b"<circle")
    finally:
        await server.close()
        await asyncio.to_thread(bot.store.close, now)
    return {
        "users": users,
        "days": days,
        "known": view.by_domain[DOMAIN].known_users,
        "points": points,
        "page_bytes": max(sizes),
        "gzip_bytes": max(gzip_sizes),
        "gzip_level9_bytes": len(gzip.compress(page, 9)),
        "view_p50": statistics.median(view_ms),
        "view_p95": p(view_ms, 95),
        "render_p50": statistics.median(render_ms),
        "render_p95": p(render_ms, 95),
        "get_p50": statistics.median(get_ms),
        "get_p95": p(list(get_ms), 95),
        "gzip_get_p50": statistics.median(gzip_ms),
        "stall_max": max(probe.late_ms),
        "stall_p99": p(probe.late_ms, 99),
        "own_max": max(probe.own_ms),
        "own_p99": p(probe.own_ms, 99),
        "metrics_bytes": max(metrics_sizes),
        "metrics_p50": statistics.median(metrics_ms),
    }


def report(row: dict[str, float], total_s: float) -> str:
    lines = [
        f"Machine: {cpu_model()}; Python {sys.version.split()[0]}",
        f"Bot measured: {bot_version()}",
        "",
        "| users | days stored | chart points | page bytes | gzip bytes | status_view ms p50 / p95 "
        "| render ms p50 / p95 | GET / ms p50 / p95 | GET / gzip ms p50 | loop stall max / p99 ms "
        "| own stall max / p99 ms | /metrics bytes | GET /metrics ms p50 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
        f"| {row['users']:,} | {row['days']} | {row['points']} | {row['page_bytes']:,} "
        f"| {row['gzip_bytes']:,} | {row['view_p50']:.1f} / {row['view_p95']:.1f} "
        f"| {row['render_p50']:.1f} / {row['render_p95']:.1f} "
        f"| {row['get_p50']:.1f} / {row['get_p95']:.1f} | {row['gzip_get_p50']:.1f} "
        f"| {row['stall_max']:.1f} / {row['stall_p99']:.1f} "
        f"| {row['own_max']:.1f} / {row['own_p99']:.1f} | {row['metrics_bytes']:,} "
        f"| {row['metrics_p50']:.1f} |",
        "",
    ]
    at_target = row["users"] >= TARGET_USERS
    lines.append(
        f"Targets at {TARGET_USERS:,} users"
        + ("" if at_target else f" (measured at {row['users']:,}: for information only)")
        + ":"
    )
    for name, value, target, unit in (
        ("page size", row["page_bytes"], TARGET_PAGE_BYTES, "bytes"),
        ("GET / p95", row["get_p95"], TARGET_GET_P95_MS, "ms"),
        ("longest own loop stall", row["own_max"], TARGET_STALL_MS, "ms"),
    ):
        verdict = "met" if value < target else "NOT met"
        lines.append(f"- {name} < {target:,} {unit}: {value:,.1f} {unit}: {verdict}")
    lines.append(f"\nWhole run: {total_s:.0f} s (most of it building the store).")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=TARGET_USERS)
    parser.add_argument("--days", type=int, default=365, help="daily snapshots stored")
    parser.add_argument("--requests", type=int, default=40, help="requests of each kind")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-status-page-") as folder:
        row = asyncio.run(measure(Path(folder), args.users, args.days, args.requests))
    print(report(row, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
