"""NodeInfo 2.1 (opt-in), read back through real HTTP from a bot running against a real Prosody.

The document is checked field by field against what the NodeInfo 2.1 schema requires, and as a
whole against the schema itself (tests/data/nodeinfo-2.1-schema.json, from jhass/nodeinfo, with
the `jsonschema` package); its figures against the admin's ad-hoc answer and the seeded history.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jsonschema
import pytest

from bot.core.counter import DAY, ActivityIndex
from bot.core.model import UserRecord
from bot.storage.store import Store
from bot.web.nodeinfo import SCHEMA, NodeInfoPages, NodeInfoSettings
from bot.web.server import WebServer

from .support import ask_adhoc

pytestmark = pytest.mark.asyncio

SCHEMA_FILE = Path(__file__).parent / "data" / "nodeinfo-2.1-schema.json"
TOKEN = "nodeinfo-test-token-0123456789"
DOMAIN = "example.test"


def seed_history(store_path: Path, now: int) -> None:
    """Users last active 10, 100 and 200 days ago: in the month, the half year, neither."""
    with Store(store_path) as store:
        for name, days in (("recent", 10), ("spring", 100), ("lastyear", 200)):
            active = now - days * DAY
            store.put(f"{name}@{DOMAIN}", UserRecord(active - DAY, active, active + 60))
        store.flush(now)


async def get(http: aiohttp.ClientSession, url: str, host: str | None = None):
    headers = {"Host": host} if host else {}
    async with http.get(url, headers=headers) as response:
        return response.status, response.headers, await response.text()


def check_required_fields(doc: dict) -> None:
    """Every field the NodeInfo 2.1 schema requires, with its type, spelled out."""
    assert set(doc) == {
        "version",
        "software",
        "protocols",
        "services",
        "openRegistrations",
        "usage",
        "metadata",
    }
    assert doc["version"] == "2.1"
    assert isinstance(doc["software"]["name"], str)
    assert re.fullmatch(r"[a-z0-9-]+", doc["software"]["name"])
    assert isinstance(doc["software"]["version"], str)
    assert isinstance(doc["protocols"], list)
    assert "xmpp" in doc["protocols"]
    assert doc["services"] == {"inbound": [], "outbound": []}
    assert isinstance(doc["openRegistrations"], bool)
    users = doc["usage"]["users"]
    for field in ("total", "activeHalfyear", "activeMonth"):
        assert type(users[field]) is int, (field, users)
        assert users[field] >= 0, (field, users)
    assert isinstance(doc["metadata"], dict)


async def test_nodeinfo_is_served_publicly_valid_and_says_what_the_adhoc_answer_says(
    start_bot, clients, tmp_path
):
    seed_history(tmp_path / "activity.db", int(time.time()))
    bot = await start_bot(
        metrics_listen=("127.0.0.1", 0),
        metrics_token=TOKEN,
        nodeinfo=True,
        nodeinfo_node_name="Example chat",
        nodeinfo_software_version="13.0.1",
        nodeinfo_open_registrations=True,
    )
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    bob = await clients.login("bob@example.test/pc")
    await bot.expect("available", "bob@example.test/pc")
    await clients.logout(bob)
    await bot.expect("unavailable", "bob@example.test/pc")
    admin = await clients.login("admin@example.test/desk", presence=False)

    url = bot.bot.web.url
    async with aiohttp.ClientSession() as http:
        # No token: NodeInfo is public, the rest of the listener is not.
        status, headers, body = await get(http, f"{url}/.well-known/nodeinfo", host=DOMAIN)
        assert status == 200, body
        assert headers["Access-Control-Allow-Origin"] == "*"
        links = json.loads(body)
        assert links == {"links": [{"rel": SCHEMA, "href": f"https://{DOMAIN}/nodeinfo/2.1"}]}
        assert (await get(http, f"{url}/metrics"))[0] == 401
        assert (await get(http, f"{url}/"))[0] == 401

        href = urlsplit(links["links"][0]["href"])
        status, headers, body = await get(http, f"{url}{href.path}", host=href.netloc)
        assert status == 200, body
        assert headers["Content-Type"] == f'application/json; profile="{SCHEMA}#"'
        doc = json.loads(body)
    adhoc = await ask_adhoc(admin)

    check_required_fields(doc)
    jsonschema.Draft4Validator(json.loads(SCHEMA_FILE.read_text())).validate(doc)
    assert doc["software"] == {"name": "prosody", "version": "13.0.1"}
    assert doc["openRegistrations"] is True
    assert doc["metadata"] == {"nodeName": "Example chat"}
    assert doc["usage"]["users"] == {
        "total": int(adhoc["known_users"]),
        "activeMonth": int(adhoc["mau"]),
        "activeHalfyear": int(adhoc["active_180d"]),
    }
    # The seed's rule over the history: alice, bob and recent in the month; spring too in the
    # half year; lastyear on record only.
    assert doc["usage"]["users"] == {"total": 5, "activeMonth": 3, "activeHalfyear": 4}
    assert "new_180d" not in adhoc  # the index keeps 180 days of activity, not of first logins


async def test_nodeinfo_is_off_unless_enabled(start_bot):
    bot = await start_bot(metrics_listen=("127.0.0.1", 0))
    async with aiohttp.ClientSession() as http:
        for path in ("/.well-known/nodeinfo", "/nodeinfo/2.1"):
            assert (await get(http, f"{bot.bot.web.url}{path}", host=DOMAIN))[0] == 404


async def test_the_schema_refuses_what_the_checks_above_refuse():
    """The vendored schema is the real one: it rejects a wrong version, an upper-case software
    name, a missing `services`, a count as text."""
    validator = jsonschema.Draft4Validator(json.loads(SCHEMA_FILE.read_text()))
    base = {
        "version": "2.1",
        "software": {"name": "prosody", "version": "13.0.1"},
        "protocols": ["xmpp"],
        "services": {"inbound": [], "outbound": []},
        "openRegistrations": False,
        "usage": {"users": {"total": 1, "activeHalfyear": 1, "activeMonth": 1}},
        "metadata": {},
    }
    assert validator.is_valid(base)
    bad = [
        base | {"version": "2.0"},
        base | {"software": {"name": "Prosody", "version": "13"}},
        {k: v for k, v in base.items() if k != "services"},
        base | {"usage": {"users": {"total": "1"}}},
        base | {"openRegistrations": "false"},
        base | {"protocols": []},
    ]
    for doc in bad:
        assert not validator.is_valid(doc), doc


async def test_several_domains_each_get_their_own_document_by_host():
    now = int(time.time())
    indexes = {
        "a.test": ActivityIndex.build([UserRecord(now - DAY, now - DAY, 0)]),
        "b.test": ActivityIndex.build(
            [UserRecord(now - 90 * DAY, now - 90 * DAY, 0), UserRecord(now, now, 0, ("pc",))]
        ),
    }

    async def figures():
        return {
            domain: index.counts(now, (30 * DAY, 180 * DAY)) for domain, index in indexes.items()
        }

    pages = NodeInfoPages(NodeInfoSettings(domains=("a.test", "b.test")), figures)
    server = WebServer(
        "127.0.0.1", 0, pages.routes(), token=TOKEN, public=frozenset(pages.routes())
    )
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            for host, users in (
                ("a.test", {"total": 1, "activeHalfyear": 1, "activeMonth": 1}),
                ("B.TEST:443", {"total": 2, "activeHalfyear": 2, "activeMonth": 1}),
            ):
                status, _, body = await get(http, f"{server.url}/nodeinfo/2.1", host=host)
                assert status == 200, body
                assert json.loads(body)["usage"]["users"] == users
            status, _, body = await get(http, f"{server.url}/.well-known/nodeinfo", host="b.test")
            assert json.loads(body)["links"][0]["href"] == "https://b.test/nodeinfo/2.1"
            status, _, body = await get(http, f"{server.url}/nodeinfo/2.1", host="c.test")
            assert status == 404
            assert "a.test, b.test" in body
            assert "Host" in body
    finally:
        await server.close()
