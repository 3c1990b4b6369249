"""The defaults the README promises, checked as defaults: every other test injects its own backoff,
limits or timings, so a changed default would pass them all.

- a background duty that keeps failing: restarted after 1 s, doubling, up to 60 s; after 5
  failures within 10 minutes the bot exits 70 (README, "Failure modes"), through `Bot`'s wiring;
  a failing retention pass is retried up to every count interval, never a reason to exit;
- the figures logged 15 s after start, then every 3600 s plus 0..300 s (config.example.toml);
- liveness: pings wait 30 s, at most 20 a second; the store is written every 1.0 s;
- chat: 5 replies, then one per 2 s per sender (README, "a flood");
- HTTP: a quarter of the descriptors (at most 1,024), a complete request within 10 s, an idle
  keep-alive connection closed after 15 s.

Time is virtual where the defaults are long: the supervisor's (or the count's) `asyncio` is seen
through a shim whose `sleep` moves a virtual clock instead of waiting."""

from __future__ import annotations

import asyncio
import sys
import types
from collections import Counter
from typing import Any

import pytest

from bot.app.daemon import Bot
from bot.app.duties import count_periodically
from bot.app.supervisor import EXIT_DUTY_FAILED, DutyFailed, supervise
from bot.config import load_settings
from bot.web.connections import connection_cap
from bot.web.server import WebServer
from bot.xmpp.ratelimit import RateLimiter

from .support import FAST, MINIMAL, bot_settings, write


class VirtualTime:
    """An `asyncio` for one module: `sleep(d)` records d and moves `now` by d at once (it still
    yields to the loop); `get_running_loop().time()` reads `now`. Everything else is asyncio's."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        time = self

        class Loop:
            def __init__(self, real: asyncio.AbstractEventLoop) -> None:
                self._real = real

            def time(self) -> float:
                return time.now

            def __getattr__(self, name: str) -> Any:
                return getattr(self._real, name)

        async def sleep(delay: float, result: Any = None) -> Any:
            self.sleeps.append(delay)
            self.now += delay
            return await asyncio.sleep(0, result)

        self.module = types.SimpleNamespace(
            **{name: getattr(asyncio, name) for name in dir(asyncio) if not name.startswith("__")}
        )
        self.module.sleep = sleep
        self.module.get_running_loop = lambda: Loop(asyncio.get_running_loop())

    def install(self, monkeypatch: pytest.MonkeyPatch, function: Any) -> VirtualTime:
        """Let the module that defines `function` see this shim as its `asyncio`."""
        monkeypatch.setattr(sys.modules[function.__module__], "asyncio", self.module)
        return self


async def silent_server() -> tuple[asyncio.Server, int]:
    """A TCP listener that accepts and never answers: the bot's XMPP link stays in its handshake
    (no private Prosody needed to run the duties)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.asyncio
async def test_the_bot_exits_70_after_5_failures_of_a_duty_by_default(tmp_path, monkeypatch):
    listener, port = await silent_server()
    server = types.SimpleNamespace(
        component_jid="active.example.test",
        component_secret="s3cret",
        component_port=port,
        domain="example.test",
    )
    settings = bot_settings(server, tmp_path / "a.db", first_count_after=0)
    bot = Bot(settings, timing=FAST)  # no backoff given: the default one
    virtual = VirtualTime().install(monkeypatch, supervise)
    failures = 0

    async def broken_housekeeping() -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("a bug in the count's housekeeping")

    bot.duties.after_count = broken_housekeeping  # the count duty fails on each pass
    try:
        status = await asyncio.wait_for(bot.serve(asyncio.Event()), 10)
    finally:
        listener.close()
    assert status == EXIT_DUTY_FAILED == 70
    assert failures == 5
    assert bot.duty_restarts == Counter({"count": 4})
    assert virtual.sleeps == [1.0, 2.0, 4.0, 8.0]  # 1 s, doubling


