"""What the test modules share: the accounts, config text, a real bot to run and watch, XMPP
helpers for admins, and a component on slixmpp's fake stream. No test module imports another.

The session-wide servers (Prosody, ejabberd) and the fixtures built on them are in conftest.py;
the servers and clients themselves are in bot/testbed/ (shared with the demo and benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from slixmpp.test import SlixTest
from slixmpp.test import TestTransport as Transport  # not collected as a test

from bot.activity.tracker import ActivityTracker
from bot.admin.commands import ADHOC_CLIENTS_NODE, ADHOC_STATS_NODE, CommandSet
from bot.admin.forms import table_rows
from bot.admin.history import utc_day
from bot.app.daemon import Bot, figures_source
from bot.config import Settings, load_settings
from bot.core.counter import DAY
from bot.core.model import UserRecord
from bot.storage.store import Store
from bot.testbed.botconfig import write_config
from bot.testbed.clients import connect_client, disconnect_client
from bot.xmpp.component import ActiveUsersComponent, Timing

# --- accounts -----------------------------------------------------------------------------------

# Registered on the session's Prosody and ejabberd (conftest.py): user -> password.
USERS = {"admin": "adminpw", "alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}
ADMIN = "admin@example.test"  # the only admin of every bot the tests start


# --- the windows' edges ---------------------------------------------------------------------------

# Seconds since the last activity -> (active in 24 h, 7 d, 30 d), by hand: `age < window`
# (exactly 24 hours ago is no longer daily). The same for a user and for a client family.
WINDOW_EDGES = {
    0: (1, 1, 1),
    DAY - 1: (1, 1, 1),
    DAY: (0, 1, 1),
    DAY + 1: (0, 1, 1),
    7 * DAY - 1: (0, 1, 1),
    7 * DAY: (0, 0, 1),
    7 * DAY + 1: (0, 0, 1),
    30 * DAY - 1: (0, 0, 1),
    30 * DAY: (0, 0, 0),
    30 * DAY + 1: (0, 0, 0),
}


# --- config files, as an admin writes them ------------------------------------------------------

MINIMAL = """
[component]
jid = "active.example.test"
secret = "s3cret"
[counting]
domains = ["example.test"]
[access]
admins = ["admin@example.test"]
[store]
path = "data/activity.db"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "data").mkdir(exist_ok=True)  # MINIMAL's store folder: the bot never makes it
    return path


# --- a real bot in the test's event loop --------------------------------------------------------

FAST = Timing(
    privileges_grace=0.5,
    resync_grace=1.0,
    handshake_timeout=10,
    shutdown_write_budget=1.0,
    unavailable_recheck=1.0,
    unavailable_followup=0.2,
)


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
    # A config file cannot ask for any free port (it refuses port 0): the file names port 1 (a
    # listener all the same, for the checks that need one), and the settings read from it get 0.
    any_port = listen is not None and listen[1] == 0
    config = write_config(
        store_path.with_name(store_path.name + ".toml"),
        metrics_listen="" if listen is None else listen_text(listen[0], listen[1] or 1),
        **options,
    )
    settings = load_settings(config, environ={})  # the test's secret, never the environment's
    return replace(settings, metrics_listen=listen) if any_port else settings


