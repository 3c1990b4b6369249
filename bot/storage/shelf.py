"""A `shelve.Shelf` over the SQLite mapping that never runs code from the file.

The parts live beside it: the mapping (`sqlite_dict.py`), the safe unpickler (`primitives.py`),
the file checks (`files.py`), the writer's lock (`lock.py`), the errors (`errors.py`).
"""

from __future__ import annotations

import pickle
import shelve
from typing import Any

from .files import store_files as store_files  # bot/app/daemon.py imports it from here
from .primitives import load_primitives
from .sqlite_dict import SqliteDict


class Shelf(shelve.Shelf[Any]):
    """A Shelf over a SqliteDict that never runs code from the file."""

    dict: SqliteDict
    keyencoding: str  # set by shelve.Shelf, missing from its stubs

    def __init__(self, db: SqliteDict) -> None:
        super().__init__(db, protocol=pickle.HIGHEST_PROTOCOL)

    def __getitem__(self, key: str) -> Any:
        return load_primitives(self.dict[key.encode(self.keyencoding)])
