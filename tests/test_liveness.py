"""Liveness checks decide from ping answers; pacing keeps within the rate; unknown is not gone."""

from __future__ import annotations

import asyncio

import pytest

from bot.liveness import LivenessChecker, LivenessSettings

pytestmark = pytest.mark.asyncio


def checker(answers: dict[str, bool | None], **settings):
    online = {tuple(jid.split("/")) for jid in answers}
    closed: list[tuple[str, str]] = []
    pinged: list[str] = []

    async def ping(full_jid: str) -> bool | None:
        pinged.append(full_jid)
        answer = answers[full_jid]
        if answer == "silent":
            await asyncio.sleep(3600)
        return answer

    def gone(session):
        closed.append(session)
        online.discard(session)

    live = LivenessChecker(
        LivenessSettings(**{"interval": 10, "timeout": 0.05, "max_rate": 1000} | settings),
        lambda: set(online),
        ping,
        gone,
    )
    return live, closed, pinged


async def test_answer_keeps_a_session_and_no_answer_or_gone_closes_it():
    live, closed, pinged = checker(
        {"a@x/alive": True, "b@x/gone": False, "c@x/silent": "silent", "d@x/offline": None}
    )
    assert await live.check_now() == 2
    assert sorted(closed) == [("b@x", "gone"), ("c@x", "silent")]
    assert len(pinged) == 4  # "cannot tell" (not connected) closes nothing


async def test_pings_are_spread_at_no_more_than_the_rate():
    live, _, pinged = checker({f"u{n}@x/r": True for n in range(5)}, max_rate=50)
    started = asyncio.get_running_loop().time()
    await live.check_now()
    assert asyncio.get_running_loop().time() - started >= 4 / 50
    assert len(pinged) == 5
