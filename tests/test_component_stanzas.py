"""Stanza edge cases at the component's edge, with slixmpp's own test harness (SlixTest).

SlixTest drives its own event loop, so these tests are plain synchronous methods. The component
(ComponentHarness, support.py) is built exactly as `SlixTest.stream_start(mode="component")`
builds a plain ComponentXMPP.
"""

from __future__ import annotations

import logging

from bot.admin.commands import (
    ADHOC_CLIENTS_NODE,
    ADHOC_FORGET_NODE,
    ADHOC_HISTORY_NODE,
    ADHOC_STATS_NODE,
    CHAT_REFUSED,
    CommandSet,
)
from bot.admin.figures import PLAIN_STATUS
from bot.xmpp.admin_commands import COMMAND_SESSION_TTL, MAX_COMMAND_SESSIONS

from .support import COMPONENT, T0, ComponentHarness


class ComponentStanzaTest(ComponentHarness):
    def test_available_and_unavailable_per_full_jid(self):
        self.recv('<presence from="alice@example.test/phone" to="active.example.test"/>')
        self.recv(
            '<presence from="alice@example.test/pc" to="active.example.test">'
            "<show>away</show></presence>"
        )
        assert self.online() == {("alice@example.test", "phone"), ("alice@example.test", "pc")}
        self.recv(
            '<presence type="unavailable" from="alice@example.test/pc" to="active.example.test"/>'
        )
        assert self.online() == {("alice@example.test", "phone")}

    def test_ignored_presences_never_count(self):
        for stanza in (
            '<presence type="error" from="alice@example.test/r"><error type="cancel"/></presence>',
            '<presence type="subscribed" from="alice@example.test"/>',
            '<presence type="unsubscribe" from="alice@example.test"/>',
            '<presence from="room@conference.example.test/nick"/>',
            '<presence from="bob@elsewhere.org/pc"/>',
            '<presence from="active.example.test"/>',
            '<presence from="example.test"/>',
            '<presence type="bogus" from="alice@example.test/phone"/>',
        ):
            self.recv(stanza)
        assert self.online() == set()
        assert self.tracker.counts(T0).known_users == 0

    def test_invalid_or_missing_from_is_ignored_without_crashing(self):
        self.recv('<presence from="not a jid@@/x" to="active.example.test"/>')
        self.recv('<presence to="active.example.test"/>')
        self.recv('<presence from="' + "a" * 2000 + '@example.test/r"/>')  # over the JID limits
        self.recv('<presence from="alice@example.test/' + "r" * 1000 + '"/>')  # a long resource
        assert self.tracker.counts(T0).online_sessions == 1

    def test_probe_from_a_user_is_answered_with_our_presence(self):
        self.recv(
            '<presence type="probe" from="alice@example.test/phone" to="active.example.test"/>'
        )
        self.send(
            '<presence from="active.example.test/bot" to="alice@example.test/phone">'
            f"<status>{PLAIN_STATUS}</status></presence>",
            method="exact",
            use_values=False,
        )

    def test_subscription_fallback_is_accepted_and_returned(self):
        self.recv('<presence type="subscribe" from="alice@example.test" to="active.example.test"/>')
        self.send(
            '<presence from="active.example.test" to="alice@example.test" type="subscribed"/>',
            use_values=False,
        )
        self.send(
            '<presence from="active.example.test" to="alice@example.test" type="subscribe"/>',
            use_values=False,
        )
        self.send(
            '<presence from="active.example.test/bot" to="alice@example.test">'
            f"<status>{PLAIN_STATUS}</status></presence>",
            use_values=False,
        )

    def test_subscription_from_another_domain_is_refused(self):
        self.recv('<presence type="subscribe" from="eve@elsewhere.org" to="active.example.test"/>')
        self.send(
            '<presence from="active.example.test" to="eve@elsewhere.org" type="unsubscribed"/>',
            use_values=False,
        )

    def test_non_admin_command_is_forbidden_at_any_step(self):
        for action in ("execute", "next", "complete", "cancel"):
            self.recv(
                f'<iq type="set" id="c-{action}" from="alice@example.test/phone" to="{COMPONENT}">'
                f'<command xmlns="http://jabber.org/protocol/commands" node="active-users" '
                f'action="{action}" sessionid="any"/></iq>'
            )
            # slixmpp puts <error/> in jabber:client even on a component stream; Prosody
            # relays it as is (the real-Prosody test sees "forbidden").
            self.send(
                f'<iq type="error" id="c-{action}" from="{COMPONENT}" '
                'to="alice@example.test/phone"><error xmlns="jabber:client" type="auth">'
                '<forbidden xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
                '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">'
                "Only the administrators of this service may ask.</text></error></iq>",
                use_values=False,
            )

    def test_completed_command_sessions_are_not_kept(self):
        self.recv(
            f'<iq type="set" id="c1" from="admin@example.test/desk" to="{COMPONENT}">'
            '<command xmlns="http://jabber.org/protocol/commands" node="active-users" '
            'action="execute"/></iq>'
        )
        self.wait_for_send_queue()
        reply = self.xmpp.socket.next_sent().decode()
        assert 'status="completed"' in reply
        assert '<field var="dau"' in reply
        assert len(self.xmpp.plugin["xep_0050"].sessions) == 0

    def test_chat_from_non_admin_is_refused_and_error_messages_get_nothing(self):
        self.recv(
            '<message type="error" from="alice@example.test/phone"><body>stats</body></message>'
        )
        self.recv(
            '<message type="groupchat" from="room@muc.example.test/x"><body>stats</body></message>'
        )
        self.recv(
            '<message type="chat" from="alice@example.test/phone"><body>stats</body></message>'
        )
        self.send(
            f'<message type="chat" to="alice@example.test/phone">'
            f"<body>{CHAT_REFUSED}</body></message>",
            use_values=False,
        )

    def test_missing_presence_permission_is_one_clear_warning(self):
        with self.assertLogs("bot.component", logging.WARNING) as logs:
            self.xmpp.event("session_start")
            self.recv(
                '<message from="example.test" to="active.example.test">'
                '<privilege xmlns="urn:xmpp:privilege:2"><perm access="roster" type="get"/>'
                "</privilege></message>"
            )
            self.wait_(0.2)
        (warning,) = logs.output
        assert "No presence permission from example.test (got none)" in warning
        assert (
            'privileged_entities = { ["active.example.test"] = { presence = "managed_entity" } }'
            in warning
        )

    def test_privilege_v1_advertisement_is_understood(self):
        with self.assertLogs("bot.component", logging.INFO) as logs:
            self.recv(
                '<message from="example.test" to="active.example.test">'
                '<privilege xmlns="urn:xmpp:privilege:1">'
                '<perm access="presence" type="managed_entity"/></privilege></message>'
            )
        text = "\n".join(logs.output)
        assert (
            "Privileges granted by example.test (urn:xmpp:privilege:1): presence=managed_entity"
            in text
        )
        assert "older urn:xmpp:privilege:1" in text

    def test_chat_flood_from_one_sender_is_cut_without_blocking_others(self):
        for _ in range(20):
            self.recv('<message type="chat" from="eve@example.test/x"><body>stats</body></message>')
        self.wait_for_send_queue()
        replies = 0
        while self.xmpp.socket.next_sent() is not None:
            replies += 1
        assert replies == 5  # the burst; the clock stands still, so no token comes back
        self.monotonic_now += 1.9
        self.recv('<message type="chat" from="eve@example.test/x"><body>stats</body></message>')
        self.wait_for_send_queue()
        assert self.xmpp.socket.next_sent() is None
        self.monotonic_now += 0.1  # 2 seconds: one more reply
        self.recv('<message type="chat" from="eve@example.test/x"><body>stats</body></message>')
        self.wait_for_send_queue()
        assert self.xmpp.socket.next_sent() is not None
        self.recv('<message type="chat" from="admin@example.test/desk"><body>help</body></message>')
        self.wait_for_send_queue()
        reply = self.xmpp.socket.next_sent()
        assert reply is not None
        assert b"I count the active users" in reply


