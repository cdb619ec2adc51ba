"""Per-destination class budgets derived from the baselines: the model on synthetic baselines,
the cadence and hysteresis of the deriver, re-pushing after a tenant-set apply, and the engine
deriving them from the traffic it learned (a fake dataplane that records what is pushed)."""

from __future__ import annotations

import numpy as np
import pytest

import policy.budgets as budgets_mod
from dataplane.constants import MAX_TENANTS, NO_TENANT, TrafficClass
from policy.budgets import BudgetConfig, BudgetDeriver, derive_budgets, needs_push
from tenants.policy import TenantPolicy
from tests.unit.policy.fakes import FakeDataplane
from tests.unit.policy.scenarios import GAME, Lab, Tenant, game_legit_frames, udp_flood_frames

SYN, OTHER, UDP, ICMP, FRAG = (TrafficClass.TCP_SYN, TrafficClass.TCP_OTHER, TrafficClass.UDP, TrafficClass.ICMP,
                               TrafficClass.FRAGMENT)
C = len(TrafficClass)


def rows(peaks: list[dict[TrafficClass, float]]) -> np.ndarray:
    out = np.zeros((len(peaks), C))
    for i, p in enumerate(peaks):
        for cls, v in p.items():
            out[i, int(cls)] = v
    return out


def all_warm() -> np.ndarray:
    return np.ones((MAX_TENANTS, C), bool)


def no_cold_peak() -> np.ndarray:
    return np.zeros((MAX_TENANTS, C))


def test_budget_is_the_busiest_destinations_normal_peak_times_the_safety_factor():
    tenant = np.array([1, 1, 1, 2])
    peak = rows([{UDP: 3000, SYN: 800}, {UDP: 9000, SYN: 400}, {UDP: 100}, {UDP: 50_000}])
    out = derive_budgets(tenant_idx=tenant, threshold=peak, baseline_cap=0 * peak, warm=np.ones_like(peak, bool),
                         tenant_warm=all_warm(), cold_peak=no_cold_peak(),
                         policies={1: TenantPolicy(), 2: TenantPolicy()}, safety=2.0)
    assert out[1][UDP] == 18_000             # 2 x the busiest (9,000 pps), not the mean of three
    assert out[1][SYN] == 1600
    assert out[1][ICMP] == 1000              # nothing seen: the policy floor (min_pps)
    assert out[2][UDP] == 100_000            # tenant 2 is on its own
    assert set(out[1]) == {SYN, UDP, ICMP, FRAG}   # TCP_OTHER has no budget in the dataplane


def test_explicit_policy_values_win_and_the_floor_is_min_pps():
    tenant = np.array([1])
    peak = rows([{UDP: 10, SYN: 10}])
    policy = TenantPolicy(min_pps=2500, udp_rate_pps=7000)
    out = derive_budgets(tenant_idx=tenant, threshold=peak, baseline_cap=0 * peak, warm=np.ones_like(peak, bool),
                         tenant_warm=all_warm(), cold_peak=no_cold_peak(), policies={1: policy}, safety=2.0)
    assert UDP not in out[1]                 # the operator's 7,000 pps stays in force
    assert out[1][SYN] == 2500


def test_no_budget_until_the_tenant_and_a_destination_are_warm():
    tenant = np.array([1, 1])
    peak = rows([{UDP: 3000}, {UDP: 5000}])
    warm = np.zeros_like(peak, bool)
    tenant_warm = all_warm()
    out = derive_budgets(tenant_idx=tenant, threshold=peak, baseline_cap=0 * peak, warm=warm, tenant_warm=tenant_warm,
                         cold_peak=no_cold_peak(), policies={1: TenantPolicy()}, safety=2.0)
    assert out[1][UDP] == 0                  # no destination is past warm-up
    warm[0, int(UDP)] = True
    tenant_warm[1, int(UDP)] = False
    out = derive_budgets(tenant_idx=tenant, threshold=peak, baseline_cap=0 * peak, warm=warm, tenant_warm=tenant_warm,
                         cold_peak=no_cold_peak(), policies={1: TenantPolicy()}, safety=2.0)
    assert out[1][UDP] == 0                  # the tenant's own baseline is not warm yet
    tenant_warm[1, int(UDP)] = True
    out = derive_budgets(tenant_idx=tenant, threshold=peak, baseline_cap=0 * peak, warm=warm, tenant_warm=tenant_warm,
                         cold_peak=no_cold_peak(), policies={1: TenantPolicy()}, safety=2.0)
    assert out[1][UDP] == 6000               # only the warm destination's peak is a baseline


