"""What a real Prosody 0.12's mod_privilege tells the bot (XEP-0356), and what the bot makes of
it: the `urn:xmpp:privilege:2` advertisement it records and logs, and the warning, with the fix,
when Prosody grants no presence permission. The synthetic stanzas of these cases are in
test_component_stanzas.py; here the stanza is Prosody's own."""

from __future__ import annotations

import pytest

from bot.app.daemon import Bot
from bot.testbed.sandbox import ProsodySandbox

from .support import FAST, LogWatch, RunningBot, bot_settings

pytestmark = pytest.mark.asyncio


async def test_prosodys_privilege_2_advertisement_is_recorded_and_logged(start_bot):
    with LogWatch("bot.component") as watch:
        bot = await start_bot()
        record = await watch.next(lambda text: text.startswith("Privileges granted"))
    # The session's Prosody grants { presence = "managed_entity" } (bot/testbed/sandbox.py).
    assert record.getMessage() == (
        "Privileges granted by example.test (urn:xmpp:privilege:2): presence=managed_entity"
    )
    assert bot.component.privileges == {"example.test": {"presence": "managed_entity"}}


async def test_prosody_granting_no_presence_gets_the_warning_with_the_fix(tmp_path):
    with ProsodySandbox(tmp_path / "prosody", grant_presence=False) as prosody:
        settings = bot_settings(prosody, tmp_path / "activity.db")
        with LogWatch("bot.component") as watch:
            bot = await RunningBot(Bot(settings, timing=FAST)).start()
            try:
                record = await watch.next(lambda text: "presence permission" in text)
            finally:
                await bot.stop()
        assert bot.component.privileges == {}  # Prosody advertised nothing
    assert record.getMessage().startswith(
        "No presence permission from example.test (got none): the bot sees only users who "
        "subscribe to it"
    )
    assert (
        'privileged_entities = { ["active.example.test"] = { presence = "managed_entity" } }'
        in (record.getMessage())
    )


async def test_a_typo_in_counting_domains_is_named_not_mod_privilege(prosody, tmp_path):
    """example.test grants presence; the config counts example.tset: the fix is the typo, not
    mod_privilege on a VirtualHost "example.tset" that does not exist."""
    settings = bot_settings(prosody, tmp_path / "activity.db", domains=["example.tset"])
    with LogWatch("bot.component") as watch:
        bot = await RunningBot(Bot(settings, timing=FAST)).start()
        try:
            record = await watch.next(lambda text: "presence permission" in text)
        finally:
            await bot.stop()
    assert record.getMessage() == (
        "No presence permission from example.tset, but example.test advertised privileges to "
        "the bot: is [counting] domains mistyped? It lists example.tset; each server grants "
        "for its own VirtualHost names only, so write them as in the server's config"
    )
