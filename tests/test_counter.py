"""The index answers exactly what the seed's loop answers, for any history and any instant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core.counter import DAY, DEFAULT_WINDOWS, ActivityIndex, window_label
from bot.core.model import UserRecord
from bot.testbed.seed import seed_counts

NOW = 1_800_000_000
timestamps = st.one_of(
    st.just(0),  # never
    st.integers(NOW - 40 * DAY, NOW),
    # exactly on and beside each window's edge, where `<` versus `<=` matters
    st.sampled_from([NOW - w + d for w in DEFAULT_WINDOWS for d in (-1, 0, 1)]),
)
records = st.builds(
    UserRecord,
    first_seen=st.just(1),
    last_login=timestamps,
    last_logout=timestamps,
    sessions=st.sampled_from([(), (), ("phone",), ("phone", "laptop")]),
    clients=st.just(()),  # the families have their own tests, below
    session_clients=st.just(()),
)


def our_counts(index: ActivityIndex, now: int) -> tuple[int, int, int]:
    counts = index.counts(now)
    return counts.dau, counts.wau, counts.mau


@given(st.lists(records, max_size=60), st.integers(-2, 2))
def test_built_index_counts_like_the_seed(users, shift):
    now = NOW + shift
    assert our_counts(ActivityIndex.build(users), now) == seed_counts(users, now)


@given(
    st.lists(records, min_size=1, max_size=30),
    st.lists(st.tuples(st.integers(0, 29), records), max_size=60),
)
def test_index_updated_one_change_at_a_time_counts_like_the_seed(initial, changes):
    users = dict(enumerate(initial))
    index = ActivityIndex.build(users.values())
    for position, after in changes:
        key = position % len(initial)
        index.replace(users[key], after)
        users[key] = after
        assert our_counts(index, NOW) == seed_counts(users.values(), NOW)


@given(st.lists(records, max_size=30))
def test_online_users_count_in_every_window_whatever_their_timestamps(users):
    online = [r._replace(last_login=0, last_logout=0) for r in users if r.sessions]
    index = ActivityIndex.build(online)
    assert our_counts(index, NOW) == (len(online),) * 3
    assert index.online_sessions == sum(len(r.sessions) for r in online)


def test_window_edge_is_exclusive_like_the_seed():
    index = ActivityIndex.build([UserRecord(1, NOW - DAY, 0)])
    assert index.active(NOW - 1, DAY) == 1  # 23:59:59 ago
    assert index.active(NOW, DAY) == 0  # exactly 24 hours ago: no longer daily


def test_removing_a_user_forgets_them():
    alice = UserRecord(1, NOW, 0)
    index = ActivityIndex.build([alice])
    index.replace(alice, None)
    assert index.counts(NOW).known_users == 0
    assert index.active(NOW, DAY) == 0


def test_window_labels_read_naturally():
    assert [window_label(w) for w in DEFAULT_WINDOWS] == ["24 hours", "7 days", "30 days"]
    assert window_label(90 * DAY) == "90 days"


@given(
    st.lists(records.map(lambda r: r._replace(first_seen=r.last_login or 1)), max_size=40),
    st.lists(st.tuples(st.integers(0, 39), timestamps), max_size=20),
)
def test_new_users_are_those_first_seen_within_the_window(users, changes):
    index = ActivityIndex.build(users)
    for position, first_seen in changes:
        if users:
            key = position % len(users)
            after = users[key]._replace(first_seen=first_seen)
            index.replace(users[key], after)
            users[key] = after
    counts = index.counts(NOW)
    for window in DEFAULT_WINDOWS:
        assert counts.new_users[window] == sum(NOW - u.first_seen < window for u in users)


def test_stickiness_is_dau_over_mau():
    index = ActivityIndex.build([UserRecord(1, NOW - 3600, 0), UserRecord(1, NOW - 3 * DAY, 0)])
    assert index.counts(NOW).stickiness == 0.5
    assert ActivityIndex().counts(NOW).stickiness is None  # no monthly users: undefined


def test_index_built_at_load_refuses_windows_beyond_its_horizon():
    index = ActivityIndex.from_parts(
        offline_last_active=[NOW - 10],
        first_seen=[NOW - 10],
        online_users=0,
        online_sessions=0,
        known_users=5,  # four dormant users, not kept
        floor=NOW - 30 * DAY,
        horizon=30 * DAY,
    )
    assert index.counts(NOW).known_users == 5
    assert index.active(NOW, 30 * DAY) == 1
    with pytest.raises(ValueError, match="windows up to"):
        index.active(NOW, 90 * DAY)


# --- per client family -----------------------------------------------------------------------

FAMILIES = ("conversations", "gajim", "unknown")


@st.composite
def client_records(draw):
    """A user with a time per family used and, online, a family per session ("": not known)."""
    sessions = draw(st.sampled_from([(), (), ("phone",), ("phone", "laptop")]))
    used = draw(st.lists(st.sampled_from(FAMILIES), max_size=3, unique=True))
    clients = tuple(x for family in used for x in (family, draw(timestamps)))
    session_clients = tuple(draw(st.sampled_from([*used, ""])) for _ in sessions)
    return UserRecord(1, draw(timestamps), draw(timestamps), sessions, clients, session_clients)


def seed_counts_per_client(users) -> dict[str, tuple]:
    """The seed's rule per family, by brute force: (users active per window, users online with
    it, its sessions online); families with nothing to count left out."""
    expected = {}
    for family in FAMILIES:
        online = [sum(1 for f in u.session_families() if f == family) for u in users]
        times = [dict(u.client_times()).get(family) for u in users]
        active = tuple(
            sum(
                1
                for sessions, time in zip(online, times, strict=True)
                if sessions or (time is not None and NOW - time < window)
            )
            for window in DEFAULT_WINDOWS
        )
        entry = (active, sum(1 for n in online if n), sum(online))
        if any(active) or entry[1]:
            expected[family] = entry
    return expected


def our_counts_per_client(index: ActivityIndex) -> dict[str, tuple]:
    return {
        family: (tuple(c.active.values()), c.online_users, c.online_sessions)
        for family, c in index.client_counts(NOW, DEFAULT_WINDOWS).items()
        if any(c.active.values()) or c.online_users
    }


@given(
    st.lists(client_records(), min_size=1, max_size=20),
    st.lists(st.tuples(st.integers(0, 19), client_records() | st.none()), max_size=40),
)
def test_each_client_family_counts_like_the_seed_change_after_change(initial, changes):
    users = dict(enumerate(initial))
    index = ActivityIndex.build(users.values())
    assert our_counts_per_client(index) == seed_counts_per_client(users.values())
    for position, after in changes:
        key = position % len(initial)
        index.replace(users.get(key), after)  # None: forgotten (or, again, created)
        if after is None:
            users.pop(key, None)
        else:
            users[key] = after
        assert our_counts_per_client(index) == seed_counts_per_client(users.values())
        assert our_counts(index, NOW) == seed_counts(users.values(), NOW)


def test_online_users_and_sessions_follow_each_login_and_logout():
    phone = UserRecord(1, NOW - 60, 0, ("phone",))
    both = UserRecord(1, NOW - 30, 0, ("phone", "laptop"))
    gone = UserRecord(1, NOW - 30, NOW - 10)
    index = ActivityIndex.build([phone])
    online = [(index.counts(NOW).online_users, index.counts(NOW).online_sessions)]
    for before, after in ((phone, both), (both, phone), (phone, gone), (gone, both), (both, None)):
        index.replace(before, after)
        online.append((index.counts(NOW).online_users, index.counts(NOW).online_sessions))
    assert online == [(1, 1), (1, 2), (1, 1), (0, 0), (1, 2), (0, 0)]


def test_a_user_with_one_client_counts_for_it_at_their_latest_activity():
    """Most logins and logouts: one client family, whose time moves with the user's."""
    old = UserRecord(1, NOW - 3 * DAY, NOW - 3 * DAY, (), ("gajim", NOW - 3 * DAY))
    new = UserRecord(1, NOW - 3 * DAY, NOW - 60, (), ("gajim", NOW - 60))
    index = ActivityIndex.build([old])
    assert index.client_counts(NOW, [DAY])["gajim"].active == {DAY: 0}
    index.replace(old, new)
    assert index.client_counts(NOW, [DAY])["gajim"].active == {DAY: 1}
    index.replace(new, old)
    assert index.client_counts(NOW, [DAY])["gajim"].active == {DAY: 0}


