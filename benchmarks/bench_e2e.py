"""End to end through a real Prosody: real clients log in and out, the real bot counts them.

    .venv/bin/python benchmarks/bench_e2e.py [--seconds 60] [--clients 200] [--client-procs 1]

Starts a private Prosody on 127.0.0.1 (bot/testbed/sandbox.py: Debian's prosody and prosody-modules
must be installed) with N accounts u0..uN-1@example.test (Prosody's account files are written before
it starts; every client's first login proves they work), then the real bot (`Bot(settings)` with a
config as `xmpp-active-users run` reads it, metrics off, a store in a temporary folder) in its own
process, then N slixmpp clients in one or more other processes. For --seconds, every client loops:
log in (SASL PLAIN, no TLS: loopback only) with a new resource, send available presence, stay online
--online seconds, send unavailable presence, close the stream, stay offline --offline seconds.
Clients start at random moments of their first cycle, so logins are spread out.

The bot process records every change it tracked: a handler on the component's
"presence_tracked" event (fired right after the tracker, hence the figures, were updated) notes
(kind, full JID, time.monotonic()). Each client notes when it called send_presence() and when the
presence's bytes were written to its socket. Every session has its own resource, so every
presence is matched exactly with the change it caused. The processes share one clock:
time.monotonic() is CLOCK_MONOTONIC, system-wide on Linux. Lag = tracked - written ("wire"), and
tracked - called ("call", which adds the delay of the client's own busy event loop).

Also measured: the CPU share of the bot, of each client process and of Prosody (from /proc), and
of every other process of the machine; how long each waited for a CPU; how long the bot's event
loop could not react (a 10 ms probe), and its garbage-collector pauses. Progress goes to stderr;
the report (the machine, a markdown table, the targets) to stdout. Exit code 0 whether or not
the targets are met; 1 if the benchmark itself could not run. Everything runs on 127.0.0.1, and
every process started here is stopped and reaped at the end. benchmarks/README.md says what
each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_ingest import (
    log_tail,
    machine_busy_s,
    proc_cpu_s,
    proc_rss_kib,
    proc_run_delay,
)
from machine import bot_version, cpu_model, progress

DOMAIN = "example.test"
PASSWORD = "bench-password"
TARGET_P99_MS = 100.0
READY_TIMEOUT = 60.0  # bot connected, or a client process done building its clients
LOGIN_TIMEOUT = 20.0
LOGOUT_TIMEOUT = 10.0
LOOP_PROBE = 0.010  # seconds between two looks at the bot's event loop
SCRIPT = Path(__file__).resolve()


# --- the bot process (`--bot-worker`) ------------------------------------------------------------


async def bot_worker(config: Path, events_path: Path) -> int:
    """The real Bot, as `xmpp-active-users run` builds it, plus a recorder of tracked changes.
    Prints "ready" once connected; stops on SIGTERM, then writes the changes as JSON."""
    from bot.app.daemon import Bot
    from bot.config import load_settings

    settings = load_settings(config)
    bot = Bot(settings)
    tracked: list[tuple[str, str, float, float]] = []
    # When the bytes holding the stanza reached the bot: asyncio hands them to the protocol,
    # which is the component itself (slixmpp), and the stanzas of that chunk are handled at once.
    received_at = [0.0]
    data_received = bot.component.data_received

    def timed_data_received(data: bytes) -> None:
        received_at[0] = time.monotonic()
        data_received(data)

    bot.component.data_received = timed_data_received

    def on_tracked(event: tuple[str, Any]) -> None:
        tracked.append((event[0], str(event[1]), time.monotonic(), received_at[0]))

    bot.component.add_event_handler("presence_tracked", on_tracked)
    bot.component.add_event_handler("session_start", lambda _: print("ready", flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stalls: list[tuple[float, float, float]] = []  # when, how late a sleep ended, CPU wait
    gc_pauses: list[tuple[float, int, float]] = []  # when, generation, seconds
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.monotonic()
        else:
            now = time.monotonic()
            gc_pauses.append((now, info["generation"], now - gc_started[0]))

    gc.callbacks.append(on_gc)
    watcher = asyncio.create_task(watch_loop(stalls))
    try:
        code = await bot.serve(stop)
    finally:
        watcher.cancel()
    figures = bot.tracker.counts(int(time.time()))
    events_path.write_text(
        json.dumps(
            {
                "tracked": tracked,
                "stalls": stalls,
                "gc_pauses": gc_pauses,
                "known_users": figures.known_users,
                "online_sessions": figures.online_sessions,
                "presence_events": dict(bot.component.presence_events),
            }
        ),
        encoding="utf-8",
    )
    return code


async def watch_loop(stalls: list[tuple[float, float, float]]) -> None:
    """How long the bot's event loop could not react: a 10 ms sleep that ends late was stuck
    behind the bot's own work (a flush, a burst of stanzas, garbage collection) or waited for a
    CPU held by other processes; the second part is the run queue time of /proc/self/schedstat
    (the main thread, which runs the loop)."""
    schedstat = Path("/proc/self/schedstat")
    waited = int(schedstat.read_text(encoding="ascii").split()[1])
    while True:
        asked = time.monotonic()
        await asyncio.sleep(LOOP_PROBE)
        now = time.monotonic()
        waited, before = int(schedstat.read_text(encoding="ascii").split()[1]), waited
        stalls.append((now, now - asked - LOOP_PROBE, (waited - before) / 1e9))


# --- a client process (`--clients-worker`) --------------------------------------------------------


@dataclass
class ClientStats:
    sends: list[tuple[str, str, float, float]] = field(
        default_factory=list
    )  # kind, jid, call, wire
    logins: list[float] = field(default_factory=list)  # seconds from connect() to session_start
    errors: list[str] = field(default_factory=list)


class LoopingClient:
    """One slixmpp client, reused for every cycle (building one costs ~80 ms: its TLS context)."""

    def __init__(self, user: str, port: int, stats: ClientStats) -> None:
        import slixmpp

        self._slixmpp = slixmpp
        self.bare = f"{user}@{DOMAIN}"
        self.port = port
        self.stats = stats
        self.client = slixmpp.ClientXMPP(f"{self.bare}/c0", PASSWORD)
        self.client.enable_starttls = False
        self.client.enable_direct_tls = False
        self.client.enable_plaintext = True
        self.client.plugin["feature_mechanisms"].unencrypted_plain = True
        self._started: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._pending: list[tuple[str, str, float]] = []  # presences called, not yet written
        self.client.add_event_handler("session_start", lambda _: self._settle_started(None))
        self.client.add_event_handler(
            "failed_all_auth", lambda _: self._settle_started("authentication refused")
        )
        self.client.add_event_handler(
            "connection_failed", lambda e: self._settle_started(f"connection failed: {e}")
        )
        self.client.add_event_handler("disconnected", self._on_disconnected)
        send_raw = self.client.send_raw

        def timed_send_raw(data: str | bytes) -> None:
            send_raw(data)
            if self._pending and (data[:9] in ("<presence", b"<presence")):
                kind, jid, called = self._pending.pop(0)
                self.stats.sends.append((kind, jid, called, time.monotonic()))

        self.client.send_raw = timed_send_raw

    def _settle_started(self, error: str | None) -> None:
        if self._started is not None and not self._started.done():
            if error is None:
                self._started.set_result(None)
            else:
                self._started.set_exception(ConnectionError(f"{self.bare}: {error}"))

    def _on_disconnected(self, _reason: object) -> None:
        self._settle_started("disconnected before the session started")
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def cycle(self, resource: str, online: float) -> None:
        loop = asyncio.get_running_loop()
        self._started, self._ended = loop.create_future(), loop.create_future()
        self._pending.clear()  # a presence of a failed cycle never written: not this one's
        self.client.requested_jid = self._slixmpp.JID(f"{self.bare}/{resource}")
        began = time.monotonic()
        self.client.connect("127.0.0.1", self.port)
        try:
            await asyncio.wait_for(self._started, LOGIN_TIMEOUT)
        except BaseException:
            self.client.cancel_connection_attempt()
            self.client.abort()
            raise
        self.stats.logins.append(time.monotonic() - began)
        full_jid = f"{self.bare}/{resource}"
        self._presence("available", full_jid)
        await asyncio.sleep(online)
        self._presence("unavailable", full_jid)
        self.client.disconnect(wait=LOGOUT_TIMEOUT)
        await asyncio.wait_for(asyncio.shield(self._ended), LOGOUT_TIMEOUT + 1)

    def _presence(self, kind: str, full_jid: str) -> None:
        self._pending.append((kind, full_jid, time.monotonic()))
        self.client.send_presence(ptype="unavailable" if kind == "unavailable" else None)


async def client_loop(
    client: LoopingClient, start: float, deadline: float, online: float, offline: float
) -> None:
    rng = random.Random(client.bare)
    await asyncio.sleep(max(0.0, start + rng.uniform(0, online + offline) - time.monotonic()))
    number = 0
    while time.monotonic() < deadline:
        try:
            await client.cycle(f"c{number}", online)
        except (ConnectionError, TimeoutError) as exc:
            client.stats.errors.append(f"{client.bare}/c{number}: {exc!r}")
            client.client.abort()
        number += 1
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(offline)


async def clients_worker(job: dict[str, Any]) -> int:
    """Builds the clients, prints "ready", reads {"start", "deadline"} from stdin, loops."""
    stats = ClientStats()
    clients = [LoopingClient(user, job["port"], stats) for user in job["users"]]
    print("ready", flush=True)
    go = json.loads(await asyncio.to_thread(sys.stdin.readline))
    await asyncio.gather(
        *(
            client_loop(client, go["start"], go["deadline"], job["online"], job["offline"])
            for client in clients
        )
    )
    for client in clients:  # a client stuck mid-cycle (error) must not outlive us
        client.client.abort()
    Path(job["out"]).write_text(
        json.dumps({"sends": stats.sends, "logins": stats.logins, "errors": stats.errors}),
        encoding="utf-8",
    )
    return 0


# --- the orchestrator --------------------------------------------------------------------------


def machine_steal_s() -> float:
    """CPU seconds the hypervisor took from this VM's cores since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def write_accounts(data_path: Path, users: list[str]) -> None:
    """Prosody's internal_plain account files, as `prosodyctl register` writes them."""
    accounts = data_path / DOMAIN.replace(".", "%2e") / "accounts"
    accounts.mkdir(parents=True, exist_ok=True)
    for user in users:
        (accounts / f"{user}.dat").write_text(
            f'return {{\n\t["password"] = "{PASSWORD}";\n}};\n', encoding="utf-8"
        )


