"""Strangers at the HTTP port, against a real `xmpp-active-users run` process with 1,024 file
descriptors (systemd's default soft limit): half-open connections by the thousand and malformed
requests by the ten thousand cost a bounded number of descriptors and log lines, and never the
XMPP link nor an authorized scrape.

The bot runs as its own process (its RLIMIT_NOFILE set in `preexec_fn`), against a Prosody of
its own (the test restarts it during the attack), its log written to a file the test measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

import bot
from bot.testbed.botconfig import write_config
from bot.testbed.sandbox import ProsodySandbox, free_ports

pytestmark = pytest.mark.asyncio

REPO = Path(bot.__file__).resolve().parents[1]  # run the bot of this checkout
TOKEN = "flood-test-token-0123456789"
DESCRIPTORS = 1024  # systemd's default soft limit (LimitNOFILE= unset)
HALF_OPEN = 1100  # more connections than the bot has descriptors
CAP = 256  # the HTTP connections the bot allows itself with 1,024 descriptors (a quarter)


@dataclass
class BotProcess:
    process: subprocess.Popen[bytes]
    log: Path
    url: str

    def log_bytes(self) -> int:
        return self.log.stat().st_size

    def log_text(self, since: int = 0) -> str:
        return self.log.read_bytes()[since:].decode(errors="replace")

    async def wait_for_log(self, text: str, since: int, timeout: float) -> float:
        """Wait until `text` appears in the log after byte `since`; the time it took."""
        started = time.monotonic()
        while text not in self.log_text(since):
            if self.process.poll() is not None:
                raise AssertionError(f"the bot exited:\n{self.log_text()[-3000:]}")
            if time.monotonic() - started > timeout:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.log_text(since)}")
            await asyncio.sleep(0.05)
        return time.monotonic() - started


def limit_descriptors() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


@pytest.fixture
def own_prosody(tmp_path) -> Iterator[ProsodySandbox]:
    """A Prosody of this test's own: the test restarts it, which the session's must not see."""
    with ProsodySandbox(tmp_path / "prosody") as sandbox:
        yield sandbox


@pytest_asyncio.fixture
async def bot_process(own_prosody, tmp_path) -> AsyncIterator[BotProcess]:
    (port,) = free_ports(1)
    config = write_config(
        tmp_path / "config.toml",
        component_jid=own_prosody.component_jid,
        secret=own_prosody.component_secret,
        server_port=own_prosody.component_port,
        domains=[own_prosody.domain],
        admins=["admin@example.test"],
        store_path="activity.db",
        metrics_listen=f"127.0.0.1:{port}",
        metrics_token=TOKEN,
    )
    log = tmp_path / "bot.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--config", str(config)],
            stdout=output,
            stderr=output,
            cwd=REPO,
            env=env,
            start_new_session=True,
            preexec_fn=limit_descriptors,
        )
    running = BotProcess(process, log, f"http://127.0.0.1:{port}")
    try:
        await running.wait_for_log("Connected to", 0, 15)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def scrape(url: str, timeout: float) -> tuple[int, str]:
    """GET /metrics with the token, on a fresh connection, within `timeout` seconds."""
    timeouts = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=timeouts) as http,
        http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        return response.status, await response.text()


def gauge(metrics: str, name: str) -> float:
    (line,) = [line for line in metrics.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def open_half_open(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each send the start of a request, never its end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256  # the test's own descriptors besides
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            hard = wanted  # the suite runs as root, which may raise its hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        with contextlib.suppress(OSError):  # the bot may have closed it already
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: bot\r\n")
        held.append(connection)
    return held


async def test_half_open_connections_starve_neither_the_scrape_nor_the_xmpp_link(
    bot_process, own_prosody
):
    port = int(bot_process.url.rsplit(":", 1)[1])
    assert (
        f"File descriptors: {DESCRIPTORS} (RLIMIT_NOFILE); HTTP: at most {CAP} connections"
        in bot_process.log_text()
    )
    log_before = bot_process.log_bytes()
    started = time.monotonic()
    held = await asyncio.to_thread(open_half_open, port, HALF_OPEN)
    try:
        opened_in = time.monotonic() - started
        status, metrics = await scrape(bot_process.url, timeout=2)
        assert status == 200
        assert "xmpp_component_connected 1.0" in metrics
        held_by_bot, cap = gauge(metrics, "xmpp_http_connections"), CAP
        assert gauge(metrics, "xmpp_http_connections_max") == cap
        assert held_by_bot <= cap  # the rest were closed at once, not kept waiting
        assert gauge(metrics, 'xmpp_http_connections_dropped_total{reason="evicted"}') >= (
            HALF_OPEN - cap
        )

        restarted_at = bot_process.log_bytes()
        await asyncio.to_thread(own_prosody.restart)
        took = await bot_process.wait_for_log("Connected to", restarted_at, 10)
        status, _ = await scrape(bot_process.url, timeout=2)
        assert status == 200
    finally:
        for connection in held:
            connection.close()
    logged = bot_process.log_bytes() - log_before
    print(
        f"{HALF_OPEN} half-open opened in {opened_in:.1f} s; reconnected {took:.1f} s after "
        f"Prosody restarted; {logged} bytes of log"
    )
    assert logged < 20_000, bot_process.log_text(log_before)[-3000:]


MALFORMED = (  # each makes aiohttp answer 400 (and, unguarded, log an ERROR with a traceback)
    b"GET /metrics HTTP/1.1\r\nHost: bot\r\nno colon here\r\n\r\n",
    b"GET /metrics HTTP/1.x\r\nHost: bot\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: bot\r\nContent-Length: -1\r\n\r\n",
    b"GET /" + b"%41" * 3000 + b" HTTP/1.1\r\nHost: bot\r\n\r\n",  # a request line too long
    b"GET /metrics HTTP/1.1\r\nHost: bot\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
)


async def send_malformed(port: int, count: int, workers: int = 16) -> None:
    """`count` malformed requests, one per connection (aiohttp closes after a 400), each read
    to the end of the bot's answer."""
    remaining = iter(range(count))

    async def worker() -> None:
        for n in remaining:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(MALFORMED[n % len(MALFORMED)])
                answer = await asyncio.wait_for(reader.read(), 5)
                assert answer[:12] in (b"HTTP/1.1 400", b"HTTP/1.0 400"), answer[:200]
            finally:
                writer.close()

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_malformed_requests_are_counted_not_logged(bot_process):
    port = int(bot_process.url.rsplit(":", 1)[1])
    log_before = bot_process.log_bytes()
    started = time.monotonic()
    await send_malformed(port, 10_000)
    took = time.monotonic() - started
    status, metrics = await scrape(bot_process.url, timeout=2)
    assert status == 200
    logged = bot_process.log_bytes() - log_before
    print(f"10,000 malformed requests in {took:.1f} s: {logged} bytes of log")
    assert logged < 1_000_000, bot_process.log_text(log_before)[:3000]
    assert gauge(metrics, 'xmpp_http_client_errors_total{kind="malformed"}') == 10_000
