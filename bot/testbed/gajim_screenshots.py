"""`make gajim-screenshots`: docs/gajim-*.png, what an admin sees of the bot in Gajim 1.7 (Debian
12's), real Gajim driving the real bot.

A private Prosody and the bot on the made-up store of `make screenshot` (screenshot.py), a few real
clients online; Gajim with the admin's account in a throwaway profile (gajim_profile.py), on a
virtual display (Xvfb), as an unprivileged user when run as root (Gajim refuses root). Gajim's own
actions (over its D-Bus session) open its windows, xdotool points, clicks and types, ImageMagick's
`import` takes the pictures. Nothing is left behind but the PNGs.

    python -m bot.testbed.gajim_screenshots docs/
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ..app.daemon import Bot
from ..config import load_settings
from .botconfig import write_config
from .clients import connect_client, disconnect_client
from .sandbox import ProsodySandbox
from .screenshot import ONLINE, made_up_store

DEBIAN_PYTHON = "/usr/bin/python3"
PROFILE_SCRIPT = Path(__file__).with_name("gajim_profile.py")
NEEDED = ("Xvfb", "xdotool", "import", "gajim", "dbus-run-session", "gdbus")
INSTALL_HINT = "run `make tools` (and `apt-get install -y xdotool imagemagick`)"
WIDTH, HEIGHT = 1000, 700  # Gajim's main window
ADMIN = "admin"


class Screen:
    """Xvfb, and xdotool, import and gdbus on it."""

    def __init__(self, display: str, bus_file: Path, as_user: list[str]) -> None:
        self.display, self.bus_file, self.as_user = display, bus_file, as_user

    def run(self, *args: str, check: bool = True) -> str:
        env = {**os.environ, "DISPLAY": self.display}
        return subprocess.run(args, env=env, check=check, capture_output=True, text=True).stdout

    def windows(self, name: str) -> list[tuple[int, int, int, int, int]]:
        """(id, x, y, width, height) of each window named `name` (a regex), largest first."""
        found = []
        for window in self.run("xdotool", "search", "--name", name, check=False).split():
            shape = self.run("xdotool", "getwindowgeometry", "--shell", window)
            values = dict(line.split("=") for line in shape.split())
            found.append(
                (
                    int(window),
                    int(values["X"]),
                    int(values["Y"]),
                    int(values["WIDTH"]),
                    int(values["HEIGHT"]),
                )
            )
        return sorted(found, key=lambda w: -w[3] * w[4])

    async def window(self, name: str, timeout: float = 15) -> tuple[int, int, int, int, int]:
        deadline = time.monotonic() + timeout
        while True:
            found = [w for w in self.windows(name) if w[3] > 100]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no window named {name!r} in Gajim")
            await asyncio.sleep(0.3)

    async def click(self, x: int, y: int, *, double: bool = False) -> None:
        self.run("xdotool", "mousemove", str(x), str(y))
        await asyncio.sleep(0.2)
        self.run("xdotool", "click", *(["--repeat", "2", "--delay", "80"] if double else []), "1")
        await asyncio.sleep(1)

    async def hover(self, x: int, y: int) -> None:
        """Small moves onto a point: GTK shows a tooltip after motion, not after one jump."""
        for dx in (-40, -30, -20, -10, 0):
            self.run("xdotool", "mousemove", str(x + dx), str(y))
            await asyncio.sleep(0.3)
        await asyncio.sleep(2)

    async def type(self, text: str, *keys: str) -> None:
        if text:
            self.run("xdotool", "type", "--delay", "40", text)
        for key in keys:
            self.run("xdotool", "key", key)
        await asyncio.sleep(1.5)

    def picture(self, path: Path, x: int, y: int, width: int, height: int) -> None:
        self.run("import", "-window", "root", "-crop", f"{width}x{height}+{x}+{y}", str(path))
        print(f"{path}: {path.stat().st_size:,} bytes")

    def action(self, name: str, parameter: str) -> None:
        """Activate one of Gajim's application actions, as its menus do."""
        address = self.bus_file.read_text().strip()
        self.run(
            *self.as_user, "gdbus", "call", "--address", address, "--dest", "org.gajim.Gajim",
            "--object-path", "/org/gajim/Gajim", "--method", "org.gtk.Actions.Activate",
            name, f"[<{parameter}>]", "{}",
        )  # fmt: skip


@contextlib.asynccontextmanager
async def gajim_on_xvfb(folder: Path, jid: str, password: str, port: int) -> AsyncIterator[Screen]:
    """Xvfb, then Gajim logged in as `jid`, in its own D-Bus session; both stopped on the way
    out."""
    profile, home, bus_file = folder / "gajim", folder / "home", folder / "home" / "bus"
    home.mkdir(parents=True)
    subprocess.run(
        [DEBIAN_PYTHON, str(PROFILE_SCRIPT), str(profile), jid, password, str(port)],
        check=True,
        capture_output=True,
    )
    as_user: list[str] = []
    if os.geteuid() == 0:  # Gajim refuses root: nobody runs it, in folders it may write
        as_user = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        for path in (folder, profile, home, *profile.rglob("*")):
            shutil.chown(path, "nobody", "nogroup")
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x900x24", "-nolisten",
         "tcp", "-ac"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_end)
    with os.fdopen(read_end) as displays:
        display = f":{displays.readline().strip()}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "DISPLAY": display, "LANG": "C.UTF-8"}
    start = f'echo "$DBUS_SESSION_BUS_ADDRESS" > {bus_file}; exec gajim -c {profile}'
    gajim = subprocess.Popen(
        [*as_user, "dbus-run-session", "--", "sh", "-c", start],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield Screen(display, bus_file, as_user)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gajim.pid, 15)
        gajim.wait(10)
        xvfb.terminate()
        xvfb.wait(10)


