"""Per-second EWMA baselines: convergence, warm-up, threshold formula, attacks not learned."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane.constants import TrafficClass
from policy.baseline import EwmaBaseline
from policy.config import PolicyConfig

C = len(TrafficClass)
UDP = int(TrafficClass.UDP)


def model(**kw) -> EwmaBaseline:
    cfg = PolicyConfig(**kw)
    return EwmaBaseline(4, half_life_s=cfg.half_life_s, warmup_s=cfg.warmup_s, k_sigma=cfg.k_sigma,
                        margin=cfg.margin, warmup_floor_pps=cfg.warmup_floor_pps, onset_floor_pps=cfg.onset_floor_pps)


def feed(b: EwmaBaseline, values: np.ndarray, dt: float = 1.0, learn: bool = True) -> None:
    rows = np.arange(values.shape[0])
    for v in values.T:
        pps = np.zeros((len(rows), C))
        pps[:, UDP] = v
        b.update(rows, pps, dt, np.full((len(rows), C), learn))


def test_learns_mean_and_sigma_of_stationary_traffic():
    rng = np.random.default_rng(1)
    b = model()                                  # defaults: 30 min half-life, 10 min warm-up
    feed(b, rng.normal(5000, 200, (1, 1800)))
    assert b.mean[0, UDP] == pytest.approx(5000, rel=0.02)
    assert np.sqrt(b.var[0, UDP]) == pytest.approx(200, rel=0.15)


def test_warm_up_uses_floors_high_at_first_then_onset_floors_raised_by_the_partial_baseline():
    b = model()                         # warm-up 600 s; UDP floors 60,000 pps, onset 2,000; SYN 20,000, onset 5,000
    rows = np.array([0, 1])
    min_pps, sens = np.array([1000.0, 1000.0]), np.array([1.0, 1.0])
    assert b.threshold(rows, min_pps, sens)[0, UDP] == 60_000          # a new address: only obvious floods
    feed(b, np.array([[3000.0] * 2, [100.0] * 2]))
    assert b.threshold(rows, min_pps, sens)[0, UDP] == 60_000          # too few seconds seen to know its traffic
    feed(b, np.array([[3000.0] * 597, [100.0] * 597]))
    assert not b.warm(rows)[0, UDP]
    # A quiet address: the onset floor. A busier one keeps a threshold above its own traffic.
    assert b.threshold(rows, min_pps, sens)[1, UDP] == 2_000
    assert b.threshold(rows, min_pps, sens)[0, UDP] == pytest.approx(3000 * 1.5)
    assert b.threshold(rows, min_pps, sens)[0, int(TrafficClass.TCP_SYN)] == 5_000
    feed(b, np.array([[3000.0], [100.0]]))
    assert b.warm(rows)[0, UDP]
    assert b.threshold(rows, min_pps, sens)[0, UDP] == pytest.approx(3000 * 1.5)   # sigma 0: mean · margin
    # Other classes of the row are warm too (they learned zeros): only min_pps applies.
    assert b.threshold(rows, min_pps, sens)[0, int(TrafficClass.ICMP)] == 1000


def test_threshold_formula_with_sensitivity():
    b = model(warmup_s=0.0)
    b.mean[0, UDP], b.var[0, UDP], b.learned_s[0, UDP] = 2000.0, 100.0 ** 2, 10.0
    rows = np.array([0])
    got = b.threshold(rows, np.array([1000.0]), np.array([2.0]))[0, UDP]
    assert got == pytest.approx(max(1000, (2000 + 4 * 100) * 1.5 / 2.0))
    got = b.threshold(rows, np.array([5000.0]), np.array([2.0]))[0, UDP]
    assert got == 5000


def test_seconds_not_learned_leave_the_baseline_untouched():
    b = model(warmup_s=60.0)
    feed(b, np.full((1, 120), 1000.0))
    before = (b.mean.copy(), b.var.copy(), b.learned_s.copy())
    feed(b, np.full((1, 3600), 200_000.0), learn=False)     # an hour-long attack, flagged every second
    assert np.array_equal(b.mean, before[0]) and np.array_equal(b.var, before[1])
    assert np.array_equal(b.learned_s, before[2])


def test_a_learned_spike_counts_at_most_as_much_as_the_threshold():
    b = model(warmup_s=60.0, half_life_s=300.0)
    feed(b, np.full((1, 600), 1000.0))
    alpha = 1.0 - 2.0 ** (-1.0 / 300.0)
    feed(b, np.full((1, 1), 50_000.0))      # a benign spike (learned): winsorised at mean · margin
    assert b.mean[0, UDP] == pytest.approx(1000.0 + alpha * (1500.0 - 1000.0))


def test_variable_tick_length_learns_per_second():
    a, b = model(warmup_s=0.0, half_life_s=60.0), model(warmup_s=0.0, half_life_s=60.0)
    feed(a, np.full((1, 300), 100.0))
    feed(b, np.full((1, 300), 100.0))
    feed(a, np.full((1, 60), 110.0), dt=1.0)
    feed(b, np.full((1, 120), 110.0), dt=0.5)
    assert a.mean[0, UDP] == pytest.approx(b.mean[0, UDP], rel=1e-3)
    assert a.mean[0, UDP] == pytest.approx(105.0, abs=0.2)    # one half-life: halfway to the new level


def _random_state(rng: np.random.Generator, b: EwmaBaseline, rows: int) -> np.ndarray:
    """Rows in every phase (new, partial, warm, past the running-average seconds) and rates of
    which a share lies above the caps; returns the (rows, C) rates."""
    b.resize(rows)
    b.learned_s[:] = rng.choice([0.0, 1.0, 2.5, 5.0, 599.0, 600.0, 700.0, 5000.0], (rows, C))
    b.mean[:] = np.where(b.learned_s > 0, rng.lognormal(3.0, 2.0, (rows, C)), 0.0)
    b.var[:] = np.where(b.learned_s > 1, (b.mean * rng.uniform(0.0, 0.5, (rows, C))) ** 2, 0.0)
    return b.mean * rng.choice([0.0, 0.5, 1.0, 1.2, 3.0, 50.0], (rows, C)) + rng.choice([0.0, 0.5, 7.0], (rows, C))


def _written_out_update(b: EwmaBaseline, pps: np.ndarray, dt: float, learn: np.ndarray) -> tuple[np.ndarray, ...]:
    """The module docstring's update, one np.where per rule, on copies of the whole state."""
    mean, var, learned = b.mean.copy(), b.var.copy(), b.learned_s.copy()
    cap = (mean + b.k_sigma * np.sqrt(var)) * b.margin
    alpha = np.where(learn, np.maximum(dt / (learned + dt), 1.0 - 2.0 ** (-dt / b.half_life_s)), 0.0)
    x = np.where((learned >= b.warmup_s) & (learned > 0), np.minimum(pps, np.maximum(cap, 1.0)), pps)
    d = x - mean
    return mean + alpha * d, (var + alpha * d * d) * (1.0 - alpha), np.where(learn, learned + dt, learned)