def command(sender: str, node: str, action: str = "execute", sessionid: str = "", form=None):
    """An ad-hoc command stanza; `form`: the values of a submitted data form."""
    session = f' sessionid="{sessionid}"' if sessionid else ""
    fields = "".join(
        f'<field var="{var}"><value>{value}</value></field>' for var, value in (form or {}).items()
    )
    payload = f'<x xmlns="jabber:x:data" type="submit">{fields}</x>' if form is not None else ""
    return (
        f'<iq type="set" id="{node}-{action}" from="{sender}" to="{COMPONENT}">'
        f'<command xmlns="http://jabber.org/protocol/commands" node="{node}" '
        f'action="{action}"{session}>{payload}</command></iq>'
    )


ADMIN_DESK = "admin@example.test/desk"


class AdhocSessionsTest(ComponentHarness):
    """Command sessions left half-way are forgotten: none outlives its TTL, few are kept, and
    a step answered with an error ends its session."""

    def sessions(self):
        return self.xmpp.plugin["xep_0050"].sessions

    def reply(self) -> str:
        self.wait_for_send_queue()
        return self.xmpp.socket.next_sent().decode()

    def open_history(self) -> str:
        self.recv(command(ADMIN_DESK, ADHOC_HISTORY_NODE))
        reply = self.reply()
        assert 'status="executing"' in reply
        return reply.split('sessionid="')[1].split('"')[0]

    def test_abandoned_history_commands_expire(self):
        for _ in range(50):
            self.open_history()
        assert len(self.sessions()) == 50
        self.monotonic_now += COMMAND_SESSION_TTL
        assert len(self.sessions()) == 0

    def test_abandoned_commands_are_bounded_and_the_oldest_go_first(self):
        opened = [self.open_history() for _ in range(MAX_COMMAND_SESSIONS + 20)]
        assert list(self.sessions()) == opened[20:]

    def test_a_step_that_fails_validation_ends_its_session(self):
        for action in ("complete", "next", "execute"):
            sessionid = self.open_history()
            self.recv(command(ADMIN_DESK, ADHOC_HISTORY_NODE, action, sessionid, {"days": "0"}))
            reply = self.reply()
            assert "<bad-request" in reply
            assert "the number of days must be 1 to 366" in reply
            assert len(self.sessions()) == 0, action

    def test_a_step_that_fails_on_our_side_ends_its_session(self):
        async def broken(_days):
            raise RuntimeError("a bug of ours")

        self.xmpp.commands = CommandSet(
            admins=self.xmpp.commands.admins, figures=self.xmpp.commands.figures, history=broken
        )
        sessionid = self.open_history()
        with self.assertLogs("bot.component", logging.ERROR):
            self.recv(command(ADMIN_DESK, ADHOC_HISTORY_NODE, "complete", sessionid, {"days": "3"}))
            assert "<internal-server-error" in self.reply()
        assert len(self.sessions()) == 0

    def test_a_forget_step_with_a_bad_jid_ends_its_session(self):
        self.recv(command(ADMIN_DESK, ADHOC_FORGET_NODE))
        sessionid = self.reply().split('sessionid="')[1].split('"')[0]
        self.recv(command(ADMIN_DESK, ADHOC_FORGET_NODE, "complete", sessionid, {"jid": "a@@b"}))
        assert "<bad-request" in self.reply()
        assert len(self.sessions()) == 0

    def test_history_days_in_other_digits_or_thousands_of_them_get_a_clear_error(self):
        for days, shown in (
            ("5" * 5000, "... (5000 characters)"),
            ("\u0663", "not &apos;\u0663&apos;"),
        ):
            sessionid = self.open_history()
            self.recv(
                command(ADMIN_DESK, ADHOC_HISTORY_NODE, "complete", sessionid, {"days": days})
            )
            reply = self.reply()
            assert "<bad-request" in reply
            assert "the number of days must be 1 to 366, in digits 0-9, not" in reply
            assert shown in reply
            assert "Exceeds the limit" not in reply
            assert len(reply) < 1000


