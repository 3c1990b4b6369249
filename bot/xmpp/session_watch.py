"""One state per session the bot watches: online, said unavailable (being confirmed), doubted.

A session is in at most one state here; a session that is gone is not here at all.

- online: available, pinged by the liveness rounds when those are on (ejabberd); its last sign
  of life is what a ping that finds it gone closes it at.
- said unavailable, being confirmed: a client may send an unavailable to the bot alone (directed
  presence) and stay connected; the server forwards it exactly like a broadcast one. So the
  session is asked (`ask`, a XEP-0199 ping): if it answers now and again `followup` seconds
  later, it is online again (`resumed`), but doubted.
- doubted: said unavailable but answered; pinged by the rounds until the server says it is gone
  (with the rounds off, those rounds ping only the doubted sessions).

Bounds (docs/architecture.md, "What each input can cost"): a confirmation costs two pings and
one task. Each user (bare JID) has a share: at most `per_user` confirmations at once and
`user_burst` then one per `1 / user_rate` seconds; all users together at most `total` at once
and `total_burst` then `total_rate` per second. An unavailable beyond its user's share, or
beyond the total, stands as it is (the session ends, unconfirmed): one user's flood costs that
user's own sessions, never another user's check. A newer presence of the session cancels its
confirmation (the task, and the ping it waits for).

No slixmpp here: `ask` is injected, so this is tested with plain asyncio.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .liveness import Session, Verdict
from .ratelimit import RateLimiter


class State(enum.Enum):
    ONLINE = "online"
    CONFIRMING = "said unavailable, being confirmed"
    DOUBTED = "doubted"


@dataclass(frozen=True)
class WatchLimits:
    per_user: int = 2  # confirmations at once, per bare JID
    total: int = 100  # confirmations at once, all users
    user_burst: int = 4  # confirmations per user: this many at once, then...
    user_rate: float = 1 / 30  # ...one per 30 s
    total_burst: int = 200
    total_rate: float = 50.0  # confirmations per second, all users
    followup: float = 2.0  # seconds between the two pings of a confirmation


Ask = Callable[[str], Awaitable[Verdict]]  # full JID -> verdict


class SessionWatch:
    def __init__(
        self,
        ask: Ask,
        *,
        pings_every_session: bool,
        resumed: Callable[[Session], None],
        confirmed: Callable[[Session], None] = lambda _session: None,
        refused: Callable[[Session, str], None] = lambda _session, _why: None,
        fault: Callable[[Exception], None] | None = None,
        limits: WatchLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`resumed`: a session that said unavailable answered twice (online again).
        `confirmed`: it did not (the unavailable stands). `refused`: no confirmation was
        started, over a bound (the reason given)."""
        self._ask = ask
        self.pings_every_session = pings_every_session
        self._resumed = resumed
        self._confirmed = confirmed
        self._refused = refused
        self._fault = fault
        self.limits = limits or WatchLimits()
        self._clock = clock
        self._states: dict[Session, State] = {}
        # Sessions the rounds may ping -> last sign of life (wall clock, seconds).
        self._last_seen: dict[Session, int] = {}
        self._confirming: dict[Session, asyncio.Task[None]] = {}
        self._per_user: Counter[str] = Counter()  # confirmations at once, by bare JID
        self._user_budget = RateLimiter(
            monotonic, burst=self.limits.user_burst, rate=self.limits.user_rate
        )
        self._total_budget = RateLimiter(
            monotonic, burst=self.limits.total_burst, rate=self.limits.total_rate, max_senders=1
        )
        self.confirmations_started = 0
        self.confirmations_refused = 0

    # --- queries: O(1), no side effects ----------------------------------------------------

    def state(self, session: Session) -> State | None:
        return self._states.get(session)

    def is_pinged(self, session: Session) -> bool:
        """Whether the liveness rounds ping this session."""
        state = self._states.get(session)
        return state is State.DOUBTED or (state is State.ONLINE and self.pings_every_session)

    def last_seen(self, session: Session) -> int | None:
        return self._last_seen.get(session)

    @property
    def confirming(self) -> int:
        return len(self._confirming)

    def to_ping(self) -> list[Session]:
        """The snapshot of a liveness round: every session it pings, in a stable order."""
        return sorted(s for s in self._last_seen if self.is_pinged(s))

    def __len__(self) -> int:
        return len(self._states)

    # --- what the server says -------------------------------------------------------------

    def available(self, session: Session, now: int, *, watched: bool = True) -> None:
        """An available presence: this newer presence decides (a confirmation is cancelled).
        `watched`: the session is one the bot counts (else it is not kept)."""
        self._cancel(session)
        if watched and self.pings_every_session:
            self._states[session] = State.ONLINE
            self._last_seen[session] = now
        else:
            self._forget(session)

    def unavailable(self, session: Session, *, was_online: bool, can_ask: bool) -> bool:
        """An unavailable presence: the session ends. If it was online and the link is up, it
        is asked whether it is still there, within the bounds. Returns whether it is asked."""
        self._cancel(session)
        self._forget(session)
        if not (was_online and can_ask):
            return False
        why = self._over_bound(session[0])
        if why is not None:
            self.confirmations_refused += 1
            self._refused(session, why)
            return False
        self.confirmations_started += 1
        self._states[session] = State.CONFIRMING
        self._per_user[session[0]] += 1
        task = asyncio.get_running_loop().create_task(self._confirm(session))
        self._confirming[session] = task
        task.add_done_callback(lambda done: self._confirmation_done(session, done))
        return True

    def seen_alive(self, session: Session, at: int) -> None:
        """A ping answered: the latest sign of life of a session the rounds ping."""
        if session in self._last_seen:
            self._last_seen[session] = at

    def ended(self, session: Session) -> None:
        """The session ended some other way (resync, forget, the server said gone)."""
        self._cancel(session)
        self._forget(session)

    def gone(self, session: Session) -> int | None:
        """A ping found the session gone: forget it; its last sign of life, if known."""
        last = self._last_seen.get(session)
        self.ended(session)
        return last

    def prune(self, still_online: Callable[[Session], bool]) -> int:
        """Forget the pinged sessions that ended some other way (resync, forget): once per
        round, linear. Returns how many were forgotten."""
        ended = [s for s in self._last_seen if not still_online(s)]
        for session in ended:
            self.ended(session)
        return len(ended)

    def confirmations(self) -> list[asyncio.Task[None]]:
        return list(self._confirming.values())

    def cancel_all(self) -> list[asyncio.Task[None]]:
        """Cancel every confirmation (a stop); returns their tasks, to await."""
        tasks = list(self._confirming.values())
        for task in tasks:
            task.cancel()
        return tasks

    # --- confirmations ----------------------------------------------------------------------

    def _over_bound(self, user: str) -> str | None:
        if len(self._confirming) >= self.limits.total:
            return "too many confirmations at once"
        if self._per_user[user] >= self.limits.per_user:
            return "its user has too many confirmations at once"
        if not self._user_budget.allow(user):
            return "its user asked for too many confirmations lately"
        if not self._total_budget.allow(""):
            return "too many confirmations lately"
        return None

    async def _confirm(self, session: Session) -> None:
        full_jid = f"{session[0]}/{session[1]}"
        try:
            still_there = await self._still_there(full_jid)
        except Exception as exc:
            if self._fault is None:
                raise
            self._fault(exc)
            still_there = False
        if not still_there:
            self._confirmed(session)
            return
        # Online again, but doubted: the rounds ping it until the server says it is gone.
        del self._confirming[session]  # before the done callback: the state is DOUBTED now
        self._release(session[0])
        self._states[session] = State.DOUBTED
        self._last_seen[session] = int(self._clock())
        self._resumed(session)

    async def _still_there(self, full_jid: str) -> bool:
        """Whether it answers a ping, and again `followup` seconds later. (A client leaving
        says unavailable, then closes its stream, often some milliseconds later: a ping that
        comes in between may be answered, or lost with the closing stream.)"""
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        first = asyncio.ensure_future(self._ask(full_jid))
        try:
            await asyncio.wait([first], timeout=self.limits.followup)
        finally:
            if not first.done():
                first.cancel()  # lost, most likely (or we are cancelled): the next ping tells
        if first.cancelled() or first.result() is not Verdict.ALIVE:
            return False  # gone, lost, or no one can tell (our link is down): it stands
        await asyncio.sleep(asked_at + self.limits.followup - loop.time())
        return await self._ask(full_jid) is Verdict.ALIVE

    def _confirmation_done(self, session: Session, task: asyncio.Task[None]) -> None:
        if self._confirming.get(session) is not task:
            return  # resumed (already released), or superseded by a newer one
        del self._confirming[session]
        self._release(session[0])
        if self._states.get(session) is State.CONFIRMING:
            del self._states[session]

    def _cancel(self, session: Session) -> None:
        task = self._confirming.pop(session, None)
        if task is not None:
            task.cancel()
            self._release(session[0])
            if self._states.get(session) is State.CONFIRMING:
                del self._states[session]

    def _release(self, user: str) -> None:
        self._per_user[user] -= 1
        if self._per_user[user] <= 0:
            del self._per_user[user]

    def _forget(self, session: Session) -> None:
        self._states.pop(session, None)
        self._last_seen.pop(session, None)