@pytest.mark.parametrize("not_learned_share", [0.0, 0.01, 0.6, 1.0])
def test_update_equals_the_written_out_model_bit_for_bit_whichever_share_is_not_learned(not_learned_share):
    # The update takes the elements not learned out by index when they are few, by a zero weight
    # when they are many: both must be the model's arithmetic exactly, as must in-place slices.
    rng = np.random.default_rng(7)
    rows = 3000
    for dt in (1.0, 0.37):
        b = model(warmup_s=600.0)
        pps = _random_state(rng, b, rows)
        learn = rng.random((rows, C)) >= not_learned_share
        want = _written_out_update(b, pps, dt, learn)
        assert (pps > (b.mean + 4 * np.sqrt(b.var)) * 1.5).mean() > 0.2      # many clipped elements
        sliced = model(warmup_s=600.0)
        sliced.resize(rows)
        sliced.mean[:], sliced.var[:], sliced.learned_s[:] = b.mean, b.var, b.learned_s
        b.update(np.arange(rows), pps, dt, learn)
        sliced.update(slice(0, rows), pps, dt, learn)
        for got in (b, sliced):
            assert np.array_equal(got.mean, want[0])
            assert np.array_equal(got.var, want[1])
            assert np.array_equal(got.learned_s, want[2])


