"""The control plane's C loops (`dataplane.native`, `policy.native`): a source that does not compile says
why, the loops refuse arrays they would read or write out of bounds instead of touching memory, and
detection in AVX2 lanes gives the scalar loop's bits."""

from __future__ import annotations

import functools
import pathlib

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


def _detection_inputs(rng: np.random.Generator, n: int, classes: int) -> dict:
    """Rows of every kind detection tells apart: young, partial and warm elements, per-row policies with
    sensitivities of 1 and others, unknown and invalid rows, NaN and infinite rates, baselines read by
    slots in no order, and rates that jump over their mean (onset candidates)."""
    state = n + 7
    mean = rng.lognormal(3.0, 2.0, (state, classes))
    var = (mean * rng.uniform(0.0, 0.8, (state, classes))) ** 2
    learned = rng.choice([0.0, 2.0, 40.0, 300.0, 3600.0, 90_000.0], (state, classes))
    slots = rng.permutation(state)[:n]
    pps = mean[slots] * rng.choice([0.2, 0.9, 1.1, 4.0, 40.0], (n, classes))
    pps[rng.random((n, classes)) < 0.01] = np.nan
    pps[rng.random((n, classes)) < 0.01] = np.inf
    return dict(slots=slots, mean=mean, var=var, learned=learned, pps=pps, k_sigma=4.0, margin=1.5, warmup_s=3600.0,
                partial_s=300.0, floor=rng.uniform(10.0, 5000.0, classes), onset_floor=rng.uniform(5.0, 500.0, classes),
                min_pps=rng.choice([0.0, 50.0, 1000.0], n), sensitivity=rng.choice([1.0, 1.0, 0.5, 3.3], n),
                known=rng.random(n) < 0.9, valid=rng.random(n) < 0.95, onset_jump_share=0.5, onset_min_share=0.3)


def _detect(inputs: dict, keep: int) -> tuple[dict, np.ndarray]:
    n, classes = inputs["pps"].shape
    out = {name: np.empty((n, classes), dtype) for name, dtype in
           (("warm", bool), ("threshold", np.float64), ("anomalous", bool), ("over_cap", bool))}
    onset = policy_native.detect_rows(**inputs, **out, onset_keep=keep)
    return out, onset


@pytest.mark.parametrize("classes", [6, 5, 3])
@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("keep", [4, 100_000])
def test_detection_in_vector_lanes_equals_the_scalar_loop_bit_for_bit(monkeypatch, classes, uniform, keep):
    # Issue 18 item 2: detection takes a row's classes four at a time in AVX2 lanes (six classes: 4 + 2;
    # other counts take the loop with partial lanes); a CPU without AVX2 runs the scalar loop. Every output
    # and the onset candidates (all of them, or the few of highest ratio) must be the scalar loop's bits.
    # The build follows the CPU (-march=native): AVX2 lanes wherever the CPU has them (every machine this
    # suite runs on in CI), so there the comparison is of two different loops.
    has_avx2 = "avx2" in pathlib.Path("/proc/cpuinfo").read_text().split()
    assert policy_native.detect_lanes() == (4 if has_avx2 else 1)
    inputs = _detection_inputs(np.random.default_rng(classes), 3000, classes)
    if uniform:
        inputs.update(min_pps=50.0, sensitivity=1.0, known=None, valid=None)
    vector, vector_onset = _detect(inputs, keep)
    scalar_library = functools.partial(policy_native.library, scalar=True)
    assert scalar_library().sw_detect_lanes() == 1
    monkeypatch.setattr(policy_native, "library", scalar_library)
    scalar, scalar_onset = _detect(inputs, keep)
    for name in vector:
        assert vector[name].tobytes() == scalar[name].tobytes(), name
    assert np.array_equal(vector_onset, scalar_onset)
    # The inputs reach every branch: each kind of threshold, anomalies, candidates beyond `keep`.
    warm, young = vector["warm"], inputs["learned"][inputs["slots"]] < inputs["partial_s"]
    assert warm.any() and young.any() and (~warm & ~young).any()
    assert vector["anomalous"].any() and vector["over_cap"].any() and not vector["anomalous"].all()
    every_candidate = _detect(inputs, 100_000)[1]
    assert len(every_candidate) > 4 and len(vector_onset) == min(keep, len(every_candidate))
