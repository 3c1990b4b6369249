"""Session liveness checks: ping each session believed online, close the ones that are gone.

Presence alone is not enough everywhere: ejabberd forwards no unavailable when a client's TCP
connection drops, and announces nobody when the bot (re)connects. A XEP-0199 ping to the full
JID settles it: an answer (even an error from the client itself) means alive; the server saying
the recipient is not there, or silence until the timeout, means gone.

Cost: N online sessions checked every `interval` seconds is N / interval pings per second (1,000
sessions every 300 s: 3.3 pings/s), never more than `max_rate` per second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Errors that mean "no such session" when the server answers for a full JID.
GONE_CONDITIONS = frozenset(
    {"service-unavailable", "recipient-unavailable", "item-not-found", "remote-server-not-found"}
)


@dataclass(frozen=True)
class LivenessSettings:
    interval: float  # seconds between two checks of the same session; 0: off
    timeout: float = 30.0
    max_rate: float = 20.0  # pings per second at most


Session = tuple[str, str]  # (bare JID, resource)
Ping = Callable[[str], Awaitable[bool | None]]  # full JID -> alive? (None: cannot tell now)


class LivenessChecker:
    """Pings sessions spread over the interval; `check_now` pings all at once (rate-bounded)."""

    def __init__(
        self,
        settings: LivenessSettings,
        sessions: Callable[[], set[Session]],
        ping: Ping,
        gone: Callable[[Session], None],
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._ping = ping
        self._gone = gone
        self.pings_sent = 0
        self.sessions_closed = 0

    async def run_forever(self) -> None:
        while True:
            started = asyncio.get_running_loop().time()
            sessions = sorted(self._sessions())
            spacing = self.settings.interval / len(sessions) if sessions else 0.0
            await self._check(sessions, max(spacing, 1 / self.settings.max_rate))
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(1.0, self.settings.interval - elapsed))

    async def check_now(self) -> int:
        """Check every session believed online, as fast as the rate allows (after connecting).
        Returns how many were closed."""
        before = self.sessions_closed
        await self._check(sorted(self._sessions()), 1 / self.settings.max_rate)
        return self.sessions_closed - before

    async def _check(self, sessions: list[Session], spacing: float) -> None:
        pending: set[asyncio.Task[None]] = set()
        try:
            for session in sessions:
                pending.add(asyncio.create_task(self._check_one(session)))
                await asyncio.sleep(spacing)
            if pending:
                await asyncio.wait(pending)
        finally:
            for task in pending:
                task.cancel()

    async def _check_one(self, session: Session) -> None:
        if session not in self._sessions():
            return  # ended meanwhile
        bare_jid, resource = session
        self.pings_sent += 1
        try:
            alive = await asyncio.wait_for(
                self._ping(f"{bare_jid}/{resource}"), self.settings.timeout
            )
        except TimeoutError:
            alive = False
        except Exception:  # a bug here must not stop the other checks
            log.exception("Ping of %s/%s failed", bare_jid, resource)
            return
        log.debug("Ping of %s/%s: alive=%s", bare_jid, resource, alive)
        if alive is False and session in self._sessions():
            self.sessions_closed += 1
            self._gone(session)
