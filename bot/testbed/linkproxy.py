"""A TCP relay on 127.0.0.1 between the bot and its XMPP server, to break the link on purpose.

The tests put it in front of the server's component port and then:
- `cut()`: close the relayed connections (the bot sees its connection drop, as after a network
  failure; the bytes already relayed still arrive first);
- `hold()` / `release()`: the bot's next connections are accepted but wait, not relayed, until
  released (the bot is away as long as the test needs: users can come and go meanwhile);
- `stall()` / `resume()`: nothing is relayed either way while the connections stay open (a link
  gone silent: pings get no answer); `resume()` relays what was held back;
- `relayed(pattern)`: wait until the server's bytes to the bot on the current connection hold
  `pattern` (the server has sent it; after a `cut()`, the bot still receives it);
- `sent_by_bot(pattern)`: wait until the bot has sent `pattern` on the current connection
  (relayed or, stalled, held back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass
class _Link:
    """One relayed connection: the bot's side, the server's side and what the server sent."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    downstream: bytearray = field(default_factory=bytearray)  # relayed to the bot
    upstream: bytearray = field(default_factory=bytearray)  # read from the bot, relayed or not
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class LinkProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []
        self._released = asyncio.Event()
        self._released.set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._changed = asyncio.Condition()  # notified on every accept and relayed chunk
        self._handlers: set[asyncio.Task[None] | None] = set()  # one per accepted connection

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.cut()
        self.release()  # connections still held end (cut)
        handlers = [task for task in self._handlers if task is not None]
        if handlers:
            await asyncio.wait(handlers)

    async def __aenter__(self) -> LinkProxy:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # --- what the tests do -----------------------------------------------------------------

    def cut(self) -> None:
        for link in self._links:
            for task in link.tasks:
                task.cancel()
            for writer in (link.client, link.server):
                if writer is not None:
                    writer.close()  # what was written still goes first, then the end
        self._links.clear()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def connection(self, number: int, timeout: float = 15) -> None:
        """Wait until the `number`-th connection (1 is the first) has been accepted."""
        await self._wait(lambda: self.accepted >= number, timeout)

    async def relayed(self, *patterns: bytes, timeout: float = 10) -> None:
        """Wait until the server's bytes to the bot on the latest connection hold every one
        of `patterns`."""

        def seen() -> bool:
            return bool(self._links) and all(p in self._links[-1].downstream for p in patterns)

        await self._wait(seen, timeout)

    async def sent_by_bot(self, *patterns: bytes, timeout: float = 10) -> None:
        """Wait until the bot's bytes on the latest connection hold every one of `patterns`."""

        def seen() -> bool:
            return bool(self._links) and all(p in self._links[-1].upstream for p in patterns)

        await self._wait(seen, timeout)

    # --- relaying ----------------------------------------------------------------------------

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(client=writer)
        self._links.append(link)
        self._handlers.add(asyncio.current_task())
        self.accepted += 1
        try:
            await self._notify()
            await self._released.wait()
            if link not in self._links:  # cut while held
                return
            try:
                server_reader, link.server = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.close()
                return
            up: asyncio.Queue[bytes] = asyncio.Queue()
            down: asyncio.Queue[bytes] = asyncio.Queue()
            link.tasks = [
                asyncio.ensure_future(self._read(reader, up, link, link.upstream)),
                asyncio.ensure_future(self._write(up, link.server, link, None)),
                asyncio.ensure_future(self._read(server_reader, down, link, None)),
                asyncio.ensure_future(self._write(down, writer, link, link.downstream)),
            ]
            await asyncio.wait(link.tasks)  # until one side ends, or cut() cancels them all
        finally:
            self._handlers.discard(asyncio.current_task())

    async def _read(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[bytes],
        link: _Link,
        record: bytearray | None,
    ) -> None:
        """Read one side as it comes (even while stalled); an empty chunk marks its end."""
        try:
            while data := await reader.read(CHUNK):
                if record is not None:
                    record.extend(data)
                    await self._notify()
                queue.put_nowait(data)
        except OSError:
            pass
        queue.put_nowait(b"")

    async def _write(
        self,
        queue: asyncio.Queue[bytes],
        writer: asyncio.StreamWriter,
        link: _Link,
        record: bytearray | None,
    ) -> None:
        """Relay to the other side while flowing; when one side ends, end both (as a router
        would)."""
        try:
            while data := await queue.get():
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                if record is not None:
                    record.extend(data)
                    await self._notify()
        except OSError:
            pass
        finally:
            for side in (link.client, link.server):
                if side is not None:
                    side.close()
