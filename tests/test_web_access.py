"""Who may read the HTTP listener (/metrics, the status page): real HTTP requests to a real bot.

Loopback needs no token by default; with a token every request needs it (bearer, or basic auth's
password), and a 401 gives away nothing. Listening beyond loopback without a token is refused at
start, in one line. The scrape config for a token that docs/privacy-security.md shows works
with a real Prometheus.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from bot.app.daemon import Bot
from bot.testbed.botconfig import write_config
from bot.testbed.prometheus import PrometheusSandbox
from bot.testbed.sandbox import free_ports
from bot.web.server import UNAUTHORIZED_TEXT, WebServer

from .support import bot_settings

ROOT = Path(__file__).resolve().parent.parent
SECURITY_PAGE = ROOT / "docs" / "privacy-security.md"
TOKEN = "0123456789abcdef-test-token"

pytestmark = pytest.mark.asyncio


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest_asyncio.fixture
async def guarded(start_bot, clients):
    """A bot on loopback with a token, and alice online (so that there are figures to hide)."""
    bot = await start_bot(metrics_listen=("127.0.0.1", 0), metrics_token=TOKEN)
    await clients.login("alice@example.test/phone")
    await bot.expect("available", "alice@example.test/phone")
    return bot


@pytest.mark.parametrize("path", ["/", "/metrics", "/no-such-page"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-of-some-length",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Token {TOKEN}",
        TOKEN,
        basic("prometheus", "wrong"),
        basic(TOKEN, ""),  # the token as the user name is not the password
        "Basic %%%not-base64",
    ],
    ids=[
        "none",
        "wrong bearer",
        "longer",
        "shorter",
        "other scheme",
        "no scheme",
        "wrong password",
        "token as user",
        "garbage",
    ],
)
async def test_without_the_token_a_request_gets_a_bare_401(guarded, path, authorization, caplog):
    caplog.set_level(logging.DEBUG)
    headers = {} if authorization is None else {"Authorization": authorization}
    status, response_headers, body = await get(f"{guarded.bot.web.url}{path}", **headers)
    assert status == 401
    assert body == UNAUTHORIZED_TEXT  # no figure, no hint of which paths exist
    assert "xmpp_" not in body
    assert response_headers["WWW-Authenticate"].startswith("Basic realm=")  # a browser asks
    knocks = [r for r in caplog.records if r.name.startswith(("bot.web", "aiohttp"))]
    assert not knocks, "a knock is not logged: anyone could fill the log"


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", basic("prometheus", TOKEN), basic("", TOKEN)],
    ids=["bearer", "lowercase scheme", "basic", "basic, no user name"],
)
async def test_with_the_token_the_figures_are_served(guarded, authorization):
    url = guarded.bot.web.url
    status, _, metrics = await get(f"{url}/metrics", Authorization=authorization)
    assert status == 200
    assert 'xmpp_online_users{domain="example.test"} 1.0' in metrics
    status, headers, page = await get(f"{url}/", Authorization=authorization)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'data-figure="online_users"><span class="value">1</span>' in page
    status, _, _ = await get(f"{url}/no-such-page", Authorization=authorization)
    assert status == 404


async def test_loopback_without_a_token_is_open(start_bot):
    bot = await start_bot(metrics_listen=("127.0.0.1", 0))
    status, _, page = await get(f"{bot.bot.web.url}/")
    assert status == 200
    assert "<h1>Active users · active.example.test</h1>" in page


def run_bot(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # none of the secrets' variables
        cwd=ROOT,
    )


async def test_the_bot_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    # An address of no interface here (TEST-NET-1): were the check broken, the bind would fail
    # too, but never expose a port; 0.0.0.0 and [::] are refused by the same check
    # (tests/test_config.py).
    listen = "192.0.2.10:9470"
    (closed_port,) = free_ports(1)  # never reached: the config is refused first
    config = write_config(
        tmp_path / "config.toml",
        component_jid="active.example.test",
        secret="s3cret",
        server_port=closed_port,
        domains=["example.test"],
        admins=["admin@example.test"],
        store_path="activity.db",
        metrics_listen=listen,
    )
    result = await asyncio.to_thread(run_bot, config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is reachable from other machines, so it needs a token" in lines[0]
    assert "token_file" in lines[0]
    assert not (tmp_path / "activity.db").exists()  # refused before anything was opened


async def test_a_failing_page_is_a_plain_500_logged_once(caplog):
    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("a bug in the page")

    async def fine(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    server = WebServer("127.0.0.1", 0, {"/": broken, "/ok": fine})
    await server.start()
    try:
        for _ in range(3):
            status, _, body = await get(f"{server.url}/")
            assert status == 500
            assert "a bug" not in body
        status, _, _ = await get(f"{server.url}/ok")
        assert status == 200  # the server goes on
    finally:
        await server.close()
    logged = [r for r in caplog.records if "Internal error serving /" in r.getMessage()]
    assert len(logged) == 1


# --- the scrape config for a bot with a token (docs/privacy-security.md) -------------------------


def readme_scrape_job() -> dict:
    """The YAML block of docs/privacy-security.md that scrapes a bot with a token."""
    blocks = re.findall(r"```yaml\n(.*?)```", SECURITY_PAGE.read_text(encoding="utf-8"), re.DOTALL)
    jobs = [
        job
        for block in blocks
        if "credentials_file" in block
        for job in yaml.safe_load(block)["scrape_configs"]
    ]
    assert len(jobs) == 1, f"expected one scrape job with a credentials_file in {SECURITY_PAGE}"
    return jobs[0]


async def test_the_readme_scrape_config_scrapes_a_bot_with_a_token(guarded, tmp_path):
    web_server = guarded.bot.web
    answers: asyncio.Queue[int] = asyncio.Queue()
    web_server.observers.append(
        lambda path, status: answers.put_nowait(status) if path == "/metrics" else None
    )
    job = readme_scrape_job()
    assert job["authorization"]["credentials_file"].startswith("/etc/"), job
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "wrong").write_text("not-the-token-at-all\n")
    jobs = []
    for name, token_file in (("right", "token"), ("wrong", "wrong")):
        copy = yaml.safe_load(yaml.safe_dump(job))
        copy["job_name"] = name
        copy["scheme"] = "http"  # the page's TLS is the reverse proxy's; here, the bot itself
        copy["authorization"]["credentials_file"] = str(tmp_path / token_file)
        copy["static_configs"] = [{"targets": [f"127.0.0.1:{web_server.port}"]}]
        copy |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
        jobs.append(copy)
    prometheus = PrometheusSandbox(tmp_path / "prometheus", {"scrape_configs": jobs})
    await asyncio.to_thread(prometheus.start)
    try:
        seen = []  # both jobs scraped twice: the first scrape of each is recorded
        while seen.count(200) < 2 or seen.count(401) < 2:
            seen.append(await asyncio.wait_for(answers.get(), 30))
        up = {
            s["metric"]["job"]: s["value"][1]
            for s in await asyncio.to_thread(prometheus.query, "up")
        }
        assert up == {"right": "1", "wrong": "0"}
        (connected,) = await asyncio.to_thread(prometheus.query, "xmpp_component_connected")
        assert connected["metric"]["job"] == "right"
        targets = await asyncio.to_thread(prometheus.api, "targets")
        errors = {t["labels"]["job"]: t["lastError"] for t in targets["activeTargets"]}
        assert "401" in errors["wrong"], errors
    finally:
        await asyncio.to_thread(prometheus.stop)


async def test_a_port_already_taken_stops_the_bot_with_one_line(prosody, tmp_path, caplog):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        bot = Bot(bot_settings(prosody, tmp_path / "a.db", metrics_listen=("127.0.0.1", port)))
        assert await asyncio.wait_for(bot.serve(asyncio.Event()), 10) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"cannot listen for HTTP on 127.0.0.1:{port} (Address already in use): change [metrics] "
        'listen, or set it to "" to turn the metrics and the status page off'
    ]
    assert not bot.component.is_connected()  # it stopped before connecting
