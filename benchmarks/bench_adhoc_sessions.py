"""Memory of the bot process after many abandoned ad-hoc commands, through a real Prosody.

    .venv/bin/python benchmarks/bench_adhoc_sessions.py [--commands 10000] [--bot-path DIR]

Starts a private Prosody on 127.0.0.1 (bot/testbed/sandbox.py) and the real bot in its own
process (`python -m bot run`, a config as an admin writes it, metrics off), the `bot` package
taken from --bot-path (default: this checkout; give another checkout to compare, for example
the code before a fix). An admin's slixmpp client then warms the bot up (200 `active-users`
commands and 100 `history` commands taken to completion), reads the bot's resident memory
(VmRSS of /proc/PID/status), opens N `history` commands and abandons each at its form
(the way an admin closes the window), and reads the memory again. Progress goes to stderr,
the report (one markdown table) to stdout. Everything runs on 127.0.0.1; every process
started here is stopped and reaped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import slixmpp
from bench_ingest import log_tail, proc_rss_kib
from machine import cpu_model, progress

from bot.testbed.botconfig import write_config
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.sandbox import ProsodySandbox

ROOT = Path(__file__).resolve().parent.parent
ADMIN, PASSWORD = "admin@example.test", "bench-password"
WARM_UP_STATS, WARM_UP_HISTORY = 200, 100
BATCH = 250  # commands in flight at once
READY_TIMEOUT = 30.0


async def start_bot(bot_path: Path, config: Path, log: Path) -> asyncio.subprocess.Process:
    """`python -m bot run` with `bot` from `bot_path`; returns once it is connected (its log,
    read from its stderr as it comes, says so). The log is copied to `log`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        "--config",
        str(config),
        cwd=bot_path,  # `python -m` puts the working folder first on sys.path
        env=os.environ | {"PYTHONPATH": str(bot_path)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    connected = asyncio.Event()

    async def copy_log() -> None:
        assert process.stderr is not None
        with log.open("wb") as out:
            async for line in process.stderr:
                out.write(line)
                out.flush()
                if b"Connected to" in line:
                    connected.set()

    copying = asyncio.create_task(copy_log())
    waiting = asyncio.ensure_future(connected.wait())
    await asyncio.wait(
        [waiting, copying], timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    waiting.cancel()
    if not connected.is_set():
        process.kill()
        await process.wait()
        raise RuntimeError(f"the bot did not connect:\n{log_tail(log)}")
    process.copying = copying  # type: ignore[attr-defined]  # kept alive until the end
    return process


async def stop_bot(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.terminate()  # SIGTERM: a clean stop
        try:
            return await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
    return await process.wait()


async def run_commands(
    client: slixmpp.ClientXMPP, node: str, count: int, *, complete: bool
) -> None:
    """`count` commands on `node`, BATCH at a time; each left at its first answer unless
    `complete` (then its form is submitted as it came)."""
    adhoc = client.plugin["xep_0050"]

    async def one() -> None:
        first = await adhoc.send_command(jid="active.example.test", node=node, timeout=60)
        status = first["command"]["status"]
        if complete and status == "executing":
            form = first["command"]["form"]
            form["type"] = "submit"
            done = await adhoc.send_command(
                jid="active.example.test",
                node=node,
                action="complete",
                sessionid=first["command"]["sessionid"],
                payload=form,
                timeout=60,
            )
            status = done["command"]["status"]
        expected = "completed" if complete else "executing"
        if status != expected:
            raise RuntimeError(f"{node}: status {status!r}, expected {expected!r}")

    for start in range(0, count, BATCH):
        await asyncio.gather(*(one() for _ in range(min(BATCH, count - start))))


async def measure(bot_path: Path, commands: int, workdir: Path) -> dict[str, float]:
    prosody = ProsodySandbox(workdir / "prosody")
    prosody.start()
    process = None
    client = None
    try:
        prosody.register("admin", PASSWORD)
        config = write_config(
            workdir / "bot.toml",
            component_jid=prosody.component_jid,
            secret=prosody.component_secret,
            server_host="127.0.0.1",
            server_port=prosody.component_port,
            domains=[prosody.domain],
            admins=[ADMIN],
            store_path=workdir / "activity.db",
            metrics_listen="",
            first_count_after=3600,
        )
        process = await start_bot(bot_path, config, workdir / "bot.log")
        client = await connect_client(prosody, ADMIN, PASSWORD, resource="bench")
        progress("warming up")
        await run_commands(client, "active-users", WARM_UP_STATS, complete=True)
        await run_commands(client, "history", WARM_UP_HISTORY, complete=True)
        before = proc_rss_kib(process.pid)
        progress(f"{commands} abandoned history commands")
        started = time.monotonic()
        await run_commands(client, "history", commands, complete=False)
        seconds = time.monotonic() - started
        after = proc_rss_kib(process.pid)
        return {"before_kib": before, "after_kib": after, "seconds": seconds}
    finally:
        if client is not None:
            await disconnect_client(client)
        if process is not None:
            await stop_bot(process)
        prosody.stop()


def git_commit(path: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(path), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip()[:70] or "(not a git checkout)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=10_000, help="abandoned commands")
    parser.add_argument(
        "--bot-path", type=Path, default=ROOT, help="the checkout whose bot/ is measured"
    )
    args = parser.parse_args()
    bot_path = args.bot_path.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-adhoc-") as folder:
        result = asyncio.run(measure(bot_path, args.commands, Path(folder)))
    grown = result["after_kib"] - result["before_kib"]
    print(f"CPU: {cpu_model()}; Python {sys.version.split()[0]}")
    print(f"bot: {bot_path} at {git_commit(bot_path)}")
    print()
    print("| abandoned commands | RSS before | RSS after | grown | per command | took |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.commands:,} | {result['before_kib'] / 1024:.1f} MiB "
        f"| {result['after_kib'] / 1024:.1f} MiB | {grown / 1024:.1f} MiB "
        f"| {grown * 1024 / args.commands:,.0f} B | {result['seconds']:.1f} s |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
