"""Destination detection: its written-out thresholds equal the baseline's formula bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane.constants import MAX_TENANTS, NO_TENANT, TrafficClass
from policy.baseline import EwmaBaseline
from policy.config import PolicyConfig
from policy.detect import PolicyTable, destination_threshold

C = len(TrafficClass)


@pytest.mark.parametrize("cold_share", [0.0, 0.02, 0.9])
@pytest.mark.parametrize("uniform_sensitivity", [1.0, 2.0, None])
def test_destination_thresholds_equal_the_baseline_formula(cold_share, uniform_sensitivity):
    # Few warming-up elements are floored by index, many by masked passes; one policy for every row
    # is applied as a float (sensitivity 1 divides nothing), per-row policies as a column: all must
    # be EwmaBaseline.threshold exactly.
    rng = np.random.default_rng(3)
    cfg = PolicyConfig()
    n = 4000
    b = EwmaBaseline(n, half_life_s=cfg.half_life_s, warmup_s=cfg.warmup_s, k_sigma=cfg.k_sigma, margin=cfg.margin,
                     warmup_floor_pps=cfg.warmup_floor_pps, onset_floor_pps=cfg.onset_floor_pps)
    cold = rng.random((n, C)) < cold_share
    b.learned_s[:] = np.where(cold, rng.choice([0.0, 1.0, 3.0, 300.0], (n, C)), cfg.warmup_s + rng.random((n, C)))
    b.mean[:] = rng.lognormal(4.0, 2.5, (n, C))
    b.var[:] = (b.mean * rng.uniform(0.0, 0.6, (n, C))) ** 2
    uniform_policy = uniform_sensitivity is not None
    if uniform_policy:
        min_pps, sensitivity = np.full(n, 1000.0), np.full(n, uniform_sensitivity)
    else:
        min_pps, sensitivity = rng.choice([50.0, 1000.0], n), rng.choice([0.5, 1.0, 3.3], n)
    rows = np.arange(n)
    want = b.threshold(rows, min_pps, sensitivity)
    cap = b.baseline_threshold(rows)
    warm = b.learned_s >= b.warmup_s
    per_row = (float(min_pps[0]), float(sensitivity[0])) if uniform_policy else (min_pps[:, None], sensitivity[:, None])
    got = destination_threshold(cap, b.learned_s, warm, b, *per_row)
    assert np.array_equal(got, want)
    assert (got > min_pps[:, None]).any() and (got == min_pps[:, None]).any()    # both the floor and the baseline


def test_policy_rows_send_no_tenant_and_out_of_range_indices_to_the_sentinel_row():
    # Issue 18 item 2: one clamp instead of a compare, a clamp and a select over a million rows;
    # the same rows as the written-out rule.
    idx = np.array([0, 1, 5, MAX_TENANTS - 1, MAX_TENANTS, MAX_TENANTS + 7, NO_TENANT, NO_TENANT - 1], np.int64)
    want = np.where(idx == NO_TENANT, MAX_TENANTS, np.minimum(idx, MAX_TENANTS))
    got = PolicyTable.rows(idx)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert got[-2] == MAX_TENANTS
