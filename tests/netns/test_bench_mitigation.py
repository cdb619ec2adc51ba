"""The in-dataplane budget measurement: a real flood through the lab meets a tenant's class
budget, and the program starts dropping after about the budget's burst, with no control plane."""

from __future__ import annotations

import os

from appliance.bench.mitigation import measure


def test_a_syn_flood_is_cut_after_the_budgets_burst():
    budget = 2_000
    result = measure("syn", flood_pps=20_000, budget_pps=budget, duration_s=1.0)
    assert result["first_drop_ms"] is not None, result
    # Each CPU's share of the budget holds 100 ms of burst, and frames may arrive on any CPU; while
    # the bursts drain, the budget refills at its rate. Anything beyond that would be a leak.
    cpus = os.cpu_count() or 1
    burst = cpus * (budget // cpus // 10 + 2)
    refill = budget * result["first_drop_ms"] / 1000
    assert 0 < result["passed_before_first_drop"] <= burst + refill + cpus, result
