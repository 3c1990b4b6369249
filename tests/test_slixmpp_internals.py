"""What the bot relies on in slixmpp beyond its public API (bot/xmpp/slixmpp_internals.py), pinned
on the installed slixmpp: an upgrade that changes any of it fails here, not in production.

Plain ComponentXMPP streams on slixmpp's own harness (SlixTest, synchronous tests).
"""

from __future__ import annotations

import asyncio

import pytest
from slixmpp.exceptions import IqTimeout, XMPPError
from slixmpp.test import SlixTest

from bot.xmpp.slixmpp_internals import (
    SlixmppChanged,
    error_condition,
    guard_adhoc_commands,
    registered_disco_info,
    registered_disco_items,
    take_over_presence,
)

COMPONENT = "active.example.test"
COMMANDS = "http://jabber.org/protocol/commands"
SESSION_TTL = 300.0
MAX_SESSIONS = 5


def command(sender: str, action: str, sessionid: str = "", node: str = "two-steps") -> str:
    session = f' sessionid="{sessionid}"' if sessionid else ""
    return (
        f'<iq type="set" id="{action}-{sessionid or "new"}" from="{sender}" to="{COMPONENT}">'
        f'<command xmlns="{COMMANDS}" node="{node}" action="{action}"{session}/></iq>'
    )


