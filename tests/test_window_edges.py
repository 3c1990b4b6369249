"""The exact edges: a window is `now - last_active < window`, and the start-up load keeps exactly
what a window can still reach (`timestamp > now - longest window`).

The reference test against a live Prosody (test_reference_prosody.py) must stay clear of the edges,
since its two counts happen seconds apart. Here the edges are pinned second by second, with
expected figures written out by hand, for each layer on its own: the index, the tracker after a
start-up load, the seed's port (our oracle), and the seed's own Lua, run on the same cases.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bot.activity.tracker import ActivityTracker
from bot.core.counter import DAY, ActivityIndex
from bot.core.model import UserRecord
from bot.storage.store import Store
from bot.testbed.seed import seed_counts

from .support import WINDOW_EDGES

NOW = 1_800_000_000
WEEK, MONTH = 7 * DAY, 30 * DAY
WINDOWS = (DAY, WEEK, MONTH)
DOMAIN = "example.test"

ages = pytest.mark.parametrize(
    ("age", "expected"), WINDOW_EDGES.items(), ids=[str(a) for a in WINDOW_EDGES]
)


def offline_users(at: int) -> list[UserRecord]:
    """Three offline users last active at `at`: by a login (the logout lost in a crash), by a
    logout, and by a logout after a login. All first seen at `at`."""
    return [
        UserRecord(first_seen=at, last_login=at, last_logout=0),
        UserRecord(first_seen=at, last_login=0, last_logout=at),
        UserRecord(first_seen=at, last_login=at - 5, last_logout=at),
    ]


def figures(counts) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(active per window, new per window)."""
    return (
        tuple(counts.active[w] for w in WINDOWS),
        tuple(counts.new_users[w] for w in WINDOWS),
    )


# --- the index ------------------------------------------------------------------------------------


@ages
def test_index_counts_a_user_only_strictly_inside_each_window(age, expected):
    users = offline_users(NOW - age)
    triple = tuple(3 * n for n in expected)
    built = ActivityIndex.build(users)
    assert figures(built.counts(NOW)) == (triple, triple)  # new: first seen at the same instant

    updated = ActivityIndex()  # the same users arriving one change at a time
    for user in users:
        updated.replace(None, user._replace(sessions=("phone",)))
    assert figures(updated.counts(NOW)) == ((3, 3, 3), triple)  # online: active in every window
    for user in users:
        updated.replace(user._replace(sessions=("phone",)), user)
    assert figures(updated.counts(NOW)) == (triple, triple)


def test_index_edge_seen_from_both_sides_in_time():
    index = ActivityIndex.build([UserRecord(NOW, NOW, 0)])
    for window in WINDOWS:
        assert index.active(NOW + window - 1, window) == 1
        assert index.active(NOW + window, window) == 0
        assert index.new_users(NOW + window - 1, window) == 1
        assert index.new_users(NOW + window, window) == 0


# --- the tracker after a start-up load -----------------------------------------------------------


@ages
def test_tracker_loaded_at_the_edge_counts_like_the_rule(tmp_path, age, expected):
    path = tmp_path / "activity.db"
    with Store(path) as store:
        for n, user in enumerate(offline_users(NOW - age)):
            store.put(f"u{n}@{DOMAIN}", user)
        store.flush(NOW)
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        assert tracker.load(NOW).users == 3
        triple = tuple(3 * n for n in expected)
        assert figures(tracker.counts(NOW)) == (triple, triple)
        # One second later each user is one second older: the next age's figures (or none).
        older = WINDOW_EDGES.get(age + 1, (0, 0, 0) if age >= MONTH else None)
        if older is not None:
            assert figures(tracker.counts(NOW + 1))[0] == tuple(3 * n for n in older)


# --- the oracle: the seed's port, and the seed itself -------------------------------------------


@ages
def test_seed_port_counts_a_user_only_strictly_inside_each_window(age, expected):
    for user in offline_users(NOW - age):
        assert seed_counts([user], NOW) == expected
    assert seed_counts([UserRecord(1, NOW - age, 0, ("phone",))], NOW) == (1, 1, 1)  # online


SEED_MODULE = Path("/usr/lib/prosody/modules/mod_measure_active_users/mod_measure_active_users.lua")

# Runs the installed module's update_calculations() once per case, with Prosody's API stubbed:
# a lastlog2 store holding one user, no sessions online, and os.time() fixed at the case's now.
LUA_HARNESS = r"""
local module_path, now = arg[1], tonumber(arg[2])
local current, measured = nil, {}
local store = {
    users = function(self)
        local done = false
        return function() if not done then done = true; return "u" end end
    end,
    get = function(self, username) return current end,
}
module = {
    host = "example.test",
    open_store = function(self, name) return store end,
    measure = function(self, name) return function(value) measured[name] = value end end,
    log = function() end,
    add_timer = function() end,
}
prosody = { hosts = { ["example.test"] = { sessions = {} } } }
os.time = function() return now end
dofile(module_path)
for line in io.lines() do
    local login, logout = line:match("^(%-?%d+) (%-?%d+)$")
    login, logout = tonumber(login), tonumber(logout)
    current = {}
    if login > 0 then current.login = { timestamp = login } end
    if logout > 0 then current.logout = { timestamp = logout } end
    update_calculations()
    print(("[%d, %d, %d]"):format(
        measured.active_users_1d, measured.active_users_7d, measured.active_users_30d))
end
"""


