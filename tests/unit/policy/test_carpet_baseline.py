"""Issue 20, item 1: a tenant's aggregate is judged against its own baseline. A carpet far below
the old fixed floors (every address under `min_pps`, the tenant under the old 20 kpps
`min_tenant_pps`) is caught and mitigated at prefix scope; a flash crowd of real clients and a
tenant whose traffic doubles over an hour raise no incident."""

from __future__ import annotations

import dataclasses
import ipaddress

from dataplane.api import Sample
from dataplane.constants import Direction, DropReason, TrafficClass
from policy.classify import ClassEvidence, Vector, classify_carpet
from policy.config import PolicyConfig
from policy.events import EventType
from policy.packets import parse_samples
from tenants.policy import TenantPolicy
from tests.unit.policy.fakes import tcp_frame, udp_frame
from tests.unit.policy.scenarios import FAST, Lab, Tenant, clients, spoofed, udp_flood_frames

GAMMA = Tenant(3, "gamma")
SERVERS = [f"192.0.2.{i}" for i in range(1, 11)]
CARPET = ipaddress.ip_network("192.0.2.0/26")


def quiet_tenant(lab: Lab, pps_per_server: float = 5.0) -> None:
    """Ten web servers with a few packets a second each, answering their clients."""
    for i, server in enumerate(SERVERS):
        peers = clients(10, start=10 + 10 * i)
        lab.flow(f"srv{i}", GAMMA.idx, [tcp_frame(c, server, 40000 + j, 443, "A") for j, c in enumerate(peers)],
                 pps_per_server)
        lab.flow(f"ans{i}", GAMMA.idx, [tcp_frame(server, c, 443, 40000 + j, "A") for j, c in enumerate(peers)],
                 pps_per_server, direction=Direction.OUTBOUND)


def test_default_tenant_floor_is_a_safety_net_not_the_detection_threshold():
    assert TenantPolicy().min_tenant_pps <= 1000


def test_carpet_below_the_old_fixed_floors_is_caught_against_the_tenants_baseline(tmp_path):
    lab = Lab(tmp_path, [GAMMA])
    quiet_tenant(lab)
    lab.run(FAST.warmup_s + 30)                    # the tenant's baseline: 50 packets/s
    assert lab.events == []
    # 15 kpps over the /26, ~240 pps per address: under min_pps (1,000) everywhere and under the
    # old min_tenant_pps (20,000), but hundreds of times the tenant's baseline.
    targets = [str(a) for a in CARPET.hosts()]
    frames = [udp_frame(s, d, 1024 + i, 5000 + i, bytes(400)) for i, (s, d) in enumerate(zip(spoofed(len(targets)),
                                                                                             targets, strict=True))]
    lab.flow("carpet", GAMMA.idx, frames, 15_000, attack=True, sample_one_in=20, max_samples_per_s=800)
    first = lab.run(1)                             # one tick after the onset
    (start,) = lab.of_type(EventType.ATTACK_START, first)
    assert "carpet_bombing" in start.vectors, start.vectors
    assert start.details["target"] is None         # the tenant, not one address
    rules = list(lab.dp.rules.values())
    assert rules and all(r.dst is None for r in rules), rules      # prefix (tenant) scope, in the same tick
    lab.run(5)
    carpet = next(f for f in lab.dp.flows if f.name == "carpet")
    assert carpet.dropped / carpet.sent > 0.5
    assert all(f.dropped == 0 for f in lab.dp.flows if f.name.startswith("srv"))


def test_carpet_evidence_names_prefix_spread_and_per_address_rate():
    targets = [str(a) for a in CARPET.hosts()]
    frames = [udp_frame(s, d, 1024, 5000, bytes(400)) for s, d in zip(spoofed(len(targets)), targets, strict=True)]
    samples = parse_samples([Sample(timestamp_ns=i, tenant_idx=GAMMA.idx, direction=Direction.INBOUND,
                                    dropped=False, reason=DropReason.NONE, wire_length=len(f) + 4, data=f[:128])
                             for i, f in enumerate(frames)])
    scores = classify_carpet([ClassEvidence(TrafficClass.UDP, 15_000, 500, 0)], samples, len(targets),
                             top_share=1 / len(targets), min_destinations=8, min_confidence=0.5)
    carpet = next(s for s in scores if s.vector == Vector.CARPET_BOMBING)
    assert carpet.evidence["prefix"] == "192.0.2.0/26"
    assert carpet.evidence["spread"] == len(targets)
    assert carpet.evidence["per_address_pps"] == round(15_000 / len(targets), 1)


