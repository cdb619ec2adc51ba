"""The control plane's C loops (`dataplane.native`, `policy.native`): a source that does not compile says
why, and the loops refuse arrays they would read or write out of bounds instead of touching memory."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane import native
from policy import native as policy_native


def test_a_source_that_does_not_compile_names_the_file_and_the_compilers_message(tmp_path):
    source = tmp_path / "broken.c"
    source.write_text("int sw_broken(void) { return undeclared_name; }\n")
    with pytest.raises(native.NativeBuildError, match=r"broken\.c.*undeclared_name"):
        native.compile_library(source, {"sw_broken": (native.i64, [])})


def test_the_merge_index_lists_each_present_id_once_in_ascending_order_skipping_minus_one():
    ids, row_of = native.merge_index(6, np.array([4, 1]), np.array([], np.int64), np.array([-1, 1, 3]))
    assert ids.tolist() == [1, 3, 4] and [row_of[i] for i in (1, 3, 4)] == [0, 1, 2]


def test_ids_slots_and_rows_out_of_range_are_refused():
    with pytest.raises(ValueError, match="outside 0..5"):
        native.merge_index(6, np.array([6]), np.array([], np.int64), np.array([], np.int64))
    mean = np.zeros((4, 6))
    out = {name: np.empty((1, 6), dtype) for name, dtype in
           (("warm", bool), ("threshold", np.float64), ("anomalous", bool), ("over_cap", bool))}
    onset = {"onset_jump_share": 0.75, "onset_min_share": 0.1, "onset_keep": 8}
    with pytest.raises(ValueError, match="slots outside"):
        policy_native.detect_rows(np.array([4]), mean, mean, mean, np.zeros((1, 6)), k_sigma=4.0, margin=1.5,
                                  warmup_s=600.0, partial_s=3.0, floor=np.zeros(6), onset_floor=np.zeros(6),
                                  min_pps=0.0, sensitivity=1.0, **out, **onset)
    with pytest.raises(ValueError, match="writable C-contiguous"):
        policy_native.detect_rows(np.array([0]), mean, mean, mean, np.zeros((1, 6)), k_sigma=4.0, margin=1.5,
                                  warmup_s=600.0, partial_s=3.0, floor=np.zeros(6), onset_floor=np.zeros(6),
                                  min_pps=0.0, sensitivity=1.0, **{**out, "threshold": np.empty((1, 6), np.float32)},
                                  **onset)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        policy_native.detect_rows(np.array([0]), mean, mean, mean, np.zeros((1, 6)), k_sigma=4.0, margin=1.5,
                                  warmup_s=600.0, partial_s=3.0, floor=np.zeros(6), onset_floor=np.zeros(6),
                                  min_pps=0.0, sensitivity=1.0, **out, **{**onset, "onset_keep": 0})
    with pytest.raises(ValueError, match="rows outside"):
        policy_native.learn_rows(np.array([-1]), mean, mean.copy(), mean.copy(), np.zeros((1, 6)), None,
                                 np.ones((1, 6), bool), dt=1.0, ewma=0.01, warmup_s=600.0, k_sigma=4.0, margin=1.5)
    state = (np.zeros((1, 13), np.uint64), np.zeros(1, np.int64), np.zeros(1, bool))
    with pytest.raises(ValueError, match="slots outside"):
        policy_native.slot_rates(np.zeros((1, 13), np.uint64), np.array([1]), *state, 1, 6, 1.0, np.empty((1, 6)),
                                 np.empty((1, 7), np.uint32))
    with pytest.raises(ValueError, match="listed twice"):
        policy_native.slot_rates(np.zeros((2, 13), np.uint64), np.array([0, 0]), *state, 1, 6, 1.0,
                                 np.empty((2, 6)), np.empty((2, 7), np.uint32))


def test_store_columns_are_the_tenant_word_halves_of_every_slot():
    """The spill store's one-pass column read against numpy's two passes over the same word: the tenant
    (low half) and the claimed flag (high half nonzero), and the count of claimed slots."""
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, size=(500, 16), dtype=np.uint64)
    words[::3, 13] &= np.uint64(0xFFFFFFFF)          # a third of the slots unclaimed
    tenants, claimed, count = native.store_columns(words, 13)
    assert tenants.dtype == np.uint32 and tenants.tolist() == (words[:, 13] & np.uint64(0xFFFFFFFF)).tolist()
    assert claimed.tolist() == ((words[:, 13] >> np.uint64(32)) != 0).tolist()
    assert count == int(np.count_nonzero(claimed)) == 500 - len(range(0, 500, 3))
    with pytest.raises(ValueError, match="outside"):
        native.store_columns(words, 16)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.store_columns(words[:, :15], 13)
