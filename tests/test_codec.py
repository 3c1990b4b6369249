"""One definition of a valid stored record, used by every reader of the store.

The store's `get`, its full scan (`users`), the start-up load, the retention scan and the
importer all agree: a damaged value is logged, treated as absent, and left in place.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import shelve
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.activity.tracker import ActivityTracker
from bot.core.client_families import UNKNOWN
from bot.core.model import UserRecord
from bot.importing.importer import Activity, import_activities
from bot.storage.codec import (
    TIMESTAMPS,
    DamagedRecord,
    decode_record,
    decode_records,
    encode_record,
)
from bot.storage.sqlite_dict import SqliteDict
from bot.storage.store import Store, inactive_users

from .support import T0

timestamps = st.integers(min_value=TIMESTAMPS[0], max_value=TIMESTAMPS[-1])
families = st.sampled_from(["conversations", "gajim", "unknown", "other", "kaidan.im"])


@st.composite
def records(draw):
    """Records as the tracker makes them: without client information (imported), or with a
    time per family and a family per session online ("" for a session of unknown client)."""
    sessions = tuple(draw(st.lists(st.text(min_size=1, max_size=20), max_size=3, unique=True)))
    record = UserRecord(draw(timestamps), draw(timestamps), draw(timestamps), sessions)
    if draw(st.booleans()):
        used = draw(st.lists(families, min_size=1, max_size=3, unique=True))
        clients = tuple(x for family in used for x in (family, draw(timestamps)))
        session_clients = tuple(draw(st.sampled_from([*used, ""])) for _ in sessions)
        if not any(session_clients):
            session_clients = ()
        record = record._replace(clients=clients, session_clients=session_clients)
    return record


@given(records())
def test_every_record_survives_encoding(record):
    decoded = decode_record(encode_record(record))
    assert decoded == record
    assert type(decoded) is UserRecord


def test_a_stored_record_is_a_plain_tuple_that_plain_pickle_reads():
    record = UserRecord(T0, T0 + 1, T0 + 2, ("phone",))
    assert pickle.loads(encode_record(record)) == (T0, T0 + 1, T0 + 2, ("phone",))
    assert b"UserRecord" not in encode_record(record)  # no class of ours in the file
    with_clients = UserRecord(
        T0, T0 + 1, T0 + 2, ("phone", "pc"), ("conversations", T0 + 1), ("conversations", "")
    )
    stored = (T0, T0 + 1, T0 + 2, ("phone", "pc"), ("conversations", T0 + 1), ("conversations", ""))
    assert pickle.loads(encode_record(with_clients)) == stored


def test_a_record_of_the_first_schema_decodes_without_clients():
    """Schema 1 wrote 4-tuples only: they load as users without client information."""
    old = pickle.dumps((T0, T0 + 1, T0 + 2, ("phone",)), pickle.HIGHEST_PROTOCOL)
    assert decode_record(old) == UserRecord(T0, T0 + 1, T0 + 2, ("phone",), (), ())
    assert decode_record(old).session_families() == ("",)  # online, client not known


def test_a_users_client_families_cost_a_few_bytes_per_family():
    without = encode_record(UserRecord(T0, T0 + 1, T0 + 2))
    one = encode_record(UserRecord(T0, T0 + 1, T0 + 2, (), ("conversations", T0 + 2)))
    two = encode_record(
        UserRecord(T0, T0 + 1, T0 + 2, (), ("conversations", T0 + 2, "gajim", T0 + 1))
    )
    assert len(without) == 31  # what schema 1 stored, unchanged for users without clients
    assert len(one) - len(without) == len("conversations") + 11
    assert len(two) - len(one) == len("gajim") + 9
    # A user online: the family is written again for the session, as a plain string.
    online = UserRecord(
        T0, T0 + 1, T0 + 2, ("phone",), ("conversations", T0 + 2), ("conversations",)
    )
    assert encode_record(online).count(b"conversations") == 2


@given(records())
def test_no_stored_record_refers_back_into_the_pickle_memo(record):
    """The start-up scan reads a batch of records with one unpickler, whose memo runs on from
    record to record: a back-reference would read a neighbour's string."""
    opcodes = {op.name for op, _arg, _pos in pickletools.genops(encode_record(record))}
    assert not opcodes & {"BINGET", "LONG_BINGET", "GET"}, opcodes