class Processes:
    """Child processes, each in its own process group; all stopped and reaped by `close`."""

    def __init__(self) -> None:
        self.children: list[asyncio.subprocess.Process] = []

    async def start(self, *args: str, log: Path, stdin: bool = False) -> asyncio.subprocess.Process:
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                *args,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        self.children.append(process)
        return process

    @staticmethod
    async def stop(process: asyncio.subprocess.Process, timeout: float = 15) -> int:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        return await process.wait()

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(p) for p in self.children), return_exceptions=True)


async def expect_ready(process: asyncio.subprocess.Process, what: str, log: Path) -> None:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        raise RuntimeError(f"{what} did not get ready:\n{log_tail(log)}")


@dataclass
class Measured:
    seconds: float
    clients: int
    client_procs: int
    tracked: list[tuple[str, str, float, float]]  # kind, full JID, tracked, bytes received
    sends: list[tuple[str, str, float, float]]
    logins: list[float]
    errors: list[str]
    start: float
    deadline: float
    cpu_s: dict[str, float]  # process label -> CPU seconds during [start, deadline]
    others_cpu_s: float
    bot_rss_kib: int
    run_delay_s: dict[str, float]  # process label -> main thread runnable without a CPU
    steal_s: float  # taken by the hypervisor from this VM's cores, in the window
    final: dict[str, Any]
    stalls: list[tuple[float, float, float]]  # when, how late, of which waiting for a CPU
    gc_pauses: list[tuple[float, int, float]]  # when, generation, seconds


