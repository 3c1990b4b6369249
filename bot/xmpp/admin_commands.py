"""The admin commands on the stream: `commands.ADMIN_COMMANDS` rendered as ad-hoc and as chat.

Each command is defined once (commands.py: name, node, chat keyword, help, access, run); this
module registers every one that has a node with XEP-0050, shows the command list and nodes to
admins only, checks access on every step, and answers chat messages. What an outsider can cost
here is bounded: chat replies per sender and in total (`RateLimiter`), refusals logged at a
bounded rate (`RefusalLog`), command sessions few and short-lived (slixmpp_internals).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.exceptions import XMPPError
from slixmpp.jid import JID
from slixmpp.plugins.xep_0030.stanza.items import DiscoItems

from ..activity.tracker import ActivityTracker
from ..admin.commands import ADMIN_COMMANDS, Command, CommandError, CommandSet, Request
from .internal_errors import InternalErrors
from .ratelimit import RateLimiter, RefusalLog
from .slixmpp_internals import (
    end_command_session,
    guard_adhoc_commands,
    registered_disco_info,
    registered_disco_items,
)

log = logging.getLogger("bot.component")  # one logger for the edge

COMMANDS_NODE = "http://jabber.org/protocol/commands"
# An ad-hoc command left half-way (an admin closed the form) is forgotten this long after its
# last step; at most this many are kept (the oldest go first). Only admins can open one.
COMMAND_SESSION_TTL = 300.0
MAX_COMMAND_SESSIONS = 100
# Chat replies, all senders together (each sender has its own share: `RateLimiter` defaults).
CHAT_TOTAL_BURST = 50
CHAT_TOTAL_RATE = 5.0
CHAT_APOLOGY = "Sorry, I could not answer that: an internal error (my log says why)."


class AdminCommands:
    def __init__(
        self,
        xmpp: ComponentXMPP,
        tracker: ActivityTracker,
        *,
        errors: InternalErrors,
        refusals: RefusalLog,
        ignored: RefusalLog,
        monotonic: Callable[[], float],
        figures_asked: Callable[[], None],
    ) -> None:
        """`figures_asked`: an admin asked for the figures (their contact list shows them)."""
        self._xmpp = xmpp
        self._tracker = tracker
        self._errors = errors
        self._refusals = refusals  # refused requests of outsiders
        self._ignored = ignored  # stanzas dropped without an answer
        self._figures_asked = figures_asked
        self.chat_limiter = RateLimiter(monotonic)
        self._chat_total = RateLimiter(
            monotonic, burst=CHAT_TOTAL_BURST, rate=CHAT_TOTAL_RATE, max_senders=1
        )
        guard_adhoc_commands(
            xmpp,
            self._check_access,
            session_ttl=COMMAND_SESSION_TTL,
            max_sessions=MAX_COMMAND_SESSIONS,
            clock=monotonic,
        )

    @property
    def commands(self) -> CommandSet:
        return self._xmpp.commands  # type: ignore[attr-defined,no-any-return]  # the component's; tests swap it

    # --- ad-hoc -----------------------------------------------------------------------------

    def register(self, _event: object = None) -> None:
        """At session_bind: every command with a node, and the admins-only disco handlers."""
        xmpp = self._xmpp
        disco = xmpp.plugin["xep_0030"]
        for command in ADMIN_COMMANDS:
            if command.node is None or not command.offered(self.commands):
                continue
            xmpp.plugin["xep_0050"].add_command(
                node=command.node, name=command.name, handler=self.first_step(command)
            )
            for kind, handler in (
                ("get_info", self._command_node_info),
                ("get_items", self._command_node_items),
            ):
                disco.set_node_handler(kind, xmpp.boundjid, command.node, handler)
        disco.set_node_handler("get_items", xmpp.boundjid, COMMANDS_NODE, self._command_items)

    def _command_items(self, jid: JID, node: str, ifrom: JID | None, data: Any) -> DiscoItems:
        """Only admins see the command list; to anyone else it is empty."""
        if ifrom is not None and self.commands.allowed(ifrom.bare):
            return registered_disco_items(self._xmpp, jid, node, ifrom, data)
        items = DiscoItems()
        items["node"] = node
        return items

    def _command_node_info(self, jid: JID, node: str, ifrom: JID | None, data: Any) -> Any:
        self._admins_only_node(ifrom)
        return registered_disco_info(self._xmpp, jid, node, ifrom, data)

    def _command_node_items(self, jid: JID, node: str, ifrom: JID | None, data: Any) -> Any:
        self._admins_only_node(ifrom)
        return registered_disco_items(self._xmpp, jid, node, ifrom, data)

    def _admins_only_node(self, ifrom: JID | None) -> None:
        """To a non-admin, a command's node answers exactly as a node that does not exist."""
        if ifrom is None or not self.commands.allowed(ifrom.bare):
            raise XMPPError("item-not-found")

    def _check_access(self, iq: Any) -> None:
        """Every command stanza, whatever its step: admins only."""
        if not self.commands.allowed(iq["from"].bare):
            self._refusals.refused(
                iq["from"].bare,
                "Ad-hoc command %r refused to %s",
                iq["command"]["node"],
                iq["from"],
            )
            raise XMPPError("forbidden", text="Only the administrators of this service may ask.")

    def first_step(self, command: Command) -> Callable[..., Any]:
        if command.request_form is None:
            return self._guarded(lambda _iq, session: self._run(command, session, None))
        request_form = command.request_form

        def ask(_iq: Any, session: dict[str, Any]) -> dict[str, Any]:
            then = self._guarded(lambda payload, session: self._run(command, session, payload))
            form = request_form(self.commands, JID(session["from"]).bare)
            session.update(payload=form, next=then, has_next=False)
            return session

        return self._guarded(ask)

    async def _run(self, command: Command, session: dict[str, Any], payload: Any) -> Any:
        await self._tracker.caught_up()  # the presences received before the question count
        asker = JID(session["from"]).bare
        values = _values(payload)
        request = Request(asker, str(values.get(command.argument) or ""), values)
        try:
            answer = await command.run(self.commands, request)
        except CommandError as exc:
            raise XMPPError("bad-request", text=str(exc)) from None
        session.update(payload=answer.form(), next=None, has_next=False)
        if answer.note is not None:
            session["notes"] = [("info", answer.note)]
        if command.shows_figures:
            self._figures_asked()  # an admin asked: their contact list shows the same figures
        return session

    def _guarded(self, step: Callable[[Any, dict[str, Any]], Any]) -> Callable[..., Any]:
        """A command step whose unexpected failure is recorded (`InternalErrors`) and answered
        with a plain internal-server-error, never slixmpp's "got into trouble" or a traceback.
        A coroutine, which slixmpp awaits."""

        async def guarded(first: Any, session: dict[str, Any]) -> Any:
            try:
                result = step(first, session)
                if hasattr(result, "__await__"):
                    result = await result
            except XMPPError:
                end_command_session(self._xmpp, session["id"])  # an error answer ends it
                raise  # deliberate: bad-request, forbidden
            except Exception as exc:
                end_command_session(self._xmpp, session["id"])
                self._errors.record("command", exc)
                raise XMPPError(
                    "internal-server-error", text="The bot failed to answer; its log says why."
                ) from None
            return result

        return guarded

    # --- chat -------------------------------------------------------------------------------

    async def on_message(self, message: Any) -> None:
        """A chat message: the answer to an admin, a refusal to anyone else, within the rate
        limits (per sender, and in total). Our fault: an apology to an admin, else nothing."""
        if message["type"] not in ("chat", "normal"):
            return  # never answer errors or groupchat: no loops
        sender = message["from"]
        if not self.chat_limiter.allow(sender.bare) or not self._chat_total.allow(""):
            self._ignored.refused(sender.bare, "Chat from %s dropped: over the rate limit", sender)
            return
        body = message["body"]
        try:
            await self._tracker.caught_up()  # the presences received before the question count
            reply = await self.commands.chat_answer(sender.bare, body)
            message.reply(reply).send()
            if self.commands.asks_for_figures(sender.bare, body):
                self._figures_asked()
        except Exception as exc:  # our fault: a plain apology to admins, nothing to others
            self._errors.record("chat message", exc)
            if self.commands.allowed(sender.bare):
                message.reply(CHAT_APOLOGY).send()


def _values(payload: Any) -> dict[str, Any]:
    """The values of a submitted form (none when there is no form, or it is not one)."""
    try:
        return dict(payload["values"])
    except (TypeError, KeyError, AttributeError, ValueError):
        return {}