def lua_interpreter() -> str | None:
    for name in ("lua5.4", "lua5.3", "lua5.2", "lua5.1", "lua"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def test_seed_port_agrees_with_the_seed_itself_at_every_edge(tmp_path):
    """The installed mod_measure_active_users (the reference test runs it inside Prosody), run
    by Lua on the same cases: the port and the hand-written figures are the seed's."""
    lua = lua_interpreter()
    if lua is None or not SEED_MODULE.is_file():
        pytest.skip(f"needs a Lua interpreter and {SEED_MODULE} (prosody-modules)")
    harness = tmp_path / "harness.lua"
    harness.write_text(LUA_HARNESS, encoding="utf-8")
    cases = [
        (user.last_login, user.last_logout) for a in WINDOW_EDGES for user in offline_users(NOW - a)
    ]
    ran = subprocess.run(
        [lua, str(harness), str(SEED_MODULE), str(NOW)],
        input="".join(f"{login} {logout}\n" for login, logout in cases),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    by_lua = [tuple(json.loads(line)) for line in ran.stdout.splitlines()]
    expected = [counts for counts in WINDOW_EDGES.values() for _ in range(3)]
    assert by_lua == expected
    port = [seed_counts([UserRecord(1, login, logout)], NOW) for login, logout in cases]
    assert port == expected


# --- the load floor ------------------------------------------------------------------------------


def write_store(path: Path, stored: dict[str, UserRecord], now: int) -> None:
    """A store holding `stored`, flushed at `now` (its heartbeat)."""
    with Store(path) as store:
        for jid, record in stored.items():
            store.put(jid, record)
        store.flush(now)


def test_users_on_the_load_floor_come_and_go_exactly(tmp_path):
    """At start-up the index keeps only timestamps after the floor (load time - longest window).
    Users stored exactly on the floor, and beside it, then log in and out, or are forgotten: the
    index must neither remove what it never kept nor lose what it kept."""
    loaded_at = NOW
    floor = loaded_at - MONTH
    path = tmp_path / "activity.db"
    stored = {
        "on@example.test": UserRecord(floor, floor, floor),
        "below@example.test": UserRecord(floor - 1, floor - 1, 0),
        "above@example.test": UserRecord(floor + 1, 0, floor + 1),
        "old-on@example.test": UserRecord(floor, NOW - 5, NOW - 2),  # only first_seen on it
        "gone-on@example.test": UserRecord(floor, floor, 0),
        "gone-above@example.test": UserRecord(floor + 1, floor + 1, floor + 1),
    }
    write_store(path, stored, loaded_at)

    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(loaded_at)

        def check(at: int) -> None:
            records = [record for _, record in store.users()]
            counts = tracker.counts(at)
            assert (counts.dau, counts.wau, counts.mau) == seed_counts(records, at), at
            for window in WINDOWS:
                first_seen = sum(at - r.first_seen < window for r in records)
                assert counts.new_users[window] == first_seen, (at, window)
            assert counts.known_users == len(records)

        check(loaded_at)
        assert tracker.counts(loaded_at).mau == 3  # above, old-on, gone-above
        assert tracker.counts(loaded_at).new_users[MONTH] == 2  # above, gone-above

        t = loaded_at
        for jid in ("on@example.test", "below@example.test", "above@example.test"):
            t += 10
            tracker.session_started(jid, "phone", t)
            check(t)
            tracker.session_started(jid, "laptop", t + 1)
            tracker.session_ended(jid, "phone", t + 2)
            check(t + 2)
            tracker.session_ended(jid, "laptop", t + 3)
            check(t + 3)
        tracker.session_started("old-on@example.test", "phone", t + 4)
        tracker.session_ended("old-on@example.test", "phone", t + 5)
        assert tracker.forget("gone-on@example.test")  # first_seen and last_active on the floor
        assert tracker.forget("gone-above@example.test")
        assert tracker.counts(t + 5).known_users == 4
        last = t + 5
        for at in (
            last,
            last + DAY - 1,
            last + DAY,
            last + DAY + 1,
            last + MONTH - 1,
            last + MONTH,
        ):
            check(at)


def test_a_clock_stepped_back_up_to_the_margin_stays_exact_and_further_is_logged_once(
    tmp_path, caplog
):
    """Steps back of up to a day (LOAD_FLOOR_MARGIN) below the start-up load keep every user the
    seed counts; a step further back may miss users, and says so once (README: Failure modes)."""
    loaded_at = NOW
    path = tmp_path / "activity.db"
    # Last active just inside the month of a clock stepped back by the whole margin.
    edge = loaded_at - DAY - MONTH + 1
    stored = {
        "edge@example.test": UserRecord(edge, edge, 0),
        "recent@example.test": UserRecord(loaded_at - 5, 0, loaded_at - 5),
    }
    write_store(path, stored, loaded_at)
    with Store(path) as store:
        tracker = ActivityTracker(store, [DOMAIN])
        tracker.load(loaded_at)
        back = loaded_at - DAY
        counts = tracker.counts(back)
        assert (counts.dau, counts.wau, counts.mau) == seed_counts(stored.values(), back)
        assert counts.mau == 2  # edge, and recent: the rule counts a time ahead of the clock
        assert "clock stepped back" not in caplog.text
        for _ in range(3):
            tracker.counts(back - 1)
            tracker.counts_by_domain(back - 1)
        assert caplog.text.count("The clock stepped back") == 1, caplog.text
