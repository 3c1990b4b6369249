"""The admins' reports and alerts wired to the running bot: their sources, their chat, the link.

notify.py decides what to say and when; this module gives it the figures, a way to send a chat
message through the component, and the component's events (link up and down, privileges).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from slixmpp.jid import JID

from ..activity.tracker import ActivityTracker
from ..admin.notify import CallbackEdge, Notifier, Sources
from ..config import Settings
from ..storage.store import Store
from ..xmpp.component import ActiveUsersComponent


def notifier(
    settings: Settings,
    *,
    store: Store,
    tracker: ActivityTracker,
    duty_restarts: Counter[str],
    component: Callable[[], ActiveUsersComponent],
    clock: Callable[[], float],
) -> Notifier:
    """The notifier of `settings`; `component` gives the component, built after it (the
    admins' commands name the notifier)."""

    def send_chat(to_bare_jid: str, text: str) -> None:
        """A chat message to a bare JID: the server keeps it for an admin who is offline."""
        edge = component()
        edge.send_message(mto=JID(to_bare_jid), mbody=text, mtype="chat", mfrom=edge.boundjid.bare)

    return Notifier(
        settings.reports,
        settings.alerts,
        admins=settings.admins,
        domains=settings.domains,
        windows=settings.windows,
        store=store,
        edge=CallbackEdge(send_chat, lambda: component().connected_since is not None),
        sources=Sources(
            days=store.days_off_loop,
            client_figures=lambda: tracker.client_counts(int(clock())),
            store_health=lambda: (store.last_write_at, store.failed_writes),
            duty_restarts=lambda: duty_restarts,
        ),
        clock=clock,
    )


def listen(notifier: Notifier, component: ActiveUsersComponent) -> None:
    """The component's events the notifier follows, if it is on (notify.py)."""
    if not notifier.enabled:
        return
    component.add_event_handler("session_start", lambda _event: notifier.link_up())
    component.add_event_handler("disconnected", lambda _event: notifier.link_down())
    component.add_event_handler("privileges_checked", notifier.privileges_checked)
