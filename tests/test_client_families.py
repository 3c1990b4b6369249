"""Client families from caps nodes (bot/core/client_families.py): the table, hosts, and the
bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.client_families import (
    KNOWN,
    MAX_HOST_FAMILIES,
    OTHER,
    UNKNOWN,
    Families,
    candidate,
    describe,
    is_host_family,
)

# Nodes as clients announce them (the first of each: seen in their code or their presences).
WELL_KNOWN = {
    "http://conversations.im": "conversations",
    "https://cheogram.com": "cheogram",
    "https://gajim.org": "gajim",
    "http://gajim.org": "gajim",
    "https://dino.im": "dino",
    "http://monal.im/": "monal",
    "https://monal-im.org/": "monal",
    "https://psi-im.org/caps": "psi",
    "http://pidgin.im/": "pidgin",
    "http://swift.im": "swift",
    "http://mcabber.com/caps": "mcabber",
    "https://www.profanity.im": "profanity",
    "http://profanity-im.github.io": "profanity",
    "https://siskin.im": "siskin",
    "https://beagle.im": "beagle",
    "https://movim.eu/": "movim",
    "https://conversejs.org": "converse",
    "HTTPS://Kaidan.IM": "kaidan",
}


@pytest.mark.parametrize(("node", "family"), WELL_KNOWN.items())
def test_well_known_clients_are_named_by_their_nodes_host(node, family):
    assert candidate(node) == family


def test_every_well_known_family_has_a_name_and_a_platform_only_where_clear():
    keys = [family.key for family in KNOWN]
    assert len(keys) == len(set(keys))
    assert not any(is_host_family(key) for key in keys)  # never mistaken for a host
    assert describe("conversations") == ("Conversations", "mobile")
    assert describe("gajim") == ("Gajim", "desktop")
    assert describe("movim") == ("Movim", "web")
    assert describe("monal")[1] is None  # iOS and macOS announce the same node
    assert describe(UNKNOWN) == ("Unknown (no caps)", None)
    assert describe("kaidan.example") == ("kaidan.example", None)


@pytest.mark.parametrize(
    ("node", "family"),
    [
        ("https://chat.example.net/client#1.2", "chat.example.net"),
        ("http://Example.ORG.", "example.org"),
        ("https://xmpp.example:8443/app", "xmpp.example"),
        (None, UNKNOWN),
        ("", UNKNOWN),
        ("   ", UNKNOWN),
        ("urn:xmpp:example:bot", OTHER),  # not a URL
        ("Psi", OTHER),
        ("http://192.0.2.7/caps", OTHER),  # an address names no client
        ("http://localhost/", OTHER),  # one label
        ("http://user@evil.example/", OTHER),  # credentials: not a plain host
        ("https://" + "a" * 60 + ".example/", OTHER),  # too long for a label value
        ("https://bücher.example/", OTHER),  # not ASCII
        ("https://a_b.example/", OTHER),
        ('https://x.example/"><script>', "x.example"),  # only the host is kept
        ("https://-bad.example/", OTHER),
    ],
)
def test_other_nodes_are_their_host_or_other(node, family):
    assert candidate(node) == family


@given(st.text(max_size=300))
def test_any_node_gives_a_short_family_of_safe_characters(node):
    family = candidate(node)
    assert len(family) <= 64
    assert all(c.isascii() and (c.isalnum() or c in ".-") for c in family), family


def test_host_families_are_bounded_and_the_rest_is_other():
    families = Families(max_hosts=3)
    families.admit_stored(["a.example", "conversations", ""])
    assert families.family_of("https://b.example") == "b.example"
    assert families.family_of("https://c.example") == "c.example"
    assert families.family_of("https://d.example") == OTHER  # full
    assert families.family_of("https://b.example/again") == "b.example"  # admitted ones stay
    assert families.family_of("https://gajim.org") == "gajim"  # the table is not bounded
    assert families.family_of(None) == UNKNOWN
    assert families.hosts == {"a.example", "b.example", "c.example"}


def test_an_outsider_sending_many_nodes_gains_at_most_the_bound():
    families = Families()
    seen = {families.family_of(f"https://host{n}.example/") for n in range(10_000)}
    assert len(seen) == MAX_HOST_FAMILIES + 1  # the first ones, then "other"
    assert OTHER in seen
