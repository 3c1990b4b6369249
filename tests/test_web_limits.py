"""The HTTP listener's bounds, one at a time, on a real listener with small limits: a connection
without a complete request is closed after the header timeout, a full listener makes room by
closing an idle connection of the source holding the most (never a scraper's from elsewhere),
the descriptor budget sets the cap, and accept failures are logged at a bounded rate."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import aiohttp
import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine

from bot.web.connections import (
    ACCEPT_FAILED,
    AcceptFailures,
    Limits,
    ServerLog,
    connection_cap,
)
from bot.web.server import WebServer

ATTACKER, SCRAPER = "127.0.0.2", "127.0.0.1"  # two sources on loopback
PARTIAL = b"GET / HTTP/1.1\r\nHost: bot\r\n"  # a request whose headers never end


async def ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def listener(limits: Limits) -> WebServer:
    server = WebServer("127.0.0.1", 0, {"/": ok}, limits=limits)
    await server.start()
    return server


async def half_open(server: WebServer, source: str) -> tuple[asyncio.StreamReader, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    writer.write(PARTIAL)
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def settle(server: WebServer, connections: int) -> None:
    """Wait until the listener holds `connections` (its accept runs in later loop turns)."""
    for _ in range(200):
        if server.stats().open_connections == connections:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the listener holds {server.stats().open_connections}")


@pytest.mark.asyncio
async def test_headers_that_never_end_are_closed_after_the_header_timeout():
    server = await listener(Limits(max_connections=8, header_timeout=0.5, idle_timeout=30))
    try:
        reader, writer = await half_open(server, SCRAPER)
        assert await closed_by_server(reader, 2)
        writer.close()
        assert server.stats().dropped == {"header_timeout": 1}
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_a_full_listener_closes_an_idle_connection_of_the_largest_source():
    server = await listener(Limits(max_connections=4, header_timeout=30, idle_timeout=30))
    try:
        async with aiohttp.ClientSession(  # a scraper's keep-alive connection, idle between scrapes
            connector=aiohttp.TCPConnector(local_addr=(SCRAPER, 0), limit=1)
        ) as scraper:
            async with scraper.get(f"{server.url}/") as response:
                assert await response.text() == "ok"
            attack = [await half_open(server, ATTACKER) for _ in range(3)]
            await settle(server, 4)  # full
            more = [await half_open(server, ATTACKER) for _ in range(5)]
            await settle(server, 4)
            assert server.stats().dropped == {"evicted": 5}
            oldest_first = [reader for reader, _ in attack + more]
            for reader in oldest_first[:5]:  # the attacker's own oldest made room
                assert await closed_by_server(reader, 1)
            async with scraper.get(f"{server.url}/") as response:  # the same connection
                assert await response.text() == "ok"
            assert server.stats().dropped == {"evicted": 5}  # the scraper's was kept
            for _, writer in attack + more:
                writer.close()
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_a_newcomer_takes_the_place_of_the_oldest_half_open_connection():
    server = await listener(Limits(max_connections=4, header_timeout=30, idle_timeout=30))
    try:
        attack = [await half_open(server, SCRAPER) for _ in range(4)]
        await settle(server, 4)
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/") as response:
            assert await response.text() == "ok"  # same source: its oldest connection went
        assert await closed_by_server(attack[0][0], 1)
        for _, writer in attack:
            writer.close()
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("budget", "cap"), [(1024, 256), (8192, 1024), (65536, 1024), (256, 64), (16, 8)]
)
def test_the_cap_is_a_quarter_of_the_descriptor_budget_within_bounds(budget, cap):
    assert connection_cap(budget) == cap


@pytest.mark.asyncio
async def test_accept_failures_are_logged_once_a_minute_and_counted(caplog):
    loop = asyncio.get_running_loop()
    others: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: others.append(context))
    now = [0.0]
    failures = AcceptFailures(loop, budget=1024, period=60, clock=lambda: now[0])
    failures.install()
    try:
        with socket.socket() as listening:
            for second in range(120):
                now[0] = float(second)
                for _ in range(1000):  # what a busy loop can raise in a second
                    loop.call_exception_handler(
                        {
                            "message": ACCEPT_FAILED,
                            "exception": OSError(errno.EMFILE, "Too many open files"),
                            "socket": listening,
                        }
                    )
        loop.call_exception_handler({"message": "something else"})
    finally:
        failures.uninstall()
        loop.set_exception_handler(None)
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2  # at 0 s and at 60 s
    assert "1 connections could not be accepted" in lines[0].getMessage()
    assert "60000 connections could not be accepted" in lines[1].getMessage()
    assert "may open 1024 descriptors" in lines[0].getMessage()
    assert not lines[0].exc_info  # no traceback
    assert failures.count == 120_000
    assert others == [{"message": "something else"}]  # the rest goes where it went before


@pytest.mark.asyncio
async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    server = await listener(Limits(max_connections=8, header_timeout=30, idle_timeout=0.5))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: bot\r\n\r\n")  # HTTP/1.1: kept alive
        await reader.readuntil(b"\r\n\r\nok")
        assert await closed_by_server(reader, 2)  # then nothing more: closed
        writer.close()
    finally:
        await server.close()


def test_the_server_log_counts_what_clients_do_and_logs_our_faults_once(caplog):
    log = ServerLog(logging.getLogger("aiohttp.server"))
    for _ in range(100):
        log.exception("Error handling request from %s", "127.0.0.1", exc_info=BadStatusLine("x"))
        log.exception("Error handling request from %s", "127.0.0.1", exc_info=KeyError("bug"))
    assert log.client_errors == {"malformed": 100, "other": 99}
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["Error handling request from 127.0.0.1 (logged once)"]
