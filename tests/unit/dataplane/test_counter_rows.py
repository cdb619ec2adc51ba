"""Issue 18 item 2: `CounterRows`, a read's counter rows whole or made a block at a time."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane.api import COUNTER_CLASSES, COUNTER_WORDS, CounterRows, DataplaneError, DestinationCounters

C = COUNTER_CLASSES


def test_issue18_rows_from_columns_lay_out_packets_bytes_and_drops_and_fill_any_range():
    packets = np.arange(3 * C, dtype=np.uint64).reshape(3, C)
    counters = DestinationCounters(np.zeros((3, 2), np.uint64), np.zeros(3, np.uint32), packets, packets + 100,
                                   np.array([7, 8, 9], np.uint64))
    np.testing.assert_array_equal(counters.packets, packets)
    np.testing.assert_array_equal(counters.bytes, packets + 100)
    np.testing.assert_array_equal(counters.dropped_packets, [7, 8, 9])
    out = np.zeros((2, COUNTER_WORDS), np.uint64)
    counters.rows.fill(1, 3, out)
    np.testing.assert_array_equal(out, counters.rows.whole()[1:3])
    with pytest.raises(ValueError, match="outside the read's 3"):
        counters.rows.fill(2, 4, out)
    with pytest.raises(ValueError, match="C-contiguous uint64"):
        counters.rows.fill(0, 2, np.zeros((2, COUNTER_WORDS), np.int64))
    with pytest.raises(ValueError, match="have shapes"):
        CounterRows.of_columns(packets, packets[:2], np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="or rows, not both"):
        DestinationCounters(np.zeros((3, 2), np.uint64), np.zeros(3, np.uint32), packets, rows=counters.rows)


def test_issue18_rows_made_on_demand_are_made_once_by_whole_and_refused_after_release():
    asked = []

    def fill(lo: int, hi: int, out: np.ndarray) -> None:
        asked.append((lo, hi))
        out[:] = np.arange(lo, hi, dtype=np.uint64)[:, None]

    rows = CounterRows(4, fill)
    first = rows.whole()
    assert rows.whole() is first and asked == [(0, 4)]
    rows.release()                              # made already: still there
    np.testing.assert_array_equal(rows.whole()[:, 0], [0, 1, 2, 3])
    lazy = CounterRows(4, fill)
    lazy.release()
    with pytest.raises(DataplaneError, match="earlier read"):
        lazy.whole()
    with pytest.raises(ValueError, match="either a fill function or the whole block"):
        CounterRows(4)
