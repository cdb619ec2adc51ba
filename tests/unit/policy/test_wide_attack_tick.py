"""Issue 18: the tick while thousands of destinations are attacked at once.

`seawall bench policy --attacked 20000` (100,000 destinations, 10,000 tenants) measured ticks of
3.5 to 19 s: detection's carpet grouping masked every hot row once per hot tenant, the row list of
the anomalies was sorted, each ATTACK_START looked its incident up among all open ones, the incident
accounting looked up one slot per incident, and every waiting incident parsed its legitimate samples
before finding it had nothing to derive. These tests hold the replacements to what the old code
computed: the same rows, the same carpet candidates, the same events with their rules.
"""

from __future__ import annotations

import pathlib
import types

import numpy as np
import pytest
import structlog

import policy.engine as engine_module
from appliance.bench.policy import SyntheticDataplane, destination_addresses, synthetic_tenant_spec
from appliance.destinations import DestinationRecorder
from dataplane.constants import TrafficClass
from policy.config import PolicyConfig
from policy.detect import CARPET_UNEXPLAINED_SHARE, ELEVATED_FLOOR_PPS, group_carpets, rows_with_any
from policy.engine import PolicyEngine
from policy.events import EventBus, EventType

C = len(TrafficClass)


@pytest.mark.parametrize("shape", [(0, C), (1, C), (7, C), (2000, C), (300, 3)])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 1.0])
def test_rows_with_any_is_the_sorted_unique_rows_of_the_set_elements(shape, density):
    mask = np.random.default_rng(7).random(shape) < density
    got = rows_with_any(mask)
    want = np.unique(np.flatnonzero(mask) // shape[1])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype


def _carpets_by_mask(dest, tidx, n_groups, cap, warm, anomalous, excess, hot_tenants, t_anomalous, t_excess,
                     min_destinations):
    """What the carpet grouping must find, written the slow way: each hot group's rows by a mask."""
    out = {}
    for t in hot_tenants.tolist():
        rows = np.flatnonzero(tidx == t)
        elevated = dest.pps[rows] > np.maximum(np.where(warm[rows], cap[rows], 0.0), ELEVATED_FLOOR_PPS)
        classes = []
        for c in np.flatnonzero(t_anomalous[t]):
            explained = np.where(anomalous[rows, c], excess[rows, c], 0.0).sum()
            if t_excess[t, c] - explained > CARPET_UNEXPLAINED_SHARE * t_excess[t, c] \
                    and np.count_nonzero(elevated[:, c]) >= min_destinations:
                classes.append(int(c))
        if classes:
            out[t] = (classes, rows[elevated[:, classes].any(axis=1)])
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_carpet_grouping_over_thousands_of_hot_groups_matches_a_mask_per_group(seed):
    rng = np.random.default_rng(seed)
    n, groups = 20_000, 3_000
    tidx = rng.integers(0, groups + 1, n)                 # `groups`: rows of no group
    pps = rng.gamma(1.0, 400.0, (n, C))
    cap = rng.gamma(1.0, 300.0, (n, C))
    warm = rng.random((n, C)) < 0.8
    anomalous = rng.random((n, C)) < 0.05
    excess = np.maximum(pps - cap, 0.0)
    t_anomalous = rng.random((groups + 1, C)) < 0.3
    t_anomalous[groups] = False
    hot_tenants = rows_with_any(t_anomalous)
    t_excess = rng.gamma(2.0, 5_000.0, (groups + 1, C))
    dest = types.SimpleNamespace(pps=pps)
    got = group_carpets(dest, tidx, groups, cap, warm, anomalous, excess, hot_tenants, t_anomalous, t_excess,
                        np.ones((groups + 1, C)), np.ones((groups + 1, C)), 3)
    want = _carpets_by_mask(dest, tidx, groups, cap, warm, anomalous, excess, hot_tenants, t_anomalous,
                            t_excess, 3)
    assert len(want) > 100                                # many hot groups: the case that was quadratic
    assert [cand.tenant_idx for cand in got] == sorted(want)
    for cand in got:
        classes, rows = want[cand.tenant_idx]
        assert [int(c) for c in cand.classes] == classes
        np.testing.assert_array_equal(cand.elevated_rows, rows)


class _Attacked:
    """An engine over synthetic counters, warmed up tick by tick on a simulated clock; `tick()` advances both."""

    def __init__(self, tmp_path: pathlib.Path, destinations: int, tenants: int, seed: int, **config) -> None:
        self.dp = SyntheticDataplane(destinations, tenants, 0.0, 400, seed)
        self.engine = PolicyEngine(self.dp, synthetic_tenant_spec(destinations, tenants, False), EventBus(), tmp_path,
                                   tick=1.0, config=PolicyConfig(warmup_s=4.0, **config))
        self.now = 0.0
        for _ in range(6):
            self.tick()

    def tick(self):
        self.dp.advance(1.0)
        self.now += 1.0
        return self.engine.tick(self.now)


def test_hundreds_of_attacks_starting_in_one_tick_each_report_their_own_rules(tmp_path: pathlib.Path):
    lab = _Attacked(tmp_path, 4000, 400, 3, signature_wait_s=0.0)
    dp, engine = lab.dp, lab.engine
    attacked = dp.rng.choice(4000, 300, replace=False)
    dp.attack(attacked, syn_pps=50_000.0)
    starts, with_rules = [], 0
    for _ in range(3):
        events = [e for e in lab.tick().events if e.type == EventType.ATTACK_START]
        by_id = {inc.id: inc for inc in engine.incidents.open.values()}      # as the tick left them
        for event in events:
            inc = by_id[event.incident_id]
            assert event.details["rules"] == [r.to_dict() for r in inc.rules.values()]
            assert event.details["peak_pps"] == round(inc.peak_pps, 1) >= 50_000 * 0.9
            with_rules += bool(inc.rules)
        starts += events
    addresses, _ = destination_addresses(4000)
    assert {d for e in starts for d in e.destinations} == {str(addresses[i]) for i in attacked.tolist()}
    assert with_rules == len(starts)          # signature_wait_s 0: every attack has its rule at its start


def test_the_per_second_rows_list_every_open_incidents_address_after_its_flood_stops(tmp_path: pathlib.Path):
    """appliance.destinations picks the rows of the open incidents' addresses with one slot lookup (a lookup
    and a pass over every row per incident stalled the event loop for seconds under thousands of them)."""
    lab = _Attacked(tmp_path, 4000, 400, 5)
    dp, engine = lab.dp, lab.engine
    attacked = dp.rng.choice(4000, 200, replace=False)
    dp.attack(attacked, syn_pps=50_000.0)
    for _ in range(3):
        lab.tick()
    dp.attack(attacked, syn_pps=-50_000.0)            # the floods stop; the incidents stay open (quiet_s)
    for _ in range(2):
        lab.tick()
    dest, det = engine.rates.last_destination_rates, engine.last_detection
    addresses, keys = destination_addresses(4000)
    open_targets = {str(inc.target) for inc in engine.incidents.open.values() if inc.target is not None}
    assert open_targets == {str(addresses[i]) for i in attacked.tolist()}
    slots = engine.rates.slots.slots_of([addresses[i] for i in attacked.tolist()])
    row_of = {int(s): r for r, s in enumerate(dest.slots.tolist())}
    rows = [row_of[int(s)] for s in slots if int(s) in row_of]
    assert not set(rows) & set(det.anomalous_rows.tolist())       # picked as incidents, not as anomalies
    want = {str(dest.addresses[r]) for r in rows if dest.pps[r].sum() > 0}
    recorder = DestinationRecorder(top_n=0)
    recorder.record(engine, 1.7e9 + lab.now)
    got = {r["address"] for r in recorder.seconds_after(0)}
    assert len(want) > 150 and got == want
    # A cap on the attacked rows a second: the busiest of them, the others counted as left out.
    capped = DestinationRecorder(top_n=0, second_max_attacked=50)
    capped.record(engine, 1.7e9 + lab.now)
    kept = {r["address"]: sum(r["pps"]) for r in capped.seconds_after(0)}
    assert len(kept) == 50 and capped.attacked_left_out == len(want) - 50
    totals = sorted((float(dest.pps[r].sum()) for r in rows if dest.pps[r].sum() > 0), reverse=True)
    assert min(kept.values()) >= round(totals[49], 2) - 0.1 * len(TrafficClass)


def test_attacks_past_a_full_rule_table_wait_for_room_without_a_failure_each_tick(tmp_path: pathlib.Path, monkeypatch):
    """With the dataplane's rule table full, further attacks neither derive signatures nor ask the dataplane
    every tick (a logged failure each, for thousands of incidents): they are counted, warned of once, and
    get their rules when ended incidents release theirs."""
    monkeypatch.setattr(engine_module, "MAX_RULES", 20)
    lab = _Attacked(tmp_path, 1000, 100, 9, signature_wait_s=0.0, quiet_s=2.0, hold_down_s=0.0)
    dp, engine = lab.dp, lab.engine
    attacked = dp.rng.choice(1000, 50, replace=False)
    dp.attack(attacked, syn_pps=50_000.0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            lab.tick()
    assert len(engine.dataplane.rules) == 20 and engine.status()["rules_installed"] == 20
    assert engine.status()["rules_waiting_for_room"] == 30
    assert [e["incidents_waiting"] for e in logs if e["event"] == "rule.table_full"] == [30]   # once a minute
    assert not [e for e in logs if e["event"] == "rule.add_failed"]
    # The attacks with rules end: their rules go, and the waiting attacks get theirs.
    ruled = {inc.target for inc in engine.incidents.open.values() if inc.rules}
    addresses, _ = destination_addresses(1000)
    index = {addresses[i]: i for i in attacked.tolist()}
    dp.attack(np.array([index[a] for a in ruled]), syn_pps=-50_000.0)
    for _ in range(8):
        lab.tick()
    assert engine.status()["rules_waiting_for_room"] == 10 and len(engine.dataplane.rules) == 20
    waiting_got_rules = {inc.target for inc in engine.incidents.open.values() if inc.rules} - ruled
    assert len(waiting_got_rules) == 20