def listen_text(host: str, port: int) -> str:
    """HOST:PORT as the config file's [metrics] listen says it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def bot_starter(server, store_path: Path, **defaults) -> AsyncIterator:
    """`start(**changes)` runs a real Bot against `server` (settings from `bot_settings`; the
    keywords `clock` (the bot's wall clock) and `timing` go to the Bot); every bot started is
    stopped on the way out."""
    running: list[RunningBot] = []

    async def start(
        *, clock: Callable[[], float] = time.time, timing: Timing = FAST, **changes
    ) -> RunningBot:
        settings = bot_settings(server, store_path, **(defaults | changes))
        bot = await RunningBot(Bot(settings, clock=clock, timing=timing)).start()
        running.append(bot)
        return bot

    try:
        yield start
    finally:
        for bot in running:
            await bot.stop_quietly()


# Events of ActiveUsersComponent that RunningBot queues from the start (so none is missed):
# "resynced" (sessions closed after a reconnection), "liveness_checked" (closed by the pings
# after connecting).
MILESTONES = ("resynced", "liveness_checked")


class Clock:
    """A wall clock the test moves (`clock.now += 1000`): give it to Bot(clock=...), and the
    times the bot records are known exactly."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RunningBot:
    """A started Bot, the presence changes it tracked (in order), and a way to stop it."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.component = bot.component
        self.tracked: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.component.add_event_handler(
            "presence_tracked", lambda event: self.tracked.put_nowait((event[0], str(event[1])))
        )
        # The component's own milestones, from the first connection on (one queue each).
        self.milestones: dict[str, asyncio.Queue[object]] = {}
        for name in MILESTONES:
            queue = self.milestones[name] = asyncio.Queue()
            self.component.add_event_handler(name, queue.put_nowait)
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

    async def milestone(self, name: str, timeout: float = 20) -> object:
        """The next `name` event of the component (one of MILESTONES), with its value."""
        return await asyncio.wait_for(self.milestones[name].get(), timeout)

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


class LogWatch(logging.Handler):
    """The records of one logger as they are emitted, to wait for one (an event, not a sleep).

    `with LogWatch("bot.component") as watch: ... await watch.next(lambda text: ...)`.
    """

    def __init__(self, logger: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.loop = asyncio.get_running_loop()
        self.records: asyncio.Queue[logging.LogRecord] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:  # from any thread (the store's worker)
        self.loop.call_soon_threadsafe(self.records.put_nowait, record)

    def __enter__(self) -> LogWatch:
        self.logger.addHandler(self)
        self._level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    async def next(self, wanted, timeout: float = 10) -> logging.LogRecord:
        """The first record (from now on in the queue) whose message `wanted(message)` accepts."""
        while True:
            record = await asyncio.wait_for(self.records.get(), timeout)
            if wanted(record.getMessage()):
                return record


def cpu_wait(pid: int) -> float:
    """Seconds the threads of process `pid` have spent runnable but waiting for a CPU (the
    kernel's run-queue time, field 2 of /proc/PID/task/TID/schedstat, in ns): how much later
    than planned a loaded machine let that process act. Threads that ended are not counted."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just ended
            total += int(stat.read_text().split()[1])
    return total / 1e9


# --- what an admin's client does ----------------------------------------------------------------


async def ask_adhoc(client, node: str = ADHOC_STATS_NODE) -> dict[str, str]:
    result = await client.plugin["xep_0050"].send_command(jid="active.example.test", node=node)
    assert result["command"]["status"] == "completed"
    return {k: v for k, v in result["command"]["form"].get_values().items() if k != "FORM_TYPE"}


async def ask_adhoc_clients(client) -> dict[str, dict[str, str]]:
    """The ad-hoc command 'clients' (Active users by client): its rows, by metrics label."""
    result = await client.plugin["xep_0050"].send_command(
        jid="active.example.test", node=ADHOC_CLIENTS_NODE
    )
    assert result["command"]["status"] == "completed"
    return table_rows(result["command"]["form"])


class Chat:
    """Chat with the bot from one client; replies come back in order on the same stream."""

    def __init__(self, client) -> None:
        self.client = client
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        client.add_event_handler("message", self._on_message)

    def _on_message(self, message) -> None:
        if message["from"].bare == "active.example.test":
            self.replies.put_nowait(message["body"])

    async def ask(self, text: str, mtype: str = "chat") -> str:
        self.client.send_message(mto="active.example.test", mbody=text, mtype=mtype)
        return await asyncio.wait_for(self.replies.get(), 5)


# --- what Prosody's own mod_measure_active_users says -----------------------------------------

GAUGE = re.compile(
    r'^prosody_mod_measure_active_users__active_users_(1d|7d|30d)\{host="example\.test"\} (\d+)$',
    re.M,
)


def reference_figures(prosody) -> dict[str, int]:
    """The reference module's three gauges, computed now (it runs over its host's lastlog2)."""
    prosody.shell(
        '> prosody.hosts["example.test"].modules.measure_active_users.update_calculations()'
    )
    gauges = dict(GAUGE.findall(prosody.metrics()))
    return {"dau": int(gauges["1d"]), "wau": int(gauges["7d"]), "mau": int(gauges["30d"])}


# --- a bot with a past, as an admin's browser or Prometheus sees it -------------------------------

# Days before today with a stored daily snapshot; the other days of the last 90 are gaps (the bot
# was not running). Each snapshot's figures are made from the day's distance, so that a value
# tells which day it came from.
HISTORY_DAYS_BACK = (30, 6, 5, 2, 1)


def history_figures(days_back: int) -> dict[str, object]:
    return {
        "active": {"1d": 10 + days_back, "7d": 20 + days_back, "30d": 40 + days_back},
        "new": {"1d": days_back, "7d": 2 * days_back, "30d": 3 * days_back},
        "peak_online": days_back,
    }


def seed_store(store_path: Path, domain: str, now: int) -> None:
    """Users of earlier days, so that DAU, WAU and MAU differ once alice, bob and carol log in
    (3, 5, 6; new: 3, 4, 4; 7 known), week on Gajim and month on Dino (so that a client's
    figures differ per window too), and the snapshots of HISTORY_DAYS_BACK."""
    with Store(store_path) as store:
        week_out, month_out = now - 3 * DAY + 600, now - 20 * DAY + 9
        store.put(
            f"week@{domain}",
            UserRecord(now - 40 * DAY, now - 3 * DAY, week_out, (), ("gajim", week_out)),
        )
        store.put(f"newcomer@{domain}", UserRecord(now - 5 * DAY, now - 2 * DAY, now - 2 * DAY + 9))
        store.put(
            f"month@{domain}",
            UserRecord(now - 50 * DAY, now - 20 * DAY, month_out, (), ("dino", month_out)),
        )
        store.put(f"dormant@{domain}", UserRecord(now - 90 * DAY, now - 60 * DAY, now - 60 * DAY))
        for back in HISTORY_DAYS_BACK:
            store.put_day(utc_day(now - back * DAY), {domain: history_figures(back)})
        store.flush(now)


@dataclass
class World:
    """A running bot with a seeded store, users online, and the admin's ad-hoc answers."""

    bot: RunningBot
    adhoc: dict[str, str]
    admin: object  # the admin's slixmpp client, logged in without presence (never counted)
    clients: dict[str, dict[str, str]]  # the 'clients' command's rows, by metrics label


# The XEP-0115 caps node each session of `seeded_world` announces (None: no caps).
SEEDED_CAPS = {
    ("alice", "phone"): "http://conversations.im",
    ("alice", "laptop"): "https://gajim.org",
    ("bob", "phone"): "http://conversations.im",
    ("carol", "pc"): "https://chat.example.net/client",
}


@contextlib.asynccontextmanager
async def seeded_world(server, folder: Path, **bot_changes) -> AsyncIterator[World]:
    """`seed_store`, then a real bot (`bot_changes` as for `bot_settings`), then alice (two
    sessions) and bob online, carol in and out, each with the client of SEEDED_CAPS; the admin
    asks the ad-hoc commands last."""
    store_path = folder / "activity.db"
    seed_store(store_path, server.domain, int(time.time()))
    async with bot_starter(server, store_path) as start:
        running = await start(**bot_changes)
        clients = []
        try:
            for user, resource in (("alice", "phone"), ("alice", "laptop"), ("bob", "phone")):
                bare = f"{user}@{server.domain}"
                caps = SEEDED_CAPS[(user, resource)]
                clients.append(
                    await connect_client(server, bare, USERS[user], resource, caps_node=caps)
                )
                await running.expect("available", f"{bare}/{resource}")
            carol = await connect_client(
                server,
                f"carol@{server.domain}",
                USERS["carol"],
                "pc",
                caps_node=SEEDED_CAPS[("carol", "pc")],
            )
            await running.expect("available", f"carol@{server.domain}/pc")
            await disconnect_client(carol)
            await running.expect("unavailable", f"carol@{server.domain}/pc")
            admin = await connect_client(server, ADMIN, USERS["admin"], "desk", presence=False)
            clients.append(admin)
            adhoc = await ask_adhoc(admin)
            yield World(running, adhoc, admin, await ask_adhoc_clients(admin))
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    await disconnect_client(client)


# --- the component on slixmpp's fake stream -----------------------------------------------------

T0 = 1_800_000_000  # the tests' clock (2027-01-15 08:00 UTC): one constant for every test module
COMPONENT = "active.example.test"


class ComponentHarness(SlixTest):
    """Our component on SlixTest's fake stream; no tests of its own (other tests build on it)."""

    def sent(self) -> list[str]:
        """Every stanza the component sent since the last call, as text."""
        self.wait_for_send_queue()
        stanzas = []
        while (stanza := self.xmpp.socket.next_sent()) is not None:
            stanzas.append(stanza.decode())
        return stanzas

    def setUp(self) -> None:
        self.folder = tempfile.TemporaryDirectory()
        self.store = Store(Path(self.folder.name) / "activity.db")
        self.tracker = ActivityTracker(self.store, ["example.test"])
        self.tracker.load(T0)
        clock = lambda: T0  # noqa: E731
        self.monotonic_now = 1000.0  # the interval clock: it moves only when a test moves it
        self.xmpp = ActiveUsersComponent(
            jid=COMPONENT,
            secret="secret",
            host="127.0.0.1",
            port=5347,
            tracker=self.tracker,
            commands=CommandSet(
                admins=frozenset({"admin@example.test"}),
                figures=figures_source(self.tracker, clock),
            ),
            clock=clock,
            monotonic=lambda: self.monotonic_now,
            timing=Timing(privileges_grace=0.05),
        )
        self.xmpp._always_send_everything = True
        self.xmpp.connection_made(Transport(self.xmpp))
        self.xmpp.session_bind_event.set()
        self.xmpp.use_presence_ids = False
        self.xmpp.use_message_ids = False
        self.xmpp.data_received(self.xmpp.stream_header)
        self.wait_for_send_queue()
        self.xmpp.socket.next_sent()  # our stream header
        self.xmpp.socket.next_sent()  # our handshake
        self.xmpp.event("session_bind", self.xmpp.boundjid)  # what the accepted handshake does
        self.wait_()

    def tearDown(self) -> None:
        self.stream_close()
        self.store.close(T0)
        self.folder.cleanup()

    def online(self) -> set[tuple[str, str]]:
        return self.tracker.online_sessions()
