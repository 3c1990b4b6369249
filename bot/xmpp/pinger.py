"""XEP-0199 pings of users' sessions, with one stream handler for all the answers.

slixmpp's own `send_ping` registers a handler per ping, and slixmpp matches every incoming stanza
against every handler: with a hundred pings waiting (their answers queued behind a burst of
presences), each presence cost about 90 µs more (benchmarks/bench_ingest.py: 35 -> 125 µs per
stanza). Here the pings waiting are a dict keyed by stanza id, and one handler takes the answers.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.jid import JID, InvalidJID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from .slixmpp_internals import NS_COMPONENT, error_condition

NS_PING = "urn:xmpp:ping"
_IQ = f"{{{NS_COMPONENT}}}iq"


class Pinger:
    def __init__(
        self,
        xmpp: ComponentXMPP,
        guard: Callable[[Callable[[Any], None]], Callable[[Any], None]] = lambda handler: handler,
    ) -> None:
        """`guard` wraps the answers' handler in the component's error policy."""
        self._xmpp = xmpp
        # Ids no one else uses: a random prefix per run, then a counter.
        self._prefix = f"live-{secrets.token_hex(4)}-"
        self._counter = itertools.count()
        self._waiting: dict[str, tuple[str, asyncio.Future[str | None]]] = {}  # id -> (to, answer)
        answers = Callback("Ping answers", _Answers(self._prefix), guard(self._on_answer))
        xmpp.register_handler(answers)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def ping(self, full_jid: str, timeout: float) -> str | None:
        """Ping `full_jid`: None for a pong, the defined condition of an error answer ("" when
        it has none). Raises TimeoutError when nothing comes within `timeout`."""
        stanza_id = f"{self._prefix}{next(self._counter)}"
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting[stanza_id] = (full_jid, answer)
        try:
            iq = self._xmpp.make_iq_get(ito=full_jid, ifrom=self._xmpp.boundjid)
            iq["id"] = stanza_id
            iq.enable("ping")
            self._xmpp.send(iq)  # XMLStream.send: no handler of its own, unlike Iq.send
            return await asyncio.wait_for(answer, timeout)
        finally:
            del self._waiting[stanza_id]

    def _on_answer(self, stanza: Any) -> None:
        waiting = self._waiting.get(stanza.xml.get("id", ""))
        if waiting is None:
            return  # too late (timed out), or not ours
        full_jid, answer = waiting
        sender = stanza.xml.get("from", "")
        if answer.done() or (sender != full_jid and not _same_jid(sender, full_jid)):
            return  # only the pinged JID (or the server in its name) answers for it
        kind = stanza.xml.get("type")
        answer.set_result(None if kind == "result" else error_condition(stanza.xml))


def _same_jid(one: str, other: str) -> bool:
    try:
        return JID(one).full == JID(other).full  # as normalized (case, ...)
    except InvalidJID:
        return False


class _Answers(MatcherBase):
    """An iq result or error whose id has our prefix: one string test per incoming stanza."""

    def match(self, stanza: Any) -> bool:
        xml = stanza.xml
        return (
            xml.tag == _IQ
            and xml.get("type") in ("result", "error")
            and xml.get("id", "").startswith(self._criteria)
        )
