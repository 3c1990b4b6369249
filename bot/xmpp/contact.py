"""How the bot presents itself to people's XMPP clients: as a contact (its presence and status
line), in service discovery (its identity) and to a software version query (XEP-0092).

No XMPP here: the component sends what this module decides. The rule it keeps: figures reach
the configured admins only. An admin gets the figures in the status line when they add the bot or
their client comes online (their server then probes the bot), and again after each count and
whenever an admin asks for the figures. Anyone else who adds the bot (the presence fallback, for
servers without XEP-0356) gets a fixed status line, only in answer to their own subscription or
probe: never at a count, so that a server with 10,000 such users sends no 10,000 presences an hour.

The refresh after a count goes to every configured admin, not only to those known to have added
the bot: the bot keeps no contact list across restarts, and without one a restarted bot would
leave the figures of the last run in an admin's client until that client reconnects. The admins
are a short list from the config: one presence each per count. An admin who removes the bot
(unsubscribes) is left out until they add it again (or the bot restarts).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from ..admin.commands import CommandSet

SOFTWARE_NAME = "xmpp-active-users"  # the distribution's name, as pip knows it
IDENTITY_NAME = "Active users"
# Service discovery identities (category, type), from the XEP-0030 registry: "component/stats",
# "a server component that provides server statistics", is what the bot is; "client/bot", "an
# automated client that is not controlled by a human user", tells a contact list that a
# program, not a person, answers its messages.
IDENTITIES = (("component", "stats"), ("client", "bot"))
# The bot's own presence comes from this resource of the component (active.example.org/bot), not
# from the bare component: Gajim keeps a contact's presence per resource, and a presence from a
# bare address updates no resource, so the contact stays offline there (checked in Gajim's own
# code by tests/test_client_gajim.py). Subscriptions stay with the bare address, as RFC 6121 asks.
PRESENCE_RESOURCE = "bot"


def software_version() -> str:
    """The installed package's version, as XEP-0092 answers it (no OS: it is nobody's business)."""
    try:
        return version(SOFTWARE_NAME)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@dataclass(frozen=True)
class OwnPresence:
    """A presence of the bot's own, to send: available with `status`, or unavailable (None)."""

    to: str
    status: str | None


class ContactPresence:
    """Whom the bot sends its own presence to, and with which status line.

    Admins are the configured ones (`CommandSet.allowed`); an admin who removes the bot from their
    contacts (unsubscribes) gets no more refreshes in this run, until they add it again or their
    client probes it. Memory: at most one entry per configured admin; nothing per user.
    """

    def __init__(self, commands: CommandSet) -> None:
        self._commands = commands
        self._removed: set[str] = set()  # admins who unsubscribed, in this run

    def answer(self, jid: str) -> OwnPresence:
        """To a probe or an accepted subscription from `jid` (full or bare): the bot's presence,
        with the figures for an admin, the plain status line for anyone else."""
        bare = jid.partition("/")[0]
        if self._commands.allowed(bare):
            self._removed.discard(bare)  # probing or subscribing: a contact again
        return OwnPresence(jid, self._commands.presence_status(bare))

    def unsubscribed(self, bare_jid: str) -> OwnPresence | None:
        """`bare_jid` removed the bot from their contacts: an admin sees it offline and gets no
        more refreshes. Anyone else: nothing to do (the bot keeps no list of them)."""
        if not self._commands.allowed(bare_jid):
            return None
        self._removed.add(bare_jid)
        return OwnPresence(bare_jid, None)

    def refresh(self) -> list[OwnPresence]:
        """After a count: the current figures to every admin contact, and to nobody else."""
        admins = self._admin_contacts()
        if not admins:
            return []
        status = self._commands.presence_status(admins[0])  # the same for every admin
        return [OwnPresence(admin, status) for admin in admins]

    def goodbye(self) -> list[OwnPresence]:
        """At shutdown: unavailable to the admin contacts, whose clients would otherwise keep
        showing the last figures as if the bot were still counting."""
        return [OwnPresence(admin, None) for admin in self._admin_contacts()]

    def _admin_contacts(self) -> list[str]:
        return sorted(admin for admin in self._commands.admins if admin not in self._removed)
