"""The pending writes: newest change wins, a failed batch comes back under newer changes."""

from __future__ import annotations

from bot.core.model import UserRecord
from bot.storage.pending import PendingWrites

from .support import T0

OLD = UserRecord(T0, T0, 0, ("phone",))
NEW = UserRecord(T0, T0, T0 + 5)


def test_reads_see_the_pending_change_over_the_batch_being_written():
    pending = PendingWrites()
    pending.put("alice", OLD)
    batch = pending.take(T0)
    assert pending.has("alice")
    assert pending.record("alice") == OLD  # from the batch
    pending.put("alice", NEW)
    assert pending.record("alice") == NEW
    assert pending.records() == {"alice": NEW}
    assert len(pending) == 1
    pending.settle(batch, written=True)
    assert pending.records() == {"alice": NEW}


def test_a_failed_batch_comes_back_and_a_change_made_meanwhile_wins():
    pending = PendingWrites()
    pending.put("alice", OLD)
    pending.put("bob", OLD)
    pending.put_day("2027-01-15", {"example.test": {"peak_online": 3}})
    batch = pending.take(T0)
    assert not pending.has_changes()
    pending.put("alice", NEW)
    pending.settle(batch, written=False)
    assert pending.writing is None
    assert pending.records() == {"alice": NEW, "bob": OLD}
    assert pending.days() == {"2027-01-15": {"example.test": {"peak_online": 3}}}


def test_a_batch_taken_over_by_a_later_one_settles_nothing_itself():
    pending = PendingWrites()
    pending.put("alice", OLD)
    first = pending.take(T0)
    pending.put("bob", NEW)
    second = pending.take(T0 + 1)  # a synchronous flush while `first` is written
    assert first.superseded
    assert second.records == {"alice": OLD, "bob": NEW}
    pending.settle(first, written=False)  # its failure changes nothing: `second` has it all
    assert pending.records() == {"alice": OLD, "bob": NEW}  # the batch being written
    assert not pending.has_changes()
    pending.settle(second, written=True)
    assert len(pending) == 0


def test_a_damaged_value_is_set_aside_and_the_record_deleted_with_the_next_flush():
    pending = PendingWrites()
    pending.set_aside("mallory", b"\x00garbage")
    batch = pending.take(T0)
    assert batch.records == {"mallory": None}
    assert batch.set_aside == {"damaged:user:mallory": b"\x00garbage"}


def test_discard_drops_the_pending_changes_and_says_how_many_users():
    pending = PendingWrites()
    assert pending.discard() == (0, False)
    pending.put_day("2027-01-15", {})
    assert pending.discard() == (0, True)  # a day's snapshot lost is a loss too
    pending.put("alice", OLD)
    pending.put("bob", None)
    assert pending.discard() == (2, True)
    assert len(pending) == 0
