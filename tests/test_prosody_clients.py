"""Active users by client, through a real Prosody: real slixmpp clients announce XEP-0115 caps
(slixmpp's own xep_0115 plugin puts the node and the hash of their features in every available
presence), Prosody forwards them, and the admin reads the same figures in the ad-hoc command
`clients`, the chat, /metrics and the status page; a restart and a pseudonymized store keep them.
"""

from __future__ import annotations

from html.parser import HTMLParser

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.storage.store import Store

from .support import USERS, Chat, ask_adhoc, ask_adhoc_clients

pytestmark = pytest.mark.asyncio

DOMAIN = "example.test"
CONVERSATIONS = "http://conversations.im"
GAJIM = "https://gajim.org"
ELSEWHERE = "https://chat.example.net/client#2.1"  # no client of the table: named by its host

# What the admin must read once alice (Conversations and Gajim), bob (a client known by its
# node's host only) are online and carol (no caps) came and went: per metrics label, the
# rows' figures (24 hours, 7 days, 30 days, online now).
EXPECTED = {
    "conversations": ("Conversations", "mobile", "1", "1", "1", "1"),
    "gajim": ("Gajim", "desktop", "1", "1", "1", "1"),
    "chat.example.net": ("chat.example.net", "", "1", "1", "1", "1"),
    "unknown": ("Unknown (no caps)", "", "1", "1", "1", "0"),
}
FIELDS = ("client", "platform", "active_1d", "active_7d", "active_30d", "online_users")


async def log_in_with_clients(bot, clients) -> None:
    for full_jid, caps in (
        ("alice@example.test/phone", CONVERSATIONS),
        ("alice@example.test/laptop", GAJIM),
        ("bob@example.test/pc", ELSEWHERE),
        ("carol@example.test/tablet", None),
    ):
        await clients.login(full_jid, caps_node=caps)
        await bot.expect("available", full_jid)
    carol = clients.connected[-1]
    await clients.logout(carol)
    await bot.expect("unavailable", "carol@example.test/tablet")


def figures(rows: dict[str, dict[str, str]]) -> dict[str, tuple[str, ...]]:
    return {family: tuple(row[field] for field in FIELDS) for family, row in rows.items()}


async def fetch(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.text()


class ClientRows(HTMLParser):
    """The status page's client table: data-client -> data-client-figure -> text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: str | None = None
        self._figure: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-client" in a:
            self._row = a["data-client"]
            self.rows[self._row] = {}
        self._figure = a.get("data-client-figure")

    def handle_data(self, data) -> None:
        if self._row is not None and self._figure is not None:
            self.rows[self._row][self._figure] = data.replace(",", "")

    def handle_endtag(self, tag) -> None:
        self._figure = None
        if tag == "tr":
            self._row = None


async def test_clients_announcing_caps_are_counted_per_client_everywhere(start_bot, clients):
    bot = await start_bot(metrics_listen=("127.0.0.1", 0))
    await log_in_with_clients(bot, clients)
    admin = await clients.login("admin@example.test/desk", presence=False)

    rows = await ask_adhoc_clients(admin)
    assert figures(rows) == EXPECTED
    stats = await ask_adhoc(admin)
    assert stats["mau"] == "3"  # alice, bob, carol: alice once, though on two clients

    reply = await Chat(admin).ask("clients")
    lines = reply.splitlines()
    assert lines[:3] == [
        "Active users by client (24h, 7d, 30d: in the last 24 hours, 7 days, 30 days):",
        "```",
        "client                  24h  7d  30d  online",
    ]
    assert "Conversations (mobile)    1   1    1       1" in lines
    assert "Gajim (desktop)           1   1    1       1" in lines
    assert "chat.example.net          1   1    1       1" in lines
    assert "Unknown (no caps)         1   1    1       0" in lines

    url = bot.bot.web.url
    samples = {
        (s.name, s.labels.get("client"), s.labels.get("window")): s.value
        for family in text_string_to_metric_families(await fetch(f"{url}/metrics"))
        for s in family.samples
        if s.name.endswith("_by_client") and s.labels["domain"] == DOMAIN
    }
    for family, row in rows.items():
        for window in ("1d", "7d", "30d"):
            metric = ("xmpp_active_users_by_client", family, window)
            assert samples[metric] == int(row[f"active_{window}"]), metric
        assert samples[("xmpp_online_users_by_client", family, None)] == int(row["online_users"])

    page = ClientRows(await fetch(f"{url}/"))
    assert page.rows == {
        family: {field: row[field] for field in FIELDS[2:]} for family, row in rows.items()
    }


async def test_a_restart_keeps_each_users_clients(start_bot, clients, tmp_path):
    bot = await start_bot()
    await log_in_with_clients(bot, clients)
    await bot.stop()
    # Prosody re-announces the sessions online to the new bot, with their caps; carol's client
    # (gone) comes from the store.
    again = await start_bot()
    await again.expect_set(
        {
            ("available", "alice@example.test/phone"),
            ("available", "alice@example.test/laptop"),
            ("available", "bob@example.test/pc"),
        }
    )
    admin = await clients.login("admin@example.test/desk", presence=False)
    assert figures(await ask_adhoc_clients(admin)) == EXPECTED


async def test_a_pseudonymized_store_keeps_the_clients_and_no_address(start_bot, clients, tmp_path):
    bot = await start_bot(pseudonymize=True, pseudonym_secret="a secret of 16+ characters")
    await log_in_with_clients(bot, clients)
    admin = await clients.login("admin@example.test/desk", presence=False)
    assert figures(await ask_adhoc_clients(admin)) == EXPECTED
    await bot.stop()
    with Store(tmp_path / "activity.db", readonly=True) as store:
        families = {family for _, record in store.users() for family, _ in record.client_times()}
    assert families == set(EXPECTED)
    files = [tmp_path / name for name in ("activity.db", "activity.db-wal", "activity.db-shm")]
    stored = b"".join(path.read_bytes() for path in files if path.exists())
    assert b"conversations" in stored  # the families are there, in clear
    for secret in (*USERS, "phone", "laptop", "tablet"):  # no localpart, no resource
        assert secret.encode() not in stored, secret


async def test_a_session_keeps_the_client_of_its_login(start_bot, clients):
    """A later presence of the same session (away, even with other caps) is an update, not a
    new session: the client stays the one its login announced."""
    bot = await start_bot()
    alice = await clients.login("alice@example.test/phone", caps_node=CONVERSATIONS)
    await bot.expect("available", "alice@example.test/phone")
    alice.plugin["xep_0115"].caps_node = GAJIM
    await alice.plugin["xep_0115"].update_caps(broadcast=False)
    alice.send_presence(pshow="away")  # on the same stream: it reaches the bot first
    await clients.logout(alice)
    await bot.expect("unavailable", "alice@example.test/phone")
    admin = await clients.login("admin@example.test/desk", presence=False)
    rows = await ask_adhoc_clients(admin)
    assert figures(rows) == {"conversations": ("Conversations", "mobile", "1", "1", "1", "0")}