class PrivilegesTest(ComponentHarness):
    """XEP-0356 privileges come from the server; a <privilege/> from anyone else is ignored
    without a word at INFO level."""

    def advertise(self, sender: str) -> None:
        self.recv(
            f'<message from="{sender}" to="{COMPONENT}">'
            '<privilege xmlns="urn:xmpp:privilege:2">'
            '<perm access="presence" type="managed_entity"/></privilege></message>'
        )

    def test_only_the_server_grants_privileges(self):
        senders = ["alice@example.test/phone", "eve@elsewhere.org", "elsewhere.org"]
        senders += ["example.test/res", "sub.example.test", "alice@example.test"]
        with self.assertNoLogs("bot.component", logging.INFO):
            for sender in senders * 100:
                self.advertise(sender)
        assert self.xmpp.privileges == {}
        with self.assertLogs("bot.component", logging.INFO) as logs:
            self.advertise("example.test")
        assert self.xmpp.privileges == {"example.test": {"presence": "managed_entity"}}
        assert logs.output == [
            "INFO:bot.component:Privileges granted by example.test (urn:xmpp:privilege:2): "
            "presence=managed_entity"
        ]

    def test_ignored_advertisements_are_logged_at_debug_at_a_bounded_rate(self):
        with self.assertLogs("bot.component", logging.DEBUG) as logs:
            for i in range(1000):
                self.advertise(f"u{i}@elsewhere.org")
        assert len(logs.output) == 10  # the first 10 senders of the period; the rest counted
        assert all("ignored: only example.test grant" in line for line in logs.output)
        self.monotonic_now += 600
        with self.assertLogs("bot.component", logging.DEBUG) as logs:
            self.advertise("eve@elsewhere.org")
        assert "990 more privilege advertisements ignored in the last 10 minutes" in logs.output[0]


