"""`seawall status` shows each tenant's per-destination class budgets and where they come from."""

from __future__ import annotations

from appliance.commands.status import render_human
from dataplane.constants import TrafficClass
from policy.budgets import BudgetDeriver
from tenants.policy import TenantPolicy


def test_status_prints_budgets_from_policy_and_baseline():
    deriver = BudgetDeriver(push=None)
    deriver.in_force = {0: {TrafficClass.UDP: 5843}}    # what a derivation pushed
    budgets = deriver.effective(0, TenantPolicy(syn_rate_pps=3000))
    summary = {"control_plane": "running", "status_age_s": 0.4, "dataplane_attached_to": [],
               "tenants": {"alpha": {"mode": "mitigate", "passed_pps": 10.0, "dropped_pps": 0.0,
                                     "passed_packets": 100, "dropped_packets": 0, "class_budgets": budgets}}}
    out = render_human(summary)
    line = next(x for x in out.splitlines() if x.startswith("alpha") and "tcp_syn" in x)
    assert "tcp_syn 3000 (policy)" in line and "udp 5843 (baseline)" in line and "icmp 0 (none)" in line
