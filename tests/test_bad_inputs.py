"""Bad inputs missing from the other lists: an empty token at the HTTP listener, and markup in a
client family's name.

- `Authorization: Bearer` with no token (or only spaces), basic auth with an empty password (any
  user): 401, like a wrong token, through a real listener with a token.
- A caps node is chosen by whoever writes the client: no node names a family with markup or
  quotes in it (such a node is `other`). A family read from the store is not checked that way
  (the codec takes any string): the status page escapes it, and /metrics quotes it as a label
  value, through a real Bot's HTTP routes.
"""

from __future__ import annotations

import base64
import re

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app.daemon import Bot
from bot.config import load_settings
from bot.core.client_families import OTHER, Families
from bot.core.model import UserRecord
from bot.storage.store import Store
from bot.web.server import WebServer

from .support import MINIMAL, T0, write

TOKEN = "0123456789abcdef-test-token"


async def get(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.text()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def ok(_request: aiohttp.web.Request) -> aiohttp.web.Response:
    return aiohttp.web.Response(text="the figures")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Bearer      ",
        "Bearer \t ",
        "bearer",
        basic("", ""),
        basic("prometheus", ""),
        basic("prometheus", " "),
        "Basic ",
        "Basic",
        basic(TOKEN, ""),  # the token as the user name is not the password
    ],
)
@pytest.mark.asyncio
async def test_an_empty_token_is_refused(authorization):
    server = WebServer("127.0.0.1", 0, {"/metrics": ok}, token=TOKEN)
    await server.start()
    try:
        status, body = await get(f"{server.url}/metrics", Authorization=authorization)
        assert (status, "figures" in body) == (401, False)
        status, body = await get(f"{server.url}/metrics", Authorization=f"Bearer {TOKEN}")
        assert (status, body) == (200, "the figures")  # the same listener, the right token
    finally:
        await server.close()


HOSTILE_NODES = [
    'http://<script>alert("x")</script>.example/',
    "https://<script>.example.org",
    'https://a"onmouseover=alert(1).example',
    "https://it's.example",
    "https://a&amp;b.example",
    'https://x.example"><script>alert(1)</script>',  # markup after the host
    'https://x.example/"><script>alert(1)</script>',
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
]


@pytest.mark.parametrize("node", HOSTILE_NODES)
def test_no_caps_node_names_a_family_with_markup(node):
    family = Families().family_of(node)
    assert re.fullmatch(r"[a-z0-9.-]+", family), family
    assert family in (OTHER, "x.example")


SCRIPT = '<script>alert("x")</script>'
HOST_MARKUP = "evil\"'><img src=x onerror=alert(1)>.example"  # a dot: read as a host family


@pytest.mark.asyncio
async def test_a_stored_family_with_markup_is_escaped_on_the_status_page_and_in_metrics(
    tmp_path,
):
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    with Store(settings.store_path) as store:
        for n, family in enumerate((SCRIPT, HOST_MARKUP)):
            store.put(
                f"u{n}@example.test",
                UserRecord(T0 - 100, T0 - 60, T0 - 50, clients=(family, T0 - 50)),
            )
        store.flush(T0)
    bot = Bot(settings, clock=lambda: T0)
    server = WebServer("127.0.0.1", 0, bot.http_routes())
    await server.start()
    try:
        status, page = await get(f"{server.url}/")
        assert status == 200
        assert "<script" not in page
        assert "<img" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
        escaped = "evil&quot;&#x27;&gt;&lt;img src=x onerror=alert(1)&gt;.example"
        assert f'data-client="{escaped}"' in page
        status, text = await get(f"{server.url}/metrics")
        assert status == 200
        clients = {
            sample.labels["client"]
            for metric in text_string_to_metric_families(text)
            if metric.name == "xmpp_active_users_by_client"
            for sample in metric.samples
        }
        assert clients == {SCRIPT, HOST_MARKUP}  # quoted as label values, read back the same
    finally:
        await server.close()
        bot.store.close(T0)