def test_the_batch_decoder_reads_users_online_with_their_clients_exactly():
    values = [
        encode_record(
            UserRecord(T0, T0 + n, T0, ("pc", "phone"), (f"f{n}", T0 + n), (f"f{n}", f"f{n}"))
        )
        for n in range(20)
    ]
    assert decode_records(values) == [decode_record(value) for value in values]
    assert decode_records(values)[7].session_clients == ("f7", "f7")


DAMAGED = {
    "not a pickle": b"\x00garbage",
    "a string": pickle.dumps("not a record"),
    "three fields": pickle.dumps((T0, T0, T0)),
    "a list, not a tuple": pickle.dumps([T0, T0, T0, ()]),
    "a timestamp as text": pickle.dumps(("5", T0, T0, ())),  # int("5") would accept it
    "a float timestamp": pickle.dumps((T0, 1.5, T0, ())),
    "a bool timestamp": pickle.dumps((T0, True, T0, ())),
    "sessions as a list": pickle.dumps((T0, T0, T0, ["phone"])),
    "a session that is not text": pickle.dumps((T0, T0, T0, (7,))),
    "five fields": pickle.dumps((T0, T0, T0, (), ("gajim", T0))),
    "a family without its time": pickle.dumps((T0, T0, T0, (), ("gajim",), ())),
    "a family that is not text": pickle.dumps((T0, T0, T0, (), (7, T0), ())),
    "a family's time as text": pickle.dumps((T0, T0, T0, (), ("gajim", "5"), ())),
    "a family's time as a float": pickle.dumps((T0, T0, T0, (), ("gajim", 1.5), ())),
    "clients as a list": pickle.dumps((T0, T0, T0, (), ["gajim", T0], ())),
    "fewer session families than sessions": pickle.dumps(
        (T0, T0, T0, ("pc", "phone"), ("gajim", T0), ("gajim",))
    ),
    "a session family that is not text": pickle.dumps((T0, T0, T0, ("pc",), ("gajim", T0), (1,))),
    "a negative timestamp": pickle.dumps((T0, -1, T0, ())),
    "a timestamp of 10**400": pickle.dumps((T0, 10**400, T0, ())),
    "a timestamp after 2100": pickle.dumps((T0, T0, 4_102_444_801, ())),
    "a family's time of 10**400": pickle.dumps((T0, T0, T0, (), ("gajim", 10**400), ())),
    "a family's negative time": pickle.dumps((T0, T0, T0, (), ("a", T0, "b", -5), ())),
}


@pytest.mark.parametrize("value", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_values_are_refused_with_a_reason(value):
    with pytest.raises(DamagedRecord) as refused:
        decode_record(value)
    assert str(refused.value)


def test_the_range_holds_every_time_the_bot_writes():
    """0 (never), a clock that starts in 1970, and times until 2100; the importer is stricter."""
    for stamp in (0, 1, T0, int(time.time()) + 50 * 365 * 86400, 4_102_444_800):
        record = UserRecord(stamp, stamp, stamp, (), ("gajim", stamp))
        assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([T0, T0, T0, ()], "not a 4- or 6-tuple"),
        ((T0, T0, T0), "not a 4- or 6-tuple"),
        ((T0, 1.5, T0, ()), "a timestamp is not a whole number"),
        ((T0, T0, T0, ["phone"]), "sessions are not a tuple of strings"),
        ((T0, T0, T0, (), (7, T0), ()), "clients are not (family, time, ...)"),
        ((T0, T0, T0, (), ("gajim", T0, "x"), ()), "clients are not (family, time, ...)"),
        ((T0, T0, T0, ("pc",), ("gajim", T0), (1,)), "not one client family per session"),
    ],
)
def test_the_reason_says_what_is_wrong_and_shows_the_value(fields, reason):
    """What the log says of a damaged record: an admin can see what is wrong with which value."""
    with pytest.raises(DamagedRecord) as refused:
        decode_record(pickle.dumps(fields))
    assert str(refused.value) == f"{reason}: {fields!r}"


def test_a_long_damaged_value_is_shortened_in_the_reason():
    with pytest.raises(DamagedRecord) as refused:
        decode_record(pickle.dumps((T0, T0, T0, ("r" * 500,), ("gajim",), ())))
    reason = str(refused.value)
    assert reason.startswith(f"clients are not (family, time, ...): ({T0}, ")
    assert reason.endswith("...")
    assert len(reason) == len("clients are not (family, time, ...): ") + 120


