"""When the bot cannot connect to Prosody: a clear error, exit 1, when retrying cannot help (a
wrong secret, nothing listening, a component Prosody does not know); a message that says so, and
retries, when Prosody is too busy to finish the handshake in time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import replace

import pytest

from bot.app.daemon import Bot
from bot.testbed.sandbox import refused_port

from .support import FAST, RunningBot, bot_settings

pytestmark = pytest.mark.asyncio


async def test_wrong_secret_is_a_clear_error_and_exit_1(prosody, tmp_path, caplog):
    settings = bot_settings(prosody, tmp_path / "activity.db", secret="not-the-secret")
    caplog.set_level(logging.ERROR)
    bot = Bot(settings, timing=FAST)
    assert await asyncio.wait_for(bot.serve(asyncio.Event()), 15) == 1
    assert "refused the component secret for active.example.test" in caplog.text


async def test_nothing_listening_is_a_clear_error_and_exit_1(prosody, tmp_path, caplog):
    with refused_port() as port:
        settings = bot_settings(prosody, tmp_path / "activity.db", server_port=port)
        caplog.set_level(logging.ERROR)
        bot = Bot(settings, timing=FAST)
        assert await asyncio.wait_for(bot.serve(asyncio.Event()), 15) == 1
    assert "nothing accepts components there" in caplog.text


async def test_an_undeclared_component_is_a_clear_error_and_exit_1(prosody, tmp_path, caplog):
    settings = bot_settings(
        prosody, tmp_path / "activity.db", component_jid="undeclared.example.test"
    )
    caplog.set_level(logging.ERROR)
    bot = Bot(settings, timing=FAST)
    assert await asyncio.wait_for(bot.serve(asyncio.Event()), 15) == 1
    assert "closed the stream before the handshake (host-unknown)" in caplog.text
    assert (
        'is undeclared.example.test declared as a component there (Prosody: Component "...")?'
        in caplog.text
    )


# --- a server too busy to answer: Prosody stopped (SIGSTOP) still accepts TCP connections ------

BUSY_HANDSHAKE_TIMEOUT = 1.0
BUSY = "accepted the connection but did not finish the handshake within 1 s"


class LogWatch(logging.Handler):
    """Wakes the test when a log line containing `text` is written (in the event loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@contextlib.contextmanager
def watching(text: str) -> Iterator[LogWatch]:
    watch = LogWatch(text)
    logger = logging.getLogger("bot")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


@contextlib.contextmanager
def stopped(prosody) -> Iterator[None]:
    """Prosody frozen: the kernel still completes TCP connections, nobody answers them."""
    os.killpg(prosody.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(prosody.pid, signal.SIGCONT)


def busy_bot(prosody, tmp_path) -> RunningBot:
    settings = bot_settings(prosody, tmp_path / "activity.db")
    return RunningBot(Bot(settings, timing=replace(FAST, handshake_timeout=BUSY_HANDSHAKE_TIMEOUT)))


async def test_a_server_too_busy_for_the_handshake_on_reconnect_is_named_so(
    prosody, tmp_path, caplog
):
    caplog.set_level(logging.WARNING)
    bot = await busy_bot(prosody, tmp_path).start()
    try:
        with watching(BUSY) as watch, stopped(prosody):
            bot.component.abort()  # the link drops while the server is busy
            await asyncio.wait_for(watch.seen.wait(), 15)
        await bot.component.wait_until("session_start", 15)  # Prosody answers again
    finally:
        await bot.stop_quietly()
    assert f"the server at 127.0.0.1:{prosody.component_port} {BUSY}" in caplog.text
    assert "declared as a component" not in caplog.text


async def test_a_server_too_busy_for_the_first_handshake_is_retried_not_fatal(
    prosody, tmp_path, caplog
):
    caplog.set_level(logging.WARNING)
    bot = busy_bot(prosody, tmp_path)
    try:
        with watching(BUSY) as watch, stopped(prosody):
            starting = asyncio.create_task(bot.start(timeout=30))
            await asyncio.wait_for(watch.seen.wait(), 15)
        await asyncio.wait_for(starting, 30)  # connected once Prosody answers: not exit 1
    finally:
        await bot.stop_quietly()
    assert "declared as a component" not in caplog.text


# --- mistakes whose message must name the real fix (issue: an admin's first hour) ------------


async def test_the_client_port_instead_of_the_component_port_names_component_ports(
    prosody, tmp_path, caplog
):
    settings = bot_settings(prosody, tmp_path / "activity.db", server_port=prosody.c2s_port)
    caplog.set_level(logging.ERROR)
    bot = Bot(settings, timing=FAST)
    assert await asyncio.wait_for(bot.serve(asyncio.Event()), 15) == 1
    assert f"127.0.0.1:{prosody.c2s_port} is a port for clients" in caplog.text
    assert "component_ports" in caplog.text
    assert "declared as a component" not in caplog.text


async def test_a_second_bot_on_the_same_component_jid_is_named_so(prosody, tmp_path, caplog):
    first = await RunningBot(Bot(bot_settings(prosody, tmp_path / "one.db"), timing=FAST)).start()
    try:
        caplog.set_level(logging.ERROR)
        second = Bot(bot_settings(prosody, tmp_path / "two.db"), timing=FAST)
        assert await asyncio.wait_for(second.serve(asyncio.Event()), 15) == 1
    finally:
        await first.stop()
    assert "another connection is already active.example.test" in caplog.text
    assert "declared as a component" not in caplog.text


async def test_a_wrong_secret_from_secret_file_names_the_file(prosody, tmp_path, caplog):
    secret_file = tmp_path / "secret"
    secret_file.write_text("not-the-secret\n", encoding="utf-8")
    settings = bot_settings(
        prosody, tmp_path / "activity.db", secret=None, secret_file=str(secret_file)
    )
    caplog.set_level(logging.ERROR)
    bot = Bot(settings, timing=FAST)
    assert await asyncio.wait_for(bot.serve(asyncio.Event()), 15) == 1
    assert f"the secret read from {secret_file}" in caplog.text
    assert "make [component] secret equal" not in caplog.text
