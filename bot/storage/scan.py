"""The full scan: every user's record, streamed in one query, unwritten changes over the file."""

from __future__ import annotations

from collections.abc import Iterator

from ..core.model import UserRecord
from .codec import DamagedRecord, decode_records
from .connection import StoreConnection
from .damaged import log_damaged
from .keys import USER_PREFIX


def scan_users(
    connection: StoreConnection, unwritten: dict[str, UserRecord | None]
) -> Iterator[tuple[bytes, UserRecord]]:
    """(key as UTF-8 bytes, record) of every user: the file's records, decoded in pieces,
    except those `unwritten` changes (None: deleted), then those. Damaged records are logged
    and skipped, never deleted. The start-up load of a million users decodes only the few
    keys it keeps."""
    pending = {key.encode(): record for key, record in unwritten.items()}
    prefix = len(USER_PREFIX)
    for piece in connection.rows_with_prefix(USER_PREFIX):
        records = decode_records([value for _key, value in piece])
        for (key, _value), record in zip(piece, records, strict=True):
            raw_key = key[prefix:]
            if pending and raw_key in pending:
                continue
            if isinstance(record, DamagedRecord):
                log_damaged(raw_key, record)
            else:
                yield raw_key, record
    for raw_key, unwritten_record in pending.items():
        if unwritten_record is not None:
            yield raw_key, unwritten_record
