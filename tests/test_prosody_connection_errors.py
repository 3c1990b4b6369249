"""When the bot cannot connect to Prosody (a wrong secret, nothing listening): a clear error,
exit 1."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.daemon import Bot
from bot.testbed.sandbox import refused_port

from .support import FAST, bot_settings

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
