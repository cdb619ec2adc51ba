"""Issue 18, item 2: per-address arrays of consecutive ticks ask the heap for the same sizes."""

from __future__ import annotations

import numpy as np

from dataplane.reader import rows_empty


def test_issue18_item2_rows_empty_rounds_rows_up_by_at_most_a_32nd():
    for n in (0, 1, 31, 32, 1000, 99_999, 100_000, 976_586, 988_068, 1_000_000):
        a = rows_empty(n, (13,), np.uint64)
        assert a.shape == (n, 13) and a.dtype == np.uint64 and a.flags.c_contiguous
        block = a.base if a.base is not None else a
        assert n <= len(block) <= max(n + n / 32, 1) + 1


def test_issue18_item2_reads_a_few_rows_apart_get_blocks_of_one_size():
    # A million addresses with the LRU's churn: a read has a few thousand rows more or less than the last.
    sizes = {len(rows_empty(n, (6,)).base) for n in (976_586, 977_000, 978_100, 979_000)}
    assert len(sizes) == 1
