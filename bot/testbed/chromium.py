"""A real headless Chromium (Debian's package), driven through the DevTools protocol.

For the tests of the status page (what a browser shows: text, layout on a phone) and for its
screenshot in the README. A fresh profile in a temporary folder each time; the flags keep it off
the network (this machine has none, and Chromium would keep trying) and out of the way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

INSTALL_HINT = "run `make tools` or `apt-get install -y --no-install-recommends chromium`"
FLAGS = (
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # it says which port it took (see `start`)
)
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class ChromiumNotInstalled(RuntimeError):
    """chromium is missing on this machine."""


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise ChromiumNotInstalled(f"missing chromium: {INSTALL_HINT}")
    return path


class Chromium:
    """`async with Chromium() as browser: page = await browser.new_page(390, 844, mobile=True)`."""

    def __init__(self, timeout: float = 30) -> None:
        self.timeout = timeout
        self._profile: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[tuple[str | None, str], list[asyncio.Future[dict[str, Any]]]] = {}
        self.log: list[str] = []

    async def __aenter__(self) -> Chromium:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._process = await asyncio.create_subprocess_exec(
            chromium_path(),
            *FLAGS,
            f"--user-data-dir={self._profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            address = await asyncio.wait_for(self._devtools_address(), self.timeout)
            self._http = aiohttp.ClientSession()
            self._socket = await self._http.ws_connect(address, max_msg_size=0)
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(self._read_messages()))

    async def _devtools_address(self) -> str:
        """Read its stderr until it says where DevTools listens; then keep draining it."""
        assert self._process is not None
        assert self._process.stderr is not None
        stderr = self._process.stderr
        while line := (await stderr.readline()).decode(errors="replace"):
            self.log.append(line)
            if match := LISTENING.search(line):
                self._tasks.append(asyncio.create_task(self._drain(stderr)))
                return match.group(1)
        raise RuntimeError("Chromium ended before DevTools listened:\n" + "".join(self.log))

    async def _drain(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            self.log.append(line.decode(errors="replace"))

    async def _read_messages(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            if "id" in data:
                answer = self._answers.pop(data["id"], None)
                if answer is not None and not answer.done():
                    answer.set_result(data)
            else:
                for waiter in self._events.pop((data.get("sessionId"), data["method"]), []):
                    if not waiter.done():
                        waiter.set_result(data.get("params", {}))
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(RuntimeError("Chromium closed the DevTools connection"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """One DevTools command; its result, or RuntimeError with Chromium's error."""
        assert self._socket is not None
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        answer = self._answers[number] = asyncio.get_running_loop().create_future()
        await self._socket.send_json(message)
        data = await asyncio.wait_for(answer, self.timeout)
        if "error" in data:
            raise RuntimeError(f"{method}: {data['error']}")
        return dict(data.get("result", {}))

    def event(self, method: str, session: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future of the next such event (ask before doing what causes it)."""
        waiter = asyncio.get_running_loop().create_future()
        self._events.setdefault((session, method), []).append(waiter)
        return waiter

    async def new_page(self, width: int, height: int, *, mobile: bool = False) -> Page:
        """A tab with a viewport of width x height CSS pixels (`mobile`: as a phone shows it)."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        return page

    async def close(self) -> None:
        if self._socket is not None and not self._socket.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 5)
            await self._socket.close()
        if self._http is not None:
            await self._http.close()
        process = self._process
        if process is not None:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            with contextlib.suppress(ProcessLookupError):  # its helpers, if any are left
                os.killpg(process.pid, signal.SIGKILL)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
        self._process = self._http = self._socket = self._profile = None


class Page:
    """One tab (a DevTools session)."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    async def set_headers(self, headers: dict[str, str]) -> None:
        """Headers sent with every request of this tab (Authorization, say)."""
        await self.send("Network.enable")
        await self.send("Network.setExtraHTTPHeaders", {"headers": headers})

    async def goto(self, url: str) -> int:
        """Load `url` and wait for its load event; returns the HTTP status of the document."""
        await self.send("Network.enable")
        loaded = self.browser.event("Page.loadEventFired", self.session)
        response = self.browser.event("Network.responseReceived", self.session)
        navigation = await self.send("Page.navigate", {"url": url})
        if "errorText" in navigation:
            raise RuntimeError(f"cannot load {url}: {navigation['errorText']}")
        status = int((await asyncio.wait_for(response, self.browser.timeout))["response"]["status"])
        await asyncio.wait_for(loaded, self.browser.timeout)
        return status

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a test's eyes; the page has none)."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        """A PNG of the whole page (not only the viewport)."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
