"""Liveness rounds: CPU per round and the longest stall of the event loop, by number of sessions.

    .venv/bin/python benchmarks/bench_liveness.py [--sizes 1000,4000,10000] [--pseudonymize]

In one process, the real component (`ActiveUsersComponent`, not connected) over a real tracker
and store in a temporary folder: N sessions of N users go online through the tracker and the
session watch, as their available presences would. Then rounds run as the `liveness` duty runs
them after a connection (`LivenessChecker.check_now`: the round's snapshot, then one ping per
session), with the pings answered at once in process (`Pinger.ping` replaced by a pong): what is
measured is the bot's own bookkeeping per round, not the network. Pacing is off (`max_rate`
1e9): the whole round runs as fast as the loop allows, so its CPU is all the round's.

Columns: `sessions`; `CPU s/round` (process CPU time of a round, median of 3); `per session µs`;
`longest stall ms` (the longest gap between two ticks of a task that sleeps 1 ms, during the
rounds: what a presence arriving meanwhile would wait); `ratio to the smallest` (CPU/round
divided by the first size's, to read against the sizes' ratio: linear growth keeps them
equal). Progress goes to stderr, the report to stdout. It also runs against the bot before the
session watch (main before issue 20: `PYTHONPATH=/path/to/that/checkout`), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from machine import bot_version, cpu_model, progress

from bot.activity.tracker import ActivityTracker
from bot.admin.commands import CommandSet, Figures
from bot.storage.store import Store
from bot.xmpp.component import ActiveUsersComponent
from bot.xmpp.liveness import LivenessSettings

ROUNDS = 3
NOW = 1_800_000_000


async def measure(size: int, folder: Path, pseudonymize: bool) -> tuple[float, float]:
    store = Store(folder / f"live-{size}.db", pseudonym_key=b"k" * 32 if pseudonymize else None)
    tracker = ActivityTracker(store, ["example.test"])
    tracker.load(NOW)
    component = ActiveUsersComponent(
        jid="active.example.test",
        secret="s",
        host="127.0.0.1",
        port=1,
        tracker=tracker,
        commands=CommandSet(admins=frozenset(), figures=lambda: Figures(None, {})),  # type: ignore[arg-type]
        clock=lambda: NOW,
        liveness=LivenessSettings(interval=300, timeout=5, max_rate=1e9),
    )
    watch = getattr(component, "watch", None)  # None: the bot before the session watch
    for n in range(size):
        bare, resource = f"u{n:06d}@example.test", "phone"
        tracker.session_started(bare, resource, NOW)
        if watch is not None:
            watch.available((bare, resource), NOW)
        else:
            component._last_seen[(bare, resource)] = NOW

    async def pong(_full_jid: str, _timeout: float) -> str | None:
        return None

    component.pinger.ping = pong  # type: ignore[method-assign]
    if watch is not None:
        component.connection.connected_since = NOW  # as after a handshake
    else:
        component.connected_since = NOW

    stall = 0.0
    ticking = True

    async def ticker() -> None:
        nonlocal stall
        loop = asyncio.get_running_loop()
        last = loop.time()
        while ticking:
            await asyncio.sleep(0.001)
            now = loop.time()
            stall = max(stall, now - last)
            last = now

    ticks = asyncio.create_task(ticker())
    cpu: list[float] = []
    for _ in range(ROUNDS):
        started = time.process_time()
        await component.liveness.check_now()
        cpu.append(time.process_time() - started)
    ticking = False
    await ticks
    assert component.liveness.pings_sent == ROUNDS * size, component.liveness.pings_sent
    store.close()
    return statistics.median(cpu), stall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--sizes", default="1000,4000,10000")
    parser.add_argument("--pseudonymize", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            progress(f"{size} sessions ...")
            rows.append((size, *await measure(size, Path(folder), args.pseudonymize)))
    print(f"CPU: {cpu_model()}; bot: {bot_version()}")
    print(f"pseudonymize: {'on' if args.pseudonymize else 'off'}; {ROUNDS} rounds per size\n")
    print("| sessions | CPU s/round | per session µs | longest stall ms | ratio to the smallest |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    first = rows[0][1]
    for size, cpu, stall in rows:
        print(
            f"| {size:,} | {cpu:.3f} | {cpu / size * 1e6:.0f} | {stall * 1000:.0f} "
            f"| {cpu / first:.1f} (sizes {size / rows[0][0]:.0f}x) |"
        )


if __name__ == "__main__":
    asyncio.run(main())
