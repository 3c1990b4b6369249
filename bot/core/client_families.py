"""Client families: which software a session runs, from the XEP-0115 caps `node` of its presence.

Every available presence carries `<c xmlns="http://jabber.org/protocol/caps" node="..."/>`,
whose node is a URI the client's authors chose (`http://conversations.im`, `https://dino.im`).
No disco#info query is sent to anyone: the node alone says enough to group sessions.

A family is a short key that is also a Prometheus label value and part of the store's records:
- a well-known client of KNOWN (matched by the node's host, so `http://` and `https://`, a
  trailing path or `www.` do not matter): its slug, `conversations`;
- any other node that is a URL with a proper host name: that host, `kaidan.im` (a dot in it, so
  it never collides with a slug); at most MAX_HOST_FAMILIES of them, first come, first kept;
- `other`: every other host once those are taken, and nodes that are not such URLs (an IP
  address, a URN, a long or odd string): a node is chosen by whoever writes the client, so it
  must not grow the labels or the store without bound;
- `unknown`: a session that announced no caps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Platform = Literal["mobile", "desktop", "web"]

UNKNOWN = "unknown"  # the session announced no caps
OTHER = "other"  # beyond the bound, or a node that is not a URL with a host name
MAX_HOST_FAMILIES = 20  # families named by a node's host (beside KNOWN, UNKNOWN and OTHER)
MAX_HOST_LENGTH = 64
_CACHE_SIZE = 1024  # nodes remembered (a node is looked up on every login)


@dataclass(frozen=True)
class ClientFamily:
    key: str  # the slug: in the store, in metrics labels
    name: str  # for people
    platform: Platform | None  # None: several, or not clear
    hosts: tuple[str, ...]  # of its caps node (lower case, without "www.")


# The caps node of each, checked in its own code where the note says "source" (the constant it
# puts in <c node=...>); the others by the project's web site, which their node names.
KNOWN: tuple[ClientFamily, ...] = (
    ClientFamily("conversations", "Conversations", "mobile", ("conversations.im",)),  # source
    ClientFamily("cheogram", "Cheogram", "mobile", ("cheogram.com",)),  # source
    ClientFamily("blabber", "blabber.im", "mobile", ("blabber.im",)),
    ClientFamily("monocles", "monocles chat", "mobile", ("monocles.eu", "monocles.de")),
    ClientFamily("quicksy", "Quicksy", "mobile", ("quicksy.im",)),
    ClientFamily("yaxim", "yaxim", "mobile", ("yaxim.org",)),
    ClientFamily("siskin", "Siskin IM", "mobile", ("siskin.im",)),
    ClientFamily("chatsecure", "ChatSecure", "mobile", ("chatsecure.org",)),
    ClientFamily("monal", "Monal", None, ("monal.im", "monal-im.org")),  # source; iOS and macOS
    ClientFamily("gajim", "Gajim", "desktop", ("gajim.org",)),  # its presences
    ClientFamily("dino", "Dino", "desktop", ("dino.im",)),  # source
    ClientFamily("beagle", "Beagle IM", "desktop", ("beagle.im",)),
    ClientFamily("profanity", "Profanity", "desktop", ("profanity-im.github.io", "profanity.im")),
    ClientFamily("psi", "Psi", "desktop", ("psi-im.org",)),  # Psi+'s client presets
    ClientFamily("psiplus", "Psi+", "desktop", ("psi-plus.com",)),
    ClientFamily("pidgin", "Pidgin", "desktop", ("pidgin.im",)),  # Psi+'s client presets
    ClientFamily("swift", "Swift", "desktop", ("swift.im",)),  # Psi+'s client presets
    ClientFamily("poezio", "Poezio", "desktop", ("poez.io", "poezio.eu")),
    ClientFamily("mcabber", "mcabber", "desktop", ("mcabber.com",)),  # Psi+'s client presets
    ClientFamily("kaidan", "Kaidan", None, ("kaidan.im",)),  # desktop and mobile
    ClientFamily("xabber", "Xabber", None, ("xabber.com", "xabber.org")),
    ClientFamily("movim", "Movim", "web", ("movim.eu",)),
    ClientFamily("converse", "Converse.js", "web", ("conversejs.org",)),
)
_BY_KEY = {family.key: family for family in KNOWN}
_BY_HOST = {host: family.key for family in KNOWN for host in family.hosts}

# scheme://host[:port][/...]: the host part, ASCII letters, digits, dots and dashes only.
_URL = re.compile(r"[a-z][a-z0-9+.-]*://([^/?#:@\s]+)(?::\d*)?(?:[/?#]\S*)?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def candidate(node: str | None) -> str:
    """The family a caps node names, before the bound on host families (see `Families`)."""
    if node is None or not node.strip():
        return UNKNOWN
    match = _URL.fullmatch(node.strip().lower())
    if match is None:
        return OTHER
    host = match.group(1).rstrip(".")
    host = host.removeprefix("www.")
    if host in _BY_HOST:
        return _BY_HOST[host]
    labels = host.split(".")
    if (
        len(labels) < 2
        or len(host) > MAX_HOST_LENGTH
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # an IPv4 address names no client
    ):
        return OTHER
    return host


def is_host_family(key: str) -> bool:
    return "." in key


def describe(key: str) -> tuple[str, Platform | None]:
    """(name for people, platform) of a family key."""
    family = _BY_KEY.get(key)
    if family is not None:
        return family.name, family.platform
    if key == UNKNOWN:
        return "Unknown (no caps)", None
    if key == OTHER:
        return "Other clients", None
    return key, None  # a host


class Families:
    """Caps nodes to family keys, with at most `max_hosts` families named by a host.

    The host families admitted are those the store already holds (`admit_stored`, at the
    start-up load) and, while there is room, new ones as sessions bring them (the room never
    frees up during a run). A record keeps the family it was given: `other` stays `other`."""

    def __init__(self, max_hosts: int = MAX_HOST_FAMILIES) -> None:
        self.max_hosts = max_hosts
        self._hosts: set[str] = set()
        self._cache: dict[str, str] = {}  # node -> candidate

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(self._hosts)

    def admit_stored(self, keys: Iterable[str]) -> None:
        """Families found in the store: they stay what they are (even beyond the bound, after
        a change of it: records are never rewritten for it)."""
        self._hosts.update(key for key in keys if is_host_family(key))

    def family_of(self, node: str | None) -> str:
        """The family of a session announcing this caps node (None: no caps)."""
        if node is None:
            return UNKNOWN
        key = self._cache.get(node)
        if key is None:
            key = candidate(node)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # nodes are few; an outsider's many just cost a parse
            self._cache[node] = key
        if "." not in key or key in self._hosts:  # not a host family, or an admitted one
            return key
        if len(self._hosts) >= self.max_hosts:
            return OTHER
        self._hosts.add(key)
        return key
