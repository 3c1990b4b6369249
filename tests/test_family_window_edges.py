"""A client family's window edges, second by second: a family counts a user in a window when its
own last use (the last login or logout of the user's sessions with it) is `now - t < window`,
whatever the user did since with another client. Exactly 24 h / 7 d / 30 d ago: out; one second
less: in; one second more: out. Pinned for the tracker after a start-up load and for the same
history arriving as live presences (the random model check reaches these edges only by chance).
"""

from __future__ import annotations

import pytest

from bot.activity.tracker import ActivityTracker
from bot.core.model import UserRecord
from bot.storage.store import Store

from .support import T0, WINDOW_EDGES

DAY = 86_400
WEEK, MONTH = 7 * DAY, 30 * DAY
WINDOWS = (DAY, WEEK, MONTH)
DOMAIN = "example.test"
GAJIM = "https://gajim.org"
CONVERSATIONS = "http://conversations.im"

ages = pytest.mark.parametrize(
    ("age", "expected"), WINDOW_EDGES.items(), ids=[str(a) for a in WINDOW_EDGES]
)


def family_figures(tracker: ActivityTracker, now: int, family: str) -> tuple[int, ...]:
    counts = tracker.client_counts(now).get(family)
    return (0, 0, 0) if counts is None else tuple(counts.active[w] for w in WINDOWS)


@ages
def test_a_family_loaded_at_its_edge_counts_by_its_own_last_use(tmp_path, age, expected):
    path = tmp_path / "activity.db"
    used = T0 - age
    with Store(path) as store:
        # Three users whose gajim was last used `age` ago; each was active with Conversations
        # just now (so the user is in every window; only the family is at its edge).
        for n in range(3):
            store.put(
                f"u{n}@{DOMAIN}",
                UserRecord(
                    first_seen=used - 100,
                    last_login=T0 - 10,
                    last_logout=T0,
                    clients=("gajim", used, "conversations", T0),
                ),
            )
        # And one who used only gajim, logging out `age` ago (a login 10 s before that).
        store.put(
            f"solo@{DOMAIN}",
            UserRecord(used - 100, used - 10, used, clients=("gajim", used)),
        )
        store.flush(T0)
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        assert tracker.load(T0).users == 4
        assert family_figures(tracker, T0, "gajim") == tuple(4 * n for n in expected)
        assert family_figures(tracker, T0, "conversations") == (3, 3, 3)
        older = WINDOW_EDGES.get(age + 1, (0, 0, 0) if age >= MONTH else None)
        if older is not None:  # one second later: one second older
            assert family_figures(tracker, T0 + 1, "gajim") == tuple(4 * n for n in older)


@ages
def test_a_family_used_live_at_its_edge_counts_by_its_own_last_use(tmp_path, age, expected):
    path = tmp_path / "activity.db"
    used = T0 - age
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(used - 10)
        user = f"alice@{DOMAIN}"
        assert tracker.session_started(user, "laptop", used - 50, caps_node=GAJIM)
        assert tracker.session_ended(user, "laptop", used)  # gajim's last use
        assert tracker.session_started(user, "phone", T0 - 5, caps_node=CONVERSATIONS)
        assert family_figures(tracker, T0, "gajim") == expected
        assert family_figures(tracker, T0, "conversations") == (1, 1, 1)  # online with it
        assert tracker.session_ended(user, "phone", T0)
        assert family_figures(tracker, T0, "gajim") == expected
        assert family_figures(tracker, T0, "conversations") == (1, 1, 1)
        older = WINDOW_EDGES.get(age + 1, (0, 0, 0) if age >= MONTH else None)
        if older is not None:
            assert family_figures(tracker, T0 + 1, "gajim") == older
        store.discard_pending()


def test_a_family_online_is_in_every_window_however_old_its_login(tmp_path):
    with Store(tmp_path / "activity.db") as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(T0 - MONTH - 10)
        assert tracker.session_started(f"bob@{DOMAIN}", "laptop", T0 - MONTH - 1, caps_node=GAJIM)
        assert family_figures(tracker, T0, "gajim") == (1, 1, 1)
        assert tracker.session_ended(f"bob@{DOMAIN}", "laptop", T0 - DAY)  # left a day ago
        assert family_figures(tracker, T0, "gajim") == (0, 1, 1)
        store.discard_pending()
