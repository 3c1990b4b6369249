"""Ingest ceiling: how many presence stanzas per second the real bot counts, fed at full speed.

    .venv/bin/python benchmarks/bench_ingest.py [--stanzas 200000] [--users 50000] [--caps mix]

This script is a synthetic XMPP server side of XEP-0114 on 127.0.0.1: it accepts the bot's
component stream (checking the SHA-1 handshake), grants it presence like Prosody's
mod_privilege, then streams presence stanzas at it in large writes: every full JID
`uN@example.test/rK` goes available (with priority and entity caps, as Prosody forwards them),
then unavailable, about 1,000 sessions online at a time; the second session of each user comes
after all the first ones, so its login reads the user's record back from the store. The caps
(`--caps`): `mix`, the nodes of real clients in a realistic mix (CAPS_MIX: most sessions of a
few well-known clients, some of a client known by its host only, one in ten without caps), or
`single`, every session with one made-up node (the stream of the benchmark's first version).

The bot runs as it does in production, in its own process (`python -m bot run --config`, a store
in a temporary folder), so that its CPU time and memory are its own (/proc/PID/stat and
/proc/PID/status). After every 10,000 stanzas, and after the last one, the peer sends an XEP-0199
ping: the bot handles stanzas one by one in arrival order, so its pong proves that every presence
before it has been received and queued for the tracker (a change waiting for a user's record to
be read from the store is applied milliseconds later). The run time is from the first stanza
written until the last pong. Only then are the results checked:
the bot's metrics endpoint (on a free port, never scraped during the timed part) must count
exactly the presence stanzas sent, and the store, read read-only like `xmpp-active-users count`,
must show every user known and nobody online.

The same stream is sent twice over the same connection: the bot's memory after the second run
must equal its memory after the first (the bot must keep no per-stanza state). Progress goes to
stderr; the report (the machine, a markdown table, the targets) to stdout. Exit code 0 whether or
not the targets are met; 1 if the benchmark itself could not run (bot crashed, timeout).
benchmarks/README.md says what each column means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import platform
import pstats
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from machine import bot_version, cpu_model, progress

import bot
from bot.activity.tracker import ActivityTracker
from bot.storage.store import Store
from bot.testbed.botconfig import write_config
from bot.testbed.sandbox import free_ports

ROOT = Path(bot.__file__).resolve().parent.parent  # the checkout whose bot is measured

DOMAIN = "example.test"
COMPONENT = "active.example.test"
SEGMENT = 10_000  # stanzas between two pings
ONLINE_AT_ONCE = 1_000  # sessions online at a time in the stream (login j, logout j - 1000)
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 2**20

TARGET_RATE = 5_000  # stanzas/s
TARGET_FLAT_MIB = 2.0  # RSS growth allowed between the end of run 1 and the end of run 2
SINGLE_NODE = "https://bench.example.test/client"
# (caps node, share of the sessions): real clients' nodes, as they announce them; None: no caps.
CAPS_MIX = (
    ("http://conversations.im", 30),
    ("http://monal.im/", 12),
    ("https://gajim.org", 10),
    ("https://dino.im", 8),
    ("https://cheogram.com", 6),
    ("https://siskin.im", 5),
    ("http://profanity-im.github.io", 4),
    ("https://movim.eu/", 3),
    ("https://conversejs.org", 3),
    ("https://chat.example.net/client", 4),
    ("urn:example:a-bot", 5),
    (None, 10),
)
STREAM_HEADER = re.compile(rb"<stream:stream\b[^>]*>")
HANDSHAKE = re.compile(rb"<handshake>([^<]*)</handshake>")
IQ = re.compile(rb"<iq\b[^>]*?/>|<iq\b[^>]*>.*?</iq>", re.DOTALL)
ATTRIBUTE = re.compile(rb"""(\w+)=(['"])(.*?)\2""")


# --- the stream --------------------------------------------------------------------------------


def session_jid(j: int, users: int) -> str:
    """Session j: user j mod N, resource j div N (all first sessions, then all second ones)."""
    return f"u{j % users}@{DOMAIN}/r{j // users}"


def caps_element(node: str | None) -> str:
    """What a client puts in its available presence: its priority and its caps (if any)."""
    if node is None:
        return "<priority>0</priority>"
    ver = hashlib.sha1(node.encode()).digest()  # a hash per client, as real ones differ
    return (
        "<priority>0</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
        f"node='{node}' ver='{base64.b64encode(ver).decode()}'/>"
    )


def session_caps(caps: str) -> list[str]:
    """The caps of each session, by j modulo the list's length (100 entries for `mix`)."""
    if caps == "single":
        return [caps_element(SINGLE_NODE)]
    return [caps_element(node) for node, share in CAPS_MIX for _ in range(share)]


def presence_stanzas(stanzas: int, users: int, caps: str = "mix") -> list[bytes]:
    """`stanzas` presences: session j logs in, session j - ONLINE_AT_ONCE logs out, ...;
    the sessions still online at the end log out last, so nobody is online after a run."""
    sessions = stanzas // 2
    lag = min(ONLINE_AT_ONCE, sessions)
    to = f"to='{COMPONENT}'"
    elements = session_caps(caps)

    def available(j: int) -> bytes:
        body = elements[j % len(elements)]
        return f"<presence from='{session_jid(j, users)}' {to}>{body}</presence>".encode()

    def unavailable(j: int) -> bytes:
        return f"<presence type='unavailable' from='{session_jid(j, users)}' {to}/>".encode()

    out: list[bytes] = []
    for j in range(sessions):
        out.append(available(j))
        if j >= lag:
            out.append(unavailable(j - lag))
    out.extend(unavailable(j) for j in range(sessions - lag, sessions))
    return out


def ping(ping_id: str) -> bytes:
    return (
        f"<iq type='get' id='{ping_id}' from='{DOMAIN}' to='{COMPONENT}'>"
        "<ping xmlns='urn:xmpp:ping'/></iq>"
    ).encode()


def segments(stanzas: list[bytes]) -> list[tuple[bytes, int]]:
    """The stream as (bytes, stanzas so far) per SEGMENT stanzas: one write each, then a ping."""
    return [
        (b"".join(stanzas[start : start + SEGMENT]), min(start + SEGMENT, len(stanzas)))
        for start in range(0, len(stanzas), SEGMENT)
    ]


# --- the XEP-0114 peer -------------------------------------------------------------------------


@dataclass
class Peer:
    """One component connection: handshake, then pings answered and pongs timestamped."""

    secret: str
    stream_id: str = field(default_factory=lambda: secrets.token_hex(8))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    pongs: dict[str, float] = field(default_factory=dict)  # ping id -> time.monotonic()
    pong_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None
    error: str | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.writer is not None:  # one bot only: a second connection is a bug
            writer.close()
            return
        self.writer = writer
        try:
            buffer = await self._handshake(reader, writer)
            if buffer is not None:
                await self._read_loop(reader, writer, buffer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.error = self.error or f"connection lost: {exc!r}"
        except asyncio.CancelledError:
            # Interrupted (Ctrl-C): end quietly; asyncio's server would log a cancelled handler.
            self.error = self.error or "interrupted"
        finally:
            self.closed.set()
            self.pong_arrived.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        buffer = b""
        while (header := STREAM_HEADER.search(buffer)) is None:
            buffer += await self._read(reader)
        buffer = buffer[header.end() :]
        writer.write(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
            f"xmlns:stream='http://etherx.jabber.org/streams' from='{COMPONENT}' "
            f"id='{self.stream_id}'>".encode()
        )
        while (handshake := HANDSHAKE.search(buffer)) is None:
            buffer += await self._read(reader)
        expected = hashlib.sha1((self.stream_id + self.secret).encode()).hexdigest()
        if handshake.group(1).decode().strip().lower() != expected:
            self.error = "the bot's handshake does not match SHA-1(stream id + secret)"
            writer.write(
                b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                b"</stream:error></stream:stream>"
            )
            return None
        # Accepted, then the privileges as Prosody's mod_privilege advertises them.
        writer.write(
            f"<handshake/><message from='{DOMAIN}' to='{COMPONENT}'>"
            "<privilege xmlns='urn:xmpp:privilege:2'>"
            "<perm access='presence' type='managed_entity'/></privilege></message>".encode()
        )
        await writer.drain()
        self.ready.set()
        return buffer[handshake.end() :]

    async def _read_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buffer: bytes
    ) -> None:
        while True:
            arrived = time.monotonic()
            end = 0
            for match in IQ.finditer(buffer):
                end = match.end()
                self._on_iq(match.group(0), arrived, writer)
            buffer = buffer[end:]
            if b"</stream:stream>" in buffer:  # the bot closes: close ours too
                writer.write(b"</stream:stream>")
                return
            buffer += await self._read(reader)

    def _on_iq(self, iq: bytes, arrived: float, writer: asyncio.StreamWriter) -> None:
        head = iq[: iq.index(b">")]
        attrs = {m.group(1).decode(): m.group(3).decode() for m in ATTRIBUTE.finditer(head)}
        if attrs.get("type") == "result":
            self.pongs[attrs.get("id", "")] = arrived
            self.pong_arrived.set()
        elif attrs.get("type") in ("get", "set") and "/" in attrs.get("to", ""):
            # The bot asks a session that said unavailable whether it is gone: it is, and the
            # server says so as Prosody does (every session here leaves for good).
            writer.write(
                f"<iq type='error' id='{attrs.get('id', '')}' from='{attrs['to']}' "
                f"to='{attrs.get('from', COMPONENT)}'><error type='cancel'>"
                "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                "</error></iq>".encode()
            )
        elif attrs.get("type") in ("get", "set"):  # the bot's keepalive ping: pong
            writer.write(
                f"<iq type='result' id='{attrs.get('id', '')}' from='{attrs.get('to', DOMAIN)}' "
                f"to='{attrs.get('from', COMPONENT)}'/>".encode()
            )

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the bot closed the connection")
        return data

    async def wait_pong(self, ping_id: str, deadline: float) -> float:
        while ping_id not in self.pongs:
            if self.closed.is_set():
                raise RuntimeError(f"connection closed before pong {ping_id}: {self.error}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no pong {ping_id} before the deadline")
            self.pong_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pong_arrived.wait(), deadline - time.monotonic())
        return self.pongs[ping_id]


# --- the bot process ---------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_run_delay(pid: int) -> tuple[float, int]:
    """(seconds the process's main thread was runnable but waiting for a CPU, times it ran):
    /proc/PID/schedstat. The main thread is the bot's event loop."""
    fields = Path(f"/proc/{pid}/schedstat").read_text(encoding="ascii").split()
    return int(fields[1]) / 1e9, int(fields[2])


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat; idle and iowait excluded)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_bot(config: Path, log_path: Path, profile: Path | None) -> subprocess.Popen[bytes]:
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "bot", "run", "--config", str(config)]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: signalled and reaped by us only
        )