@pytest.fixture(params=DAMAGED.values(), ids=DAMAGED.keys())
def store_with_a_damaged_record(request, tmp_path):
    """alice is fine (offline, active long ago); mallory's stored value is damaged."""
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("alice@example.test", UserRecord(T0 - 90 * 86_400, T0 - 90 * 86_400, 0))
    db = SqliteDict(path, readonly=False)
    db[b"user:mallory@example.test"] = request.param
    db.close()
    return path, request.param


def test_every_reader_treats_a_damaged_record_as_absent(store_with_a_damaged_record, caplog):
    path, value = store_with_a_damaged_record
    assert inactive_users(path, T0 - 86_400) == ["alice@example.test"]  # the retention scan
    with Store(path, readonly=True) as store:  # `count`, `history`: readers leave it in place
        assert store.get("mallory@example.test") is None
        assert [jid for jid, _ in store.users()] == ["alice@example.test"]
    with Store(path) as store:  # an import, even a real one, sees no record to merge with
        for dry_run in (True, False):
            report = import_activities(
                store,
                [Activity("mallory@example.test", last_login=T0)],
                ["example.test"],
                dry_run=dry_run,
            )
            assert report.imported == 1
    assert "mallory@example.test is damaged" in caplog.text
    with Store(path) as store:  # the bot: start-up, then the user comes back
        tracker = ActivityTracker(store, ["example.test"])
        assert tracker.load(T0).users == 2  # the import made mallory afresh
    with shelve.Shelf(SqliteDict(path, readonly=True)) as shelf:
        assert shelf.dict[b"damaged:user:mallory@example.test"] == value  # set aside, kept


def test_the_live_bot_sets_a_damaged_record_aside_and_tracks_the_user_afresh(
    store_with_a_damaged_record, caplog
):
    path, value = store_with_a_damaged_record
    with Store(path) as store:
        tracker = ActivityTracker(store, ["example.test"])
        assert tracker.load(T0).users == 1  # the scan skips it (and says so)
        assert tracker.session_started("mallory@example.test", "phone", T0)
        assert tracker.session_ended("mallory@example.test", "phone", T0 + 5)
        assert tracker.counts(T0 + 10).dau == 1
    assert caplog.text.count("set aside") == 1  # logged once
    with Store(path, readonly=True) as store:
        assert store.get("mallory@example.test") == UserRecord(
            T0, T0, T0 + 5, (), (UNKNOWN, T0 + 5)
        )
    with shelve.Shelf(SqliteDict(path, readonly=True)) as shelf:
        assert shelf.dict[b"damaged:user:mallory@example.test"] == value


class _RunsCode:
    """What an attacker who can write the store file would plant: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_value_that_would_run_code_is_a_damaged_record_and_runs_nothing(tmp_path, caplog):
    marker = tmp_path / "ran"
    planted = pickle.dumps((T0, T0, T0, _RunsCode(marker)))
    path = tmp_path / "activity.db"
    with Store(path) as store:
        store.put("alice@example.test", UserRecord(T0, T0, 0))
    db = SqliteDict(path, readonly=False)
    db[b"user:mallory@example.test"] = planted
    db[b"day:2027-01-15"] = pickle.dumps(_RunsCode(marker))
    db.close()
    with pytest.raises(DamagedRecord, match=r"refused to load posix\.system"):
        decode_record(planted)
    with Store(path, readonly=True) as store:
        assert store.get("mallory@example.test") is None
        assert [jid for jid, _ in store.users()] == ["alice@example.test"]
        assert store.days() == {}
    assert not marker.exists()


def test_the_batch_decoder_equals_one_by_one_decoding_around_damaged_values():
    good = [
        encode_record(
            UserRecord(T0 + n, T0 + n, n, ("pc",) * (n % 2), ("gajim", n), ("gajim",) * (n % 2))
        )
        for n in range(50)
    ]
    for damaged in DAMAGED.values():
        for where in (0, 1, 25, 50):
            values = [*good[:where], damaged, *good[where:]]
            expected = []
            for value in values:
                try:
                    expected.append(decode_record(value))
                except DamagedRecord:
                    expected.append(None)
            got = [None if isinstance(r, DamagedRecord) else r for r in decode_records(values)]
            assert got == expected
