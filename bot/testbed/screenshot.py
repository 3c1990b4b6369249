"""`make screenshot`: docs/status-page.png, the status page of a real bot, as Chromium shows it.

A private Prosody, the bot on a store with made-up users and 90 days of made-up history (with the
days before it was installed and an outage as gaps), a few real clients online; then headless
Chromium loads the page and takes a picture of all of it. Nothing is left behind but the PNG.

    python -m bot.testbed.screenshot docs/status-page.png [--width 900]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from pathlib import Path

from ..admin.history import utc_day
from ..app.daemon import Bot
from ..config import load_settings
from ..core.counter import DAY
from ..core.model import UserRecord
from ..storage.store import Store
from .botconfig import write_config
from .chromium import Chromium
from .clients import connect_client, disconnect_client
from .sandbox import ProsodySandbox, free_ports

# Real clients logged in while the picture is taken, with the caps node each announces.
ONLINE = {
    "alice": "http://conversations.im",
    "bob": "https://gajim.org",
    "carol": "http://monal.im/",
}
# The made-up users' clients, by share (a tenth of them without any: imported, or not seen
# since the bot learnt clients).
FAMILIES = (
    ("conversations", 40),
    ("monal", 15),
    ("gajim", 12),
    ("dino", 8),
    ("cheogram", 6),
    ("siskin", 5),
    ("unknown", 4),
    ("chat.example.net", 2),
    ("", 10),
)
USERS = 2_400  # made-up users in the store
INSTALLED_DAYS_AGO = 70  # the days before are gaps: the bot was not running yet
OUTAGE_DAYS_AGO = range(24, 28)  # gaps: the bot was down


def made_up_store(path: Path, domain: str, now: int, rng: random.Random) -> None:
    """Users whose last activity is spread like a real service's, and daily snapshots that
    grow slowly with a weekly rhythm (quieter weekends)."""
    with Store(path) as store:
        for number in range(USERS):
            # Last active: within a day, a week, a month, or longer ago (twice as likely).
            since, until = rng.choice(((0, 1), (1, 7), (7, 30), (30, 120), (30, 120)))
            last = int(now - rng.uniform(since * DAY, until * DAY))
            first = int(last - rng.uniform(0, 400 * DAY) * rng.random())
            names, shares = zip(*FAMILIES, strict=True)
            family = rng.choices(names, shares)[0]
            clients = (family, last) if family else ()
            store.put(
                f"user{number:05d}@{domain}", UserRecord(first, last - 600, last, (), clients)
            )
        for back in range(1, INSTALLED_DAYS_AGO):
            if back in OUTAGE_DAYS_AGO:
                continue
            weekday = time.gmtime(now - back * DAY).tm_wday
            growth = 1 - back / 400
            dau = int(560 * growth * (0.8 if weekday >= 5 else 1.0) * rng.uniform(0.93, 1.07))
            active = {"1d": dau, "7d": int(dau * 1.9), "30d": int(dau * 2.7)}
            new = {"1d": rng.randint(4, 30), "7d": 0, "30d": 0}
            figures = {"active": active, "new": new, "peak_online": dau // 4}
            store.put_day(utc_day(now - back * DAY), {domain: figures})
        store.flush(now)


async def take(path: Path, width: int) -> None:
    with tempfile.TemporaryDirectory(prefix="screenshot-") as temp:
        folder = Path(temp)
        prosody = ProsodySandbox(folder / "prosody")
        await asyncio.to_thread(prosody.start)
        try:
            passwords = {user: f"{user}-pw" for user in ONLINE}
            for user, password in passwords.items():
                await asyncio.to_thread(prosody.register, user, password)
            now = int(time.time())
            made_up_store(folder / "activity.db", prosody.domain, now, random.Random(7))
            config = write_config(
                folder / "config.toml",
                component_jid=prosody.component_jid,
                secret=prosody.component_secret,
                server_port=prosody.component_port,
                domains=[prosody.domain],
                admins=[f"admin@{prosody.domain}"],
                store_path="activity.db",
                first_count_after=3600,
                metrics_listen=f"127.0.0.1:{free_ports(1)[0]}",
            )
            await _picture(Bot(load_settings(config, environ={})), prosody, passwords, path, width)
        finally:
            await asyncio.to_thread(prosody.stop)


async def _picture(
    bot: Bot, prosody: ProsodySandbox, passwords: dict[str, str], path: Path, width: int
) -> None:
    stop = asyncio.Event()
    tracked: asyncio.Queue[object] = asyncio.Queue()
    bot.component.add_event_handler("presence_tracked", tracked.put_nowait)
    connected = asyncio.ensure_future(bot.component.wait_until("session_start", 20))
    serving = asyncio.create_task(bot.serve(stop))
    clients = []
    try:
        await connected
        for user, password in passwords.items():
            jid = f"{user}@{prosody.domain}"
            clients.append(
                await connect_client(prosody, jid, password, "phone", caps_node=ONLINE[user])
            )
            await asyncio.wait_for(tracked.get(), 10)
        assert bot.web is not None
        async with Chromium() as browser:
            page = await browser.new_page(width, 800)
            status = await page.goto(f"{bot.web.url}/")
            if status != 200:
                raise RuntimeError(f"the status page answered {status}")
            await page.screenshot(path)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await disconnect_client(client)
        stop.set()
        await serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("png", type=Path, help="where to write the picture")
    parser.add_argument("--width", type=int, default=900, help="viewport width in CSS pixels")
    args = parser.parse_args()
    asyncio.run(take(args.png, args.width))
    print(f"{args.png}: {args.png.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
