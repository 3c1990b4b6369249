"""The index's sorted timestamps: a packed array and the changes since, bisected in O(log n).

`SortedTimes` is a sorted multiset of ints (Unix seconds) that costs 8 bytes a value as loaded
(an `array`, no Python int each) and O(log n) per change; counter.py's index keeps its offline
users' last activity, first seen times and each client family's times in one each.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList

COMPACT_AT_LEAST = 4096  # changes kept beside the packed array before it is rebuilt


class SortedTimes:
    """A sorted multiset of timestamps: a packed array (8 bytes each, no Python int) as loaded,
    and the changes since in two sorted lists, values added and values taken out of the array.

    The array is rebuilt with the changes in it (`compact`) once they number half of it (at
    least COMPACT_AT_LEAST), on the caller's thread: with ten million users (5 million times
    kept) a pause of one to two seconds of the event loop every 2.6 million changes. Until
    then each change costs a Python int in a sorted list (about 40 bytes, as the whole index
    did before): at most half as many as the array holds."""

    __slots__ = ("_added", "_base", "_removed")

    def __init__(self, values: Iterable[int] = ()) -> None:
        """`values` in any order (an `array` of sorted ones is taken as it is)."""
        if isinstance(values, array):
            self._base = values
        else:
            self._base = array("q", sorted(values))
        self._added: SortedList[int] = SortedList()
        self._removed: SortedList[int] = SortedList()

    def __len__(self) -> int:
        return len(self._base) + len(self._added) - len(self._removed)

    def bisect_right(self, value: int) -> int:
        """How many values are <= `value`."""
        at = bisect_right(self._base, value)
        if self._added:
            at += self._added.bisect_right(value)
        if self._removed:
            at -= self._removed.bisect_right(value)
        return at

    def add(self, value: int) -> None:
        removed = self._removed
        if removed and value in removed:
            removed.remove(value)  # back in the array
            return
        self._added.add(value)
        self._compact_if_due()

    def update(self, values: Iterable[int]) -> None:
        for value in values:
            self.add(value)

    def remove(self, value: int) -> None:
        """Take one `value` out; ValueError if there is none (as `SortedList.remove`)."""
        added = self._added
        if added and value in added:
            added.remove(value)
            return
        base, removed = self._base, self._removed
        in_base = bisect_right(base, value) - bisect_left(base, value)
        if in_base <= (removed.count(value) if removed else 0):
            raise ValueError(f"{value} is not in the list")
        removed.add(value)
        self._compact_if_due()

    def after(self, floor: int | None = None) -> array[int]:
        """The values > `floor` (None: all), sorted, packed (for the index snapshot)."""
        base, added, removed = self._base, self._added, self._removed
        start = 0 if floor is None else bisect_right(base, floor)
        if not removed:
            kept = base[start:]
        else:  # the array without the values taken out: slices between them, copied in C
            kept, at = array("q"), start
            for value in sorted(set(removed.irange(floor, inclusive=(False, True)))):
                begin = bisect_left(base, value)
                kept.extend(base[at:begin])
                at = begin + removed.count(value)
            kept.extend(base[at:])
        if not added:
            return kept
        new = list(added.irange(floor, inclusive=(False, True)))
        return array("q", sorted(kept.tolist() + new)) if new else kept

    def compact(self) -> None:
        """Fold the changes into the array."""
        if self._added or self._removed:
            self._base = self.after()
            self._added.clear()
            self._removed.clear()

    def _compact_if_due(self) -> None:
        changes = len(self._added) + len(self._removed)
        if changes >= COMPACT_AT_LEAST and 2 * changes >= len(self._base):
            self.compact()

    def __iter__(self) -> Iterator[int]:
        return iter(self.after())
