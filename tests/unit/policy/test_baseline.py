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
