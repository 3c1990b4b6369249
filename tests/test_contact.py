"""The bot as a contact: the status line it shows (figures for admins, a plain line for anyone
else), whom it sends its presence to and when, its disco identity and its software version.

The rules in plain Python first, then the stanzas at the component's edge (SlixTest). The same
through a real Prosody with real clients: test_prosody_contact.py.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

from bot.admin.commands import CHAT_REFUSED, CommandSet
from bot.admin.figures import PLAIN_STATUS, Figures, figures_status
from bot.core.counter import DAY, ActivityIndex, Counts
from bot.core.model import UserRecord
from bot.xmpp.contact import PRESENCE_RESOURCE, ContactPresence, OwnPresence, software_version
from bot.xmpp.contact_stanzas import SENDER_BURST

from .support import COMPONENT, T0, ComponentHarness

OWN = f"{COMPONENT}/{PRESENCE_RESOURCE}"  # the bot's own presence: from a resource (contact.py)

NOW = 1_800_000_000
ADMINS = frozenset({"admin@a.test", "boss@elsewhere.test"})


def counts(active: dict[int, int], online: int = 37) -> Counts:
    return Counts(
        computed_at=NOW, active=active, online_users=online, online_sessions=online, known_users=0
    )


def big_figures() -> Figures:
    total = counts({DAY: 412, 7 * DAY: 1950, 30 * DAY: 3870})
    return Figures(total=total, by_domain={"a.test": total})


def commands_with(figures=big_figures) -> CommandSet:
    return CommandSet(admins=ADMINS, figures=figures)


# --- the status line ------------------------------------------------------------------------


def test_the_figures_status_names_dau_wau_mau_with_thousands_separators():
    assert figures_status(big_figures().total) == "DAU 412 · WAU 1,950 · MAU 3,870 · 37 online"


def test_other_windows_are_named_by_their_short_name():
    line = figures_status(counts({DAY: 5, 90 * DAY: 12_345, 12 * 3600: 2}, online=1_200))
    assert line == "DAU 5 · 90d 12,345 · 12h 2 · 1,200 online"


def test_the_figures_status_of_real_counts():
    index = ActivityIndex.build(
        [UserRecord(NOW - 40 * DAY, NOW - 60, 0, ("phone",)), UserRecord(NOW, NOW - 3 * DAY, 0)]
    )
    assert figures_status(index.counts(NOW)) == "DAU 1 · WAU 2 · MAU 2 · 1 online"


def test_admins_get_the_figures_and_anyone_else_the_plain_status():
    commands = commands_with()
    assert commands.presence_status("admin@a.test") == "DAU 412 · WAU 1,950 · MAU 3,870 · 37 online"
    assert commands.presence_status("boss@elsewhere.test").startswith("DAU 412")
    for outsider in ("alice@a.test", "a.test", "admin@a.test.evil", ""):
        assert commands.presence_status(outsider) == PLAIN_STATUS


def test_the_plain_status_is_made_without_the_figures():
    def no_figures() -> Figures:
        raise AssertionError("the figures were computed for a non-admin")

    assert commands_with(no_figures).presence_status("alice@a.test") == PLAIN_STATUS
    assert not re.search(r"[0-9]", PLAIN_STATUS)


def test_only_an_admins_stats_message_asks_for_the_figures():
    commands = commands_with()
    assert commands.asks_for_figures("admin@a.test", "  Stats ")
    assert not commands.asks_for_figures("admin@a.test", "history 7")
    assert not commands.asks_for_figures("admin@a.test", "statistics")
    assert not commands.asks_for_figures("alice@a.test", "stats")


# --- whom the bot sends its presence to -------------------------------------------------------


def test_a_probe_or_subscription_is_answered_with_the_status_for_that_sender():
    contact = ContactPresence(commands_with())
    assert contact.answer("admin@a.test/desk") == OwnPresence(
        "admin@a.test/desk", "DAU 412 · WAU 1,950 · MAU 3,870 · 37 online"
    )
    assert contact.answer("alice@a.test/phone") == OwnPresence("alice@a.test/phone", PLAIN_STATUS)


def test_after_a_count_only_the_admins_get_a_presence():
    contact = ContactPresence(commands_with())
    for user in range(10_000):  # the presence fallback: every user subscribed and probed
        contact.answer(f"user{user}@a.test/phone")
    status = "DAU 412 · WAU 1,950 · MAU 3,870 · 37 online"
    assert contact.refresh() == [
        OwnPresence("admin@a.test", status),
        OwnPresence("boss@elsewhere.test", status),
    ]


def test_an_admin_who_removes_the_bot_gets_no_more_refreshes_until_adding_it_again():
    contact = ContactPresence(commands_with())
    assert contact.unsubscribed("admin@a.test") == OwnPresence("admin@a.test", None)
    assert [p.to for p in contact.refresh()] == ["boss@elsewhere.test"]
    assert [p.to for p in contact.goodbye()] == ["boss@elsewhere.test"]
    contact.answer("admin@a.test/desk")  # their client probed, or they subscribed again
    assert [p.to for p in contact.refresh()] == ["admin@a.test", "boss@elsewhere.test"]


def test_a_non_admin_who_removes_the_bot_changes_nothing():
    contact = ContactPresence(commands_with())
    for user in range(1_000):
        assert contact.unsubscribed(f"user{user}@a.test") is None
    assert [p.to for p in contact.refresh()] == ["admin@a.test", "boss@elsewhere.test"]


def test_goodbye_is_unavailable_to_the_admins_only():
    contact = ContactPresence(commands_with())
    contact.answer("alice@a.test/phone")
    assert contact.goodbye() == [
        OwnPresence("admin@a.test", None),
        OwnPresence("boss@elsewhere.test", None),
    ]


def test_the_software_version_is_the_packages():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert software_version() == pyproject["project"]["version"]


# --- at the component's edge (SlixTest) -------------------------------------------------------

ADMIN_STATUS = "DAU 1 · WAU 1 · MAU 1 · 1 online"  # alice online, in the harness's figures


class ContactStanzaTest(ComponentHarness):
    def setUp(self) -> None:
        super().setUp()
        self.recv(f'<presence from="alice@example.test/phone" to="{COMPONENT}"/>')
        assert self.tracker.counts(T0).online_users == 1

    def test_a_probe_from_an_admin_gets_the_figures(self):
        self.recv(f'<presence type="probe" from="admin@example.test/desk" to="{COMPONENT}"/>')
        self.send(
            f'<presence from="{OWN}" to="admin@example.test/desk">'
            f"<status>{ADMIN_STATUS}</status></presence>",
            use_values=False,
        )

    def test_a_probe_from_a_user_gets_the_plain_status(self):
        self.recv(f'<presence type="probe" from="bob@example.test/pc" to="{COMPONENT}"/>')
        self.send(
            f'<presence from="{OWN}" to="bob@example.test/pc">'
            f"<status>{PLAIN_STATUS}</status></presence>",
            use_values=False,
        )

    def test_a_probe_from_a_stranger_gets_nothing(self):
        self.recv(f'<presence type="probe" from="eve@elsewhere.org/x" to="{COMPONENT}"/>')
        self.send(None)

    def test_an_admin_who_subscribes_gets_the_figures(self):
        self.recv(f'<presence type="subscribe" from="admin@example.test" to="{COMPONENT}"/>')
        for stanza in (
            f'<presence from="{COMPONENT}" to="admin@example.test" type="subscribed"/>',
            f'<presence from="{COMPONENT}" to="admin@example.test" type="subscribe"/>',
            f'<presence from="{OWN}" to="admin@example.test">'
            f"<status>{ADMIN_STATUS}</status></presence>",
        ):
            self.send(stanza, use_values=False)

    def test_an_admin_of_another_domain_may_add_the_bot_and_is_not_subscribed_back(self):
        self.xmpp.commands = CommandSet(
            admins=frozenset({"boss@elsewhere.org"}), figures=self.xmpp.commands.figures
        )
        self.xmpp.contacts.contact = ContactPresence(self.xmpp.commands)
        self.recv(f'<presence type="subscribe" from="boss@elsewhere.org" to="{COMPONENT}"/>')
        self.send(
            f'<presence from="{COMPONENT}" to="boss@elsewhere.org" type="subscribed"/>',
            use_values=False,
        )
        self.send(
            f'<presence from="{OWN}" to="boss@elsewhere.org">'
            f"<status>{ADMIN_STATUS}</status></presence>",
            use_values=False,
        )
        self.send(None)

    def test_after_a_count_only_the_admin_gets_a_presence(self):
        self.recv(f'<presence type="probe" from="bob@example.test/pc" to="{COMPONENT}"/>')
        self.send(
            f'<presence from="{OWN}" to="bob@example.test/pc">'
            f"<status>{PLAIN_STATUS}</status></presence>",
            use_values=False,
        )
        self.xmpp.connection.connected_since = T0
        self.xmpp.refresh_contacts()
        self.send(
            f'<presence from="{OWN}" to="admin@example.test">'
            f"<status>{ADMIN_STATUS}</status></presence>",
            use_values=False,
        )
        self.send(None)

    def test_no_refresh_is_queued_while_disconnected(self):
        assert self.xmpp.connected_since is None
        self.xmpp.refresh_contacts()
        self.xmpp.leave_contacts()
        self.send(None)

    def test_an_admin_who_unsubscribes_sees_the_bot_offline(self):
        self.recv(f'<presence type="unsubscribe" from="admin@example.test" to="{COMPONENT}"/>')
        self.send(
            f'<presence from="{OWN}" to="admin@example.test" type="unavailable"/>',
            use_values=False,
        )
        self.xmpp.connection.connected_since = T0
        self.xmpp.refresh_contacts()
        self.send(None)

    def test_an_admin_asking_by_chat_refreshes_the_admins_contact_list(self):
        self.xmpp.connection.connected_since = T0
        self.recv(
            f'<message type="chat" from="admin@example.test/desk" to="{COMPONENT}">'
            "<body>stats</body></message>"
        )
        reply = self.xmpp.loop.run_until_complete(
            self.xmpp.commands.chat_answer("admin@example.test", "stats")
        )
        assert reply.startswith("Active users: 1 (24 hours)")
        self.send(
            f'<message type="chat" from="{COMPONENT}" to="admin@example.test/desk">'
            f"<body>{reply}</body></message>",
            use_values=False,
        )
        self.send(
            f'<presence from="{OWN}" to="admin@example.test">'
            f"<status>{ADMIN_STATUS}</status></presence>",
            use_values=False,
        )

    def test_a_users_chat_refreshes_nothing(self):
        self.xmpp.connection.connected_since = T0
        self.recv(
            f'<message type="chat" from="alice@example.test/phone" to="{COMPONENT}">'
            "<body>stats</body></message>"
        )
        self.send(
            f'<message type="chat" from="{COMPONENT}" to="alice@example.test/phone">'
            f"<body>{CHAT_REFUSED}</body>"
            "</message>",
            use_values=False,
        )
        self.send(None)

    def test_disco_info_gives_the_identities_and_features(self):
        self.recv(
            f'<iq type="get" id="d1" from="alice@example.test/phone" to="{COMPONENT}">'
            '<query xmlns="http://jabber.org/protocol/disco#info"/></iq>'
        )
        self.wait_for_send_queue()
        reply = self.xmpp.socket.next_sent(timeout=2).decode()
        assert '<identity category="component" type="stats" name="Active users"' in reply
        assert '<identity category="client" type="bot" name="Active users"' in reply
        for feature in (
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/commands",
            "jabber:iq:version",
            "urn:xmpp:ping",
        ):
            assert f'<feature var="{feature}"' in reply

    def test_software_version_is_answered_without_the_os(self):
        self.recv(
            f'<iq type="get" id="v1" from="alice@example.test/phone" to="{COMPONENT}">'
            '<query xmlns="jabber:iq:version"/></iq>'
        )
        self.send(
            f'<iq type="result" id="v1" from="{COMPONENT}" to="alice@example.test/phone">'
            '<query xmlns="jabber:iq:version"><name>xmpp-active-users</name>'
            f"<version>{software_version()}</version></query></iq>",
            use_values=False,
        )

    def test_probes_and_subscriptions_are_answered_within_each_senders_share(self):
        """One user's 1,000 probes, one stranger's 1,000 subscriptions: a few answers each, a
        few log lines, and someone else's probe still answered."""
        with self.assertLogs("bot.component", logging.DEBUG) as logs:
            for _ in range(1000):
                self.recv(f'<presence type="probe" from="bob@example.test/pc" to="{COMPONENT}"/>')
                self.recv(f'<presence type="subscribe" from="eve@elsewhere.org" to="{COMPONENT}"/>')
            answers = self.sent()
            self.recv(f'<presence type="probe" from="carol@example.test/pc" to="{COMPONENT}"/>')
            assert len(self.sent()) == 1  # her own share
        assert sum("bob@example.test" in a for a in answers) == SENDER_BURST
        assert sum('type="unsubscribed"' in a for a in answers) == SENDER_BURST
        assert len(logs.output) <= 4, logs.output  # the first of each sender, at most
        self.monotonic_now += 60  # a minute later: one more answer each
        self.recv(f'<presence type="probe" from="bob@example.test/pc" to="{COMPONENT}"/>')
        assert len(self.sent()) == 1
