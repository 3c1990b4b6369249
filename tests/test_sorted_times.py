"""SortedTimes, the index's packed sorted multiset, against a plain sorted list."""

from __future__ import annotations

from array import array
from bisect import bisect_right
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.core import sorted_times
from bot.core.sorted_times import SortedTimes

values = st.integers(-5, 40)
operations = st.lists(st.tuples(st.sampled_from(["add", "remove", "compact"]), values), max_size=80)


@given(start=st.lists(values, max_size=30), operations=operations, packed=st.booleans())
def test_behaves_as_a_sorted_list(start, operations, packed):
    model = sorted(start)
    times = SortedTimes(array("q", model) if packed else start)
    with mock.patch.object(sorted_times, "COMPACT_AT_LEAST", 3):  # compacts often
        for operation, value in operations:
            if operation == "add":
                times.add(value)
                model.append(value)
                model.sort()
            elif operation == "remove":
                if value in model:
                    times.remove(value)
                    model.remove(value)
                else:
                    with pytest.raises(ValueError, match="not in the list"):
                        times.remove(value)
            else:
                times.compact()
            assert len(times) == len(model)
            assert list(times) == model
            for probe in (-6, value - 1, value, value + 1, 41):
                assert times.bisect_right(probe) == bisect_right(model, probe)
                assert list(times.after(probe)) == [v for v in model if v > probe]


def test_changes_are_folded_into_the_array_once_they_are_half_of_it():
    times = SortedTimes(array("q", range(10_000)))
    for value in range(10_000, 14_999):
        times.add(value)
    assert len(times._added) == 4_999
    times.add(15_000)  # the 5,000th change: half of the array
    assert (len(times._added), len(times._removed), len(times._base)) == (0, 0, 15_000)
