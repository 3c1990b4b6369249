"""Liveness checks decide from ping verdicts: only "gone" closes a session; "cannot tell" (our link
down, no answer, a server's own trouble) keeps it for the next round; pacing keeps to the rate."""

from __future__ import annotations

import asyncio

import pytest

from bot.xmpp.liveness import LivenessChecker, LivenessSettings, Verdict, verdict_of_error

pytestmark = pytest.mark.asyncio

ALIVE, GONE, UNKNOWN = Verdict.ALIVE, Verdict.GONE, Verdict.UNKNOWN


def checker(answers: dict[str, Verdict | str], **settings):
    """A checker over the sessions of `answers`; "stuck" is a ping that never returns."""
    online = {tuple(jid.split("/")) for jid in answers}
    closed: list[tuple[str, str]] = []
    pinged: list[str] = []

    async def ping(full_jid: str) -> Verdict:
        pinged.append(full_jid)
        answer = answers[full_jid]
        if answer == "stuck":
            await asyncio.Event().wait()
        return answer

    def gone(session):
        closed.append(session)
        online.discard(session)

    live = LivenessChecker(
        LivenessSettings(**{"interval": 10, "timeout": 0.05, "max_rate": 1000} | settings),
        lambda: sorted(online),
        ping,
        gone,
        lambda session: session in online,
    )
    return live, closed, pinged


async def test_only_a_gone_verdict_closes_a_session():
    live, closed, pinged = checker(
        {"a@x/alive": ALIVE, "b@x/gone": GONE, "c@x/unknown": UNKNOWN, "d@x/stuck": "stuck"}
    )
    assert await live.check_now() == 1
    assert closed == [("b@x", "gone")]
    assert len(pinged) == 4
    assert live.undecided == 2  # "cannot tell" and a ping that never returned: both kept


async def test_a_session_that_could_not_be_told_is_pinged_again_in_the_next_round():
    answers = {"a@x/phone": UNKNOWN}
    live, closed, pinged = checker(answers)
    assert await live.check_now() == 0  # e.g. our own link was down
    answers["a@x/phone"] = GONE  # the link is back; the server says she is gone
    assert await live.check_now() == 1
    assert (pinged, closed) == (["a@x/phone", "a@x/phone"], [("a@x", "phone")])


@pytest.mark.parametrize(
    ("condition", "verdict"),
    [
        ("service-unavailable", GONE),  # Prosody 0.12 and ejabberd 23.01, for a gone full JID
        ("recipient-unavailable", GONE),
        ("item-not-found", GONE),
        ("feature-not-implemented", ALIVE),  # a client without XEP-0199 (slixmpp's answer)
        ("bad-request", ALIVE),
        ("remote-server-not-found", UNKNOWN),  # the server's own trouble says nothing
        ("remote-server-timeout", UNKNOWN),
        ("internal-server-error", UNKNOWN),
        ("resource-constraint", UNKNOWN),
        ("", UNKNOWN),  # no defined condition
    ],
)
async def test_an_error_answer_gives_its_verdict(condition, verdict):
    assert verdict_of_error(condition) is verdict


async def test_pings_are_spread_at_no_more_than_the_rate():
    live, _, pinged = checker({f"u{n}@x/r": ALIVE for n in range(5)}, max_rate=50)
    started = asyncio.get_running_loop().time()
    await live.check_now()
    assert asyncio.get_running_loop().time() - started >= 4 / 50
    assert len(pinged) == 5