def test_a_warming_up_destinations_observed_peak_lifts_the_budget():
    """A new server next to warm quiet ones must not meet a budget made from its neighbours."""
    tenant = np.array([1, 1])
    peak = rows([{UDP: 1000}, {UDP: 0}])
    warm = np.array([[True] * C, [False] * C])
    cold = no_cold_peak()
    cold[1, int(UDP)] = 12_000
    out = derive_budgets(tenant_idx=tenant, threshold=peak, baseline_cap=0 * peak, warm=warm, tenant_warm=all_warm(), cold_peak=cold,
                         policies={1: TenantPolicy()}, safety=2.0)
    assert out[1][UDP] == 24_000


def test_rows_of_no_tenant_are_ignored():
    tenant = np.array([NO_TENANT, 1], np.int64)
    peak = rows([{UDP: 90_000}, {UDP: 2000}])
    out = derive_budgets(tenant_idx=tenant, threshold=peak, baseline_cap=0 * peak, warm=np.ones_like(peak, bool),
                         tenant_warm=all_warm(), cold_peak=no_cold_peak(), policies={1: TenantPolicy()}, safety=2.0)
    assert out == {1: {SYN: 1000, UDP: 4000, ICMP: 1000, FRAG: 1000}}


def test_hysteresis():
    assert needs_push(0, 5000, 0.25) and needs_push(5000, 0, 0.25)
    assert not needs_push(5000, 6000, 0.25) and not needs_push(5000, 4000, 0.25)
    assert needs_push(5000, 6300, 0.25) and needs_push(5000, 3700, 0.25)
    assert not needs_push(0, 0, 0.25)


def test_bad_budget_config_is_rejected():
    for kw in ({"interval_s": 0}, {"safety": 0.5}, {"hysteresis": 1.0}, {"hysteresis": -0.1}):
        with pytest.raises(ValueError, match="budget"):
            BudgetConfig(**kw)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, dict[TrafficClass, int]]] = []
        self.fail = fail

    def __call__(self, idx: int, budgets: dict[TrafficClass, int]) -> None:
        if self.fail:
            raise RuntimeError("tenant index 1 is not in the active tenant set")
        self.calls.append((idx, budgets))


def observe(deriver: BudgetDeriver, now: float, udp_pps: float, *, cap: float, warm: bool = True,
            anomalous: bool = False, threshold: float = 0.0, policies=None) -> None:
    pps = rows([{UDP: udp_pps}])
    deriver.observe(now, tenant_idx=np.array([1]), pps=pps, valid=np.array([True]),
                    anomalous=np.full((1, C), anomalous), threshold=rows([{UDP: threshold}]),
                    baseline_cap=rows([{UDP: cap}]), warm=lambda r: np.full((1, C), warm)[r],
                    tenant_warm=all_warm, policies=policies or {1: TenantPolicy()})


def test_deriver_pushes_at_its_cadence_and_only_meaningful_changes():
    push = Recorder()
    deriver = BudgetDeriver(push, BudgetConfig(interval_s=30.0, safety=2.0, hysteresis=0.25))
    observe(deriver, 0.0, 2000, cap=3000)
    assert push.calls == [(1, {SYN: 1000, UDP: 6000, ICMP: 1000, FRAG: 1000})]   # at the first tick
    observe(deriver, 10.0, 2000, cap=9000)
    assert len(push.calls) == 1                 # not due yet
    observe(deriver, 30.0, 2000, cap=3500)      # 7,000 vs 6,000 in force: within the hysteresis
    assert len(push.calls) == 1
    observe(deriver, 60.0, 2000, cap=9000)
    assert push.calls[-1] == (1, {UDP: 18_000})  # only the class that changed
    assert deriver.effective(1, TenantPolicy(icmp_rate_pps=77))["udp"] == {"pps": 18_000, "source": "baseline"}
    assert deriver.effective(1, TenantPolicy(icmp_rate_pps=77))["icmp"] == {"pps": 77, "source": "policy"}


