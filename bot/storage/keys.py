"""The store's keys, its schema versions and its generation: what is where in the shelf.

Values are primitives only (tuples of ints and strings, see `codec.py`), never our own
classes, so no pickle ever depends on this package's code. Keys:
    "meta:schema"     -> int, SCHEMA_VERSION
    "meta:heartbeat"  -> int, the last time (Unix seconds) the writer was known alive
    "meta:pseudonymized" -> bool, users keyed by a keyed hash instead of their JID
    "meta:generation" -> bytes, random, replaced by every write transaction (what the index
                         snapshot, `index_snapshot.py`, is tied to)
    "user:<bare JID>" -> (first_seen, last_login, last_logout, (resource, ...)[, clients, ...])
                         (see codec.py)
    "damaged:user:<bare JID>" -> a damaged record's value, set aside, never deleted
    "day:<YYYY-MM-DD>" -> {domain: {"active": {"1d": n, ...}, "new": {...}, "peak_online": n}}
    "notify:<name>"   -> primitives of the admins' reports and alerts (see notify.py), each
                         written at once in a transaction of its own (`Store.put_note_now`)
"""

from __future__ import annotations

import os

from .shelf import Shelf

# 2: records may carry client families (codec.py). A store of schema 1 is read as it is and
# marked 2 by the first writer, so that an older release refuses it (it would take records
# with clients for damaged ones) instead of setting them aside.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
USER = "user:"
USER_PREFIX = USER.encode()
DAY = "day:"
NOTIFY = "notify:"
DAMAGED = "damaged:user:"
SCHEMA_KEY = "meta:schema"
HEARTBEAT_KEY = "meta:heartbeat"
PSEUDONYMIZED_KEY = "meta:pseudonymized"
GENERATION_KEY = "meta:generation"


def new_generation(shelf: Shelf) -> bytes:
    """A new generation, written inside the caller's transaction (so an index snapshot of the
    store before it is stale from the commit on); the store's once that transaction commits."""
    generation = os.urandom(16)
    shelf[GENERATION_KEY] = generation
    return generation
