"""Session liveness checks: ping sessions believed online, close the ones the server says are gone.

Presence alone is not enough everywhere: ejabberd forwards no unavailable when a client's TCP
connection drops, and announces nobody when the bot (re)connects. A XEP-0199 ping to the full
JID settles it, with three verdicts (`Verdict`):
- alive: a pong, or an error only the user's client sends (a client without XEP-0199 answers
  feature-not-implemented);
- gone: the server answers for the full JID that nobody is there (Prosody 0.12 and ejabberd 23.01
  both say service-unavailable);
- cannot tell: our own link is down or dropped before the answer, no answer within the timeout
  (a silent link, on either side), any other error. The session is kept and pinged again in the
  next round: only the server's word closes a session.

Cost: N online sessions checked every `interval` seconds is N / interval pings per second (1,000
sessions every 300 s: 3.3 pings/s), never more than `max_rate` per second. A round takes one
snapshot of the sessions (`sessions`, called once) and asks `still_pinged` (O(1), no side
effects) before each ping and before closing: CPU linear in the sessions
(benchmarks/bench_liveness.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("bot.liveness")  # its name from before the layers: admins grep it


class Verdict(enum.Enum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "cannot tell"


# What a server answers for a full JID with no session behind it: service-unavailable (RFC 6121
# §8.5.3.2.1; what Prosody and ejabberd send: tests/test_prosody_liveness.py,
# tests/test_component_ejabberd.py);
# recipient-unavailable and item-not-found are RFC 6120's words for the same, used by others.
GONE_CONDITIONS = frozenset({"service-unavailable", "recipient-unavailable", "item-not-found"})
# Errors that only the recipient's own client sends about the ping itself: it is there.
ALIVE_CONDITIONS = frozenset(
    {
        "feature-not-implemented",
        "bad-request",
        "not-acceptable",
        "not-allowed",
        "unexpected-request",
    }
)


def verdict_of_error(condition: str) -> Verdict:
    """The verdict of an error answer to a ping, by its defined condition."""
    if condition in GONE_CONDITIONS:
        return Verdict.GONE
    if condition in ALIVE_CONDITIONS:
        return Verdict.ALIVE
    return Verdict.UNKNOWN  # a server's own trouble (remote-server-timeout, ...) says nothing


@dataclass(frozen=True)
class LivenessSettings:
    interval: float  # seconds between two checks of the same session; 0: off
    timeout: float = 30.0  # how long a ping waits for its answer
    max_rate: float = 20.0  # pings per second at most


Session = tuple[str, str]  # (bare JID, resource)
Ping = Callable[[str], Awaitable[Verdict]]  # full JID -> verdict; answers within the timeout


class LivenessChecker:
    """Pings sessions spread over the interval; `check_now` pings all at once (rate-bounded)."""

    def __init__(
        self,
        settings: LivenessSettings,
        sessions: Callable[[], Sequence[Session]],
        ping: Ping,
        gone: Callable[[Session], None],
        still_pinged: Callable[[Session], bool],
    ) -> None:
        """`sessions`: the snapshot of a round (called once per round); `still_pinged`: whether
        a session of the snapshot is still one to ping (it may have ended meanwhile)."""
        self.settings = settings
        self._sessions = sessions
        self._still_pinged = still_pinged
        self._ping = ping
        self._gone = gone
        self.pings_sent = 0
        self.sessions_closed = 0
        self.undecided = 0  # pings that could not tell: those sessions were kept
        self._by_verdict = dict.fromkeys((v.value for v in Verdict), 0)

    def verdicts(self) -> dict[str, int]:
        """Pings answered so far, by verdict (for the metrics)."""
        return dict(self._by_verdict)

    async def run_forever(self) -> None:
        while True:
            started = asyncio.get_running_loop().time()
            sessions = list(self._sessions())
            spacing = self.settings.interval / len(sessions) if sessions else 0.0
            await self._check(sessions, max(spacing, 1 / self.settings.max_rate))
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(1.0, self.settings.interval - elapsed))

    async def check_now(self) -> int:
        """Check every session believed online, as fast as the rate allows (after connecting).
        Returns how many were closed."""
        before = self.sessions_closed
        await self._check(list(self._sessions()), 1 / self.settings.max_rate)
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
        if not self._still_pinged(session):
            return  # ended meanwhile
        bare_jid, resource = session
        self.pings_sent += 1
        try:
            # The ping answers within its own timeout; this one only stops a ping that never
            # returns (a bug) from holding the round.
            verdict = await asyncio.wait_for(
                self._ping(f"{bare_jid}/{resource}"), 2 * self.settings.timeout
            )
        except TimeoutError:
            verdict = Verdict.UNKNOWN
        except Exception:  # a bug here must not stop the other checks
            log.exception("Ping of %s/%s failed", bare_jid, resource)
            verdict = Verdict.UNKNOWN
        log.debug("Ping of %s/%s: %s", bare_jid, resource, verdict.value)
        self._by_verdict[verdict.value] += 1
        if verdict is Verdict.UNKNOWN:
            self.undecided += 1  # kept; pinged again in the next round
        elif verdict is Verdict.GONE and self._still_pinged(session):
            self.sessions_closed += 1
            self._gone(session)
