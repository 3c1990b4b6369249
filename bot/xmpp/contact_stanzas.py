"""The bot as a contact on the stream: subscriptions, probes and its own presence, bounded.

contact.py decides whom the bot's presence goes to and with which status line; this module
sends it. Every answer to a subscription or a probe costs a presence or three, and anyone can
send those: each sender gets `SENDER_BURST` answers, then one every `1 / SENDER_RATE` seconds,
and all senders together `TOTAL_BURST`, then `TOTAL_RATE` per second; beyond, the request is
dropped unanswered (the sender's client asks again later). Log lines about them go through
`RefusalLog`: at most a few per period, whoever sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slixmpp import ComponentXMPP
from slixmpp.jid import JID, InvalidJID

from ..activity.tracker import ActivityTracker
from ..admin.commands import CommandSet
from .contact import IDENTITIES, IDENTITY_NAME, PRESENCE_RESOURCE, ContactPresence, OwnPresence
from .ratelimit import RateLimiter, RefusalLog

SENDER_BURST = 3
SENDER_RATE = 1 / 60  # answers per second, per bare JID, after the burst
TOTAL_BURST = 100
TOTAL_RATE = 10.0  # answers per second, all senders


class ContactStanzas:
    def __init__(
        self,
        xmpp: ComponentXMPP,
        tracker: ActivityTracker,
        *,
        monotonic: Callable[[], float],
        accepted: RefusalLog,
        refusals: RefusalLog,
        ignored: RefusalLog,
        connected: Callable[[], bool],
    ) -> None:
        """`accepted`: the log of accepted subscriptions; `refusals`: of refused ones;
        `ignored`: of requests dropped over the rate. `connected`: whether a stream is up."""
        self._xmpp = xmpp
        self._tracker = tracker
        self._accepted = accepted
        self._refusals = refusals
        self._ignored = ignored
        self._connected = connected
        self._per_sender = RateLimiter(monotonic, burst=SENDER_BURST, rate=SENDER_RATE)
        self._total = RateLimiter(monotonic, burst=TOTAL_BURST, rate=TOTAL_RATE, max_senders=1)
        self.contact = ContactPresence(self.commands)  # the bot's own presence (contact.py)
        self.answers_dropped = 0

    @property
    def commands(self) -> CommandSet:
        return self._xmpp.commands  # type: ignore[attr-defined,no-any-return]  # the component's; tests swap it

    def register_identities(self, _event: object = None) -> None:
        for category, itype in IDENTITIES:
            self._xmpp.plugin["xep_0030"].add_identity(category, itype, name=IDENTITY_NAME)

    def _within_rate(self, sender: str, kind: str) -> bool:
        """Admins (a short list from the config) have no share of their own to exceed."""
        own_share = self.commands.allowed(sender) or self._per_sender.allow(sender)
        if own_share and self._total.allow(""):
            return True
        self.answers_dropped += 1
        self._ignored.refused(sender, "%s from %s dropped: over the rate limit", kind, sender)
        return False

    def subscribe(self, sender: JID) -> None:
        """The fallback without XEP-0356: a user who subscribes to us shares their presence.
        An admin may add the bot whatever their domain (it subscribes back to counted users)."""
        if not self._within_rate(sender.bare, "Subscription"):
            return
        bot = self._xmpp.boundjid.bare
        counted = self._tracker.is_counted(sender.bare)
        if not counted and not self.commands.allowed(sender.bare):
            self._refusals.refused(  # not a user of ours, so the JID may be logged
                sender.bare, "Subscription from %s refused: not a counted domain", sender.bare
            )
            self._xmpp.send_presence(pto=sender.bare, pfrom=bot, ptype="unsubscribed")
            return
        self._xmpp.send_presence(pto=sender.bare, pfrom=bot, ptype="subscribed")
        if counted:
            who = self._tracker.who(sender.bare)
            self._accepted.refused(
                sender.bare, "Subscription from %s accepted; subscribing back", who
            )
            self._xmpp.send_presence(pto=sender.bare, pfrom=bot, ptype="subscribe")
        else:
            self._accepted.refused(
                sender.bare, "Admin %s added the bot to their contacts", sender.bare
            )
        self.send(self.contact.answer(sender.bare))

    def probe_or_unsubscribe(self, kind: str, presence: Any) -> None:
        """A probe (a contact's client came online, or asks) gets the bot's presence; an
        unsubscribe (a contact removed the bot) is noted. Strangers get nothing."""
        try:
            sender = presence["from"]
        except InvalidJID:
            return
        if not self._tracker.is_counted(sender.bare) and not self.commands.allowed(sender.bare):
            return
        if kind == "probe":
            if self._within_rate(sender.bare, "Probe"):
                self.send(self.contact.answer(str(sender)))
        elif (goodbye := self.contact.unsubscribed(sender.bare)) is not None:
            self.send(goodbye)

    def refresh(self) -> None:
        """After a count, or when an admin asked: the figures to the admins (contact.py).
        Not while disconnected: slixmpp would queue stale figures for the next connection."""
        if self._connected():
            for presence in self.contact.refresh():
                self.send(presence)

    def leave(self) -> None:
        """Before a deliberate disconnection: the admins' clients show the bot offline."""
        if self._connected():
            for presence in self.contact.goodbye():
                self.send(presence)

    def send(self, presence: OwnPresence) -> None:
        # From a resource of the component: Gajim keeps presence per resource and shows a
        # contact whose presence comes from its bare address as offline (docs/clients.md).
        bot = f"{self._xmpp.boundjid.bare}/{PRESENCE_RESOURCE}"
        if presence.status is None:
            self._xmpp.send_presence(pto=presence.to, pfrom=bot, ptype="unavailable")
        else:
            self._xmpp.send_presence(pto=presence.to, pfrom=bot, pstatus=presence.status)
