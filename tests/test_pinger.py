"""Pings of sessions through one stream handler: each answer reaches the ping it answers, from the
JID that was pinged only; an unanswered ping times out; nothing is kept once a ping is over."""

from __future__ import annotations

import asyncio

import pytest
from slixmpp import ComponentXMPP
from slixmpp.stanza import Iq
from slixmpp.xmlstream import ET

from bot.xmpp.pinger import Pinger

pytestmark = pytest.mark.asyncio

COMPONENT = "active.example.test"
NS = "jabber:component:accept"


@pytest.fixture
def wire():
    """A component that is never connected: what it sends is collected; `answer(...)` hands
    it a stanza as if the server had sent it."""
    xmpp = ComponentXMPP(COMPONENT, "secret", "127.0.0.1", 5347)
    xmpp.register_plugin("xep_0199")
    sent: list[Iq] = []
    xmpp.send = sent.append

    def answer(text: str) -> None:
        xmpp.recv_stanza(Iq(stream=xmpp, xml=ET.fromstring(text)))

    return xmpp, sent, answer


def reply(iq: Iq, body: str = "", *, kind: str = "result", sender: str | None = None) -> str:
    return (
        f"<iq xmlns='{NS}' type='{kind}' id='{iq['id']}' from='{sender or iq['to']}' "
        f"to='{COMPONENT}'>{body}</iq>"
    )


def error(condition: str) -> str:
    return (
        f"<error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    )


async def test_each_answer_reaches_its_ping(wire):
    xmpp, sent, answer = wire
    pinger = Pinger(xmpp)
    alice = asyncio.ensure_future(pinger.ping("alice@example.test/phone", 5))
    bob = asyncio.ensure_future(pinger.ping("bob@example.test/pc", 5))
    await asyncio.sleep(0)  # both sent
    assert [str(iq["to"]) for iq in sent] == ["alice@example.test/phone", "bob@example.test/pc"]
    assert all(iq.xml.find("{urn:xmpp:ping}ping") is not None for iq in sent)
    assert pinger.waiting == 2
    answer(reply(sent[1], error("service-unavailable"), kind="error"))  # bob is gone
    answer(reply(sent[0]))  # alice's pong
    assert (await alice, await bob) == (None, "service-unavailable")
    assert pinger.waiting == 0


async def test_an_answer_from_another_jid_is_not_taken(wire):
    xmpp, sent, answer = wire
    pinger = Pinger(xmpp)
    alice = asyncio.ensure_future(pinger.ping("alice@example.test/phone", 5))
    await asyncio.sleep(0)
    answer(reply(sent[0], sender="mallory@example.test/x"))  # someone else, with alice's id
    await asyncio.sleep(0)
    assert not alice.done()
    answer(reply(sent[0], error("feature-not-implemented"), kind="error"))
    assert await alice == "feature-not-implemented"


async def test_an_unanswered_ping_times_out_and_is_forgotten(wire):
    xmpp, sent, answer = wire
    pinger = Pinger(xmpp)
    with pytest.raises(TimeoutError):
        await pinger.ping("alice@example.test/phone", 0.01)
    assert pinger.waiting == 0
    answer(reply(sent[0]))  # a late pong: nobody waits for it any more, nothing breaks
