"""The in-dataplane budget measurement: a real flood through the lab meets a tenant's class
budget, and the program starts dropping after about the budget's burst, with no control plane."""

from __future__ import annotations

import os

from appliance.bench.mitigation import measure


def test_a_syn_flood_is_cut_after_the_budgets_burst():
    budget = 2_000
    result = measure("syn", flood_pps=20_000, budget_pps=budget, duration_s=1.0)
    assert result["first_drop_ms"] is not None, result
    # The budget admits 100 ms of its per-CPU share as burst before the first drop.
    burst = budget // (os.cpu_count() or 1) // 10 + 2
    assert 0 < result["passed_before_first_drop"] <= 2 * burst, result