def test_a_user_whose_only_client_changes_counts_for_the_new_one_only():
    old = UserRecord(1, NOW - 60, NOW - 60, (), ("gajim", NOW - 60))
    new = UserRecord(1, NOW - 60, NOW - 30, (), ("conversations", NOW - 30))
    index = ActivityIndex.build([old])
    index.replace(old, new)
    active = {family: c.active[DAY] for family, c in index.client_counts(NOW, [DAY]).items()}
    assert active.get("gajim", 0) == 0
    assert active["conversations"] == 1


def test_a_user_on_two_clients_counts_once_for_each():
    alice = UserRecord(
        1,
        NOW - 60,
        NOW - 2 * DAY,
        ("phone",),
        ("conversations", NOW - 60, "gajim", NOW - 2 * DAY),
        ("conversations",),
    )
    clients = ActivityIndex.build([alice]).client_counts(NOW, DEFAULT_WINDOWS)
    assert clients["conversations"].active == {DAY: 1, 7 * DAY: 1, 30 * DAY: 1}
    assert clients["gajim"].active == {DAY: 0, 7 * DAY: 1, 30 * DAY: 1}
    assert (clients["conversations"].online_users, clients["gajim"].online_users) == (1, 0)


def test_new_users_and_clients_stop_at_the_configured_windows_when_the_totals_go_further():
    """With NodeInfo on, the totals answer 180 days; first seen times and client families are
    kept for the configured windows only (30 days), and refuse longer ones."""
    index = ActivityIndex.from_parts(
        offline_last_active=[NOW - 100 * DAY, NOW - 10],
        first_seen=[NOW - 10],
        online_users=0,
        online_sessions=0,
        known_users=2,
        floor=NOW - 181 * DAY,
        horizon=180 * DAY,
        windows_floor=NOW - 31 * DAY,
        windows_horizon=30 * DAY,
    )
    counts = index.counts(NOW, (30 * DAY, 180 * DAY))
    assert counts.active == {30 * DAY: 1, 180 * DAY: 2}
    assert counts.new_users == {30 * DAY: 1}  # no 180-day figure rather than a wrong one
    with pytest.raises(ValueError, match="new users are counted for windows up to"):
        index.new_users(NOW, 180 * DAY)
    with pytest.raises(ValueError, match="client families are counted for windows up to"):
        index.client_counts(NOW, (180 * DAY,))
