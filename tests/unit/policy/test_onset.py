"""A flood that begins late in a tick: its rate since the onset, from the samples' timestamps,
lets the engine start the incident and the rule in that very tick (the lab's ACK flood)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dataplane.constants import TrafficClass
from policy import native as policy_native
from policy.events import EventType
from policy.onset import JUMP, MAX_CANDIDATES, MIN_ACTIVE_S, MIN_SAMPLES, MIN_SHARE, onset_rate
from tests.unit.policy.fakes import tcp_frame
from tests.unit.policy.scenarios import FAST, Lab, Tenant, clients, spoofed, web_legit_frames

WEB = "198.51.100.12"
ALPHA = Tenant(1, "alpha")
NS = 1_000_000_000


def stamps(seconds: list[float]) -> np.ndarray:
    return (np.asarray(seconds) * NS).astype(np.uint64)


def test_a_flood_in_the_last_fifth_of_the_tick_gets_its_own_rate_back():
    # 4,000 pps over the tick = a 20,000 pps flood during its last 0.2 s, on top of 50 pps of usual traffic.
    ts = stamps(list(np.linspace(99.0, 100.0, 2)) + list(np.linspace(99.8, 100.0, 100)))
    rate, active = onset_rate(100.0, 1.0, 4050.0, 50.0, ts)
    assert 0.19 <= active <= 0.21
    assert 18_000 <= rate <= 21_000


def test_traffic_spread_over_the_tick_keeps_its_rate():
    ts = stamps(list(np.linspace(99.0, 100.0, 80)))
    rate, active = onset_rate(100.0, 1.0, 4000.0, 50.0, ts)
    assert active > 0.95 and rate < 4300


def test_few_samples_no_excess_and_the_extrapolation_cap():
    late = stamps([99.999] * 50)
    assert onset_rate(100.0, 1.0, 4000.0, 50.0, late[: MIN_SAMPLES - 1]) == (4000.0, 1.0)   # too few to place
    assert onset_rate(100.0, 1.0, 40.0, 50.0, late) == (40.0, 1.0)                       # nothing new
    rate, active = onset_rate(100.0, 1.0, 4000.0, 0.0, late)
    assert active == MIN_ACTIVE_S and rate == 4000.0 / MIN_ACTIVE_S


def written_out_candidates(pps, threshold, excess, valid, anomalous):
    """policy.onset.candidates as whole-array numpy on the excess over the mean (the code before the C pass),
    ties ordered by row and class."""
    n_cls = pps.shape[1]
    jump = np.flatnonzero(excess > pps * (1.0 - 1.0 / JUMP))
    rows, classes = np.divmod(jump, n_cls)
    keep = (pps[rows, classes] > MIN_SHARE * threshold[rows, classes]) & ~anomalous[rows, classes] & valid[rows]
    rows, classes = rows[keep], classes[keep]
    if len(rows) > MAX_CANDIDATES:
        order = np.argsort(-(pps[rows, classes] / np.maximum(threshold[rows, classes], 1.0)), kind="stable")
        rows, classes = rows[order[:MAX_CANDIDATES]], classes[order[:MAX_CANDIDATES]]
    return rows, classes


@pytest.mark.parametrize("n", [40, 5000, 200_000])
def test_detection_finds_the_written_out_onset_candidates(n):
    # Detection's C pass offers each element to the onset selection as it goes, keeping the best past
    # MAX_CANDIDATES (a heap): the same pairs in the same order as the whole-array selection, ratios repeating
    # (ties go to the lower row, then class), with fewer (n = 40) in ascending order; 200,000 rows nearly all
    # jumping, as in the first ticks after a start. Rows of no configured tenant (not `known`) are never
    # anomalous, so they may be candidates; rows of an invalid read never are. The means are read by each
    # row's baseline slot (shuffled here), and rate - mean stands where the code before had its positive
    # part (against a bound >= 0 both pick the same pairs).
    rng = np.random.default_rng(n)
    classes = len(TrafficClass)
    slots = rng.permutation(n + 7)[:n]
    mean = rng.choice([0.0, 5.0, 100.0, 4000.0], (n + 7, classes), p=[0.7, 0.1, 0.1, 0.1] if n > 10_000 else None)
    var = rng.choice([0.0, 25.0, 1e6], (n + 7, classes))
    learned = rng.choice([0.0, 5.0, 1000.0], (n + 7, classes))
    pps = rng.choice([0.0, 10.0, 900.0, 5000.0, 7000.0], (n, classes))
    known, valid = rng.random(n) < 0.9, rng.random(n) < 0.95
    out = {name: np.empty((n, classes), dtype) for name, dtype in
           (("warm", bool), ("threshold", np.float64), ("anomalous", bool), ("over_cap", bool))}
    flat = policy_native.detect_rows(
        slots, mean, var, learned, pps, k_sigma=4.0, margin=1.5, warmup_s=600.0, partial_s=3.0,
        floor=np.full(classes, 2000.0), onset_floor=np.full(classes, 800.0), min_pps=100.0, sensitivity=1.0,
        known=known, valid=valid, onset_jump_share=1.0 - 1.0 / JUMP, onset_min_share=MIN_SHARE,
        onset_keep=MAX_CANDIDATES, **out)
    assert not out["anomalous"][~known].any() and out["anomalous"][known].any()
    want = written_out_candidates(pps, out["threshold"], np.maximum(pps - mean[slots], 0.0), valid, out["anomalous"])
    assert (len(want[0]) == MAX_CANDIDATES) == (n > 40) and len(want[0]) > 0
    assert np.isin(want[0], np.flatnonzero(~known)).any() or n == 40
    rows, got_classes = np.divmod(flat, classes)
    assert rows.tolist() == want[0].tolist() and got_classes.tolist() == want[1].tolist()


def ack_flood_frames(dst: str, n: int = 200) -> list[bytes]:
    rng = np.random.default_rng(5)
    return [tcp_frame(src, dst, int(rng.integers(1024, 65535)), 80, "A", ttl=57) for src in spoofed(n, seed=23)]


def fresh_web_server() -> callable:
    """A web server the engine has seen for a few seconds (warming up: onset floors apply)."""
    def build(tmp_path) -> Lab:
        lab = Lab(tmp_path, [ALPHA], config=dataclasses.replace(FAST, warmup_s=600.0))
        syns, acks = web_legit_frames(WEB)
        lab.flow("web-syn", 1, syns, 10)
        lab.flow("web-ack", 1, acks, 300)
        lab.run(8)
        assert lab.events == []
        return lab
    return build


def run_tick_with_late_onset(lab: Lab, onset_share: float, flood_pps: float = 20_000) -> list:
    """One tick in which a flood starts at (1 - onset_share) of the tick."""
    t0 = lab.t
    lab.dp.advance(t0, 1.0 - onset_share)
    lab.flow("ack-flood", 1, ack_flood_frames(WEB), flood_pps, attack=True, sample_one_in=30,
             max_samples_per_s=2000)
    lab.dp.advance(t0 + 1.0 - onset_share, onset_share)
    lab.t = t0 + 1.0
    report = lab.engine.tick(lab.t)
    lab.events += report.events
    return report.events


def test_an_ack_flood_starting_late_in_a_tick_is_caught_and_ruled_in_that_tick(tmp_path):
    lab = fresh_web_server()(tmp_path)
    events = run_tick_with_late_onset(lab, onset_share=0.15)      # 3,000 pps over the tick: below the 10k floor
    (start,) = [e for e in events if e.type == EventType.ATTACK_START]
    assert start.vectors[0] == "tcp_ack_flood" and start.confidence >= 0.8, start
    rules = [r for r in lab.dp.rules.values() if "tcp_ack_flood" in r.comment]
    assert rules and rules[0].dport is not None and rules[0].dport.lo == 80, rules
    lab.run(3)
    web = next(f for f in lab.dp.flows if f.name == "web-ack")
    assert web.dropped == 0                                        # the visitors' own ACKs pass


def test_the_same_rate_spread_over_the_tick_is_no_attack(tmp_path):
    lab = fresh_web_server()(tmp_path)
    lab.flow("bulk", 1, [tcp_frame(c, WEB, 41000 + i, 80, "A") for i, c in enumerate(clients(30, start=60))],
             3000, sample_one_in=30)
    assert lab.of_type(EventType.ATTACK_START, lab.run(3)) == []


def test_samples_drained_after_the_counters_were_read_belong_to_the_next_tick():
    # Counters read at 100.0; the drain 0.18 s later brought the flood's next 0.18 s of samples too.
    ts = stamps(list(np.linspace(99.83, 100.0, 50)) + list(np.linspace(100.0, 100.18, 50)))
    rate, active = onset_rate(100.0, 1.0, 3450.0, 50.0, ts)
    assert active < 0.2 and rate > 17_000
