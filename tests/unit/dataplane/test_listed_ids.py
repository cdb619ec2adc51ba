"""Issue 18 item 2: the spill map's ids from its previous list (`AddressMemo.listed_ids`) are the hash
lookup's, bit for bit, on random lists with keys added, removed and reordered between reads."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane.reader import AddressMemo


def next_list(rng: np.random.Generator, keys: np.ndarray, pool: np.ndarray, changes: int, swaps: int) -> np.ndarray:
    """The list after `changes` removals and insertions at random places, and `swaps` neighbours swapped."""
    keep = np.ones(len(keys), bool)
    keep[rng.choice(len(keys), min(changes, len(keys)), replace=False)] = False
    out = list(keys[keep])
    for key in pool[rng.choice(len(pool), changes, replace=False)]:
        out.insert(int(rng.integers(0, len(out) + 1)), key)
    out = np.array(out, np.uint64).reshape(-1, 2)
    for i in rng.integers(0, max(len(out) - 1, 1), swaps):
        out[[i, i + 1]] = out[[i + 1, i]]
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("size", "changes", "swaps"), [(5000, 40, 10), (5000, 0, 0), (3000, 1500, 500),
                                                        (100, 5, 2), (40, 3, 0)])
def test_issue18_listed_ids_are_the_lookups(seed, size, changes, swaps):
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**63, (4 * size + 100, 2), dtype=np.uint64)
    pool[: len(pool) // 2, 0] = np.uint64(0xFFFF0000)          # IPv4-mapped keys share their first word
    listed = pool[:size].copy()
    fresh = pool[size:]
    fast, plain = AddressMemo(1 << 20), AddressMemo(1 << 20)
    for _ in range(6):
        others = np.concatenate([listed[rng.choice(len(listed), 3)], fresh[rng.choice(len(fresh), 2)]])
        got_others, got = fast.listed_ids(listed, others)
        want = plain.ids(np.concatenate([others, listed]), clear=False)
        np.testing.assert_array_equal(got_others, want[:len(others)])
        np.testing.assert_array_equal(got, want[len(others):])
        assert len(fast) == len(plain)
        listed = next_list(rng, listed, fresh, changes, swaps)


def test_issue18_listed_ids_after_the_memo_clears():
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**63, (3000, 2), dtype=np.uint64)
    memo = AddressMemo(2000)
    empty = np.zeros((0, 2), np.uint64)
    memo.slot_ids(empty, np.zeros(0, bool))
    _, first = memo.listed_ids(keys, empty)
    np.testing.assert_array_equal(first, AddressMemo(1 << 20).ids(keys))
    memo.slot_ids(empty, np.zeros(0, bool))          # over its limit: forgets everything
    _, again = memo.listed_ids(keys[::-1], empty)
    assert len(memo) == 3000                          # every key new again, with ids as a fresh memo gives
    np.testing.assert_array_equal(again, AddressMemo(1 << 20).ids(keys[::-1]))
