"""Everything the bot needs from slixmpp beyond its public API, in one place.

slixmpp (1.17) offers no public way to replace its presence handling, to check access on every
step of an ad-hoc command, or to forget completed and abandoned command sessions. What we do
instead uses names slixmpp does not promise to keep. They are all here; each is checked when the
component is built (`SlixmppChanged` names what is missing, so an upgrade fails at start, never
silently), and tests/test_slixmpp_internals.py pins the behaviour we rely on for the installed
version.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.xep_0030.stanza.info import DiscoInfo
from slixmpp.plugins.xep_0030.stanza.items import DiscoItems
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath, StanzaPath

NS_COMPONENT = "jabber:component:accept"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_COMMANDS = "http://jabber.org/protocol/commands"

# Names of slixmpp's own stream handlers that we replace.
_PRESENCE_HANDLER = "Presence"  # BaseXMPP: every presence to the roster
_ADHOC_HANDLER = "Ad-Hoc Execute"  # XEP-0050 plugin: every command stanza


class SlixmppChanged(RuntimeError):
    """The installed slixmpp lacks an internal the bot relies on (see this module)."""


def take_over_presence(xmpp: ComponentXMPP, handler: Callable[[Any], None]) -> None:
    """Send every presence stanza to `handler` instead of slixmpp's roster.

    slixmpp keeps a roster entry for every JID that sends presence and answers probes from it:
    a copy of per-user state that would grow with the whole user base.
    """
    if not xmpp.remove_handler(_PRESENCE_HANDLER):
        raise SlixmppChanged(f"no stream handler named {_PRESENCE_HANDLER!r} to replace")
    answer_probe_from_roster = _attribute(xmpp, "_handle_probe")
    xmpp.del_event_handler("presence_probe", answer_probe_from_roster)
    xmpp.register_handler(
        Callback(_PRESENCE_HANDLER, MatchXPath(f"{{{NS_COMPONENT}}}presence"), handler)
    )


def guard_adhoc_commands(
    xmpp: ComponentXMPP,
    check: Callable[[Any], None],
    *,
    session_ttl: float,
    max_sessions: int,
    clock: Callable[[], float],
) -> None:
    """Pass every XEP-0050 command stanza, whatever its step, through `check` first (it raises
    XMPPError to refuse), and keep only the sessions of commands still in progress: at most
    `max_sessions` (the oldest go first), each for `session_ttl` seconds after its last step
    (on the interval `clock`). A later step of a session that is gone is a bad-request.

    slixmpp checks a command's access only when it starts (a captured session id would let
    anyone continue it), keeps every session forever (completed or abandoned), and starts the
    command afresh on a step with an unknown session id.
    """
    adhoc = xmpp.plugin["xep_0050"]
    dispatch = _attribute(adhoc, "_handle_command")
    sessions = _OpenCommandSessions(session_ttl, max_sessions, clock)
    adhoc.set_backend(sessions)
    if not xmpp.remove_handler(_ADHOC_HANDLER):
        raise SlixmppChanged(f"no stream handler named {_ADHOC_HANDLER!r} to replace")

    def on_command(iq: Any) -> None:
        check(iq)
        sessionid = iq["command"]["sessionid"]
        if sessionid and sessionid not in sessions:
            raise XMPPError(
                "bad-request",
                text=(
                    f"This command session is over (a session ends after "
                    f"{session_ttl / 60:g} minutes without a step); run the command again."
                ),
                extension="bad-sessionid",
                extension_ns=NS_COMMANDS,
            )
        dispatch(iq)

    xmpp.register_handler(Callback(_ADHOC_HANDLER, StanzaPath("iq@type=set/command"), on_command))


def end_command_session(xmpp: ComponentXMPP, sessionid: str) -> None:
    """Forget a command session now (its step failed: nothing is left to continue)."""
    xmpp.plugin["xep_0050"].sessions.pop(sessionid, None)


def registered_disco_items(
    xmpp: ComponentXMPP, jid: Any, node: str, ifrom: Any, data: Any
) -> DiscoItems:
    """The items slixmpp would answer for `node` (what `add_command` registered), for a
    node handler of our own that answers them only to some."""
    items: DiscoItems = _attribute(xmpp.plugin["xep_0030"], "static").get_items(
        jid, node, ifrom, data
    )
    return items


def registered_disco_info(
    xmpp: ComponentXMPP, jid: Any, node: str, ifrom: Any, data: Any
) -> DiscoInfo:
    """The disco#info slixmpp would answer for `node` (what `add_command` registered), for a
    node handler of our own that answers it only to some."""
    info: DiscoInfo = _attribute(xmpp.plugin["xep_0030"], "static").get_info(jid, node, ifrom, data)
    return info


def error_condition(stanza: ET.Element) -> str:
    """The defined condition of a stanza error. Read from the XML: on a component stream the
    <error/> is in jabber:component:accept, where slixmpp's Error plugin (jabber:client) does
    not look, so iq["error"]["condition"] would be empty."""
    for child in stanza:
        if child.tag.rpartition("}")[2] == "error":
            for condition in child:
                namespace, _, name = condition.tag[1:].partition("}")
                if namespace == NS_STANZAS and name != "text":
                    return name
    return ""


def _attribute(owner: object, name: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise SlixmppChanged(f"{type(owner).__name__}.{name} is gone") from None


class _OpenCommandSessions(MutableMapping[str, Any]):
    """XEP-0050 sessions of commands still in progress, few and short-lived.

    slixmpp 1.17 stores a session after each step (`sessions[id] = session`) and keeps it
    forever: a completed one (no `next` step) is dropped here at once; an abandoned one expires
    `ttl` seconds after its last step; beyond `max_sessions` the oldest goes. Expired sessions
    are dropped whenever the sessions are used, so they never outnumber `max_sessions`.
    """

    def __init__(self, ttl: float, max_sessions: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._max_sessions = max_sessions
        self._clock = clock
        # Ordered by last step: the oldest first, so expiry and eviction look at the front.
        self._sessions: OrderedDict[str, tuple[float, Any]] = OrderedDict()  # id -> expiry

    def _expire(self) -> None:
        now = self._clock()
        while self._sessions:
            sessionid, (expires, _) = next(iter(self._sessions.items()))
            if expires > now:
                break
            del self._sessions[sessionid]

    def __getitem__(self, sessionid: str) -> Any:
        self._expire()
        return self._sessions[sessionid][1]

    def __setitem__(self, sessionid: str, session: Any) -> None:
        self._sessions.pop(sessionid, None)
        if session.get("next") is not None:
            self._sessions[sessionid] = (self._clock() + self._ttl, session)
        self._expire()
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    def __delitem__(self, sessionid: str) -> None:
        # Lenient on purpose: slixmpp deletes a session after its last step has run, by when
        # it may have expired or been evicted.
        self._sessions.pop(sessionid, None)

    def __iter__(self) -> Iterator[str]:
        self._expire()
        return iter(list(self._sessions))

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)
