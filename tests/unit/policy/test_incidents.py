"""Incident lifecycle: confirmation, updates, hysteresis, hold-down, reopen and re-attack links."""

from __future__ import annotations

import ipaddress

import pytest

from dataplane.constants import TenantMode, TrafficClass
from policy.classify import Vector, VectorScore
from policy.config import PolicyConfig
from policy.events import EventType
from policy.incidents import IncidentManager, Observation, State

DST = ipaddress.ip_address("198.51.100.10")
CFG = PolicyConfig(confirm_s=2.0, quiet_s=10.0, hold_down_s=30.0, reattack_window_s=120.0, update_interval_s=5.0,
                   fast_confirm_confidence=None)


def obs(vector: Vector = Vector.SYN_FLOOD, tc: TrafficClass = TrafficClass.TCP_SYN, target=DST,
        confidence: float = 0.9) -> Observation:
    return Observation(1, "alpha", TenantMode.MITIGATE, target, (str(target),),
                       [VectorScore(vector, confidence, tc, {"class": tc.name.lower()}, (tc,))], {tc})


def run(m: IncidentManager, t0: float, t1: float, anomalous: bool, o: Observation | None = None, dt: float = 1.0):
    """Ticks t0+dt .. t1; returns (time, event) pairs."""
    out = []
    t = t0
    while t < t1 - 1e-9:
        t += dt
        if anomalous:
            out += [(t, e) for e in m.observe(t, 1e9 + t, dt, o or obs())]
        for inc in m.open.values():
            m.account(inc, t, 1e9 + t, dt, pps=1000.0, bps=8e6, attack_pps=900.0 if anomalous else 0.0,
                      dropped_pps=600.0 if anomalous else 0.0)
        events, _released = m.tick(t, 1e9 + t)
        out += [(t, e) for e in events]
    return out


def test_one_noisy_second_is_not_an_attack():
    m = IncidentManager(CFG)
    assert run(m, 0, 1, True) == []
    assert run(m, 1, 3, False) == []
    assert m.open == {}


def test_a_certain_vector_starts_at_its_first_tick_an_uncertain_one_is_confirmed():
    m = IncidentManager(PolicyConfig(confirm_s=2.0, fast_confirm_confidence=0.8))
    starts = [t for t, e in run(m, 0, 3, True, obs(confidence=0.85)) if e.type == EventType.ATTACK_START]
    assert starts == [1.0]
    other = obs(Vector.UDP_FLOOD, TrafficClass.UDP, ipaddress.ip_address("198.51.100.11"), confidence=0.79)
    assert run(m, 3, 4, True, other) == []                     # one noisy, not certain second
    assert run(m, 4, 5, False) == [] and m.get(1, other.target) is None
    starts = [t for t, e in run(m, 5, 8, True, other) if e.type == EventType.ATTACK_START]
    assert starts == [7.0]                                     # confirm_s in a row
    # multi_vector's confidence is that of its second vector: it never counts as certain alone.
    multi = Observation(1, "alpha", TenantMode.MITIGATE, DST, (str(DST),),
                        [VectorScore(Vector.MULTI_VECTOR, 0.95, None, {}, ())], set())
    m2 = IncidentManager(PolicyConfig(confirm_s=2.0, fast_confirm_confidence=0.8))
    assert run(m2, 0, 1, True, multi) == []


def test_start_updates_end_with_hysteresis_and_accounting():
    m = IncidentManager(CFG)
    events = run(m, 0, 20, True)
    starts = [(t, e) for t, e in events if e.type == EventType.ATTACK_START]
    assert [t for t, _ in starts] == [2.0]
    start = starts[0][1]
    assert start.vectors == ("syn_flood",) and start.destinations == (str(DST),)
    assert start.tenant == "alpha" and start.confidence == pytest.approx(0.9)
    updates = [t for t, e in events if e.type == EventType.ATTACK_UPDATE]
    assert updates == [7.0, 12.0, 17.0]                 # every update_interval_s, never faster
    quiet = run(m, 20, 40, False)
    ends = [(t, e) for t, e in quiet if e.type == EventType.ATTACK_END]
    assert [t for t, _ in ends] == [30.0]               # 10 quiet seconds after the last anomaly
    end = ends[0][1]
    assert end.incident_id == start.incident_id
    assert end.packets_dropped == 20 * 600
    assert end.details["packets_passed"] == 20 * 300
    assert end.details["efficacy"] == pytest.approx(600 / 900, abs=1e-4)
    assert end.pps == 1000.0 and end.bps == 8e6
    assert len(end.details["series"]) == 30             # the whole per-second series at the end
    assert [t for t, e in quiet if e.type == EventType.ATTACK_UPDATE] == [22.0, 27.0]


def test_updates_at_most_once_per_second_with_fast_ticks():
    cfg = PolicyConfig(confirm_s=1.0, update_interval_s=1.0, quiet_s=10.0)
    m = IncidentManager(cfg)
    events = run(m, 0, 10, True, dt=0.25)
    times = [t for t, e in events if e.type in (EventType.ATTACK_START, EventType.ATTACK_UPDATE)]
    assert len(times) >= 8
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
    with pytest.raises(ValueError, match="at most one update per second"):
        PolicyConfig(update_interval_s=0.5)


def test_hold_down_then_release_and_reopen_within_hold_down():
    m = IncidentManager(CFG)
    run(m, 0, 5, True)
    run(m, 5, 16, False)
    inc = m.get(1, DST)
    assert inc.state == State.ENDED
    first_id = inc.id
    # Re-attack 10 s after the end (inside the 30 s hold-down): the same incident reopens.
    events = run(m, 16, 26, False) + run(m, 26, 28, True)
    reopen = [e for _, e in events if e.type == EventType.ATTACK_START]
    assert len(reopen) == 1 and reopen[0].incident_id == first_id and reopen[0].details["reopened"] == 1
    # End again and let the hold-down pass: released for rule removal.
    run(m, 28, 38, False)
    assert m.get(1, DST).state == State.ENDED
    released = []
    t = 38.0
    while t < 80:
        t += 1
        released += m.tick(t, t)[1]
    assert [i.id for i in released] == [first_id] and m.get(1, DST) is None


def test_reattack_after_hold_down_links_to_the_previous_incident():
    m = IncidentManager(CFG)
    run(m, 0, 5, True)
    run(m, 5, 60, False)                       # end at 15, hold-down over at 45
    old = m.history[-1]
    events = run(m, 60, 63, True)
    start = [e for _, e in events if e.type == EventType.ATTACK_START][0]
    assert start.incident_id != old.id
    assert start.details["linked_incident"] == old.id
    # A different vector is a different attack: no link.
    m2 = IncidentManager(CFG)
    run(m2, 0, 5, True)
    run(m2, 5, 60, False)
    events = run(m2, 60, 63, True, obs(Vector.UDP_FLOOD, TrafficClass.UDP))
    start = [e for _, e in events if e.type == EventType.ATTACK_START][0]
    assert start.details["linked_incident"] is None


def test_other_vector_during_hold_down_is_a_new_incident_and_releases_the_old():
    m = IncidentManager(CFG)
    run(m, 0, 5, True)
    run(m, 5, 16, False)
    old = m.get(1, DST)
    events = run(m, 16, 19, True, obs(Vector.ICMP_FLOOD, TrafficClass.ICMP))
    start = [e for _, e in events if e.type == EventType.ATTACK_START][0]
    assert start.incident_id != old.id and start.vectors == ("icmp_flood",)
    assert old.state == State.CLOSED