def test_flash_crowd_of_real_clients_over_every_site_is_no_carpet(tmp_path):
    lab = Lab(tmp_path, [GAMMA])
    quiet_tenant(lab)
    lab.run(FAST.warmup_s + 30)
    # A flash crowd over all ten sites, below min_pps at each (the per-address path stays quiet)
    # but a hundred times the tenant's baseline: clients the servers answer, so no carpet.
    crowd = clients(250, base="198.51.100.", start=1)
    for i, server in enumerate(SERVERS):
        frames = [tcp_frame(c, server, 30000 + j, 443, "A") for j, c in enumerate(crowd)]
        answers = [tcp_frame(server, c, 443, 30000 + j, "PA") for j, c in enumerate(crowd)]
        lab.flow(f"crowd{i}", GAMMA.idx, frames, 500)
        lab.flow(f"crowd-ans{i}", GAMMA.idx, answers, 500, direction=Direction.OUTBOUND)
    lab.run(30)
    assert lab.of_type(EventType.ATTACK_START) == []
    assert lab.dp.rules == {}


def test_tenant_doubling_over_an_hour_is_no_incident(tmp_path):
    # The production half-life (30 min) and a warm-up the test can afford.
    config = dataclasses.replace(FAST, half_life_s=1800.0, warmup_s=120.0)
    lab = Lab(tmp_path, [GAMMA], config=config)
    base = 200.0
    quiet_tenant(lab, base / len(SERVERS))
    lab.run(config.warmup_s + 30)
    flows = [f for f in lab.dp.flows if f.name.startswith(("srv", "ans"))]
    for minute in range(60):                       # doubling, one step a minute
        for f in flows:
            f.pps = base / len(SERVERS) * (1.0 + (minute + 1) / 60.0)
        lab.run(60, dt=5.0)
    assert lab.events == []


def fresh_game_tenant(tmp_path) -> Lab:
    """A fresh appliance with production settings (10 min warm-up) that has seen 30 s of a game
    server's traffic: what the netns efficacy rows meet."""
    lab = Lab(tmp_path, [GAMMA], config=PolicyConfig())
    players = clients(20)
    lab.flow("players", GAMMA.idx, [udp_frame(c, SERVERS[0], 40000 + i, 28960, bytes(64))
                                    for i, c in enumerate(players)], 200)
    lab.flow("answers", GAMMA.idx, [udp_frame(SERVERS[0], c, 28960, 40000 + i, bytes(64))
                                    for i, c in enumerate(players)], 200, direction=Direction.OUTBOUND)
    lab.run(30)
    return lab


def carpet_flow(lab: Lab, pps: float = 20_000) -> None:
    targets = [str(a) for a in CARPET.hosts()]
    frames = [udp_frame(s, d, 1024 + i, 5000 + i, bytes(484))
              for i, (s, d) in enumerate(zip(spoofed(len(targets)), targets, strict=True))]
    lab.flow("carpet", GAMMA.idx, frames, pps, attack=True, sample_one_in=20, max_samples_per_s=800)


def test_carpet_in_a_fresh_appliance_is_caught_on_the_tenants_onset_floor(tmp_path):
    # Before: a tenant in warm-up kept the floor for tenants the engine has just met (300 kpps of UDP)
    # even after seeing its traffic, where its destinations get the onset floor.
    lab = fresh_game_tenant(tmp_path)
    carpet_flow(lab)
    (start,) = lab.of_type(EventType.ATTACK_START, lab.run(2))
    assert "carpet_bombing" in start.vectors and start.details["target"] is None


def test_an_attack_on_one_address_does_not_lift_its_tenants_threshold(tmp_path):
    lab = fresh_game_tenant(tmp_path)
    start = lab.t
    # A pulse wave (2 s on, 2 s off) at one server: its edges were learned into the tenant's baseline.
    lab.flow("pulse", GAMMA.idx, udp_flood_frames(SERVERS[1]),
             lambda t: 20_000.0 if int(t - start) % 4 < 2 else 0.0, attack=True)
    lab.run(14)
    lab.dp.remove_flow("pulse")
    lab.run(20)
    assert lab.engine.tenant_baseline.mean[GAMMA.idx, TrafficClass.UDP] < 400     # the players' 200 pps
    carpet_flow(lab)
    starts = lab.of_type(EventType.ATTACK_START, lab.run(2))
    assert any("carpet_bombing" in s.vectors for s in starts), [s.vectors for s in starts]