async def run(args: argparse.Namespace, workdir: Path) -> Measured:
    from bot.testbed.botconfig import write_config
    from bot.testbed.sandbox import ProsodySandbox

    class Sandbox(ProsodySandbox):
        def render_config(self) -> str:
            config = super().render_config()
            if args.prosody_nodelay:  # a global option: before the first VirtualHost
                config = "network_settings = { nagle = false }\n" + config
            return config

    users = [f"u{i}" for i in range(args.clients)]
    prosody = Sandbox(workdir / "prosody")
    write_accounts(prosody.data_path, users)
    progress(f"Starting Prosody in {prosody.root} with {len(users)} accounts")
    prosody.start()
    processes = Processes()
    try:
        bot_log = workdir / "bot.log"
        events_path = workdir / "tracked.json"
        config = write_config(
            workdir / "bot.toml",
            component_jid=prosody.component_jid,
            secret=prosody.component_secret,
            server_host="127.0.0.1",
            server_port=prosody.component_port,
            domains=[DOMAIN],
            admins=[f"admin@{DOMAIN}"],
            metrics_listen="",  # off
            store_path=workdir / "activity.db",
        )
        progress(f"Starting the bot (its own process; log: {bot_log})")
        bot = await processes.start("--bot-worker", str(config), str(events_path), log=bot_log)
        await expect_ready(bot, "the bot", bot_log)

        progress(f"Starting {args.client_procs} client process(es) for {len(users)} clients")
        workers = []
        for number in range(args.client_procs):
            share = users[number :: args.client_procs]
            out = workdir / f"clients-{number}.json"
            job = {
                "users": share,
                "port": prosody.c2s_port,
                "online": args.online,
                "offline": args.offline,
                "out": str(out),
            }
            log = workdir / f"clients-{number}.log"
            process = await processes.start(
                "--clients-worker", json.dumps(job), log=log, stdin=True
            )
            workers.append((process, out, log))
        for process, _, log in workers:
            await expect_ready(process, "a client process", log)

        start = time.monotonic() + 0.5
        deadline = start + args.seconds
        go = (json.dumps({"start": start, "deadline": deadline}) + "\n").encode()
        for process, _, _ in workers:
            assert process.stdin is not None
            process.stdin.write(go)
            await process.stdin.drain()
        labels = {"bot": bot.pid, "Prosody": prosody.pid}
        labels |= {f"clients {n + 1}": p.pid for n, (p, _, _) in enumerate(workers)}
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu_before = {label: proc_cpu_s(pid) for label, pid in labels.items() if pid}
        busy_before, self_before = machine_busy_s(), proc_cpu_s(os.getpid())
        steal_before = machine_steal_s()
        delay_before = {label: proc_run_delay(pid)[0] for label, pid in labels.items() if pid}
        progress(f"Running for {args.seconds:.0f} s")
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        cpu_s = {label: proc_cpu_s(pid) - cpu_before[label] for label, pid in labels.items()}
        others = (machine_busy_s() - busy_before) - sum(cpu_s.values())
        others -= proc_cpu_s(os.getpid()) - self_before
        bot_rss = proc_rss_kib(bot.pid)
        steal = machine_steal_s() - steal_before
        run_delay = {
            label: proc_run_delay(pid)[0] - delay_before[label] for label, pid in labels.items()
        }

        progress("Deadline: waiting for the clients to finish their cycle and log out")
        for process, _, log in workers:
            try:
                await asyncio.wait_for(process.wait(), args.online + LOGIN_TIMEOUT + 30)
            except TimeoutError:
                raise RuntimeError(f"a client process did not finish:\n{log_tail(log)}") from None
            if process.returncode != 0:
                raise RuntimeError(f"a client process failed:\n{log_tail(log)}")
        await asyncio.sleep(0.5)  # the last unavailable presences reach the bot
        if await Processes.stop(bot) != 0:
            raise RuntimeError(f"the bot exited with an error:\n{log_tail(bot_log)}")
        final = json.loads(events_path.read_text(encoding="utf-8"))
        sends: list[tuple[str, str, float, float]] = []
        logins: list[float] = []
        errors: list[str] = []
        for _, out, _ in workers:
            part = json.loads(out.read_text(encoding="utf-8"))
            sends += [tuple(s) for s in part["sends"]]
            logins += part["logins"]
            errors += part["errors"]
    finally:
        await processes.close()
        prosody.stop()
    return Measured(
        seconds=args.seconds,
        clients=args.clients,
        client_procs=args.client_procs,
        tracked=[tuple(t) for t in final.pop("tracked")],
        stalls=[tuple(t) for t in final.pop("stalls")],
        gc_pauses=[tuple(t) for t in final.pop("gc_pauses")],
        sends=sends,
        logins=logins,
        errors=errors,
        start=start,
        deadline=deadline,
        cpu_s=cpu_s,
        others_cpu_s=max(0.0, others),
        bot_rss_kib=bot_rss,
        run_delay_s=run_delay,
        steal_s=steal,
        final=final,
    )