async def take(folder_out: Path) -> None:
    for program in NEEDED:
        if shutil.which(program) is None:
            raise SystemExit(f"{program} is not installed: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="gajim-screenshots-") as temp:
        folder = Path(temp)
        os.chmod(folder, 0o755)
        prosody = ProsodySandbox(folder / "prosody")
        await asyncio.to_thread(prosody.start)
        try:
            passwords = {user: f"{user}-pw" for user in (*ONLINE, ADMIN)}
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
                admins=[f"{ADMIN}@{prosody.domain}"],
                store_path="activity.db",
                first_count_after=3600,
                metrics_listen="",
            )
            bot = Bot(load_settings(config, environ={}))
            await _pictures(bot, prosody, passwords, folder, folder_out)
        finally:
            await asyncio.to_thread(prosody.stop)


async def _pictures(
    bot: Bot, prosody: ProsodySandbox, passwords: dict[str, str], folder: Path, out: Path
) -> None:
    stop = asyncio.Event()
    connected = asyncio.ensure_future(bot.component.wait_until("session_start", 20))
    serving = asyncio.create_task(bot.serve(stop))
    clients = []
    component = prosody.component_jid
    admin = f"{ADMIN}@{prosody.domain}"
    try:
        await connected
        for user, node in ONLINE.items():
            jid = f"{user}@{prosody.domain}"
            clients.append(
                await connect_client(prosody, jid, passwords[user], "phone", caps_node=node)
            )
        # The admin adds the bot, as Gajim's Add Contact does; Gajim then accepts the bot's
        # request by itself (autoauth) when it logs in.
        setup = await connect_client(prosody, admin, passwords[ADMIN], "setup")
        setup.send_presence_subscription(pto=component)
        await asyncio.sleep(2)
        await disconnect_client(setup)
        async with gajim_on_xvfb(folder / "x", admin, passwords[ADMIN], prosody.c2s_port) as x:
            main = await x.window("^Gajim$")
            x.run("xdotool", "windowsize", str(main[0]), str(WIDTH), str(HEIGHT))
            await asyncio.sleep(8)  # logged in, roster and the bot's presence received
            await _contact(x, out / "gajim-contact.png")
            await _commands(x, component, out)
            await _chat(x, out / "gajim-chat.png")
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await disconnect_client(client)
        stop.set()
        await serving


async def _contact(x: Screen, path: Path) -> None:
    """The contact list (the account's page), the pointer on the bot: its tooltip."""
    await x.click(34, HEIGHT - 33)  # the account's avatar, bottom left
    await x.hover(200, 181)  # the first contact
    x.picture(path, 0, 0, WIDTH, HEIGHT)


async def _commands(x: Screen, component: str, out: Path) -> None:
    """Execute Command… on the bot (its contact menu has it): each command's result."""
    x.action(f"{ADMIN}-execute-command", f"'{component}'")
    window = await x.window("^Command List$")
    _, left, top, width, height = window

    async def run(row: int) -> None:
        await x.click(left + 120, top + 84 + 33 * row)  # the command's row
        await x.click(left + width - 67, top + height - 42)  # Execute
        await asyncio.sleep(1)

    async def back() -> None:
        await x.click(left + width - 80, top + height - 42)  # Commands
        await asyncio.sleep(2)  # the list, asked again

    await run(0)
    x.picture(out / "gajim-active-users.png", left, top, width, height)
    await back()
    await run(1)
    x.picture(out / "gajim-clients.png", left, top, width, height)
    await back()
    await run(2)
    await asyncio.sleep(1)
    x.picture(out / "gajim-history-days.png", left, top, width, height)
    await x.click(left + 350, top + 133)  # Days
    await x.type("", "ctrl+a", "BackSpace")
    await x.type("7")
    await x.click(left + width - 73, top + height - 42)  # Complete
    await asyncio.sleep(1)
    x.picture(out / "gajim-history.png", left, top, width, height)
    await x.type("", "Escape")


async def _chat(x: Screen, path: Path) -> None:
    """A chat with the bot: the tables and the chart as preformatted blocks."""
    await x.click(200, 181, double=True)  # the bot, in the contact list: its chat
    await x.type("clients", "Return")
    await x.type("history 14", "Return")
    x.picture(path, 0, 0, WIDTH, HEIGHT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the pictures")
    args = parser.parse_args()
    asyncio.run(take(args.folder))


if __name__ == "__main__":
    main()
