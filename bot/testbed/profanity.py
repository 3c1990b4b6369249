"""A real Profanity (Debian's package, a terminal XMPP client) in a private tmux server: typed
into as a person would, read as its screen shows.

For tests/test_client_profanity.py: what an admin sees of the bot in Profanity. A fresh home
folder each time (Profanity keeps its settings, logs and OMEMO keys there); the tmux server has a
socket of its own, killed on the way out with everything in it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL_HINT = "run `make tools` or `apt-get install -y profanity tmux`"
COLUMNS, ROWS = 160, 60  # wide enough that a table's line is one line of the screen


class Profanity:
    """`async with Profanity() as profanity: await profanity.connect(...)`."""

    def __init__(self) -> None:
        self.socket = f"profanity-{secrets.token_hex(4)}"
        self.home: Path | None = None

    async def __aenter__(self) -> Profanity:
        for program in ("profanity", "tmux"):
            if shutil.which(program) is None:
                raise RuntimeError(f"{program} is not installed: {INSTALL_HINT}")
        self.home = Path(tempfile.mkdtemp(prefix="profanity-home-"))
        env = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local/share"),
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
        }
        command = " ".join(f"{k}={v}" for k, v in env.items()) + " exec profanity"
        await self._tmux(
            "new-session", "-d", "-s", "p", "-x", str(COLUMNS), "-y", str(ROWS), command
        )
        await self.wait_for("Type '/help' to show complete help.")
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        # /quit closes the stream: killed, Profanity would leave its session on the server (and
        # its presence to the next test's bot) until the server notices.
        await self._tmux("send-keys", "-t", "p", "-l", "/quit", check=False)
        await self._tmux("send-keys", "-t", "p", "Enter", check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and await self._alive():
            await asyncio.sleep(0.1)
        await self._tmux("kill-server", check=False)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)

    async def connect(self, jid: str, password: str, port: int) -> None:
        """Log in to a server on 127.0.0.1 without TLS (the test servers have no certificate)."""
        await self.type(f"/connect {jid} server 127.0.0.1 port {port} tls disable")
        await self.wait_for("Enter password:")
        await self.type(password, shown=False)
        await self.wait_for("logged in successfully")

    async def type(self, line: str, *, shown: bool = True) -> None:
        """A line typed and sent with Enter (literally: no tmux key names). Enter waits until
        the input line shows what was typed (`shown`, not for a password): keys sent while
        Profanity is busy connecting are otherwise lost."""
        await self._tmux("send-keys", "-t", "p", "-l", line)
        if shown:
            await self.wait_for(line, on_input_line=True)
        await self._tmux("send-keys", "-t", "p", "Enter")

    async def screen(self) -> str:
        """What the current window shows, wrapped lines joined, with its scrollback."""
        screen = await self._tmux("capture-pane", "-p", "-J", "-S", "-500", "-t", "p")
        return "\n".join(line.rstrip() for line in screen.splitlines())

    async def wait_for(self, text: str, timeout: float = 10, *, on_input_line: bool = False) -> str:
        """The screen, once it shows `text` (on its last line, the input line, if asked)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = await self.screen()
            if text in (screen.splitlines() or [""])[-1] if on_input_line else text in screen:
                return screen
            if time.monotonic() > deadline:
                raise TimeoutError(f"Profanity did not show {text!r}; its screen:\n{screen}")
            await asyncio.sleep(0.2)

    async def _alive(self) -> bool:
        """Whether Profanity still runs (tmux ends its session when it exits)."""
        process = await asyncio.create_subprocess_exec(
            "tmux", "-L", self.socket, "has-session", "-t", "p",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return await process.wait() == 0

    async def _tmux(self, *args: str, check: bool = True) -> str:
        process = await asyncio.create_subprocess_exec(
            "tmux", "-L", self.socket, *args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMUX": ""},
        )  # fmt: skip
        out, err = await process.communicate()
        if check and process.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {err.decode().strip()}")
        return out.decode()
