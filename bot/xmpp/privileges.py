"""XEP-0356 privileges: which server granted what, and a warning when presence was not granted.

Only the server grants privileges: its counted domains (each VirtualHost grants its own) and the
domain the component is a subdomain of. Anyone can send a message that looks like an
advertisement: those are ignored, and logged at a bounded rate (`RefusalLog`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .ratelimit import RefusalLog

log = logging.getLogger("bot.component")  # one logger for the edge

PRIVILEGE_NAMESPACES = ("urn:xmpp:privilege:2", "urn:xmpp:privilege:1")
# Presence permissions that send us every user's presence (XEP-0356 §presence).
PRESENCE_GRANTS = ("managed_entity", "roster")


MAX_UNCOUNTED_NAMED = 5


def _is_domain(address: str) -> bool:
    return bool(address) and "@" not in address and "/" not in address


class Privileges:
    def __init__(
        self,
        component_jid: str,
        domains: frozenset[str],
        ignored: RefusalLog,
    ) -> None:
        self._component_jid = component_jid
        self._domains = domains
        parent_domain = component_jid.partition(".")[2]
        self.servers = frozenset(domains) | ({parent_domain} - {""})
        self._ignored = ignored
        self.granted: dict[str, dict[str, str]] = {}  # server -> access -> type, this stream
        # Servers not counted that advertised privileges anyway, this stream (a few at most):
        # named when a counted domain grants nothing, since a typo is the likely cause.
        self.uncounted: set[str] = set()

    def reset(self) -> None:
        """A new stream: the server advertises again."""
        self.granted = {}
        self.uncounted = set()

    def on_advertisement(self, message: Any) -> None:
        server = message.xml.get("from", "")
        if server not in self.servers:  # anyone can send a message: not a grant
            if _is_domain(server) and len(self.uncounted) < MAX_UNCOUNTED_NAMED:
                self.uncounted.add(server)
            self._ignored.refused(
                server,
                "Privilege advertisement from %r ignored: only %s grant privileges",
                server,
                ", ".join(sorted(self.servers)),
            )
            return
        for namespace in PRIVILEGE_NAMESPACES:
            element = message.xml.find(f"{{{namespace}}}privilege")
            if element is None:
                continue
            perms = {
                perm.get("access", "?"): perm.get("type", "?")
                for perm in element.iter(f"{{{namespace}}}perm")
            }
            self.granted[server] = perms
            granted = ", ".join(f"{a}={t}" for a, t in sorted(perms.items())) or "nothing"
            log.info("Privileges granted by %s (%s): %s", server, namespace, granted)
            if namespace.endswith(":1"):
                log.warning(
                    "%s speaks the older %s; presence works the same, but consider upgrading",
                    server,
                    namespace,
                )

    async def check_after(
        self, grace: float, still_connected: Callable[[], bool]
    ) -> list[str] | None:
        """After `grace` seconds on the same connection: warn about each counted domain that
        did not grant presence, and return those domains (None: that connection is gone)."""
        await asyncio.sleep(grace)
        if not still_connected():
            return None  # that connection is gone; the next one checks again
        jid = self._component_jid
        missing = []
        elsewhere = sorted(self.uncounted | self._granted_uncounted())
        for domain in self._domains:
            presence = self.granted.get(domain, {}).get("presence")
            if presence not in PRESENCE_GRANTS and elsewhere:
                missing.append(domain)
                log.warning(
                    "No presence permission from %s, but %s advertised privileges to the bot: "
                    "is [counting] domains mistyped? It lists %s; each server grants for its "
                    "own VirtualHost names only, so write them as in the server's config",
                    domain,
                    " and ".join(elsewhere),
                    ", ".join(sorted(self._domains)),
                )
            elif presence not in PRESENCE_GRANTS:
                missing.append(domain)
                log.warning(
                    "No presence permission from %s (got %s): the bot sees only users who "
                    "subscribe to it, so the figures will be low. In Prosody, enable "
                    'mod_privilege and add to VirtualHost "%s":\n'
                    '    modules_enabled = { "privilege" }\n'
                    '    privileged_entities = { ["%s"] = { presence = "managed_entity" } }\n'
                    'and to Component "%s": modules_enabled = { "privilege" }',
                    domain,
                    presence or "none",
                    domain,
                    jid,
                    jid,
                )
            elif presence == "roster":
                log.warning(
                    '%s grants presence = "roster": only users with %s in their roster are '
                    'seen; grant presence = "managed_entity" to see everyone',
                    domain,
                    jid,
                )
        return missing

    def _granted_uncounted(self) -> set[str]:
        """Servers not counted (the component's parent domain) that granted presence."""
        return {
            server
            for server, perms in self.granted.items()
            if server not in self._domains and perms.get("presence") in PRESENCE_GRANTS
        }
