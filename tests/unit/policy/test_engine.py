"""The engine end to end on the fake dataplane: the reference scenario, modes, carpet bombing,
look-alikes that must stay quiet, warm-up, re-attacks, tenant reloads, evidence and persistence."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import math

import numpy as np
import pytest
from scapy.utils import rdpcap

from dataplane.constants import Direction, RuleAction, TenantMode, TrafficClass
from policy.config import PolicyConfig
from policy.engine import PolicyEngine
from policy.events import Event, EventType
from tenants.policy import TenantPolicy
from tests.support import await_until
from tests.unit.policy.fakes import tcp_frame, udp_frame
from tests.unit.policy.scenarios import (
    DNS,
    FAST,
    GAME,
    SPEED,
    Lab,
    Tenant,
    clients,
    game_legit_frames,
    game_replies,
    reflection_frames,
    syn_flood_frames,
    udp_flood_frames,
    web_legit_frames,
)

ALPHA = Tenant(1, "alpha")


def game_server(lab: Lab, tenant: int = 1, players_pps=800.0) -> None:
    syns, acks = web_legit_frames(GAME)
    lab.flow("players", tenant, game_legit_frames(), players_pps)
    lab.flow("replies", tenant, game_replies(), players_pps, direction=Direction.OUTBOUND)
    lab.flow("web-syn", tenant, syns, 20)
    lab.flow("web-ack", tenant, acks, 300)


def reference_attack(lab: Lab) -> None:
    lab.flow("syn-flood", 1, syn_flood_frames(GAME), 200_000, attack=True)
    lab.flow("udp-flood", 1, udp_flood_frames(GAME), 5_000, attack=True)


def stop_attack(lab: Lab) -> None:
    for f in [f for f in lab.dp.flows if f.attack]:
        lab.dp.remove_flow(f.name)


def flow(lab: Lab, name: str):
    return next(f for f in lab.dp.flows if f.name == name)


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path, [ALPHA])
    game_server(lab)
    lab.run(150)                       # past the 120 s warm-up of FAST
    assert lab.events == []
    return lab


def test_reference_scenario_syn_and_udp_flood_both_caught(lab, tmp_path):
    reference_attack(lab)
    lab.run(20)
    starts = lab.of_type(EventType.ATTACK_START)
    assert len(starts) == 1
    start = starts[0]
    assert {"syn_flood", "udp_flood", "multi_vector"} <= set(start.vectors)
    assert start.details["vector_confidence"]["syn_flood"] >= 0.8
    assert start.details["vector_confidence"]["udp_flood"] >= 0.8
    assert start.destinations == (GAME,) and start.tenant == "alpha"
    assert start.pps > 200_000
    assert {r["vector"] for r in start.details["rules"]} == {"syn_flood", "udp_flood"}   # installed at once
    rules = {r.comment.split()[1]: r for r in lab.dp.rules.values()}
    syn_rule, udp_rule = rules["syn_flood"], rules["udp_flood"]
    assert syn_rule.action == RuleAction.RATE_LIMIT and syn_rule.tcp_flags == (0x12, 0x02)
    assert 100 <= syn_rule.rate_pps < 1000            # from the SYN baseline (~20/s), at least the floor
    assert udp_rule.action == RuleAction.DROP and udp_rule.dport.lo == 28960 and udp_rule.length.lo == 540
    assert udp_rule.dst == ipaddress.ip_address(GAME)
    # The players' traffic on the same port is never touched; the UDP flood is dropped.
    assert flow(lab, "players").dropped == 0
    lab.run(10)
    udp = flow(lab, "udp-flood")
    assert udp.dropped / udp.sent > 0.7
    update = lab.of_type(EventType.ATTACK_UPDATE)[-1]
    assert update.packets_dropped > 0 and update.details["efficacy"] > 0.8
    assert {r["vector"] for r in update.details["rules"]} == {"syn_flood", "udp_flood"}
    assert update.details["series"] and "attack_pps" in update.details["series"][0]
    # The attack stops: end after the quiet period, rules stay for the hold-down, then go.
    stop_attack(lab)
    lab.run(FAST.quiet_s + 2)
    end = lab.of_type(EventType.ATTACK_END)
    assert len(end) == 1 and end[0].incident_id == start.incident_id
    summary = end[0].details
    assert 0 < summary["packets_passed"] < 0.2 * summary["attack_packets"]   # the seconds before the rules
    assert summary["efficacy"] > 0.8 and end[0].packets_dropped > 0.8 * summary["attack_packets"]
    assert len(summary["series"]) >= 30
    assert json.loads(json.dumps(end[0].to_dict()))["details"]["rules"]
    assert len(lab.dp.rules) == 2
    lab.run(FAST.hold_down_s)
    assert lab.dp.rules == {}
    # Evidence: PCAPs of dropped and passed samples that scapy reads back.
    files = end[0].details["pcap"]
    dropped = rdpcap(files["dropped"]["path"])
    passed = rdpcap(files["passed"]["path"])
    assert len(dropped) > 10 and len(passed) > 10
    assert all(p["IP"].dst == GAME for p in list(dropped)[:20])


def test_attack_start_is_logged_as_an_event(lab):
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        reference_attack(lab)
        lab.run(4)
    (start,) = [e for e in logs if e["event"] == "attack.start"]
    assert start["tenant"] == "alpha" and start["dst"] == GAME and start["pps"] > 200_000
    assert "syn_flood" in start["vector"]
    assert {e["event"] for e in logs} >= {"attack.start", "rule.add"}


def test_events_reach_the_bus_and_round_trip(lab):
    reference_attack(lab)
    lab.run(5)
    got = []
    while not lab.queue.empty():
        got.append(lab.queue.get_nowait())
    assert [e.incident_id for e in got] == [e.incident_id for e in lab.events]
    d = got[0].to_dict()
    assert Event.from_dict(d).vectors == got[0].vectors and d["type"] == "ATTACK_START"
    for event in got:                      # consumers store and send the JSON form
        assert json.loads(json.dumps(event.to_dict()))["incident_id"] == event.incident_id


def test_monitor_mode_gets_the_incident_and_count_rules(tmp_path):
    lab = Lab(tmp_path, [dataclasses.replace(ALPHA, mode=TenantMode.MONITOR)])
    game_server(lab)
    lab.run(150)
    reference_attack(lab)
    lab.run(15)
    start = lab.of_type(EventType.ATTACK_START)[0]
    assert start.details["monitor"] is True
    assert len(lab.dp.rules) == 2
    assert all(r.action == RuleAction.COUNT for r in lab.dp.rules.values())
    assert all(f.dropped == 0 for f in lab.dp.flows)
    update = lab.of_type(EventType.ATTACK_UPDATE)[-1]
    assert update.packets_dropped == 0 and update.details["efficacy"] == 0.0
    assert all(r["matched_packets"] > 0 for r in update.details["rules"])
    # Switching the tenant to mitigation re-derives the rules as drop/rate-limit.
    lab.engine.set_tenants({1: ("alpha", TenantMode.MITIGATE, TenantPolicy())})
    lab.run(3)
    assert {r.action for r in lab.dp.rules.values()} == {RuleAction.DROP, RuleAction.RATE_LIMIT}


def test_auto_mitigation_off_reports_without_rules(tmp_path):
    lab = Lab(tmp_path, [dataclasses.replace(ALPHA, policy=TenantPolicy(auto_mitigation=False))])
    game_server(lab)
    lab.run(150)
    reference_attack(lab)
    lab.run(10)
    assert lab.of_type(EventType.ATTACK_START) and lab.dp.rules == {}


def test_carpet_bombing_over_a_prefix(tmp_path):
    lab = Lab(tmp_path, [Tenant(3, "gamma")])
    servers = [f"192.0.2.{i}" for i in range(1, 31)]
    for i, s in enumerate(servers):
        frames = [tcp_frame(c, s, 40000 + j, 443, "A") for j, c in enumerate(clients(10, start=10 + i))]
        lab.flow(f"srv{i}", 3, frames, 150)
    lab.run(150)
    # DNS answers spread over 200 addresses, 400 pps each: every address far below min_pps.
    targets = [f"192.0.2.{i}" for i in range(20, 220)]
    frames = [udp_frame(f"203.0.113.{150 + i % 60}", d, 53, 1024 + i, bytes(900), ttl=50) for i, d in enumerate(targets)]
    lab.flow("carpet", 3, frames, 80_000, attack=True, sample_one_in=20, max_samples_per_s=800)
    lab.run(12)
    starts = lab.of_type(EventType.ATTACK_START)
    assert len(starts) == 1
    start = starts[0]
    assert "carpet_bombing" in start.vectors and start.details["vector_confidence"]["carpet_bombing"] >= 0.8
    assert "dns_amplification" in start.vectors
    assert start.details["target"] is None and len(start.destinations) >= 100
    (rule,) = lab.dp.rules.values()
    assert rule.dst is None and rule.sport.lo == 53 and rule.action == RuleAction.DROP
    assert all(f.dropped == 0 for f in lab.dp.flows if f.name.startswith("srv"))
    lab.run(5)
    carpet = flow(lab, "carpet")
    assert carpet.dropped / carpet.sent > 0.5


def test_busy_tenant_during_warm_up_is_not_a_carpet(tmp_path):
    lab = Lab(tmp_path, [Tenant(3, "gamma")])
    for i in range(40):                      # 40 servers × 1,000 pps: 40 kpps, twice min_tenant_pps
        server = f"192.0.2.{i + 1}"
        lab.flow(f"srv{i}", 3, [udp_frame(c, server, 5000 + j, 4500, bytes(100 + j)) for j, c in
                                enumerate(clients(10, start=20 + i))], 1000, sample_one_in=500)
    lab.run(200)                             # through and past the warm-up
    assert lab.events == []
    assert lab.engine.last_detection.tenant_anomalous.sum() == 0


def test_warm_up_onset_floors_catch_the_reference_attack_at_its_first_tick(tmp_path):
    lab = Lab(tmp_path, [ALPHA], config=dataclasses.replace(FAST, warmup_s=600.0))
    game_server(lab)
    lab.run(5)                                # the game server's normal traffic, seen for a few seconds
    assert lab.events == []
    reference_attack(lab)
    first = lab.run(1)                        # one tick after the onset
    (start,) = lab.of_type(EventType.ATTACK_START, first)
    assert start.details["vector_confidence"]["syn_flood"] >= 0.8
    assert start.details["vector_confidence"]["udp_flood"] >= 0.8
    rules = {r.comment.split()[1]: r for r in lab.dp.rules.values()}
    assert rules["udp_flood"].action == RuleAction.DROP and rules["udp_flood"].length.lo == 540
    assert rules["syn_flood"].action == RuleAction.RATE_LIMIT
    lab.run(5)
    assert flow(lab, "players").dropped == 0 and flow(lab, "udp-flood").dropped > 0


def test_warm_up_an_address_busy_from_its_first_second_is_not_an_attack(tmp_path):
    lab = Lab(tmp_path, [Tenant(2, "beta")])
    # One-way queries at 3 kpps, above the UDP onset floor, from the engine's first second on:
    # its usual traffic, not an onset the engine saw.
    queries = [udp_frame(c, DNS, 30000 + i, 53, bytes(30)) for i, c in enumerate(clients(120))]
    lab.flow("queries", 2, queries, 3_000)
    lab.run(30)
    assert lab.events == [] and lab.dp.rules == {}
    # The same address flooded later is caught on the onset floor (still warming up).
    lab.flow("flood", 2, udp_flood_frames(DNS, dport=53), 20_000, attack=True)
    (start,) = lab.of_type(EventType.ATTACK_START, lab.run(1))
    assert start.vectors[0] == "udp_flood" and start.confidence >= 0.8
    assert flow(lab, "queries").dropped == 0


def test_a_long_attack_is_not_learned_and_a_reattack_is_recognised(lab):
    lab.flow("udp-flood", 1, udp_flood_frames(GAME), 5_000, attack=True)
    lab.run(600)                              # two FAST half-lives under attack
    slot = lab.engine.rates.slots.slot_of(ipaddress.ip_address(GAME))
    assert lab.engine.dest_baseline.mean[slot, TrafficClass.UDP] < 1000
    (start,) = lab.of_type(EventType.ATTACK_START)
    stop_attack(lab)
    lab.run(FAST.quiet_s + 5)
    assert lab.of_type(EventType.ATTACK_END)
    # Same vector again within the hold-down: the incident reopens under the same id.
    lab.flow("udp-flood", 1, udp_flood_frames(GAME), 5_000, attack=True)
    new = lab.run(5)
    reopen = lab.of_type(EventType.ATTACK_START, new)
    assert len(reopen) == 1 and reopen[0].incident_id == start.incident_id and reopen[0].details["reopened"] == 1


def test_rate_limit_fallback_for_want_of_samples_is_replaced_by_a_signature(lab):
    lab.flow("udp-flood", 1, udp_flood_frames(GAME), 5_000, attack=True)
    for f in lab.dp.flows:
        f.sample_one_in = 5000                              # the dataplane's sampling is starved
    lab.run(10)
    (first,) = lab.dp.rules.values()
    assert first.action == RuleAction.RATE_LIMIT           # ~1 sample a second: no header signature yet
    for f in lab.dp.flows:
        f.sample_one_in = 50
    lab.run(3)
    (rule,) = lab.dp.rules.values()
    assert rule.action == RuleAction.DROP and rule.length.lo == 540
    assert [op for op, _, _ in lab.dp.rule_log] == ["add", "add", "remove"]
    assert flow(lab, "players").dropped == 0


def test_ipv6_server_udp_flood_rule_uses_ipv6_length(tmp_path):
    server = "2001:db8:1::10"
    lab = Lab(tmp_path, [ALPHA])
    players = [udp_frame(f"2001:db8:2::{i + 1:x}", server, 30000 + i, 27015, b"\xff\xff\xff\xffT" + bytes(20 + i))
               for i in range(40)]
    lab.flow("players", 1, players, 600)
    lab.run(150)
    flood = [udp_frame(f"2001:db8:ff::{i + 1:x}", server, 1024 + i, 27015, b"\x00" * 200) for i in range(80)]
    lab.flow("flood", 1, flood, 20_000, attack=True)
    lab.run(8)
    (start,) = lab.of_type(EventType.ATTACK_START)
    assert start.destinations == (server,) and start.vectors[0] == "udp_flood"
    (rule,) = lab.dp.rules.values()
    assert rule.dst == ipaddress.ip_address(server)
    assert rule.length.lo == rule.length.hi == 40 + 8 + 200     # payload length + 40
    assert flow(lab, "players").dropped == 0 and flow(lab, "flood").dropped > 0


def test_addresses_without_tenant_never_raise_incidents(tmp_path):
    from dataplane.constants import NO_TENANT

    lab = Lab(tmp_path, [ALPHA])
    lab.flow("stray", NO_TENANT, syn_flood_frames("203.0.113.200"), 100_000)
    lab.run(10)
    dest, _ = lab.engine.last_rates
    assert dest.addresses == [ipaddress.ip_address("203.0.113.200")]
    assert lab.events == [] and lab.dp.rules == {}


# -- legitimate look-alikes ---------------------------------------------------------------------

def test_speed_test_download_with_acks_does_not_trigger(tmp_path):
    lab = Lab(tmp_path, [Tenant(2, "beta")])
    client = "198.51.100.77"
    lab.flow("web", 2, [tcp_frame(c, SPEED, 40000 + i, 8080, "A") for i, c in enumerate(clients(20))], 100)
    lab.flow("web-out", 2, [tcp_frame(SPEED, c, 8080, 40000 + i, "PA", bytes(1200))
                            for i, c in enumerate(clients(20))], 100, direction=Direction.OUTBOUND)
    lab.run(150)
    # 1 Gbit/s download: 83 kpps of data out, 40 kpps of ACKs in, from one client.
    lab.flow("acks", 2, [tcp_frame(client, SPEED, 50123, 8080, "A")], 40_000)
    lab.flow("data", 2, [tcp_frame(SPEED, client, 8080, 50123, "A", bytes(1448))], 83_000,
             direction=Direction.OUTBOUND)
    lab.run(30)
    assert lab.events == [] and lab.dp.rules == {}
    assert lab.engine.last_detection.anomalous.any()     # it was seen as unusual, then judged benign


def test_game_server_evening_peak_slow_ramp_does_not_trigger(tmp_path):
    config = PolicyConfig()                   # production time constants: 30 min half-life, 10 min warm-up
    lab = Lab(tmp_path, [ALPHA], config=config)
    start = lab.t

    def evening(t: float) -> float:           # 900 pps → 3,600 pps over two hours, then flat
        return 900.0 + 2700.0 * min(max(t - start - 900.0, 0.0) / 7200.0, 1.0)

    # Few samples: rates decide here, and 2.5 hours of samples would only slow the test down.
    lab.flow("players", 1, game_legit_frames(), evening, sample_one_in=2000)
    lab.flow("replies", 1, game_replies(), evening, direction=Direction.OUTBOUND, sample_one_in=2000)
    lab.run(9000, dt=5.0)                     # 2.5 hours, 5 s ticks
    assert lab.events == []
    slot = lab.engine.rates.slots.slot_of(ipaddress.ip_address(GAME))
    assert lab.engine.dest_baseline.mean[slot, TrafficClass.UDP] > 2000      # the peak was learned


def test_dns_server_queries_in_and_replies_out_do_not_trigger(tmp_path):
    lab = Lab(tmp_path, [Tenant(2, "beta")])
    resolvers = clients(120, base="198.51.100.", start=100)
    queries = [udp_frame(c, DNS, 30000 + i, 53, b"\xab\xcd\x01\x00\x00\x01" + bytes(24)) for i, c in enumerate(resolvers)]
    replies = [udp_frame(DNS, c, 53, 30000 + i, b"\xab\xcd\x81\x80" + bytes(300)) for i, c in enumerate(resolvers)]
    rng = np.random.default_rng(3)
    lab.flow("queries", 2, queries, lambda t: 30_000 * (1 + 0.1 * math.sin(t / 60)) + rng.normal(0, 300))
    lab.flow("replies", 2, replies, 30_000, direction=Direction.OUTBOUND)
    lab.run(400)
    assert lab.events == [] and lab.dp.rules == {}


def test_the_reflection_attack_on_the_dns_server_is_still_caught(tmp_path):
    lab = Lab(tmp_path, [Tenant(2, "beta")])
    queries = [udp_frame(c, DNS, 30000 + i, 53, bytes(30)) for i, c in enumerate(clients(120))]
    lab.flow("queries", 2, queries, 3_000)
    lab.run(150)
    lab.flow("ntp", 2, reflection_frames(DNS, 123, 440), 40_000, attack=True)
    lab.run(10)
    (start,) = lab.of_type(EventType.ATTACK_START)
    assert start.vectors[0] == "ntp_amplification"
    (rule,) = lab.dp.rules.values()
    assert rule.sport.lo == 123 and rule.dport is None
    assert flow(lab, "queries").dropped == 0


# -- tenants, status, persistence, the loop --------------------------------------------------------

def test_set_tenants_validates_and_removing_a_tenant_removes_its_rules(lab):
    with pytest.raises(ValueError, match="TenantPolicy"):
        lab.engine.set_tenants({1: ("alpha", TenantMode.MITIGATE, {"min_pps": 5})})
    with pytest.raises(ValueError, match="index"):
        lab.engine.set_tenants({-1: ("alpha", TenantMode.MITIGATE, TenantPolicy())})
    with pytest.raises(ValueError, match="mode"):
        lab.engine.set_tenants({1: ("alpha", 7, TenantPolicy())})
    assert 1 in lab.engine.tenants            # a failed reload keeps the running table
    reference_attack(lab)
    lab.run(8)
    assert lab.dp.rules
    lab.engine.set_tenants({})
    assert lab.dp.rules == {}


def test_status_exposes_timings_and_rates(lab):
    status = lab.engine.status()
    assert status["last_tick"]["destinations"] == 1
    assert set(status["last_tick"]["timings_ms"]) >= {"read", "rates", "detect", "classify", "incidents", "learn"}
    dest, tenants = lab.engine.last_rates
    assert dest.addresses == [ipaddress.ip_address(GAME)]
    assert 600 < dest.pps[0, TrafficClass.UDP] < 1000
    assert tenants.out_pps[1, TrafficClass.UDP] > 600


def test_baselines_survive_a_restart(lab, tmp_path):
    lab.engine.save_state()
    again = PolicyEngine(lab.dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, lab.bus, tmp_path,
                         config=FAST)
    addr = ipaddress.ip_address(GAME)
    old_slot, new_slot = lab.engine.rates.slots.slot_of(addr), again.rates.slots.slot_of(addr)
    assert again.dest_baseline.mean[new_slot, TrafficClass.UDP] == pytest.approx(
        lab.engine.dest_baseline.mean[old_slot, TrafficClass.UDP])
    assert again.dest_baseline.warm(np.array([new_slot]))[0, TrafficClass.UDP]
    (tmp_path / "baselines.npz").write_bytes(b"not a numpy file")
    broken = PolicyEngine(lab.dp, {}, lab.bus, tmp_path, config=FAST)     # logged, starts fresh
    assert broken.rates.slots.slot_of(addr) is None


async def test_run_ticks_until_stopped(lab, tmp_path):
    engine = PolicyEngine(lab.dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, lab.bus, tmp_path / "run",
                          tick=0.01, config=FAST)
    task = asyncio.create_task(engine.run(), name="policy-engine-test")
    await await_until(lambda: engine.last_report is not None and engine.last_report.dt > 0, timeout=5,
                      what="two engine ticks")
    engine.stop()
    await asyncio.wait_for(task, 5)
    assert (tmp_path / "run" / "baselines.npz").exists()


def test_bad_arguments_are_rejected(tmp_path):
    from policy.events import EventBus
    from tests.unit.policy.fakes import FakeDataplane

    with pytest.raises(ValueError, match="tick"):
        PolicyEngine(FakeDataplane(), {}, EventBus(), tmp_path, tick=0)
    with pytest.raises(ValueError, match="non-empty"):
        PolicyEngine(FakeDataplane(), {1: ("", TenantMode.MITIGATE, TenantPolicy())}, EventBus(), tmp_path)


def test_the_onsets_partial_second_does_not_teach_the_signature_check(tmp_path):
    lab = Lab(tmp_path, [ALPHA], config=dataclasses.replace(FAST, warmup_s=600.0))
    game_server(lab)
    lab.run(5)
    onset = lab.t
    # The flood begins late in a tick: that tick carries 1 kpps of it, below every threshold.
    lab.flow("udp-flood", 1, udp_flood_frames(GAME), lambda t: 1_000 if t < onset + 1 else 5_000, attack=True)
    lab.run(1)
    assert lab.events == []
    (start,) = lab.of_type(EventType.ATTACK_START, lab.run(2))
    (rule,) = lab.dp.rules.values()
    assert rule.action == RuleAction.DROP and rule.length.lo == 540, rule
    assert flow(lab, "players").dropped == 0


def test_handshake_replies_to_spoofed_sources_make_no_peers(lab):
    flood = syn_flood_frames(GAME, dport=80)
    lab.flow("syn-flood", 1, flood, 50_000, attack=True)
    # The server's SYN-ACKs to every spoofed source, and resets.
    synacks = [tcp_frame(GAME, str(src), 80, 1024 + i, "SA") for i, src in enumerate(_sources(flood))]
    lab.flow("syn-acks", 1, synacks, 50_000, direction=Direction.OUTBOUND)
    (start,) = lab.of_type(EventType.ATTACK_START, lab.run(1))
    assert start.details["vector_confidence"]["syn_flood"] >= 0.8
    assert start.details["evidence"]["syn_flood"]["symmetric_share"] == 0.0


def _sources(frames: list[bytes]) -> list[ipaddress.IPv4Address]:
    return [ipaddress.ip_address(f[26:30]) for f in frames]     # IPv4 source, after a 14-byte Ethernet header


def test_each_tick_publishes_its_tenant_traffic_and_a_failing_reader_does_not_stop_it(lab, tmp_path):
    """Issue 13 item 4: the engine publishes the tenants' counters and rates of every tick (the
    appliance's status and series read them there); a reader that raises is logged, the tick goes on."""
    seen = []
    engine = PolicyEngine(lab.dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, lab.bus, tmp_path / "pub",
                          on_tenant_traffic=seen.append)
    for _ in range(3):
        lab.dp.advance(lab.t, 1.0)
        lab.t += 1.0
        engine.tick(lab.t)
    assert len(seen) == 3 and seen[-1] is engine.tenant_traffic
    assert seen[-1].rates is engine.last_rates[1] and seen[-1].counters.present[1]
    assert seen[-1].rates.out_passed_pps[1] > 600 and seen[-1].rates.passed_pps[1] > 600

    def broken(traffic) -> None:
        raise RuntimeError("reader bug")

    failing = PolicyEngine(lab.dp, {1: ("alpha", TenantMode.MITIGATE, TenantPolicy())}, lab.bus, tmp_path / "f",
                           on_tenant_traffic=broken)
    failing.tick(lab.t)
    assert failing.tick(lab.t + 1.0).dt == 1.0 and failing.tenant_traffic is not None


def test_issue18_previous_detection_released_before_the_next_detection(tmp_path, monkeypatch):
    """Issue 18 item 2 (memory): once a tick has published its rates, the previous tick's detection
    (rows of the previous read) is no longer held, so that detection does not keep two of them
    (~70 MiB at a million destinations); after the tick, `last_detection` is the new one."""
    import policy.engine as engine_module

    lab = Lab(tmp_path, [ALPHA])
    game_server(lab)
    lab.run(3)
    previous = lab.engine.last_detection
    assert previous is not None
    held_at_detection = []
    real_detect = engine_module.detect

    def observed_detect(*args, **kwargs):
        held_at_detection.append(lab.engine.last_detection)
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(engine_module, "detect", observed_detect)
    lab.run(1)
    assert held_at_detection == [None]
    assert lab.engine.last_detection is not None and lab.engine.last_detection is not previous
    assert len(lab.engine.last_detection.threshold) == len(lab.engine.rates.last_destination_rates)
