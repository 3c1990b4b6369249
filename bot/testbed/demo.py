"""`xmpp-active-users demo`: a private Prosody, the bot and a few users, in one command.

Everything runs on 127.0.0.1 and lives in one temporary folder: Prosody (its own process, see
sandbox.py), the bot (in this process, from a real config file read by `load_settings`, the same
code as `run`) and real XMPP clients (clients.py). The scripted part logs users in and out and
shows what an admin sees; then the demo waits for Ctrl-C, so that you can try it with
your own client, and stops everything it started, also when a step fails midway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

from ..admin.commands import ADHOC_STATS_NODE
from ..app.daemon import Bot
from ..config import load_settings
from . import botconfig
from .clients import connect_client, disconnect_client
from .sandbox import ProsodyNotInstalled, ProsodySandbox, check_installed, free_ports, tail

log = logging.getLogger(__name__)

T = TypeVar("T")

DOMAIN = "example.test"
COMPONENT = f"active.{DOMAIN}"
ADMIN = f"admin@{DOMAIN}"
USERS = (ADMIN, f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}")
STEP_TIMEOUT = 15.0  # seconds for any one step (a login, a tracked presence, an answer)
PROSODY_LOG_LINES = 20  # shown when a step fails
WIDTH = 96  # of wrapped paragraphs
INTERRUPTED = 130  # exit status after Ctrl-C during the scripted part (128 + SIGINT)

# The script: (who, what). Each step waits until the bot has tracked the presence change.
SCRIPT = (
    (f"{ADMIN}/desk", "login"),
    (f"alice@{DOMAIN}/phone", "login"),
    (f"alice@{DOMAIN}/laptop", "login"),
    (f"bob@{DOMAIN}/pc", "login"),
    (f"carol@{DOMAIN}/pc", "login"),
    (f"bob@{DOMAIN}/pc", "logout"),
)


class DemoError(Exception):
    """A step of the demo failed; the message says which one and what to check."""


async def demo(
    *, wait: bool = True, keep_dir: bool = False, verbose: bool = False, out: TextIO | None = None
) -> int:
    """Run the demo; return the exit status (0, 1 on a failed step, 2 without Prosody).

    `wait=False` stops after the scripted part instead of waiting for SIGINT/SIGTERM.
    """
    out = out or sys.stdout
    try:
        check_installed()
    except ProsodyNotInstalled as exc:
        print(
            f"xmpp-active-users demo: the demo runs a private Prosody, which is not installed: "
            f"{exc}",
            file=sys.stderr,
        )
        return 2
    run = _Demo(out, keep_dir=keep_dir)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, run.request_stop, signum)
    try:
        with _demo_logging(verbose):
            return await run.run(wait=wait)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


class _Demo:
    """One run: what it started is stopped by `cleanup`, in reverse order, whatever happens."""

    def __init__(self, out: TextIO, *, keep_dir: bool) -> None:
        self.out = out
        self.stop = asyncio.Event()
        self.stopped_by = ""  # the signal, for the message
        self.keep_dir = keep_dir
        self.cleanup = contextlib.AsyncExitStack()
        self.workdir: Path | None = None
        self.prosody: ProsodySandbox | None = None
        self.passwords = {jid: secrets.token_hex(4) for jid in USERS}
        self.bot_task: asyncio.Task[int] | None = None
        self.tracked: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.clients: dict[str, slixmpp.ClientXMPP] = {}  # full JID -> client online

    def request_stop(self, signum: int) -> None:
        if not self.stop.is_set():
            self.stopped_by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.stop.set()

    # --- output ------------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def say_wrapped(self, head: str, text: str) -> None:
        """A paragraph wrapped to the terminal's usual width, indented under its head."""
        self.say(textwrap.fill(text, WIDTH, initial_indent=head, subsequent_indent=" " * len(head)))

    def section(self, title: str) -> None:
        self.say()
        self.say(title)
        self.say("-" * len(title))

    # --- the whole run -----------------------------------------------------------------------

    async def run(self, *, wait: bool) -> int:
        try:
            return await self._run(wait)
        finally:
            self.section("Stopping")
            await self.cleanup.aclose()  # every step runs, even after one fails
            self.say("Everything the demo started is stopped.")

    async def _run(self, wait: bool) -> int:
        script = asyncio.create_task(self._script(), name="demo script")
        stopping = asyncio.create_task(self.stop.wait(), name="demo stop")
        try:
            await asyncio.wait({script, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not script.done():
                script.cancel()
                await asyncio.gather(script, return_exceptions=True)
                self.say()
                self.say(f"{self.stopped_by}: interrupted before the end of the demo.")
                return INTERRUPTED
            if (error := script.exception()) is not None:
                self._report(error)
                return 1
            if not wait or self.stop.is_set():
                return 0
            self.say()
            self.say("The demo keeps running until you press Ctrl-C.")
            assert self.bot_task is not None
            await asyncio.wait({stopping, self.bot_task}, return_when=asyncio.FIRST_COMPLETED)
            if not self.stop.is_set():
                error = None if self.bot_task.cancelled() else self.bot_task.exception()
                outcome = repr(error) if error else f"exit {self.bot_task.result()}"
                print(f"xmpp-active-users demo: the bot stopped ({outcome})", file=sys.stderr)
                return 1
            self.say()
            self.say(f"{self.stopped_by}: stopping.")
            return 0
        finally:
            for task in (script, stopping):
                task.cancel()
            await asyncio.gather(script, stopping, return_exceptions=True)

    def _report(self, error: BaseException) -> None:
        if isinstance(error, DemoError):
            print(f"xmpp-active-users demo: {error}", file=sys.stderr)
        else:
            print("xmpp-active-users demo: unexpected error:", file=sys.stderr)
            traceback.print_exception(error, file=sys.stderr)
        if self.prosody is not None:
            print(
                f"--- the end of Prosody's log ({self.prosody.log_path}) ---\n"
                f"{tail(self.prosody.log_path, PROSODY_LOG_LINES)}",
                file=sys.stderr,
            )
        if not self.keep_dir:
            print("(run the demo with --keep-dir to keep every file of it)", file=sys.stderr)

    # --- the scripted part -------------------------------------------------------------------

    async def _script(self) -> None:
        self.say("xmpp-active-users demo")
        self.say("======================")
        self.say("A private Prosody on 127.0.0.1, the bot, and a few users logging in and out.")
        self.say("Nothing listens beyond 127.0.0.1; Ctrl-C stops everything the demo started.")
        await self._start_prosody()
        await self._start_bot()
        await self._play_script()
        await self._ask_as_admin()
        self._print_connection_details()

    async def _start_prosody(self) -> None:
        self.section("1. A private Prosody")
        self.workdir = Path(tempfile.mkdtemp(prefix="xmpp-active-users-demo-"))
        self.cleanup.callback(self._remove_workdir, self.workdir)
        self.say(f"Folder:     {self.workdir}")
        self.prosody = ProsodySandbox(
            self.workdir / "prosody", domain=DOMAIN, component_jid=COMPONENT
        )
        self.cleanup.callback(self._stop_prosody, self.prosody)
        await _in_thread(self.prosody.start)
        self.say(f"Prosody:    pid {self.prosody.pid}, domain {DOMAIN}")
        self.say(f"            port {self.prosody.c2s_port} for clients (c2s)")
        self.say(f"            port {self.prosody.component_port} for the bot (XEP-0114 component)")
        self.say(f"            log {self.prosody.log_path}")
        prosody = self.prosody
        await asyncio.gather(
            *(_in_thread(prosody.register, jid, self.passwords[jid]) for jid in USERS)
        )
        self.say("Accounts:   (address, password)")
        for jid in USERS:
            role = "  may ask the bot: [access] admins" if jid == ADMIN else ""
            self.say(f"            {jid:<22} {self.passwords[jid]}{role}")

    async def _start_bot(self) -> None:
        self.section("2. The bot")
        assert self.workdir is not None
        assert self.prosody is not None
        (metrics_port,) = free_ports(1)
        config = write_config(self.workdir, self.prosody, metrics_port)
        # The demo's own secret: XMPP_ACTIVE_USERS_SECRET, which would win, is not consulted.
        settings = load_settings(config, environ={})
        self.say(f"Config:     {config}  (the format of config.example.toml)")
        self.say(f"Component:  {settings.component_jid}, admins: {', '.join(settings.admins)}")
        self.say(f"Store:      {settings.store_path}")
        self.say(f"Status:     http://127.0.0.1:{metrics_port}/  (a page for your browser)")
        self.say(f"Metrics:    http://127.0.0.1:{metrics_port}/metrics  (Prometheus)")
        bot = Bot(settings)  # opens the store: closed by serve(), or here if never served
        bot.component.add_event_handler(
            "presence_tracked", lambda event: self.tracked.put_nowait((event[0], str(event[1])))
        )
        stop_bot = asyncio.Event()
        connected = asyncio.ensure_future(
            bot.component.wait_until("session_start", STEP_TIMEOUT + 5)
        )
        self.bot_task = asyncio.create_task(bot.serve(stop_bot), name="bot")
        self.cleanup.push_async_callback(self._stop_bot, self.bot_task, stop_bot)
        done, _ = await asyncio.wait(
            {connected, self.bot_task}, return_when=asyncio.FIRST_COMPLETED
        )
        if self.bot_task in done:
            connected.cancel()
            raise DemoError(f"the bot stopped before connecting (exit {self.bot_task.result()})")
        try:
            await connected
        except TimeoutError:
            raise DemoError("the bot did not connect to Prosody") from None

    async def _play_script(self) -> None:
        self.section("3. Users log in and out")
        self.say("Real XMPP clients; each step waits until the bot has tracked the change.")
        for full_jid, action in SCRIPT:
            if action == "login":
                await self._login(full_jid)
                await self._tracked("available", full_jid)
                self.say(f"  {full_jid:<28} logs in    -> the bot saw a login")
            else:
                await self._logout(full_jid)
                await self._tracked("unavailable", full_jid)
                self.say(f"  {full_jid:<28} logs out   -> the bot saw a logout")
        self.say_wrapped("Online now: ", ", ".join(sorted(self.clients)))

    async def _ask_as_admin(self) -> None:
        self.section(f"4. What the admin sees ({ADMIN})")
        admin = self.clients[f"{ADMIN}/desk"]
        self.say(f"Ad-hoc command '{ADHOC_STATS_NODE}' (Active users) on {COMPONENT}:")
        try:
            result = await asyncio.wait_for(
                admin.plugin["xep_0050"].send_command(jid=COMPONENT, node=ADHOC_STATS_NODE),
                STEP_TIMEOUT,
            )
        except (IqError, IqTimeout, TimeoutError) as exc:
            raise DemoError(f"the ad-hoc command '{ADHOC_STATS_NODE}' failed: {exc}") from None
        form = result["command"]["form"]
        rows = [
            (str(field["label"] or var), str(field["value"]))
            for var, field in form.get_fields().items()
            if field["type"] != "hidden"
        ]
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.say(f"  {label:<{width}}  {value:>20}")

        self.say()
        self.say(f"Chat message 'stats' to {COMPONENT}:")
        reply = await self._chat(admin, "stats")
        self.say(f"  reply: {reply}")
        self.say()
        self.say_wrapped("Why: ", self._explanation())

    def _explanation(self) -> str:
        """Why the figures are what they are, from the script and who is still online."""
        names = list(dict.fromkeys(_user(full_jid) for full_jid, _ in SCRIPT))
        online = [_user(full_jid) for full_jid in sorted(self.clients)]
        online_names = list(dict.fromkeys(online))
        gone = [name for name in names if name not in online_names]
        several = [name for name in online_names if online.count(name) > 1]
        text = (
            f"{len(names)} users were active in every window ({', '.join(names)}): all logged "
            f"in today"
        )
        if gone:
            text += (
                f"; {' and '.join(gone)} counted although logged out: a logout today is "
                "activity today"
            )
        text += (
            f". All {len(names)} are new: first seen today, so DAU/MAU is 100%. "
            f"{len(online_names)} users are online now ({', '.join(online_names)}) with "
            f"{len(online)} sessions"
        )
        if several:
            text += f": {' and '.join(several)} on several devices"
        return text + "."

    def _print_connection_details(self) -> None:
        assert self.prosody is not None
        port = self.prosody.c2s_port
        self.section("5. Try it with your own XMPP client")
        self.say(f"Server:     127.0.0.1, port {port} ({DOMAIN} is not in DNS: set both by hand)")
        self.say("Accounts:   the ones above; log in as admin to ask the bot")
        self.say(
            "Security:   no TLS, plain auth: loopback only. This Prosody has no certificate, so"
        )
        self.say("            the client must allow an unencrypted connection to 127.0.0.1.")
        self.say(f"Gajim:      account settings > connection: custom host 127.0.0.1, port {port},")
        self.say("            type Plain; accept the warning about the unencrypted connection.")
        self.say(f"            Then Add Contact {COMPONENT}; right-click it > Execute Command…")
        self.say(f"            > Active users; or Start Chat with stats@{COMPONENT}: 'stats'.")
        self.say(f"Profanity:  /connect {ADMIN} server 127.0.0.1 port {port} tls disable")
        self.say(f"            /cmd exec {ADHOC_STATS_NODE} {COMPONENT}")
        self.say(f"            /msg {COMPONENT} stats")
        self.say("Dino, Conversations: they refuse unencrypted connections (and Conversations, on")
        self.say(
            "            a phone, cannot reach this machine's 127.0.0.1). Use them with the bot"
        )
        self.say("            on a real server, which has TLS.")
        self.say(f"The bot:    {COMPONENT}: ad-hoc command '{ADHOC_STATS_NODE}', chat 'stats'.")
        self.say("            Other users (alice...) are politely refused.")

    # --- steps ---------------------------------------------------------------------------------

    async def _login(self, full_jid: str) -> None:
        assert self.prosody is not None
        bare, _, resource = full_jid.partition("/")
        try:
            client = await connect_client(
                self.prosody, bare, self.passwords[bare], resource, timeout=STEP_TIMEOUT
            )
        except (ConnectionError, TimeoutError) as exc:
            raise DemoError(f"{full_jid} could not log in: {exc or 'timed out'}") from None
        if not self.clients:  # the first client: from now on, log out whoever is online
            self.cleanup.push_async_callback(self._logout_everyone)
        self.clients[full_jid] = client

    async def _logout(self, full_jid: str) -> None:
        client = self.clients.pop(full_jid)
        try:
            await disconnect_client(client, STEP_TIMEOUT)
        except TimeoutError:
            raise DemoError(f"{full_jid} could not log out") from None

    async def _tracked(self, kind: str, full_jid: str) -> None:
        """Wait until the bot has tracked this presence change (others are let through)."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                while await self.tracked.get() != (kind, full_jid):
                    pass
        except TimeoutError:
            raise DemoError(
                f"the bot did not see {full_jid} become {kind} within {STEP_TIMEOUT:.0f} s: "
                "does Prosody grant it the presence permission (mod_privilege)?"
            ) from None

    async def _chat(self, client: slixmpp.ClientXMPP, text: str) -> str:
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_message(message: Any) -> None:
            if message["from"].bare == COMPONENT and not reply.done():
                reply.set_result(str(message["body"]))

        client.add_event_handler("message", on_message)
        try:
            client.send_message(mto=slixmpp.JID(COMPONENT), mbody=text, mtype="chat")
            return await asyncio.wait_for(reply, STEP_TIMEOUT)
        except TimeoutError:
            raise DemoError(f"no answer to the chat message {text!r}") from None
        finally:
            client.del_event_handler("message", on_message)

    # --- cleanup steps (each runs even when an earlier one failed) -----------------------------

    async def _logout_everyone(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(
            *(disconnect_client(client, 3) for client in clients), return_exceptions=True
        )
        self.say("Clients logged out.")

    async def _stop_bot(self, task: asyncio.Task[int], stop_bot: asyncio.Event) -> None:
        stop_bot.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception:  # a failed bot is reported by whoever waited for it
            log.debug("The bot ended with an error", exc_info=True)
        self.say("Bot stopped, store flushed and closed.")

    def _stop_prosody(self, prosody: ProsodySandbox) -> None:
        pid = prosody.pid
        prosody.stop()
        if pid is not None:
            self.say(f"Prosody stopped (pid {pid}).")

    def _remove_workdir(self, workdir: Path) -> None:
        if self.keep_dir:
            self.say(f"Folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            self.say(f"Folder removed: {workdir}")


def write_config(folder: Path, prosody: ProsodySandbox, metrics_port: int) -> Path:
    """The bot's config.toml for this Prosody, in the format of config.example.toml."""
    secret_file = folder / "secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(prosody.component_secret + "\n", encoding="utf-8")
    return botconfig.write_config(
        folder / "config.toml",
        comment=(
            "Written by `xmpp-active-users demo` for its private Prosody "
            "(see config.example.toml).\n"
            "Relative paths are relative to this file's folder."
        ),
        component_jid=prosody.component_jid,
        secret_file="secret",
        server_host="127.0.0.1",
        server_port=prosody.component_port,
        domains=[prosody.domain],
        first_count_after=15,
        count_interval=3600,
        count_jitter=300,
        windows=["1d", "7d", "30d"],
        exclude=[],
        admins=[ADMIN],
        metrics_listen=f"127.0.0.1:{metrics_port}",
        retention_days=0,
        store_path="activity.db",
        flush_interval=1.0,
    )


def _user(full_jid: str) -> str:
    """alice@example.test/phone -> alice"""
    return full_jid.partition("@")[0]


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread. Cancelled, it still waits for the thread to finish, so
    that the cleanup sees what it did (a Prosody started, an account created)."""
    work: Awaitable[T] = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


class _DemoFormatter(logging.Formatter):
    """The bot's log lines, indented under the demo's sections; the level only when it matters."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"  [{record.name}] {level}{text}"


@contextlib.contextmanager
def _demo_logging(verbose: bool) -> Iterator[None]:
    """slixmpp at WARNING (unless --verbose), and short log lines, for the demo only."""
    slixmpp_logger = logging.getLogger("slixmpp")
    handlers = logging.getLogger().handlers
    saved_level = slixmpp_logger.level
    saved_formatters = [handler.formatter for handler in handlers]
    if not verbose:
        slixmpp_logger.setLevel(logging.WARNING)
    for handler in handlers:
        handler.setFormatter(_DemoFormatter("%(message)s"))
    try:
        yield
    finally:
        slixmpp_logger.setLevel(saved_level)
        for handler, formatter in zip(handlers, saved_formatters, strict=True):
            handler.setFormatter(formatter)


__all__ = ["DemoError", "demo", "write_config"]