def test_a_high_sensitivity_never_tightens_a_budget_below_the_baseline_cap():
    push = Recorder()
    deriver = BudgetDeriver(push, BudgetConfig(safety=2.0))
    observe(deriver, 0.0, 2000, cap=8000, threshold=1000)   # sensitivity 8: detection at 1,000 pps
    assert push.calls[0][1][UDP] == 16_000


def test_attack_seconds_do_not_lift_the_cold_peak():
    push = Recorder()
    deriver = BudgetDeriver(push, BudgetConfig(interval_s=30.0, safety=2.0))
    observe(deriver, 0.0, 0, cap=1000)                          # first derivation: floors
    observe(deriver, 1.0, 50_000, cap=0, warm=False, anomalous=True)   # a flood at a warming-up neighbour
    observe(deriver, 2.0, 3000, cap=0, warm=False)             # its normal traffic
    deriver.observe(30.0, tenant_idx=np.array([1, 1]), pps=rows([{UDP: 0}, {UDP: 0}]), valid=np.array([True, True]),
                    anomalous=np.zeros((2, C), bool), threshold=rows([{UDP: 0}, {UDP: 0}]),
                    baseline_cap=rows([{UDP: 1000}, {UDP: 0}]),
                    warm=lambda r: np.array([[True] * C, [False] * C])[r], tenant_warm=all_warm,
                    policies={1: TenantPolicy()})
    assert push.calls[-1] == (1, {UDP: 6000})   # 2 x 3,000, not 2 x 50,000


def test_reapply_after_a_tenant_set_apply_pushes_the_derived_budgets_again():
    push = Recorder()
    deriver = BudgetDeriver(push, BudgetConfig(safety=2.0))
    observe(deriver, 0.0, 2000, cap=3000)
    push.calls.clear()
    deriver.reapply({1: TenantPolicy(syn_rate_pps=500)})      # the new set sets SYN explicitly
    assert push.calls == [(1, {UDP: 6000, ICMP: 1000, FRAG: 1000})]
    push.calls.clear()
    deriver.reapply({})                                       # tenant removed: nothing to push, forgotten
    assert push.calls == [] and deriver.in_force == {} and deriver.derived == {}


def test_a_failed_push_is_retried_at_the_next_derivation():
    push = Recorder(fail=True)
    deriver = BudgetDeriver(push, BudgetConfig(interval_s=30.0))
    observe(deriver, 0.0, 2000, cap=3000)
    assert deriver.in_force == {}
    push.fail = False
    observe(deriver, 30.0, 2000, cap=3000)
    assert push.calls and push.calls[0][1][UDP] == 6000