class CommandNodesTest(ComponentHarness):
    """To a non-admin, the commands' nodes do not exist; refusals are logged boundedly."""

    def disco(self, sender: str, kind: str, node: str) -> str:
        self.recv(
            f'<iq type="get" id="d1" from="{sender}" to="{COMPONENT}">'
            f'<query xmlns="http://jabber.org/protocol/disco#{kind}" node="{node}"/></iq>'
        )
        self.wait_for_send_queue()
        return self.xmpp.socket.next_sent().decode()

    def test_non_admins_get_for_a_command_node_what_they_get_for_an_unknown_node(self):
        for kind in ("info", "items"):
            unknown = self.disco("alice@example.test/phone", kind, "no-such-node")
            assert "<item-not-found" in unknown
            for node in (
                ADHOC_STATS_NODE,
                ADHOC_CLIENTS_NODE,
                ADHOC_HISTORY_NODE,
                ADHOC_FORGET_NODE,
            ):
                answer = self.disco("alice@example.test/phone", kind, node)
                assert answer == unknown.replace("no-such-node", node), (kind, node)

    def test_admins_get_the_command_nodes(self):
        answer = self.disco(ADMIN_DESK, "info", ADHOC_HISTORY_NODE)
        assert 'type="result"' in answer
        assert 'category="automation" type="command-node" name="Activity history"' in answer
        assert 'type="result"' in self.disco(ADMIN_DESK, "items", ADHOC_STATS_NODE)

    def test_refusals_are_logged_once_per_sender_then_summed_up_per_period(self):
        with self.assertLogs("bot.component", logging.INFO) as logs:
            for i in range(840):
                self.recv(command("alice@example.test/phone", ADHOC_STATS_NODE, sessionid=str(i)))
            self.recv(command("bob@example.test/pc", ADHOC_STATS_NODE))
        assert logs.output == [
            "INFO:bot.component:Ad-hoc command 'active-users' refused to alice@example.test/phone",
            "INFO:bot.component:Ad-hoc command 'active-users' refused to bob@example.test/pc",
        ]
        self.wait_for_send_queue()
        refusals = 0
        while (stanza := self.xmpp.socket.next_sent()) is not None:
            assert b"<forbidden" in stanza
            refusals += 1
        assert refusals == 841  # every probe still answered forbidden
        self.monotonic_now += 600
        with self.assertLogs("bot.component", logging.INFO) as logs:
            self.recv(command("alice@example.test/phone", ADHOC_STATS_NODE))
        assert logs.output[0] == (
            "INFO:bot.component:839 more refused requests in the last 10 minutes "
            "(only the first of each sender is logged)"
        )


class OurFaultsStayOursTest(ComponentHarness):
    """A fault of the bot never reaches a user's client as an error stanza; it is logged once."""

    def test_a_damaged_stored_record_is_set_aside_and_the_user_tracked_afresh(self):
        self.store._db[b"user:alice@example.test"] = b"\x00 not a record"
        with self.assertLogs("bot.store", logging.ERROR) as logs:
            self.recv('<presence from="alice@example.test/phone" to="active.example.test"/>')
            self.recv('<presence from="alice@example.test/pc" to="active.example.test"/>')
        assert self.sent() == []  # no <presence type="error"/> to alice's client
        assert self.online() == {("alice@example.test", "phone"), ("alice@example.test", "pc")}
        assert len(logs.output) == 1
        assert "set aside as 'damaged:user:alice@example.test'" in logs.output[0]

    def test_an_internal_error_sends_nothing_to_the_user_and_is_logged_once(self):
        def broken(*_args):
            raise RuntimeError("a bug of ours")

        self.tracker.session_started = broken
        with self.assertLogs("bot.component", logging.ERROR) as logs:
            for resource in ("phone", "pc", "tablet"):
                self.recv(
                    f'<presence from="alice@example.test/{resource}" to="active.example.test"/>'
                )
        assert self.sent() == []
        assert len(logs.output) == 1
        assert "handling a presence (logged once per 10 minutes)" in logs.output[0]
        assert "RuntimeError: a bug of ours" in logs.output[0]
        assert self.xmpp.internal_errors[("presence", "RuntimeError")] == 3

    def test_a_failing_command_answers_internal_server_error_without_details(self):
        def broken():
            raise RuntimeError("a bug of ours")

        self.xmpp.commands = self.xmpp.commands.__class__(
            admins=self.xmpp.commands.admins, figures=broken
        )
        with self.assertLogs("bot.component", logging.ERROR):
            self.recv(
                f'<iq type="set" id="c1" from="admin@example.test/desk" to="{COMPONENT}">'
                '<command xmlns="http://jabber.org/protocol/commands" node="active-users" '
                'action="execute"/></iq>'
            )
            (reply,) = self.sent()
        assert "<internal-server-error" in reply
        assert "its log says why" in reply
        assert "a bug of ours" not in reply
        assert "got into trouble" not in reply
