"""The session watch without slixmpp: one state per session, confirmations within each user's
share and the total, superseded confirmations cancelled (with the ping they wait for)."""

from __future__ import annotations

import asyncio

import pytest

from bot.xmpp.liveness import Verdict
from bot.xmpp.session_watch import SessionWatch, State, WatchLimits

pytestmark = pytest.mark.asyncio

ALICE = ("alice@x", "phone")


class Server:
    """The `ask` of the watch: each full JID answers its verdict, or never ("silent")."""

    def __init__(self, answers: dict[str, Verdict | str] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[str] = []
        self.waiting = 0  # asks not answered yet (a silent client)

    async def ask(self, full_jid: str) -> Verdict:
        self.asked.append(full_jid)
        answer = self.answers.get(full_jid, "silent")
        if answer == "silent":
            self.waiting += 1
            try:
                await asyncio.Event().wait()
            finally:
                self.waiting -= 1
        return answer  # type: ignore[return-value]


def watch_of(server: Server, limits: WatchLimits | None = None, **kwargs):
    resumed: list[tuple[str, str]] = []
    refused: list[tuple[tuple[str, str], str]] = []
    watch = SessionWatch(
        server.ask,
        pings_every_session=kwargs.pop("pings_every_session", False),
        resumed=resumed.append,
        refused=lambda session, why: refused.append((session, why)),
        limits=limits or WatchLimits(followup=0.01),
        **kwargs,
    )
    return watch, resumed, refused


async def turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.02)


async def test_a_session_that_answers_twice_is_resumed_and_doubted():
    server = Server({"alice@x/phone": Verdict.ALIVE})
    watch, resumed, _ = watch_of(server)
    assert watch.unavailable(ALICE, was_online=True, can_ask=True)
    assert watch.state(ALICE) is State.CONFIRMING
    await settle()
    assert resumed == [ALICE]
    assert watch.state(ALICE) is State.DOUBTED
    assert watch.to_ping() == [ALICE]  # pinged by the rounds until the server says gone
    assert server.asked == ["alice@x/phone"] * 2
    assert watch.confirming == 0


async def test_a_gone_session_stays_ended_and_leaves_no_state():
    server = Server({"alice@x/phone": Verdict.GONE})
    watch, resumed, _ = watch_of(server)
    watch.unavailable(ALICE, was_online=True, can_ask=True)
    await settle()
    assert (resumed, watch.state(ALICE), len(watch)) == ([], None, 0)


async def test_a_new_available_cancels_the_confirmation_and_the_ping_it_waits_for():
    server = Server()  # alice's client never answers
    watch, resumed, _ = watch_of(server, WatchLimits(followup=10))
    watch.unavailable(ALICE, was_online=True, can_ask=True)
    await turns()
    assert server.waiting == 1
    watch.available(ALICE, 1000)
    await turns()
    assert server.waiting == 0  # the task and its ping are gone, not just a dict entry
    assert (watch.confirming, watch.state(ALICE), resumed) == (0, None, [])


async def test_toggles_of_one_session_cost_a_bounded_number_of_asks():
    server = Server()
    limits = WatchLimits(followup=10, user_burst=4, user_rate=1 / 30)
    watch, _, refused = watch_of(server, limits)
    for _ in range(10_000):
        watch.unavailable(ALICE, was_online=True, can_ask=True)
        await asyncio.sleep(0)
        watch.available(ALICE, 1000)
    await asyncio.sleep(0)
    assert len(server.asked) <= limits.user_burst + 1
    assert server.waiting == 0
    assert watch.confirming == 0
    assert len(refused) >= 10_000 - limits.user_burst - 1


async def test_one_users_flood_never_takes_another_users_check():
    server = Server({"victim@x/pc": Verdict.ALIVE})  # mallory's sessions never answer
    limits = WatchLimits(followup=0.05, per_user=2, total=100)
    watch, resumed, refused = watch_of(server, limits)
    for n in range(150):
        watch.unavailable(("mallory@x", f"r{n}"), was_online=True, can_ask=True)
    assert watch.confirming == limits.per_user
    assert watch.unavailable(("victim@x", "pc"), was_online=True, can_ask=True)
    await settle()
    await asyncio.sleep(0.1)
    assert resumed == [("victim@x", "pc")]
    assert {why for _, why in refused} == {"its user has too many confirmations at once"}


async def test_the_total_is_a_cap_whoever_asks():
    server = Server()
    limits = WatchLimits(followup=10, per_user=2, total=5)
    watch, _, refused = watch_of(server, limits)
    for n in range(10):
        watch.unavailable((f"u{n}@x", "r"), was_online=True, can_ask=True)
    assert watch.confirming == 5
    assert [why for _, why in refused] == ["too many confirmations at once"] * 5
    for task in watch.cancel_all():
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_nothing_is_asked_for_a_session_that_was_not_online_or_with_the_link_down():
    server = Server()
    watch, _, _ = watch_of(server)
    assert not watch.unavailable(ALICE, was_online=False, can_ask=True)
    assert not watch.unavailable(ALICE, was_online=True, can_ask=False)
    assert server.asked == []


async def test_queries_are_side_effect_free_and_prune_is_the_rounds_one_pass():
    watch, _, _ = watch_of(Server(), pings_every_session=True)
    for n in range(5):
        watch.available((f"u{n}@x", "r"), 1000 + n)
    assert watch.to_ping() == [(f"u{n}@x", "r") for n in range(5)]
    assert watch.is_pinged(("u0@x", "r"))
    assert not watch.is_pinged(("nobody@x", "r"))
    assert len(watch) == 5  # asking changed nothing
    assert watch.prune(lambda session: session[0] != "u3@x") == 1
    assert ("u3@x", "r") not in watch.to_ping()
    assert watch.gone(("u1@x", "r")) == 1001  # closed at its last sign of life
    assert watch.state(("u1@x", "r")) is None


async def test_a_fault_in_a_confirmation_is_reported_and_the_unavailable_stands():
    async def broken(_jid: str) -> Verdict:
        raise RuntimeError("a bug of ours")

    faults: list[Exception] = []
    resumed: list[tuple[str, str]] = []
    watch = SessionWatch(
        broken,
        pings_every_session=False,
        resumed=resumed.append,
        fault=faults.append,
        limits=WatchLimits(followup=0.01),
    )
    watch.unavailable(ALICE, was_online=True, can_ask=True)
    await settle()
    assert [str(f) for f in faults] == ["a bug of ours"]
    assert (resumed, watch.confirming, watch.state(ALICE)) == ([], 0, None)