def stop_bot(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM (a clean stop: the store is flushed), SIGKILL if it hangs; always reaped."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def presence_events(metrics_port: int) -> dict[str, int]:
    """The bot's xmpp_presence_events_total by kind, from its /metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        match.group(1): int(float(match.group(2)))
        for match in re.finditer(r'^xmpp_presence_events_total\{kind="(\w+)"\} (\S+)$', text, re.M)
    }


def stored_counts(store_path: Path) -> tuple[int, int, int]:
    """(known users, sessions online, DAU) as the store shows them, read-only."""
    now = int(time.time())
    with Store(store_path, readonly=True) as store:
        tracker = ActivityTracker(store, (DOMAIN,))
        tracker.load(now, close_stale_sessions=not store.writer_running)
        counts = tracker.counts(now)
    return counts.known_users, counts.online_sessions, counts.dau


# --- one run -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    stanzas: int
    wall_s: float
    cpu_s: float
    peer_cpu_s: float
    others_cpu_s: float  # every other process of the machine, during the run
    run_delay_s: float  # the bot's event loop runnable but without a CPU, during the run
    slowest_segment_rate: float
    rss_before_kib: int
    rss_after_kib: int
    stored_after_s: float  # from the last pong until the store showed the expected figures

    @property
    def rate(self) -> float:
        return self.stanzas / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.stanzas * 1e6


async def one_run(
    label: str,
    peer: Peer,
    pid: int,
    stream: list[tuple[bytes, int]],
    expected: tuple[int, int, int],
    expected_events: dict[str, int],
    store_path: Path,
    metrics_port: int,
    timeout: float,
) -> RunResult:
    assert peer.writer is not None
    writer = peer.writer
    rss_before = proc_rss_kib(pid)
    busy_before = machine_busy_s()
    cpu_before, peer_cpu_before = proc_cpu_s(pid), proc_cpu_s(os.getpid())
    delay_before = proc_run_delay(pid)[0]
    started = time.monotonic()
    deadline = started + timeout
    ids = []
    for number, (chunk, sent) in enumerate(stream):
        ping_id = f"{label}-{number}"
        ids.append((ping_id, sent))
        writer.write(chunk + ping(ping_id))
        await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
    last_id, total = ids[-1]
    finished = await peer.wait_pong(last_id, deadline)
    cpu_after, peer_cpu_after = proc_cpu_s(pid), proc_cpu_s(os.getpid())
    busy_after = machine_busy_s()
    run_delay = proc_run_delay(pid)[0] - delay_before
    rss_after = proc_rss_kib(pid)

    slowest = float("inf")
    previous_time, previous_sent = started, 0
    for ping_id, sent in ids:
        at = peer.pongs[ping_id]
        if sent - previous_sent == SEGMENT and at > previous_time:
            slowest = min(slowest, SEGMENT / (at - previous_time))
        previous_time, previous_sent = at, sent

    # Really counted? Every stanza went through the presence handler (the metrics endpoint,
    # scraped only now, after the timed part), and the store (flushed every second) shows the
    # expected figures.
    events = await asyncio.to_thread(presence_events, metrics_port)
    if events != expected_events:
        raise RuntimeError(
            f"{label}: the bot counted presence events {events}, not {expected_events}"
        )
    poll_deadline = time.monotonic() + 30
    while (got := await asyncio.to_thread(stored_counts, store_path)) != expected:
        if time.monotonic() > poll_deadline:
            raise RuntimeError(
                f"{label}: the store shows (known, online sessions, DAU) = {got}, "
                f"expected {expected}"
            )
        await asyncio.sleep(0.1)
    stored_after = time.monotonic() - finished
    return RunResult(
        label=label,
        stanzas=total,
        wall_s=finished - started,
        cpu_s=cpu_after - cpu_before,
        peer_cpu_s=peer_cpu_after - peer_cpu_before,
        others_cpu_s=max(
            0.0,
            (busy_after - busy_before)
            - (cpu_after - cpu_before)
            - (peer_cpu_after - peer_cpu_before),
        ),
        run_delay_s=run_delay,
        slowest_segment_rate=slowest if slowest != float("inf") else total / (finished - started),
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        stored_after_s=stored_after,
    )


async def bench(args: argparse.Namespace, workdir: Path) -> tuple[list[RunResult], int]:
    progress(f"Building {args.stanzas:,} presence stanzas for {args.users:,} users")
    stanzas = presence_stanzas(args.stanzas, args.users, args.caps)
    stream = segments(stanzas)
    size_mib = sum(len(chunk) for chunk, _ in stream) / MIB
    sessions = args.stanzas // 2
    expected = (min(args.users, sessions), 0, min(args.users, sessions))
    progress(f"  {len(stanzas):,} stanzas, {size_mib:.1f} MiB, {len(stream)} writes")
    del stanzas

    secret = secrets.token_urlsafe(16)
    peer = Peer(secret)
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    metrics_port = free_ports(1)[0]
    config = write_config(
        workdir / "config.toml",
        component_jid=COMPONENT,
        secret=secret,
        server_host="127.0.0.1",
        server_port=port,
        domains=[DOMAIN],
        admins=[f"admin@{DOMAIN}"],
        metrics_listen=f"127.0.0.1:{metrics_port}",
        store_path=workdir / "activity.db",
    )
    log_path = workdir / "bot.log"
    progress(f"Starting the bot (python -m bot run), peer on 127.0.0.1:{port}; log: {log_path}")
    process = start_bot(config, log_path, args.profile)
    results: list[RunResult] = []
    try:
        ready = asyncio.create_task(peer.ready.wait())
        deadline = time.monotonic() + 30
        while not ready.done():
            if process.poll() is not None:
                raise RuntimeError(f"the bot exited ({process.returncode}):\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no handshake within 30 s:\n{log_tail(log_path)}")
            await asyncio.wait([ready], timeout=0.1)
        await asyncio.sleep(1.0)  # let start-up settle (first flush, privileges logged)
        timeout = max(120.0, args.stanzas / 500)  # slower than 500 stanzas/s: give up
        for number in (1, 2):
            progress(f"Run {number}: streaming {args.stanzas:,} stanzas")
            result = await one_run(
                f"run{number}",
                peer,
                process.pid,
                stream,
                expected,
                {"available": number * sessions, "unavailable": number * sessions},
                workdir / "activity.db",
                metrics_port,
                timeout,
            )
            progress(
                f"  {result.rate:,.0f} stanzas/s, {result.cpu_us:.0f} µs CPU/stanza, "
                f"RSS {result.rss_before_kib / 1024:.1f} -> {result.rss_after_kib / 1024:.1f} MiB"
            )
            results.append(result)
    finally:
        exit_code = await asyncio.to_thread(stop_bot, process)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.closed.wait(), 5)
        if peer.writer is not None:
            peer.writer.close()
        server.close()
        await server.wait_closed()
    if exit_code != 0:
        progress(f"The bot exited with code {exit_code}:\n{log_tail(log_path)}")
    final = stored_counts(workdir / "activity.db")
    if final != expected:
        raise RuntimeError(f"after the bot stopped the store shows {final}, expected {expected}")
    return results, exit_code


# --- the report --------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: list[RunResult], exit_code: int) -> str:
    from importlib.metadata import version

    rows = [
        "| run | stanzas | wall s | stanzas/s | slowest 10k stanzas/s | bot CPU s "
        "| bot CPU µs/stanza | CPU-bound ceiling /s | bot RSS before MiB | bot RSS after MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r.label} | {r.stanzas:,} | {r.wall_s:.1f} | {r.rate:,.0f} "
            f"| {r.slowest_segment_rate:,.0f} | {r.cpu_s:.2f} | {r.cpu_us:.1f} "
            f"| {1e6 / r.cpu_us:,.0f} | {r.rss_before_kib / 1024:.1f} "
            f"| {r.rss_after_kib / 1024:.1f} |"
        )
    first, second = results[0], results[-1]
    growth_mib = (second.rss_after_kib - first.rss_after_kib) / 1024
    slowest_rate = min(r.rate for r in results)
    cpu_share = max(r.cpu_s / r.wall_s for r in results)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = [
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}; "
        f"slixmpp {version('slixmpp')}",
        f"Bot measured: {bot_version()}" + (" (under cProfile: slower)" if args.profile else ""),
        f"Stream: {args.stanzas:,} presence stanzas per run, {args.users:,} users, "
        f"{ONLINE_AT_ONCE:,} sessions online at a time; one write and one ping per "
        f"{SEGMENT:,} stanzas; caps: {args.caps}",
        "",
        *rows,
        "",
        "Targets (for information only: cProfile slows the bot about 3x):"
        if args.profile
        else "Targets:",
        f"- ≥ {TARGET_RATE:,} stanzas/s sustained (whole run, both runs): "
        f"{slowest_rate:,.0f}/s: {verdict(slowest_rate >= TARGET_RATE)}"
        f" (slowest 10k-stanza stretch: {min(r.slowest_segment_rate for r in results):,.0f}/s)",
        f"- on one core: the bot used {cpu_share:.0%} of one core at most; CPU per stanza "
        f"{max(r.cpu_us for r in results):.0f} µs (≤ {1e6 / TARGET_RATE:.0f} µs needed): "
        f"{verdict(max(r.cpu_us for r in results) <= 1e6 / TARGET_RATE)}",
        f"- memory flat: RSS after run 2 - after run 1 = {growth_mib:+.1f} MiB "
        f"(≤ {TARGET_FLAT_MIB:.0f} MiB, i.e. < {TARGET_FLAT_MIB * MIB / args.stanzas:.0f} B "
        f"per stanza): {verdict(growth_mib <= TARGET_FLAT_MIB)}",
        "",
        f"Run 1 grew RSS by {(first.rss_after_kib - first.rss_before_kib) / 1024:.1f} MiB: "
        f"{(first.rss_after_kib - first.rss_before_kib) * 1024 / args.users:.0f} B per new user "
        "(the index and SQLite's page cache)",
        "The peer (this process, on the other core) used "
        + ", ".join(f"{r.peer_cpu_s / r.wall_s:.1%}" for r in results)
        + " of a core during the runs; the store showed the expected figures "
        + ", ".join(f"{r.stored_after_s:.1f} s" for r in results)
        + " after the last pong (flush interval 1 s)",
        "Other processes of the machine kept "
        + ", ".join(f"{r.others_cpu_s / r.wall_s:.2f}" for r in results)
        + f" of the {os.cpu_count()} cores busy during the runs (contention lowers stanzas/s, not "
        "so much the CPU per stanza); the bot's event loop waited for a CPU "
        + ", ".join(f"{r.run_delay_s:.1f} s" for r in results)
        + " in all (run queue, /proc/PID/schedstat)",
        f"Bot exit code after SIGTERM: {exit_code}",
    ]
    return "\n".join(out)


def print_profile(path: Path, limit: int = 25) -> None:
    for sort in ("tottime", "cumulative"):
        progress(f"--- cProfile of the bot, by {sort} ---")
        stats = pstats.Stats(str(path), stream=sys.stderr)
        stats.sort_stats(sort).print_stats(limit)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="benchmarks/README.md explains the columns.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stanzas",
        type=int,
        default=200_000,
        help="presence stanzas per run, half available, half unavailable (default 200000)",
    )
    parser.add_argument(
        "--users", type=int, default=50_000, help="distinct users uN@example.test (default 50000)"
    )
    parser.add_argument(
        "--caps",
        choices=("mix", "single"),
        default="mix",
        help="the caps nodes of the sessions: real clients' in a realistic mix (default), or "
        "one made-up node for all (the stream of the first version of this benchmark)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the bot under cProfile, save its stats to FILE and print the top functions "
        "to stderr (the bot is then slower: rates are not comparable)",
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="work in DIR (config, store, bot log) and keep it"
    )
    args = parser.parse_args()
    if args.stanzas < 2 * SEGMENT or args.users < 1:
        parser.error(f"--stanzas must be at least {2 * SEGMENT} and --users at least 1")
    args.stanzas -= args.stanzas % 2

    # SIGTERM (and SIGINT, even where a shell ignored it) interrupt like Ctrl-C: asyncio.run then
    # cancels the run, whose `finally` stops and reaps every process it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = args.keep
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        results, exit_code = asyncio.run(bench(args, workdir))
    except (RuntimeError, TimeoutError) as exc:
        progress(f"bench_ingest: the benchmark failed: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("bench_ingest: interrupted; everything it started is stopped")
        return 130
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(args, results, exit_code))
    if args.profile is not None:
        print_profile(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