class BudgetFakeDataplane(FakeDataplane):
    """The policy tier's fake dataplane plus the budget method, recording every push."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed)
        self.budget_pushes: list[tuple[int, dict[TrafficClass, int]]] = []

    def set_class_budgets(self, tenant_idx: int, budgets: dict[TrafficClass, int]) -> None:
        self.budget_pushes.append((tenant_idx, dict(budgets)))


def test_engine_derives_budgets_above_the_servers_normal_peak_once_warm(tmp_path, monkeypatch):
    import tests.unit.policy.scenarios as scenarios

    monkeypatch.setattr(scenarios, "FakeDataplane", BudgetFakeDataplane)
    lab = Lab(tmp_path, [Tenant(1, "alpha")])
    assert isinstance(lab.dp, BudgetFakeDataplane)
    # A game server whose players come in waves between 400 and 1,200 packets/s.
    lab.flow("players", 1, game_legit_frames(), lambda t: 800 + 400 * np.sin(t / 10.0))
    lab.run(60)
    assert lab.dp.budget_pushes == []                       # FAST warms up for 120 s: no budget yet
    lab.run(200)
    pushes = [b for idx, b in lab.dp.budget_pushes if idx == 1 and UDP in b]
    assert pushes, lab.dp.budget_pushes
    udp_budget = pushes[-1][UDP]
    assert udp_budget >= 2 * 1200                           # never throttles the normal peak
    assert udp_budget <= 20 * 1200                          # but a budget, not the absence of one
    status = lab.engine.budgets.effective(1, TenantPolicy())
    assert status["udp"] == {"pps": udp_budget, "source": "baseline"}
    # A flood does not move it: attack seconds are neither learned nor peaks.
    lab.flow("udp-flood", 1, udp_flood_frames(GAME), 50_000, attack=True)
    lab.run(90)
    assert lab.engine.budgets.effective(1, TenantPolicy())["udp"]["pps"] <= udp_budget * 1.25
    # A tenant-set apply writes the leaf anew: the engine pushes the derived budgets again at once.
    before = len(lab.dp.budget_pushes)
    lab.engine.set_tenants({1: ("alpha", lab.engine.tenants[1].mode, TenantPolicy())})
    assert lab.dp.budget_pushes[before:] and lab.dp.budget_pushes[-1][1][UDP] == \
        lab.engine.budgets.in_force[1][UDP]


def test_the_normal_peak_is_the_higher_of_threshold_and_cap_in_blocks_of_rows(monkeypatch):
    # Rows go DERIVE_BLOCK_ROWS at a time: the tenant's busiest destination may be in any block, its normal
    # peak in the threshold or in the cap; blocks of 3 rows give the same budgets as one block.
    tenant = np.array([1, 2, 1, 1, 2, NO_TENANT, 1, 2])
    threshold = rows([{UDP: 100}, {UDP: 700}, {UDP: 200}, {UDP: 300}, {UDP: 900}, {UDP: 99_000}, {UDP: 5000},
                      {SYN: 600}])
    cap = rows([{UDP: 150}, {UDP: 800}, {UDP: 250}, {UDP: 8000}, {UDP: 100}, {UDP: 99_000}, {UDP: 10},
                {SYN: 650}])
    warm = np.ones_like(threshold, bool)
    warm[3] = False                                    # 8,000 is a cold destination's cap: not a peak

    def derive():
        return derive_budgets(tenant_idx=tenant, threshold=threshold, baseline_cap=cap, warm=warm,
                              tenant_warm=all_warm(), cold_peak=no_cold_peak(),
                              policies={1: TenantPolicy(min_pps=10), 2: TenantPolicy(min_pps=10)}, safety=2.0)
    whole = derive()
    assert whole[1][UDP] == 10_000 and whole[2][UDP] == 1800 and whole[2][SYN] == 1300
    monkeypatch.setattr(budgets_mod, "DERIVE_BLOCK_ROWS", 3)
    assert derive() == whole


@pytest.mark.parametrize("block_rows", [65_536, 3])
def test_warming_up_destinations_lift_budgets_by_their_whole_row_when_one_class_passes_the_floor(monkeypatch,
                                                                                               block_rows):
    # The deriver finds warming-up elements in the warm mask first, a block of rows at a time (issue 18 item
    # 2): a cold row counts when any of its budget classes is above the lowest min_pps (1,000 here), and then
    # with every cold class it has (ICMP's 700 below); anomalous elements, invalid rows, unowned rows and warm
    # rows do not count.
    monkeypatch.setattr(budgets_mod, "DERIVE_BLOCK_ROWS", block_rows)
    push = Recorder()
    deriver = BudgetDeriver(push, BudgetConfig(safety=2.0))
    pps = rows([{UDP: 100}, {UDP: 1500}, {UDP: 900, SYN: 5000, ICMP: 700}, {FRAG: 9000}, {SYN: 7000},
                {SYN: 8000}, {SYN: 20_000}, {SYN: 30_000, UDP: 2500}])
    warm = np.zeros((8, C), bool)
    warm[[0, 6, 7]] = True
    warm[7, int(UDP)] = False           # a row warm but for one class: that class counts
    anomalous = np.zeros((8, C), bool)
    anomalous[3, int(FRAG)] = True
    deriver.observe(0.0, tenant_idx=np.array([1, 1, 1, 1, 1, NO_TENANT, 1, 1]), pps=pps,
                    valid=np.array([True, True, True, True, False, True, True, True]), anomalous=anomalous,
                    threshold=rows([{UDP: 500}] + [{}] * 7), baseline_cap=np.zeros((8, C)),
                    warm=lambda r: warm[r], tenant_warm=all_warm, policies={1: TenantPolicy()})
    assert push.calls == [(1, {SYN: 10_000, UDP: 5000, ICMP: 1400, FRAG: 1000})]