class InternalsTest(SlixTest):
    def setUp(self) -> None:
        self.now = 1000.0  # the interval clock of command sessions; tests move it
        self.clock = lambda: self.now
        self.stream_start(
            mode="component",
            jid=COMPONENT,
            plugins=["xep_0030", "xep_0004", "xep_0050", "xep_0199"],
        )

    def tearDown(self) -> None:
        self.stream_close()

    # --- presence -------------------------------------------------------------------------

    def test_presence_goes_to_our_handler_and_never_to_the_roster(self):
        seen = []
        take_over_presence(self.xmpp, lambda presence: seen.append(str(presence["from"])))
        self.recv(f'<presence from="alice@example.test/phone" to="{COMPONENT}"/>')
        self.recv(f'<presence type="probe" from="bob@example.test/pc" to="{COMPONENT}"/>')
        assert seen == ["alice@example.test/phone", "bob@example.test/pc"]
        assert "alice@example.test" not in self.xmpp.roster[COMPONENT]
        self.send(None)  # slixmpp's roster answered no probe

    def test_without_the_handler_to_replace_it_says_slixmpp_changed(self):
        self.xmpp.remove_handler("Presence")  # as if slixmpp had renamed its handler
        with pytest.raises(SlixmppChanged, match="'Presence'"):
            take_over_presence(self.xmpp, lambda presence: None)

    # --- ad-hoc commands --------------------------------------------------------------------

    def add_two_step_command(self) -> list[str]:
        """A command that asks one question, then completes; returns who was checked."""
        checked: list[str] = []

        def check(iq) -> None:
            checked.append(f"{iq['command']['action']}:{iq['from'].bare}")
            if iq["from"].bare != "admin@example.test":
                raise XMPPError("forbidden")

        def last_step(_payload, session):
            session.update(payload=None, next=None, has_next=False)
            return session

        def first_step(_iq, session):
            session.update(payload=None, next=last_step, has_next=False)
            return session

        guard_adhoc_commands(
            self.xmpp, check, session_ttl=SESSION_TTL, max_sessions=MAX_SESSIONS, clock=self.clock
        )
        self.xmpp.plugin["xep_0050"].add_command(
            node="two-steps", name="Two steps", handler=first_step
        )
        self.xmpp.plugin["xep_0050"].add_command(
            node="one-step", name="One step", handler=lambda iq, session: last_step(None, session)
        )
        return checked

    def next_reply(self) -> str:
        self.wait_for_send_queue()
        return self.xmpp.socket.next_sent().decode()

    def test_every_step_passes_the_check_and_completed_sessions_are_dropped(self):
        checked = self.add_two_step_command()
        sessions = self.xmpp.plugin["xep_0050"].sessions
        self.recv(command("admin@example.test/desk", "execute"))
        first = self.next_reply()
        assert 'status="executing"' in first
        (sessionid,) = sessions  # in progress: kept
        self.recv(command("alice@example.test/phone", "complete", sessionid))  # a stolen id
        assert "<forbidden" in self.next_reply()
        assert sessionid in sessions
        self.recv(command("admin@example.test/desk", "complete", sessionid))
        assert 'status="completed"' in self.next_reply()
        assert len(sessions) == 0  # completed: not kept
        self.recv(command("admin@example.test/desk", "execute", node="one-step"))
        assert 'status="completed"' in self.next_reply()
        assert len(sessions) == 0  # completed at once (slixmpp alone would keep this one)
        assert checked[:-1] == [
            "execute:admin@example.test",
            "complete:alice@example.test",
            "complete:admin@example.test",
        ]

    def start_two_step_session(self) -> str:
        self.recv(command("admin@example.test/desk", "execute"))
        reply = self.next_reply()
        assert 'status="executing"' in reply
        return reply.split('sessionid="')[1].split('"')[0]

    def test_an_abandoned_session_expires_after_its_ttl(self):
        self.add_two_step_command()
        sessions = self.xmpp.plugin["xep_0050"].sessions
        first = self.start_two_step_session()
        self.now += SESSION_TTL / 2
        second = self.start_two_step_session()
        assert set(sessions) == {first, second}
        self.now += SESSION_TTL / 2  # the first one's last step was SESSION_TTL ago
        assert set(sessions) == {second}
        self.now += SESSION_TTL / 2
        assert len(sessions) == 0

    def test_a_step_renews_the_ttl_and_a_step_after_it_is_a_bad_request(self):
        self.add_two_step_command()
        sessions = self.xmpp.plugin["xep_0050"].sessions
        sessionid = self.start_two_step_session()
        self.now += SESSION_TTL - 1
        assert sessionid in sessions
        self.now += 1
        self.recv(command("admin@example.test/desk", "complete", sessionid))
        reply = self.next_reply()
        # Not the first step again (what slixmpp does with an unknown session id):
        assert 'type="error"' in reply
        assert "<bad-request" in reply
        assert f'<bad-sessionid xmlns="{COMMANDS}"' in reply
        assert "run the command again" in reply
        assert len(sessions) == 0

    def test_sessions_are_bounded_and_the_oldest_go_first(self):
        self.add_two_step_command()
        sessions = self.xmpp.plugin["xep_0050"].sessions
        started = []
        for _ in range(MAX_SESSIONS + 3):
            started.append(self.start_two_step_session())
            self.now += 1
        assert list(sessions) == started[3:]
        self.recv(command("admin@example.test/desk", "complete", started[-1]))
        assert 'status="completed"' in self.next_reply()
        assert list(sessions) == started[3:-1]

    def test_disco_items_of_registered_commands_are_readable(self):
        self.xmpp.event("session_bind", self.xmpp.boundjid)  # resets the command items
        self.wait_()
        self.add_two_step_command()
        items = registered_disco_items(self.xmpp, self.xmpp.boundjid, COMMANDS, None, None)
        assert {node for _jid, node, _name in items["items"]} == {"two-steps", "one-step"}

    def test_disco_info_of_a_registered_command_is_readable(self):
        self.xmpp.event("session_bind", self.xmpp.boundjid)
        self.wait_()
        self.add_two_step_command()
        info = registered_disco_info(self.xmpp, self.xmpp.boundjid, "two-steps", None, None)
        assert info["identities"] == {("automation", "command-node", None, "Two steps")}

    # --- keepalive ----------------------------------------------------------------------------

    def test_a_keepalive_timeout_calls_reconnect(self):
        """ActiveUsersComponent overrides `reconnect` to drop the link and let its own loop
        reconnect; that works only while slixmpp's keepalive calls `reconnect`."""
        calls = []
        self.xmpp.reconnect = lambda *args, **kwargs: calls.append(args)

        async def no_answer(*_args, **_kwargs):
            raise IqTimeout(None)

        ping = self.xmpp.plugin["xep_0199"]
        ping.ping = no_answer
        asyncio.get_event_loop().run_until_complete(ping._keepalive())
        assert len(calls) == 1


def test_error_condition_is_read_from_a_component_stream_error():
    """The workaround for slixmpp's Error plugin reading jabber:client only."""
    from slixmpp.xmlstream import ET

    iq = ET.fromstring(
        '<iq xmlns="jabber:component:accept" type="error"><error type="cancel">'
        '<service-unavailable xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">gone</text></error></iq>'
    )
    assert error_condition(iq) == "service-unavailable"
