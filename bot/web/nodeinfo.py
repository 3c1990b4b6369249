"""NodeInfo 2.1: the figures published the way network statistics sites read them (opt-in).

Two documents, on the bot's HTTP listener, per counted domain named in `[nodeinfo] domains`:
    /.well-known/nodeinfo   {"links": [{"rel": <schema 2.1>, "href": "https://DOMAIN/nodeinfo/2.1"}]}
    /nodeinfo/2.1           the NodeInfo 2.1 document of DOMAIN (schema: nodeinfo.diaspora.software)
The domain is the request's Host (a reverse proxy at https://DOMAIN passes it on); with a single
domain, any Host gets it. Both are public by design: the listener's token is not asked for them
(the admin chose to publish these figures), and they carry `Access-Control-Allow-Origin: *`.

The users: `total` is the users on record (seen or imported, not yet removed by retention),
`activeMonth` and `activeHalfyear` the seed's rule over 30 and 180 days; the index keeps the 180
days it needs (`ActivityTracker(extra_windows=...)`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..core.counter import DAY, Counts

SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/2.1"
WELL_KNOWN_PATH = "/.well-known/nodeinfo"
DOCUMENT_PATH = "/nodeinfo/2.1"
PUBLIC_PATHS = frozenset({WELL_KNOWN_PATH, DOCUMENT_PATH})
MONTH = 30 * DAY
HALF_YEAR = 180 * DAY
WINDOWS = (MONTH, HALF_YEAR)  # what the document needs counted
CACHE_SECONDS = 300  # crawlers and proxies may keep a document this long


@dataclass(frozen=True)
class NodeInfoSettings:
    """`[nodeinfo]` of the config, validated (see config.py)."""

    domains: tuple[str, ...]
    open_registrations: bool = False
    node_name: str = ""
    software_name: str = "prosody"  # the server's: NodeInfo describes the server
    software_version: str = ""


def document(settings: NodeInfoSettings, counts: Counts) -> dict[str, Any]:
    """The NodeInfo 2.1 document of one domain, from its figures over WINDOWS."""
    metadata: dict[str, Any] = {"nodeName": settings.node_name} if settings.node_name else {}
    return {
        "version": "2.1",
        "software": {"name": settings.software_name, "version": settings.software_version},
        "protocols": ["xmpp"],
        "services": {"inbound": [], "outbound": []},
        "openRegistrations": settings.open_registrations,
        "usage": {
            "users": {
                "total": counts.known_users,
                "activeHalfyear": counts.active[HALF_YEAR],
                "activeMonth": counts.active[MONTH],
            }
        },
        "metadata": metadata,
    }


def links(domain: str) -> dict[str, Any]:
    """/.well-known/nodeinfo: where the document of `domain` is."""
    return {"links": [{"rel": SCHEMA, "href": f"https://{domain}{DOCUMENT_PATH}"}]}


class NodeInfoPages:
    """The two aiohttp handlers. `figures` gives each domain's Counts over WINDOWS (after the
    changes received so far)."""

    def __init__(
        self,
        settings: NodeInfoSettings,
        figures: Callable[[], Awaitable[Mapping[str, Counts]]],
    ) -> None:
        self.settings = settings
        self._figures = figures

    def routes(self) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
        return {WELL_KNOWN_PATH: self.well_known, DOCUMENT_PATH: self.document}

    async def well_known(self, request: web.Request) -> web.Response:
        domain = self._domain(request)
        if domain is None:
            return self._unknown_domain(request)
        return _json(links(domain), "application/json")

    async def document(self, request: web.Request) -> web.Response:
        domain = self._domain(request)
        if domain is None:
            return self._unknown_domain(request)
        counts = (await self._figures())[domain]
        content_type = f'application/json; profile="{SCHEMA}#"'
        return _json(document(self.settings, counts), content_type)

    def _domain(self, request: web.Request) -> str | None:
        """The domain asked for: the Host's (port aside), or the only one."""
        host = (request.url.host or "").rstrip(".").lower()
        if host in self.settings.domains:
            return host
        if len(self.settings.domains) == 1:
            return self.settings.domains[0]
        return None

    def _unknown_domain(self, request: web.Request) -> web.Response:
        return web.Response(
            status=404,
            text=(
                f"404 Not Found: no NodeInfo for host {request.host!r}; this bot publishes "
                f"NodeInfo of {', '.join(self.settings.domains)} (a reverse proxy must pass "
                "the Host header on).\n"
            ),
        )


def _json(body: dict[str, Any], content_type: str) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={
            "Content-Type": content_type,
            "Access-Control-Allow-Origin": "*",
            "Cache-Control": f"public, max-age={CACHE_SECONDS}",
        },
    )