@pytest.mark.asyncio
async def test_by_default_a_failing_retention_pass_never_ends_the_bot(tmp_path, monkeypatch):
    """Retention is retried with the default backoff's 1 s, doubling up to the count interval
    (3600 s here), however often it fails: never exit 70 for it."""
    listener, port = await silent_server()
    server = types.SimpleNamespace(
        component_jid="active.example.test",
        component_secret="s3cret",
        component_port=port,
        domain="example.test",
    )
    settings = bot_settings(server, tmp_path / "a.db", retention_days=400, first_count_after=0)
    bot = Bot(settings, timing=FAST)
    virtual = VirtualTime().install(monkeypatch, supervise)
    stop = asyncio.Event()

    async def failing_retention(*_args: object) -> int:
        if bot.duty_restarts["retention"] >= 20:
            stop.set()
        raise OSError("reading the store for retention failed")

    bot.tracker.forget_inactive_soon = failing_retention
    try:
        status = await asyncio.wait_for(bot.serve(stop), 10)
    finally:
        listener.close()
    assert status == 0  # stopped by the test, not by the failures
    assert bot.duty_restarts["retention"] >= 20
    assert virtual.sleeps[:13] == [float(2**n) for n in range(12)] + [3600.0]


@pytest.mark.asyncio
async def test_by_default_5_quick_failures_end_a_duty_and_failures_count_for_10_minutes(
    monkeypatch,
):
    virtual = VirtualTime().install(monkeypatch, supervise)
    restarts: Counter[str] = Counter()

    async def always() -> None:
        raise RuntimeError("always")

    with pytest.raises(DutyFailed, match="failed 5 times within 600 s"):
        await asyncio.wait_for(supervise("count", always, restarts), 5)  # the default backoff
    assert virtual.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert restarts["count"] == 4

    async def fails_after(seconds: float) -> None:
        virtual.now += seconds  # ran well for a while (longer than the 60 s cap: delay 1 s)
        raise RuntimeError("failing now and then")

    # A failure every 161 s: at most 4 within any 10 minutes, never the end of the bot.
    task = asyncio.create_task(supervise("flush", lambda: fails_after(160), restarts))
    while restarts["flush"] < 20:
        assert not task.done(), task.exception()
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # A failure every 101 s: the 5th is within 10 minutes of the first.
    with pytest.raises(DutyFailed, match="'liveness' failed 5 times"):
        await asyncio.wait_for(supervise("liveness", lambda: fails_after(100), restarts), 5)
    assert restarts["liveness"] == 4


def test_the_promised_config_defaults(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert (settings.first_count_after, settings.count_interval, settings.count_jitter) == (
        15,
        3600,
        300,
    )
    assert settings.flush_interval == 1.0
    assert (settings.liveness_timeout, settings.liveness_max_rate) == (30, 20)
    assert settings.retention_days == 0
    assert settings.pseudonym_key is None


@pytest.mark.asyncio
async def test_the_figures_are_logged_after_15_s_then_hourly_plus_up_to_300_s(
    tmp_path, monkeypatch
):
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    virtual = VirtualTime().install(monkeypatch, count_periodically)
    counts = types.SimpleNamespace(active={86_400: 1}, online_users=0, online_sessions=0)
    passes = 0

    class Tracker:
        def counts(self, _now: int) -> types.SimpleNamespace:
            nonlocal passes
            passes += 1
            return types.SimpleNamespace(**vars(counts), known_users=passes)

    task = asyncio.create_task(count_periodically(Tracker(), settings))  # the default jitter
    while passes < 200:
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    first, *then = virtual.sleeps
    assert first == 15
    assert all(3600 <= delay <= 3900 for delay in then)
    assert max(then) - min(then) > 150  # jittered over most of the 300 s, not a fixed delay


def test_chat_allows_5_replies_then_one_per_2_s_per_sender_by_default():
    now = [1000.0]
    limiter = RateLimiter(lambda: now[0])
    assert [limiter.allow("a@x") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b@x")  # per sender
    now[0] += 1.9
    assert not limiter.allow("a@x")
    now[0] += 0.1
    assert limiter.allow("a@x")
    assert not limiter.allow("a@x")


def test_the_http_listener_limits_by_default(monkeypatch):
    server = WebServer("127.0.0.1", 0, routes={})
    assert server.limits.max_connections == connection_cap(server.budget)
    assert (server.limits.header_timeout, server.limits.idle_timeout) == (10.0, 15.0)
    assert (connection_cap(1024), connection_cap(8192), connection_cap(10**6)) == (256, 1024, 1024)
