"""An ad-hoc command session is forgotten COMMAND_SESSION_TTL seconds after its *last step*, not
after its start: each step renews it. Seen at the component's edge (slixmpp's SlixTest harness
in component mode), with a command of three steps registered through slixmpp's public
`add_command` (the bot's own commands have one form at most, so their sessions never see a step
that keeps them open); the interval clock is the harness's `monotonic_now`.
"""

from __future__ import annotations

from typing import Any

from bot.xmpp.admin_commands import COMMAND_SESSION_TTL

from .support import COMPONENT, ComponentHarness

ADMIN_DESK = "admin@example.test/desk"
NODE = "three-steps"


def step(sessionid: str = "", action: str = "execute") -> str:
    session = f' sessionid="{sessionid}"' if sessionid else ""
    return (
        f'<iq type="set" id="{action}-{sessionid}" from="{ADMIN_DESK}" to="{COMPONENT}">'
        f'<command xmlns="http://jabber.org/protocol/commands" node="{NODE}" '
        f'action="{action}"{session}/></iq>'
    )


class AdhocSessionTtlTest(ComponentHarness):
    def setUp(self) -> None:
        super().setUp()

        def third(_payload: Any, session: dict[str, Any]) -> dict[str, Any]:
            session.update(payload=None, next=None, has_next=False, notes=[("info", "done")])
            return session

        def second(_payload: Any, session: dict[str, Any]) -> dict[str, Any]:
            session.update(payload=None, next=third, has_next=True)
            return session

        def first(_iq: Any, session: dict[str, Any]) -> dict[str, Any]:
            session.update(payload=None, next=second, has_next=True)
            return session

        self.xmpp.plugin["xep_0050"].add_command(
            jid=COMPONENT, node=NODE, name="Three steps", handler=first
        )
        self.wait_()

    def reply(self) -> str:
        self.wait_for_send_queue()
        return self.xmpp.socket.next_sent().decode()

    def start(self) -> str:
        self.recv(step())
        reply = self.reply()
        assert 'status="executing"' in reply, reply
        return reply.split('sessionid="')[1].split('"')[0]

    def next_step(self, sessionid: str) -> str:
        self.recv(step(sessionid, "next"))
        return self.reply()

    def test_each_step_renews_the_session(self):
        sessionid = self.start()
        self.monotonic_now += COMMAND_SESSION_TTL - 1
        assert 'status="executing"' in self.next_step(sessionid)  # the 2nd step, in time
        # Nearly two TTLs since the start, but one second less than a TTL since the last step.
        self.monotonic_now += COMMAND_SESSION_TTL - 1
        reply = self.next_step(sessionid)
        assert 'status="completed"' in reply, reply
        assert "done" in reply

    def test_a_session_is_over_exactly_one_ttl_after_its_last_step(self):
        sessionid = self.start()
        self.monotonic_now += COMMAND_SESSION_TTL / 2
        assert 'status="executing"' in self.next_step(sessionid)
        self.monotonic_now += COMMAND_SESSION_TTL  # exactly a TTL since the last step
        reply = self.next_step(sessionid)
        assert 'type="error"' in reply, reply
        assert "<bad-request" in reply
        assert "This command session is over" in reply
        assert "completed" not in reply

    def test_a_session_one_second_inside_its_ttl_goes_on(self):
        sessionid = self.start()
        self.monotonic_now += COMMAND_SESSION_TTL / 2
        assert 'status="executing"' in self.next_step(sessionid)
        self.monotonic_now += COMMAND_SESSION_TTL - 1
        assert 'status="completed"' in self.next_step(sessionid)

    def test_a_session_without_a_step_is_over_one_ttl_after_its_start(self):
        sessionid = self.start()
        self.monotonic_now += COMMAND_SESSION_TTL
        assert "This command session is over" in self.next_step(sessionid)

    def test_a_renewed_session_never_keeps_an_older_one_alive(self):
        """Sessions are forgotten in the order of their last steps: the one renewed goes to the
        back, so the one that had no step since expires on time."""
        renewed = self.start()
        self.monotonic_now += 10
        idle = self.start()
        self.monotonic_now += 10
        assert 'status="executing"' in self.next_step(renewed)
        self.monotonic_now += COMMAND_SESSION_TTL - 10  # idle: a TTL since its start
        assert "This command session is over" in self.next_step(idle)
        assert 'status="completed"' in self.next_step(renewed)
