"""Everything the bot needs from slixmpp beyond its public API, in one place.

slixmpp (1.17) offers no public way to replace its presence handling, to check access on every
step of an ad-hoc command, or to forget completed command sessions. What we do instead uses names
slixmpp does not promise to keep. They are all here; each is checked when the component is built
(`SlixmppChanged` names what is missing, so an upgrade fails at start, never silently), and
tests/test_slixmpp_internals.py pins the behaviour we rely on for the installed version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.plugins.xep_0030.stanza.items import DiscoItems
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath, StanzaPath

NS_COMPONENT = "jabber:component:accept"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

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


def guard_adhoc_commands(xmpp: ComponentXMPP, check: Callable[[Any], None]) -> None:
    """Pass every XEP-0050 command stanza, whatever its step, through `check` first (it raises
    XMPPError to refuse), and keep only the sessions of commands still in progress.

    slixmpp checks a command's access only when it starts (a captured session id would let
    anyone continue it), and keeps completed sessions forever.
    """
    adhoc = xmpp.plugin["xep_0050"]
    dispatch = _attribute(adhoc, "_handle_command")
    adhoc.set_backend(_OpenCommandSessions())
    if not xmpp.remove_handler(_ADHOC_HANDLER):
        raise SlixmppChanged(f"no stream handler named {_ADHOC_HANDLER!r} to replace")

    def on_command(iq: Any) -> None:
        check(iq)
        dispatch(iq)

    xmpp.register_handler(Callback(_ADHOC_HANDLER, StanzaPath("iq@type=set/command"), on_command))


def registered_disco_items(
    xmpp: ComponentXMPP, jid: Any, node: str, ifrom: Any, data: Any
) -> DiscoItems:
    """The items slixmpp would answer for `node` (what `add_command` registered), for a
    node handler of our own that answers them only to some."""
    return _attribute(xmpp.plugin["xep_0030"], "static").get_items(jid, node, ifrom, data)


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


class _OpenCommandSessions(dict[str, Any]):
    """XEP-0050 sessions without the completed ones, which slixmpp 1.17 would keep forever.

    slixmpp stores a session after each step (`sessions[id] = session`); one without a `next`
    step is complete."""

    def __setitem__(self, sessionid: str, session: Any) -> None:
        if session.get("next") is None:
            self.pop(sessionid, None)
        else:
            super().__setitem__(sessionid, session)