# --- the report --------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(m: Measured, args: argparse.Namespace) -> str:
    tracked_at = {(kind, jid): at for kind, jid, at, _ in m.tracked}
    in_bot = [(at - received) * 1000 for _, _, at, received in m.tracked]
    wire_lags, call_lags = [], []
    unmatched = 0
    for kind, jid, called, wire in m.sends:
        at = tracked_at.get((kind, jid))
        if at is None:
            unmatched += 1
            continue
        wire_lags.append((at - wire) * 1000)
        call_lags.append((at - called) * 1000)
    sent_keys = {(kind, jid) for kind, jid, _, _ in m.sends}
    untracked_by_clients = sum(1 for kind, jid, _, _ in m.tracked if (kind, jid) not in sent_keys)
    in_window = [at for _, _, at, _ in m.tracked if m.start <= at < m.deadline]
    probes = [
        (late * 1000, cpu_wait * 1000)
        for at, late, cpu_wait in m.stalls
        if m.start <= at < m.deadline
    ]
    stalls = [late for late, _ in probes]
    own_stalls = [max(0.0, late - cpu_wait) for late, cpu_wait in probes]
    worst = max(probes, default=(0.0, 0.0))
    rate = len(in_window) / m.seconds
    sends_in_window = sum(1 for _, _, _, wire in m.sends if m.start <= wire < m.deadline)

    def ms(values: list[float], share: float) -> str:
        return f"{percentile(values, share):.1f}" if values else "n/a"

    def core(label: str) -> str:
        return f"{m.cpu_s[label] / m.seconds:.0%}"

    client_labels = [label for label in m.cpu_s if label.startswith("clients")]
    rows = [
        "| clients | client procs | s | presences tracked/s | logins/s | lag p50 ms | lag p99 ms "
        "| lag max ms | lag p99 ms (call) | in bot p99 ms | bot loop stall p99 / max ms "
        "| own stall p99 / max ms "
        "| login p50 ms | bot CPU | clients CPU | Prosody CPU | others CPU |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {m.clients} | {m.client_procs} | {m.seconds:.0f} | {rate:,.0f} "
        f"| {len(m.logins) / m.seconds:,.0f} | {ms(wire_lags, 0.5)} | {ms(wire_lags, 0.99)} "
        f"| {max(wire_lags, default=0):.1f} | {ms(call_lags, 0.99)} | {ms(in_bot, 0.99)} "
        f"| {ms(stalls, 0.99)} / {max(stalls, default=0):.1f} "
        f"| {ms(own_stalls, 0.99)} / {max(own_stalls, default=0):.1f} "
        f"| {ms([s * 1000 for s in m.logins], 0.5)} | {core('bot')} "
        f"| {' + '.join(core(label) for label in client_labels)} | {core('Prosody')} "
        f"| {m.others_cpu_s / m.seconds:.0%} |",
    ]
    p99 = percentile(wire_lags, 0.99) if wire_lags else float("inf")
    busiest_client = max(m.cpu_s[label] for label in client_labels) / m.seconds
    bot_share = m.cpu_s["bot"] / m.seconds
    machine_share = (sum(m.cpu_s.values()) + m.others_cpu_s) / m.seconds
    from importlib.metadata import version

    out = [
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}; "
        f"slixmpp {version('slixmpp')}; Prosody {prosody_version()}",
        f"Bot measured: {bot_version()}",
        f"Load: {m.clients} clients in {m.client_procs} process(es), each looping: log in, "
        f"available, {args.online:g} s online, unavailable, log out, {args.offline:g} s "
        f"offline; {m.seconds:.0f} s; Prosody's Nagle algorithm "
        + ("off (--prosody-nodelay)" if args.prosody_nodelay else "on (its default)"),
        "",
        *rows,
        "",
        "Targets:",
        f"- lag p99 < {TARGET_P99_MS:.0f} ms (presence written by the client -> bot figures "
        f"updated): {p99:.1f} ms: {'met' if p99 < TARGET_P99_MS else 'NOT met'}",
        "",
        f"Presences sent in the window: {sends_in_window:,} "
        f"({sends_in_window / m.seconds:,.0f}/s); "
        f"sent in all: {len(m.sends):,}, {unmatched} of them never tracked by the bot; "
        f"{untracked_by_clients} changes tracked that no client sent (server-generated, e.g. "
        "after a failed logout)",
        f"Login errors: {len(m.errors)}" + (f" (first: {m.errors[0]})" if m.errors else ""),
        f"Bot at the end: {m.final['known_users']} users known, "
        f"{m.final['online_sessions']} sessions online; presence stanzas by kind "
        f"{m.final['presence_events']}; RSS {m.bot_rss_kib / 1024:.0f} MiB at the deadline",
        f"CPU is the share of one core over the window. The whole machine was "
        f"{machine_share / (os.cpu_count() or 1):.0%} busy ({machine_share:.2f} of "
        f"{os.cpu_count()} cores)",
    ]
    out.append(
        "- Waiting for a CPU while runnable, over the window (/proc/PID/schedstat, main "
        "threads): "
        + ", ".join(f"{label} {delay:.1f} s" for label, delay in m.run_delay_s.items())
        + f"; the bot's longest stall, {worst[0]:.1f} ms, was {worst[1]:.1f} ms of such waiting. "
        f"The hypervisor took {m.steal_s:.1f} s of CPU from the VM (steal, /proc/stat): "
        "a stall of that kind shows as the bot's own"
    )
    pauses = [(gen, pause * 1000) for at, gen, pause in m.gc_pauses if m.start <= at < m.deadline]
    longest = max(pauses, key=lambda p: p[1], default=(0, 0.0))
    out.append(
        f"- The bot's garbage collector ran {len(pauses):,} times in the window, "
        f"{sum(p for _, p in pauses):.0f} ms in all; longest pause {longest[1]:.1f} ms "
        f"(generation {longest[0]}; {sum(1 for g, _ in pauses if g == 2)} full collections)"
    )
    if busiest_client > 0.9:
        out.append(
            f"- A client process used {busiest_client:.0%} of a core: the clients, not the bot, "
            "limit the load (try --client-procs 2); lag (call) includes that process's own delay"
        )
    if machine_share > 0.9 * (os.cpu_count() or 1):
        out.append(
            "- The machine was saturated: the lag includes waiting for a core, not only the "
            "bot's work"
        )
    out.append(
        f"- The bot used {bot_share:.0%} of a core for {rate:,.0f} changes/s: "
        + (f"{bot_share / rate * 1e6:.0f} µs of CPU per tracked change" if rate else "n/a")
    )
    return "\n".join(out)


