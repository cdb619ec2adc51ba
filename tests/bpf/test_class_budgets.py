"""`Dataplane.set_class_budgets`: budgets the policy engine derives reach the XDP program's
per-destination token buckets in place, without a tenant-set flip (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import pytest

from dataplane.constants import DropReason, TrafficClass
from tests.bpf import frames
from tests.bpf.conftest import (
    CLEAN_SRC,
    STANDARD_TENANTS,
    XDP_REDIRECT,
    apply_tenant_dicts,
    run,
    tenant_counters,
)

BURST = 1000   # packets sent within microseconds: far above any budget below 1,000,000 pps


def flood(dp, tenant_idx: int, dst: str, n: int = BURST) -> tuple[int, int]:
    """(passed, dropped over budget) of `n` UDP packets to `dst`."""
    before = tenant_counters(dp, tenant_idx)
    dp.test_run(frames.udp("198.19.80.8", dst, sport=5555, dport=28960), repeat=n)
    after = tenant_counters(dp, tenant_idx)
    over = int(after.reason_packets[0, DropReason.HEURISTIC] - before.reason_packets[0, DropReason.HEURISTIC])
    passed = int(after.passed_packets[0] - before.passed_packets[0])
    return passed, over


def test_a_pushed_budget_drops_above_it_and_passes_below_it(dp, tenants):
    alpha = tenants["alpha"]
    # Each address has its own bucket per CPU: every case uses a fresh one.
    assert flood(dp, alpha, "198.51.100.71") == (BURST, 0)     # the standard set has no budget
    in_force = dp.set_class_budgets(alpha, {TrafficClass.UDP: 2000})
    assert in_force == {TrafficClass.TCP_SYN: 0, TrafficClass.UDP: 2000, TrafficClass.ICMP: 0,
                        TrafficClass.FRAGMENT: 0}
    passed, over = flood(dp, alpha, "198.51.100.72")
    # Each CPU's share of the rate holds 100 ms of burst: about 2000 / CPUs / 10 packets pass.
    assert passed + over == BURST and 20 <= passed <= 250, (passed, over)
    # An address the program had cached before the tenant had any budget gets it too.
    passed, over = flood(dp, alpha, "198.51.100.71")
    assert passed <= 250 and over >= BURST - 250, (passed, over)
    assert run(dp, frames.tcp(CLEAN_SRC, "198.51.100.72", flags="A")) == XDP_REDIRECT   # other classes: no budget
    dp.set_class_budgets(alpha, {TrafficClass.UDP: 50_000_000})  # far above the burst: everything passes
    assert flood(dp, alpha, "198.51.100.73") == (BURST, 0)
    dp.set_class_budgets(alpha, {TrafficClass.UDP: 0})
    assert flood(dp, alpha, "198.51.100.74") == (BURST, 0)


def test_monitor_mode_counts_what_is_over_budget_and_passes_it(dp, tenants):
    beta = tenants["beta"]
    dp.set_class_budgets(beta, {TrafficClass.UDP: 2000})
    passed, over = flood(dp, beta, "198.51.100.201")
    assert passed == BURST and over >= BURST - 250, (passed, over)


def test_other_budget_fields_and_explicit_values_stay(dp):
    tables = [{**STANDARD_TENANTS[0], "policy": {"udp_rate_pps": 2000}}]
    alpha = apply_tenant_dicts(dp, tables)["alpha"]
    in_force = dp.set_class_budgets(alpha, {TrafficClass.TCP_SYN: 5000})
    assert in_force[TrafficClass.UDP] == 2000 and in_force[TrafficClass.TCP_SYN] == 5000
    passed, over = flood(dp, alpha, "198.51.100.75")
    assert passed <= 250 and over >= BURST - 250, (passed, over)


def test_a_tenant_set_apply_writes_the_leaf_anew_so_budgets_must_be_pushed_again(dp, tenants):
    alpha = tenants["alpha"]
    dp.set_class_budgets(alpha, {TrafficClass.UDP: 2000})
    again = apply_tenant_dicts(dp, STANDARD_TENANTS, previous=tenants.indices)["alpha"]
    assert again == alpha
    assert flood(dp, alpha, "198.51.100.76") == (BURST, 0)      # the new slot has the configured 0
    dp.set_class_budgets(alpha, {TrafficClass.UDP: 2000})        # what the engine's reapply does
    passed, over = flood(dp, alpha, "198.51.100.77")
    assert passed <= 250 and over >= BURST - 250, (passed, over)


def test_bad_budgets_are_rejected(dp, tenants):
    from dataplane import DataplaneError  # noqa: PLC0415 - the tier imports bcc only when it runs

    with pytest.raises(DataplaneError, match="no per-destination budget"):
        dp.set_class_budgets(tenants["alpha"], {TrafficClass.TCP_OTHER: 100})
    with pytest.raises(DataplaneError, match="packets/s"):
        dp.set_class_budgets(tenants["alpha"], {TrafficClass.UDP: -1})
    with pytest.raises(DataplaneError, match="not in the active tenant set"):
        dp.set_class_budgets(4000, {TrafficClass.UDP: 100})
    with pytest.raises(DataplaneError, match="within"):
        dp.set_class_budgets(1 << 20, {TrafficClass.UDP: 100})


# One frame of each class with a budget (fragments: a first fragment of a UDP datagram).
CLASS_FRAMES = {
    TrafficClass.TCP_SYN: lambda dst: frames.tcp("198.19.80.9", dst, sport=5556, dport=443, flags="S"),
    TrafficClass.UDP: lambda dst: frames.udp("198.19.80.9", dst, sport=5556, dport=28960),
    TrafficClass.ICMP: lambda dst: frames.icmp("198.19.80.9", dst),
    TrafficClass.FRAGMENT: lambda dst: frames.udp("198.19.80.9", dst, sport=5556, dport=28960, flags="MF"),
}


def over_budget(dp, tenant_idx: int, frame: bytes, n: int = BURST) -> int:
    before = tenant_counters(dp, tenant_idx)
    dp.test_run(frame, repeat=n)
    after = tenant_counters(dp, tenant_idx)
    return int(after.reason_packets[0, DropReason.HEURISTIC] - before.reason_packets[0, DropReason.HEURISTIC])


def test_each_class_budget_limits_its_own_class_only(dp, tenants):
    """Python writes a class's budget at its slot in constants.BUDGET_CLASSES, the program finds it
    through SW_BUDGET_SLOT_OF_CLASS: a budget of one class drops that class and no other."""
    from dataplane.constants import BUDGET_CLASSES  # noqa: PLC0415

    alpha = tenants["alpha"]
    assert set(CLASS_FRAMES) == set(BUDGET_CLASSES)
    for i, budgeted in enumerate(BUDGET_CLASSES):
        dst = f"198.51.100.{90 + i}"   # a fresh address: its own buckets
        dp.set_class_budgets(alpha, {c: (2000 if c == budgeted else 0) for c in BUDGET_CLASSES})
        for cls, frame in CLASS_FRAMES.items():
            over = over_budget(dp, alpha, frame(dst))
            if cls == budgeted:
                assert over >= BURST - 250, (budgeted.name, cls.name, over)
            else:
                assert over == 0, (budgeted.name, cls.name, over)
    dp.set_class_budgets(alpha, dict.fromkeys(BUDGET_CLASSES, 0))
