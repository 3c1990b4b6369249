"""How a UserRecord is stored: one encoder, one decoder, one definition of a valid record.

A stored record is a pickled plain tuple `(first_seen, last_login, last_logout, (resource, ...))`
of ints and strings, never an object of this package (so no stored value depends on our code).
Everything that reads records (the store, the start-up scan, the importer through the store, the
retention scan) decodes them here, and decoding never runs code found in the file (see
`shelf.PrimitivesUnpickler`): a value that is not a valid record is a `DamagedRecord`.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from typing import Any

from .model import UserRecord
from .shelf import PrimitivesUnpickler, load_primitives

_new_record = tuple.__new__  # UserRecord from an already checked tuple, without re-checking


class DamagedRecord(ValueError):
    """A stored value that is not a valid record; the message says what is wrong with it."""


def encode_record(record: UserRecord) -> bytes:
    first_seen, last_login, last_logout, sessions = record
    return pickle.dumps(
        (first_seen, last_login, last_logout, tuple(sessions)), pickle.HIGHEST_PROTOCOL
    )


def decode_record(value: bytes) -> UserRecord:
    """The record stored as `value`, or DamagedRecord saying why it is not one."""
    try:
        fields = load_primitives(value)
    except Exception as exc:  # any unpickling failure, or a refused class: a damaged value
        raise DamagedRecord(f"cannot be unpickled ({exc})") from None
    return _record(fields)


def decode_records(values: Sequence[bytes]) -> list[UserRecord | DamagedRecord]:
    """`decode_record` of each value, the damaged ones as their DamagedRecord.

    The start-up scan decodes a million records: one unpickler reads a whole batch from one
    buffer (a new unpickler per value costs as much again as the decoding). If anything in the
    batch is amiss (a damaged value may also have read into its neighbours), the batch is
    decoded again value by value, so that each damaged value is named and no other is lost.
    """
    stream = io.BytesIO(b"".join(values))
    load = PrimitivesUnpickler(stream).load
    try:
        records: list[UserRecord | DamagedRecord] = [_record(load()) for _ in values]
        if stream.tell() == len(stream.getbuffer()):
            return records
    except Exception:  # a damaged value somewhere in the batch
        pass
    return [_decoded_or_damage(value) for value in values]


def _decoded_or_damage(value: bytes) -> UserRecord | DamagedRecord:
    try:
        return decode_record(value)
    except DamagedRecord as damage:
        return damage


def _record(fields: Any) -> UserRecord:
    """The one definition of a valid record; four type checks, cheap enough for a million."""
    if type(fields) is not tuple or len(fields) != 4:
        raise DamagedRecord(f"not a 4-tuple: {_short(fields)}")
    first_seen, last_login, last_logout, sessions = fields
    if type(first_seen) is not int or type(last_login) is not int or type(last_logout) is not int:
        raise DamagedRecord(f"a timestamp is not a whole number: {_short(fields)}")
    if type(sessions) is not tuple or (sessions and not all(type(s) is str for s in sessions)):
        raise DamagedRecord(f"sessions are not a tuple of strings: {_short(fields)}")
    return _new_record(UserRecord, fields)  # type: ignore[no-any-return]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