def prosody_version() -> str:
    import subprocess

    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "prosody"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="benchmarks/README.md explains the columns.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds", type=positive(float), default=60.0, help="how long the load runs (60)"
    )
    parser.add_argument(
        "--clients", type=positive(int), default=200, help="client connections (200)"
    )
    parser.add_argument(
        "--client-procs",
        type=positive(int),
        default=1,
        help="processes the clients are spread over (1); the bot and Prosody have their own",
    )
    parser.add_argument(
        "--online", type=float, default=1.0, help="seconds each session stays online (1)"
    )
    parser.add_argument(
        "--offline",
        type=float,
        default=1.0,
        help="seconds each client stays offline between sessions (1)",
    )
    parser.add_argument(
        "--prosody-nodelay",
        action="store_true",
        help="set Prosody's network_settings = { nagle = false } (TCP_NODELAY on its sockets; "
        "its default keeps Nagle's algorithm on), for comparison",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="work in DIR (Prosody, store, logs) and keep it"
    )
    parser.add_argument("--bot-worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--clients-worker", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.bot_worker:
        return asyncio.run(bot_worker(Path(args.bot_worker[0]), Path(args.bot_worker[1])))
    if args.clients_worker:
        return asyncio.run(clients_worker(json.loads(args.clients_worker)))

    # SIGTERM (and SIGINT, even where a shell ignored it) interrupt like Ctrl-C: asyncio.run then
    # cancels the run, whose `finally` stops and reaps every process it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = args.keep
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        measured = asyncio.run(run(args, workdir))
    except (RuntimeError, OSError) as exc:
        progress(f"bench_e2e: the benchmark failed: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("bench_e2e: interrupted; everything it started is stopped")
        return 130
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(measured, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
