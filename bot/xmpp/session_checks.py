"""Asking sessions whether they are there: a ping as a verdict, and what a verdict of gone closes.

The liveness rounds (liveness.py) and the session watch (session_watch.py) ask through `ask`: a
XEP-0199 ping of the full JID (pinger.py), "cannot tell" while the link is down or if it drops
before the answer. An answer is the session's latest sign of life; a session the server says is
gone is closed at its last sign of life (or the store's heartbeat, for a session loaded from it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from slixmpp.jid import JID

from ..activity.tracker import ActivityTracker
from .connection import Connection
from .internal_errors import InternalErrors
from .liveness import Session, Verdict, verdict_of_error
from .pinger import Pinger
from .session_watch import SessionWatch

log = logging.getLogger("bot.component")  # one logger for the edge


class SessionChecks:
    def __init__(
        self,
        *,
        pinger: Pinger,
        connection: Connection,
        tracker: ActivityTracker,
        errors: InternalErrors,
        clock: Callable[[], float],
        ping_timeout: float,
        loaded_sessions_alive_until: int,
        event: Callable[[str, Any], None],
    ) -> None:
        """`event`: the component's, for observers (tests, metrics)."""
        self._pinger = pinger
        self._connection = connection
        self._tracker = tracker
        self._errors = errors
        self._clock = clock
        self._ping_timeout = ping_timeout
        self._loaded_sessions_alive_until = loaded_sessions_alive_until
        self._event = event
        self.watch: SessionWatch | None = None  # set once both exist (each needs the other)

    def sessions_to_ping(self) -> list[Session]:
        """A round's snapshot: forget the sessions that ended some other way (resync, forget),
        then every session the watch pings. Linear in the sessions."""
        assert self.watch is not None
        self.watch.prune(lambda session: self._tracker.is_online(*session))
        return self.watch.to_ping()

    async def ask(self, full_jid: str) -> Verdict:
        """Ask a session whether it is there: a XEP-0199 ping to its full JID (`liveness` says
        what each verdict means). An answer is the session's latest sign of life."""
        if not self._connection.link_up():
            return Verdict.UNKNOWN  # sent now, it would wait for the next connection
        link_lost = self._connection.link_lost()
        answer = asyncio.ensure_future(self._pinger.ping(full_jid, self._ping_timeout))
        try:
            waiting: list[asyncio.Future[Any]] = [answer, *([link_lost] if link_lost else [])]
            await asyncio.wait(
                waiting,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:  # cancelled (a stop, a newer presence): the ping too
            answer.cancel()
            raise
        if not answer.done():
            answer.cancel()
            return Verdict.UNKNOWN  # our link dropped: the answer, if any, is lost
        try:
            condition = answer.result()
        except TimeoutError:
            return Verdict.UNKNOWN  # a silent link, ours or the client's
        verdict = Verdict.ALIVE if condition is None else verdict_of_error(condition)
        if verdict is Verdict.ALIVE and self.watch is not None:
            bare, _, resource = full_jid.partition("/")
            self.watch.seen_alive((bare, resource), int(self._clock()))
        return verdict

    def gone(self, session: Session) -> None:
        """The server says the session is gone: closed at its last sign of life."""
        assert self.watch is not None
        ended_at = (
            self.watch.gone(session) or self._loaded_sessions_alive_until or int(self._clock())
        )
        close = self._errors.guard("liveness", partial(self._close, session, ended_at))
        self._tracker.when_loaded(session[0], close)

    def _close(self, session: Session, ended_at: int) -> None:
        tracker = self._tracker
        if tracker.is_online(*session) and tracker.session_ended(*session, ended_at):
            bare, resource = session
            log.info(
                "Session %s/%s is gone, says the server: closed",
                tracker.who(bare),
                tracker.who_session(resource),
            )
            self._event("presence_tracked", ("gone", JID(f"{bare}/{resource}")))
