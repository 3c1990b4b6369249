"""Presence stanzas in: each counted, read, and handed as a change to the tracker and the watch.

An available presence of a session starts it (with the client family of its caps node), an
unavailable one ends it at once; the session watch (session_watch.py) may then ask the session
whether it is still there, and a session that answers is resumed here. Probes, subscriptions
and unsubscriptions go to the bot as a contact (contact_stanzas.py). The rest is ignored, at a
bounded number of log lines. This part knows nothing about records; the tracker knows nothing
about stanzas. It is the hot path of the bot: one stanza costs a few attribute reads here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.jid import JID, InvalidJID

from ..activity.tracker import ActivityTracker
from .connection import Connection
from .contact_stanzas import ContactStanzas
from .internal_errors import InternalErrors
from .liveness import Session
from .ratelimit import RefusalLog
from .session_watch import SessionWatch

log = logging.getLogger("bot.component")  # its name from before the layers: admins grep it

# XEP-0115 entity capabilities in a presence: its `node` names the client (see client_families.py).
CAPS = "{http://jabber.org/protocol/caps}c"
# Presence types counted by name in the metrics; anything else is "other" (bounded labels).
PRESENCE_KINDS = frozenset(
    {"unavailable", "error", "probe", "subscribe", "subscribed", "unsubscribe", "unsubscribed"}
)


class PresenceRouter:
    """Routes each presence stanza: to the tracker and the session watch, or to the contact."""

    def __init__(
        self,
        xmpp: ComponentXMPP,
        tracker: ActivityTracker,
        *,
        watch: SessionWatch,
        contacts: ContactStanzas,
        connection: Connection,
        errors: InternalErrors,
        ignored: RefusalLog,
        clock: Callable[[], float] = time.time,
        pings_every_session: bool = False,
    ) -> None:
        """`ignored`: the log of stanzas dropped (bounded); `pings_every_session`: the
        liveness rounds are on, so the watch keeps what it knows of every online session."""
        self._xmpp = xmpp
        self._tracker = tracker
        self._watch = watch
        self._contacts = contacts
        self._connection = connection
        self._errors = errors
        self._ignored = ignored
        self._clock = clock
        self._pings_every_session = pings_every_session
        self.events: Counter[str] = Counter()  # by kind, for the metrics

    def on_presence(self, presence: Any) -> None:
        # Read the type attribute itself: slixmpp's presence["type"] gives the <show/> value.
        kind = presence.xml.get("type")
        if kind is None:
            self.events["available"] += 1
        else:
            self.events[kind if kind in PRESENCE_KINDS else "other"] += 1
        if kind in ("error", "probe", "subscribed", "unsubscribe", "unsubscribed"):
            if kind in ("probe", "unsubscribe"):
                self._contacts.probe_or_unsubscribe(kind, presence)
            return
        try:
            sender = presence["from"]
        except InvalidJID:
            raw = presence.xml.get("from", "")[:100]
            self._ignored.refused(raw, "Presence with an invalid from ignored: %r", raw)
            return
        if not sender.user or sender.bare == self._xmpp.boundjid.bare:
            return
        if kind == "subscribe":
            self._contacts.subscribe(sender)
            return
        if not sender.resource:  # from the account, not a session: Prosody answers the
            return  # subscription handshake of the fallback with an unavailable from the bare JID
        now = int(self._clock())
        if kind is None:
            caps_node = None
            for child in presence.xml:  # a few children: quicker than ElementTree's find
                if child.tag == CAPS:
                    caps_node = child.get("node")
                    break
            change = partial(self._available, sender, now, caps_node)
        elif kind == "unavailable":
            change = partial(self._unavailable, sender, now)
        else:
            self._ignored.refused(sender.bare, "Presence of unknown type %r ignored", kind)
            return
        # Now, or (an offline user's record is read off the event loop) in a moment, in order.
        self._tracker.when_loaded(sender.bare, change)

    # The changes run later (after a record is read): guarded here, by the same policy.

    def _available(self, sender: JID, now: int, caps_node: str | None = None) -> None:
        try:
            session = (sender.bare, sender.resource)
            tracker = self._tracker
            changed = tracker.session_started(sender.bare, sender.resource, now, caps_node)
            # Only the rounds read what the watch keeps of an online session: nothing without them.
            watched = self._pings_every_session and tracker.is_counted(sender.bare)
            self._watch.available(session, now, watched=watched)
            if changed:  # for observers (tests, metrics): cheap when nobody listens
                self._xmpp.event("presence_tracked", ("available", sender))
        except Exception as exc:  # our fault: never an error stanza to the user's client
            self._errors.record("presence", exc)

    def _unavailable(self, sender: JID, now: int) -> None:
        """An unavailable presence ends the session at once; the session watch may ask it
        whether it is still there (a client may send one to the bot alone)."""
        try:
            session = (sender.bare, sender.resource)
            tracker = self._tracker
            was_online = tracker.is_online(*session)
            if tracker.session_ended(sender.bare, sender.resource, now):
                self._xmpp.event("presence_tracked", ("unavailable", sender))
            link_up = self._connection.link_up()
            self._watch.unavailable(session, was_online=was_online, can_ask=link_up)
        except Exception as exc:
            self._errors.record("presence", exc)

    def unconfirmed(self, session: Session, why: str) -> None:
        """The watch took an unavailable as it is, without asking the session: said, bounded."""
        bare, resource = session
        self._ignored.refused(
            bare,
            "Unavailable of %s/%s taken as it is, unconfirmed: %s",
            self._tracker.who(bare),
            self._tracker.who_session(resource),
            why,
        )

    def resumed(self, session: Session) -> None:
        """A session that said unavailable answered twice: online again."""
        sender = JID(f"{session[0]}/{session[1]}")

        def resume() -> None:
            if self._tracker.session_resumed(session[0], session[1], int(self._clock())):
                log.debug("A session said unavailable but answers pings: online again")
                self._xmpp.event("presence_tracked", ("resumed", sender))

        self._tracker.when_loaded(session[0], self._errors.guard("presence", resume))
