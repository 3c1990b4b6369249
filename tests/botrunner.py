"""Run the real bot in the test's event loop against the shared Prosody, and watch what it does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from bot.component import Timing
from bot.config import Settings, load_settings
from bot.daemon import Bot
from bot.testbed.botconfig import write_config

ADMIN = "admin@example.test"
FAST = Timing(privileges_grace=0.5, resync_grace=1.0, handshake_timeout=10)


def bot_settings(server, store_path: Path, **changes) -> Settings:
    """The settings of a bot for `server`, through the real path: a config file written next to
    the store (`bot.testbed.botconfig`), read by `load_settings`. `changes` are keywords of
    `write_config`, named like the fields of `Settings`; `metrics_listen` is as in `Settings`
    (None: off, or (host, port), where port 0 is any free port)."""
    options = {
        "component_jid": server.component_jid,
        "secret": server.component_secret,
        "server_host": "127.0.0.1",
        "server_port": server.component_port,
        "domains": [server.domain],
        "admins": [ADMIN],
        "store_path": store_path,
        "flush_interval": 0.2,
        "first_count_after": 3600,
        "count_interval": 3600,
        "count_jitter": 0,
        "liveness_interval": 0,  # off, whatever the server (only the tests that ping turn it on)
        "metrics_listen": None,  # the metrics test turns it on (closing it costs 0.5 s)
    } | changes
    listen = options.pop("metrics_listen")
    # A config file cannot ask for any free port (it refuses port 0): that one request is set on
    # the settings read from the file.
    any_port = listen is not None and listen[1] == 0
    config = write_config(
        store_path.with_name(store_path.name + ".toml"),
        metrics_listen="" if listen is None or any_port else listen_text(*listen),
        **options,
    )
    settings = load_settings(config, environ={})  # the test's secret, never the environment's
    return replace(settings, metrics_listen=listen) if any_port else settings


def listen_text(host: str, port: int) -> str:
    """HOST:PORT as the config file's [metrics] listen says it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def bot_starter(server, store_path: Path, **defaults) -> AsyncIterator:
    """`start(**changes)` runs a real Bot against `server` (settings from `bot_settings`);
    every bot started is stopped on the way out."""
    running: list[RunningBot] = []

    async def start(**changes) -> RunningBot:
        settings = bot_settings(server, store_path, **(defaults | changes))
        bot = await RunningBot(Bot(settings, timing=FAST)).start()
        running.append(bot)
        return bot

    try:
        yield start
    finally:
        for bot in running:
            await bot.stop_quietly()


class RunningBot:
    """A started Bot, the presence changes it tracked (in order), and a way to stop it."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.component = bot.component
        self.tracked: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.component.add_event_handler(
            "presence_tracked", lambda event: self.tracked.put_nowait((event[0], str(event[1])))
        )
        self._stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

    async def start(self, timeout: float = 10) -> RunningBot:
        connected = asyncio.ensure_future(self.component.wait_until("session_start", timeout))
        self.task = asyncio.create_task(self.bot.serve(self._stop))
        done, _ = await asyncio.wait([connected, self.task], return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            connected.cancel()
            raise AssertionError(f"the bot stopped before connecting: exit {self.task.result()}")
        await connected
        return self

    async def expect(self, kind: str, full_jid: str, timeout: float = 5) -> None:
        """Wait until the bot has tracked this presence change (failing on any other first)."""
        got = await asyncio.wait_for(self.tracked.get(), timeout)
        assert got == (kind, full_jid), f"expected {kind} of {full_jid}, the bot tracked {got}"

    async def expect_set(self, changes: set[tuple[str, str]], timeout: float = 5) -> None:
        """Wait for several changes whose order is not defined (a server's burst)."""
        seen = set()
        while len(seen) < len(changes):
            seen.add(await asyncio.wait_for(self.tracked.get(), timeout))
        assert seen == changes

    def figures(self):
        return self.bot.tracker.counts(int(self.bot.clock()))

    async def stop(self) -> int:
        self._stop.set()
        assert self.task is not None
        return await asyncio.wait_for(self.task, 10)

    async def stop_quietly(self) -> None:
        if self.task is not None and not self.task.done():
            self._stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)
