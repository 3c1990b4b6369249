"""Sessions become logins and logouts; the store and the index agree with the seed's loop."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.activity.tracker import ActivityTracker
from bot.core.counter import DAY
from bot.core.model import UserRecord
from bot.storage.store import Store, inactive_users
from bot.testbed.seed import seed_counts

from .support import T0

DOMAIN = "example.test"


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "activity.db") as store:
        yield store


@pytest.fixture
def tracker(store):
    tracker = ActivityTracker(store, [DOMAIN])
    tracker.load(T0)
    return tracker


def test_login_and_logout_are_recorded_per_user(tracker, store):
    tracker.session_started("alice@example.test", "phone", T0)
    tracker.session_ended("alice@example.test", "phone", T0 + 60)
    record = store.get("alice@example.test")
    assert (record.first_seen, record.last_login, record.last_logout) == (T0, T0, T0 + 60)
    assert record.sessions == ()


def test_user_is_online_while_any_session_is(tracker):
    tracker.session_started("alice@example.test", "phone", T0)
    tracker.session_started("alice@example.test", "laptop", T0 + 1)
    tracker.session_ended("alice@example.test", "phone", T0 + 2)
    counts = tracker.counts(T0 + 40 * DAY)  # far later: only "online now" keeps her active
    assert (counts.online_users, counts.online_sessions, counts.mau) == (1, 1, 1)
    tracker.session_ended("alice@example.test", "laptop", T0 + 3)
    assert tracker.counts(T0 + 40 * DAY).mau == 0


def test_presence_update_of_a_known_session_is_not_a_new_login(tracker, store):
    tracker.session_started("alice@example.test", "phone", T0)
    assert not tracker.session_started("alice@example.test", "phone", T0 + 500)  # went "away"
    assert store.get("alice@example.test").last_login == T0


def test_other_domains_are_ignored(tracker, store):
    assert not tracker.session_started("room@conference.example.test", "nick", T0)
    assert not tracker.session_started("bob@elsewhere.org", "pc", T0)
    assert not tracker.session_started("example.test", "", T0)  # the server itself
    assert tracker.counts(T0).known_users == 0
    assert store.pending == 0


def test_excluded_accounts_are_never_counted_nor_stored(store):
    tracker = ActivityTracker(store, [DOMAIN], exclude=["monitor@example.test", "*@bots.test"])
    tracker.load(T0)
    assert not tracker.session_started("Monitor@example.test", "probe", T0)
    assert tracker.session_started("alice@example.test", "phone", T0)
    assert store.get("monitor@example.test") is None
    assert store.get("Monitor@example.test") is None


def test_exclusion_added_later_hides_stored_users_at_load(store):
    tracker = ActivityTracker(store, [DOMAIN])
    tracker.load(T0)
    tracker.session_started("monitor@example.test", "probe", T0)
    tracker.session_ended("monitor@example.test", "probe", T0 + 1)
    tracker.session_started("alice@example.test", "phone", T0)
    store.flush(T0 + 2)
    restarted = ActivityTracker(store, [DOMAIN], exclude=["monitor@*"])
    report = restarted.load(T0 + 3)
    assert (report.users, report.hidden) == (1, 1)
    assert restarted.counts(T0 + 3).known_users == 1
    assert store.get("monitor@example.test") is not None  # hidden, not deleted


def test_logout_of_an_unknown_session_still_counts_as_activity(tracker):
    tracker.session_ended("bob@example.test", "pc", T0)
    assert tracker.counts(T0 + DAY - 1).dau == 1


def test_sessions_left_online_by_a_crash_end_at_the_last_heartbeat(tmp_path):
    path = tmp_path / "activity.db"
    store = Store(path)
    tracker = ActivityTracker(store, [DOMAIN])
    tracker.load(T0)
    tracker.session_started("alice@example.test", "phone", T0)
    store.flush(T0 + 10)  # heartbeat: alive at T0 + 10, then "crash" (no close, no logout)
    store._unlock()  # what the kernel does for a killed process

    with Store(path) as reopened:
        tracker = ActivityTracker(reopened, [DOMAIN])
        report = tracker.load(T0 + 5 * DAY)
        assert (report.recovered_sessions, report.closed_at) == (1, T0 + 10)
        assert reopened.get(reopened.key_of("alice@example.test")).last_logout == T0 + 10
        counts = tracker.counts(T0 + 5 * DAY)
        assert (counts.online_users, counts.dau, counts.wau) == (0, 0, 1)


def test_resync_closes_sessions_the_server_did_not_announce_again(tracker, store):
    tracker.session_started("alice@example.test", "phone", T0)
    tracker.session_started("bob@example.test", "pc", T0)
    dropped_at = T0 + 100
    tracker.begin_resync(dropped_at)
    assert tracker.unconfirmed_since() == dropped_at
    tracker.session_started("alice@example.test", "phone", T0 + 130)  # re-announced
    assert tracker.end_resync() == 1
    assert tracker.unconfirmed_since() is None
    assert tracker.online_sessions() == {("alice@example.test", "phone")}
    assert store.get("alice@example.test").last_login == T0  # not a new login
    assert store.get("bob@example.test").last_logout == dropped_at


def test_a_resync_cut_short_by_another_drop_closes_each_session_when_last_known(tracker, store):
    """Drop at T0 + 100, reconnect: alice is re-announced, bob is not yet, and the link drops
    again at T0 + 200. The next resync closes bob at the first drop (last known then) and
    alice at the second (known online until then), when neither is re-announced."""
    tracker.session_started("alice@example.test", "phone", T0)
    tracker.session_started("bob@example.test", "pc", T0)
    tracker.begin_resync(T0 + 100)
    tracker.session_started("alice@example.test", "phone", T0 + 101)  # re-announced
    assert tracker.unconfirmed_since() == T0 + 100  # bob
    tracker.begin_resync(T0 + 200)  # dropped again before bob was re-announced
    assert tracker.unconfirmed_since() == T0 + 100
    tracker.session_started("carol@example.test", "pc", T0 + 201)  # a new login meanwhile
    assert tracker.end_resync() == 2
    assert store.get("bob@example.test").last_logout == T0 + 100
    assert store.get("alice@example.test").last_logout == T0 + 200
    assert tracker.online_sessions() == {("carol@example.test", "pc")}


def test_each_domain_is_counted_on_its_own_and_together(store):
    tracker = ActivityTracker(store, ["a.test", "b.test"])
    tracker.load(T0)
    tracker.session_started("x@a.test", "r", T0)
    tracker.session_started("y@b.test", "r", T0)
    tracker.session_started("z@b.test", "r", T0)
    by_domain = tracker.counts_by_domain(T0)
    assert (by_domain["a.test"].dau, by_domain["b.test"].dau, tracker.counts(T0).dau) == (1, 2, 3)


# --- randomized histories: events in, flushed, reopened, compared with the seed's loop ----------

users = st.sampled_from([f"u{i}@{DOMAIN}" for i in range(6)] + ["v@other.test"])
events = st.lists(
    st.tuples(
        st.booleans(), users, st.sampled_from(["a", "b"]), st.integers(0, 35 * DAY)
    ),  # (available?, user, resource, seconds after T0)
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(events, st.integers(0, 70 * DAY))
def test_random_histories_count_like_the_seed_after_a_restart(history, later):
    history = sorted(history, key=lambda event: event[3])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "activity.db"
        with Store(path) as store:
            tracker = ActivityTracker(store, [DOMAIN])
            tracker.load(T0)
            for available, user, resource, offset in history:
                event = tracker.session_started if available else tracker.session_ended
                event(user, resource, T0 + offset)
            end = T0 + (history[-1][3] if history else 0)
            now = end + later
            live = tracker.counts(now)
            store.flush(end)
            stored = [record for _, record in store.users()]
            assert (live.dau, live.wau, live.mau) == seed_counts(stored, now)

        with Store(path, readonly=True) as reader:  # what `count` sees, the bot stopped
            tracker = ActivityTracker(reader, [DOMAIN])
            tracker.load(now)
            recovered = [record for _, record in reader.users()]
            counts = tracker.counts(now)
            assert (counts.dau, counts.wau, counts.mau) == seed_counts(recovered, now)
            assert counts.online_users == 0


def test_forget_removes_a_user_from_store_and_counts(tracker, store):
    tracker.session_started("alice@example.test", "phone", T0)
    assert tracker.forget("alice@example.test")
    assert store.get("alice@example.test") is None
    counts = tracker.counts(T0)
    assert (counts.known_users, counts.online_users, counts.dau) == (0, 0, 0)
    assert not tracker.forget("alice@example.test")


def test_retention_forgets_only_users_still_inactive(tmp_path):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(T0)
        for user, at in (("old", T0), ("back", T0), ("recent", T0 + 300 * DAY)):
            tracker.session_started(f"{user}@example.test", "r", at)
            tracker.session_ended(f"{user}@example.test", "r", at + 1)
        tracker.session_started("online@example.test", "r", T0)  # online: never purged
        store.flush(T0 + 300 * DAY)
        active_since = T0 + 200 * DAY
        candidates = inactive_users(path, active_since)  # as the worker thread reads it
        assert sorted(candidates) == ["back@example.test", "old@example.test"]
        tracker.session_started("back@example.test", "r", T0 + 301 * DAY)  # came back meanwhile
        assert tracker.forget_inactive(candidates, active_since) == 1
        assert store.get("old@example.test") is None
        assert store.get("back@example.test") is not None
        assert tracker.counts(T0 + 301 * DAY).known_users == 3


def test_pseudonymized_store_counts_recovers_and_forgets_the_same(tmp_path):
    key = b"pseudonym secret"
    path = tmp_path / "activity.db"
    store = Store(path, pseudonym_key=key)
    tracker = ActivityTracker(store, [DOMAIN])
    tracker.load(T0)
    tracker.session_started("alice@example.test", "phone", T0)
    tracker.session_started("bob@example.test", "pc", T0)
    tracker.session_ended("bob@example.test", "pc", T0 + 5)
    store.flush(T0 + 10)
    store._unlock()  # a crash: alice's session stays open in the store

    with Store(path, pseudonym_key=key) as reopened:
        tracker = ActivityTracker(reopened, [DOMAIN])
        report = tracker.load(T0 + DAY)
        assert (report.users, report.recovered_sessions) == (2, 1)
        assert reopened.get(reopened.key_of("alice@example.test")).last_logout == T0 + 10
        assert tracker.counts(T0 + DAY - 1).dau == 2
        assert tracker.forget("bob@example.test")
        assert tracker.counts(T0 + DAY - 1).known_users == 1
    assert b"alice" not in path.read_bytes()
    assert b"phone" not in path.read_bytes()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 90 * DAY)), max_size=12),
    st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=20),
)
def test_dormant_users_dropped_at_load_count_exactly_when_they_return(stored, events):
    """The index keeps no timestamps older than the longest window at load; users behind
    them still come and go exactly."""
    now = T0 + 90 * DAY
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "a.db") as store:
        for user, age in stored:
            store.put(f"u{user}@{DOMAIN}", UserRecord(now - age, now - age, now - age))
        store.flush(now)
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(now)
        for step, (available, user) in enumerate(events, start=1):
            event = tracker.session_started if available else tracker.session_ended
            event(f"u{user}@{DOMAIN}", "r", now + step)
        later = now + len(events) + 1
        counts = tracker.counts(later)
        records = [record for _, record in store.users()]
        assert (counts.dau, counts.wau, counts.mau) == seed_counts(records, later)
        assert counts.new_users[30 * DAY] == sum(later - r.first_seen < 30 * DAY for r in records)


def test_a_resumed_session_is_online_again_without_a_new_login(tracker, store):
    tracker.session_started("alice@example.test", "phone", T0)
    tracker.session_ended("alice@example.test", "phone", T0 + 60)  # said unavailable
    assert tracker.session_resumed("alice@example.test", "phone", T0 + 62)  # answered pings
    # Its client is not known any more: the session runs NO_CLIENT; its family keeps its time.
    assert store.get("alice@example.test") == UserRecord(
        T0, T0, T0 + 60, ("phone",), ("unknown", T0 + 60), ()
    )
    assert tracker.counts(T0 + 2 * DAY).online_users == 1
    assert not tracker.session_resumed("alice@example.test", "phone", T0 + 63)  # online already


def test_a_session_of_a_user_forgotten_meanwhile_is_not_resumed(tracker, store):
    tracker.session_started("alice@example.test", "phone", T0)
    tracker.session_ended("alice@example.test", "phone", T0 + 60)
    assert tracker.forget("alice@example.test")  # an admin erases alice meanwhile
    assert not tracker.session_resumed("alice@example.test", "phone", T0 + 62)
    assert store.get("alice@example.test") is None
    assert tracker.counts(T0 + 62).known_users == 0


def test_a_user_forgotten_during_a_resync_stays_forgotten(tmp_path):
    with Store(tmp_path / "activity.db") as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(T0)
        tracker.session_started("alice@example.test", "phone", T0)
        tracker.session_started("bob@example.test", "pc", T0)
        tracker.begin_resync(T0 + 5)  # the connection came back
        assert tracker.forget("alice@example.test")  # an admin erases alice meanwhile
        assert tracker.end_resync() == 1  # bob was not re-announced: closed
        assert store.get("bob@example.test").last_logout == T0 + 5
        assert store.get("alice@example.test") is None
        assert tracker.counts(T0 + 10).known_users == 1


def test_a_clock_stepping_back_a_few_hours_after_the_load_still_counts_everyone(tmp_path):
    with Store(tmp_path / "activity.db") as store:
        # Last active 30 days and 1 hour before the load: outside every window at load time,
        # inside the 30-day window once the clock has stepped back 12 hours.
        store.put("alice@example.test", UserRecord(T0 - 40 * DAY, T0 - 30 * DAY - 3600, 0))
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(T0)
        back = T0 - 12 * 3600
        assert tracker.counts(back).mau == seed_counts([store.get("alice@example.test")], back)[2]
        assert tracker.counts(back).mau == 1
        tracker.session_started("alice@example.test", "phone", back)  # and she comes and goes
        tracker.session_ended("alice@example.test", "phone", back + 5)
        assert tracker.counts(back + 10).dau == 1


def test_a_fault_in_the_index_leaves_store_and_index_agreeing(tmp_path, monkeypatch):
    """A change whose index update raises changes neither: the figures stay those a fresh
    load of the store gives (not a store ahead of its index until the next restart)."""
    from bot.core.counter import ActivityIndex

    path = tmp_path / "activity.db"
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(T0)
        tracker.session_started("alice@example.test", "phone", T0)
        real_replace = ActivityIndex.replace

        def broken(index: ActivityIndex, before: object, after: object) -> None:
            raise RuntimeError("a bug in the index")

        monkeypatch.setattr(ActivityIndex, "replace", broken)
        with pytest.raises(RuntimeError):
            tracker.session_started("bob@example.test", "pc", T0 + 1)
        with pytest.raises(RuntimeError):
            tracker.session_ended("alice@example.test", "phone", T0 + 2)
        monkeypatch.setattr(ActivityIndex, "replace", real_replace)
        live = tracker.counts(T0 + 3)
        assert tracker.online_sessions() == {("alice@example.test", "phone")}
        store.flush(T0 + 3)
    with Store(path, readonly=True) as reader:
        fresh = ActivityTracker(reader, [DOMAIN])
        fresh.load(T0 + 3, close_stale_sessions=False)
        assert fresh.counts(T0 + 3) == live