def test_update_with_the_callers_cap_equals_a_plain_update():
    rng = np.random.default_rng(8)
    plain, given = model(warmup_s=600.0), model(warmup_s=600.0)
    pps = _random_state(rng, plain, 500)
    given.resize(500)
    given.mean[:], given.var[:], given.learned_s[:] = plain.mean, plain.var, plain.learned_s
    rows = rng.permutation(500)[:400]
    learn = rng.random((400, C)) > 0.05
    plain.update(rows, pps[rows], 1.0, learn)
    given.update(rows, pps[rows], 1.0, learn, cap=given.baseline_threshold(rows))
    for a, b in ((plain.mean, given.mean), (plain.var, given.var), (plain.learned_s, given.learned_s)):
        assert np.array_equal(a, b)
    untouched = np.setdiff1d(np.arange(500), rows)
    assert np.array_equal(plain.learned_s[untouched], given.learned_s[untouched])
    with pytest.raises(ValueError, match="rows outside"):
        given.update(np.array([500]), pps[:1], 1.0, learn[:1], cap=np.ones((1, C)))


def test_update_works_out_the_caps_of_clipped_rows_as_the_written_out_model():
    # Issue 18 item 2: detection keeps no (N, C) cap for learning; the update works each cap out from the
    # state it is about to change (sqrt(var)·k + mean, then the margin), so the many clipped (winsorised)
    # rows learn the written-out model's values bit for bit, with or without the caller's caps or flags.
    rng = np.random.default_rng(10)
    b = model(warmup_s=600.0)
    pps = _random_state(rng, b, 2000)
    rows = np.arange(2000)
    learn = rng.random((2000, C)) > 0.05
    want = _written_out_update(b, pps, 1.0, learn)
    cap = b.baseline_threshold(rows)
    assert ((pps > np.maximum(cap, 1.0)) & (b.learned_s >= b.warmup_s)).sum() > 100     # many clipped
    given, flagged = model(warmup_s=600.0), model(warmup_s=600.0)
    for other in (given, flagged):
        other.resize(2000)
        other.mean[:], other.var[:], other.learned_s[:] = b.mean, b.var, b.learned_s
    b.update(rows, pps, 1.0, learn)
    given.update(rows, pps, 1.0, learn, cap=cap)
    # Detection's flags of the rates over max(cap, 1): the caps worked out there only.
    flagged.update(rows, pps, 1.0, learn, over_cap=pps > np.maximum(cap, 1.0))
    for got in (b, given, flagged):
        assert np.array_equal(got.mean, want[0]) and np.array_equal(got.var, want[1])
        assert np.array_equal(got.learned_s, want[2])


@pytest.mark.parametrize("young_share", [0.0, 0.02, 0.5])
def test_update_of_long_learned_rows_equals_the_written_out_model_bit_for_bit(young_share):
    # Rows that learned for hours take the EWMA weight without the running-average division,
    # the few young ones by index: the model's arithmetic exactly, at any tick length.
    rng = np.random.default_rng(9)
    rows = 3000
    for dt in (1.0, 0.05, 7.0):
        b = model(warmup_s=600.0)
        pps = _random_state(rng, b, rows)
        b.learned_s[:] = np.where(rng.random((rows, C)) < young_share, rng.choice([0.0, 3.0, 2500.0, 4000.0, 5300.0],
                                                                                  (rows, C)), 86_400.0)
        learn = rng.random((rows, C)) > 0.01
        want = _written_out_update(b, pps, dt, learn)
        b.update(np.arange(rows), pps, dt, learn)
        assert np.array_equal(b.mean, want[0]) and np.array_equal(b.var, want[1])
        assert np.array_equal(b.learned_s, want[2])
