"""A client whose TCP connection drops without a stream close, through a real Prosody 0.12: the
server notices the closed socket and sends the bot an unavailable presence at once, so the bot
records the logout when Prosody noticed it (the README's "a dropped connection is exact").

Both ways a connection drops on a network: the socket closed without `</stream:stream>` (FIN),
and a reset (RST). The bot runs on a clock the test moves, so the time it records is exact;
Prosody's own record of when it noticed (mod_lastlog2's logout, on Prosody's wall clock) must
lie between the drop and the bot's word. A connection that dies silently (no FIN nor RST reaches
the server) is not covered: Prosody 0.12 notices that only through its read timeout (14 min) or
TCP keepalives.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from bot.app.daemon import Bot
from bot.importing.luadata import parse_lua_data

from .support import FAST, Clock, RunningBot, bot_settings

pytestmark = pytest.mark.asyncio

LATENCY_LIMIT = 5.0  # s; "at once" on loopback is milliseconds, a timeout would be minutes


def drop(client, how: str) -> None:
    """Close the client's TCP connection under it: no stream close, no presence."""
    sock = client.transport.get_extra_info("socket")
    if how == "reset":  # linger 0: close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.transport.abort()  # the socket is closed now; slixmpp writes nothing more


def prosody_logout(prosody, user: str) -> int:
    """When Prosody's mod_lastlog2 says `user` logged out last (0: never)."""
    path = prosody.data_path / "example%2etest" / "lastlog2" / f"{user}.dat"
    data = parse_lua_data(path.read_text(encoding="utf-8"))
    return int(data.get("logout", {}).get("timestamp", 0))


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_a_dropped_client_connection_is_logged_out_when_prosody_notices(
    prosody, clients, tmp_path, how
):
    clock = Clock(int(time.time()))
    settings = bot_settings(prosody, tmp_path / "activity.db")
    bot = await RunningBot(Bot(settings, clock=clock, timing=FAST)).start()
    try:
        logged_in_at = clock.now
        alice = await clients.login("alice@example.test/phone")
        await bot.expect("available", "alice@example.test/phone")
        clock.now += 1000  # any later moment: the logout must be stamped when it happens

        dropped_wall, dropped = time.time(), time.monotonic()
        drop(alice, how)
        await bot.expect("unavailable", "alice@example.test/phone", timeout=LATENCY_LIMIT)
        latency = time.monotonic() - dropped
        tracked_wall = time.time()
        clients.connected.remove(alice)
        print(
            f"\n{how}: Prosody's unavailable reached the bot {latency * 1000:.1f} ms after the drop"
        )

        record = bot.bot.store.get("alice@example.test")
        assert (record.last_login, record.last_logout) == (logged_in_at, logged_in_at + 1000)
        assert record.sessions == ()
        assert bot.figures().online_users == 0
        # Prosody noticed the drop itself, between the drop and the bot's word.
        assert int(dropped_wall) <= prosody_logout(prosody, "alice") <= int(tracked_wall)
    finally:
        await bot.stop()
