"""Issue 20: "a tenant's aggregate (and a prefix's, for tenants with several) is an attack when it
departs from its own learned baseline". A carpet over a tenant's quiet prefix hides in the tenant's
aggregate when another of its prefixes is busy; the quiet prefix's own baseline shows it."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from dataplane.constants import Direction, TenantMode
from policy.engine import PolicyEngine
from policy.events import EventType
from tenants.policy import TenantPolicy
from tests.unit.policy.fakes import udp_frame
from tests.unit.policy.scenarios import FAST, Lab, clients, spoofed

BUSY = ipaddress.ip_network("192.0.2.0/25")        # game servers: 40 kpps of players
QUIET = ipaddress.ip_network("192.0.2.128/25")     # a few packets a second


def two_prefix_tenant(tmp_path, prefixes=(BUSY, QUIET)) -> Lab:
    lab = Lab(tmp_path, [])
    lab.engine.set_tenants({3: ("gamma", TenantMode.MITIGATE, TenantPolicy(), tuple(prefixes))})
    players = clients(20, base="203.0.113.", start=10)
    for i in range(20):
        server = str(BUSY[i + 1])
        lab.flow(f"game{i}", 3, [udp_frame(c, server, 30000 + j, 28960, bytes(60 + j), ttl=60 + j % 5)
                                 for j, c in enumerate(players)], 2_000, sample_one_in=500)
        lab.flow(f"game-out{i}", 3, [udp_frame(server, c, 28960, 30000 + j, bytes(200)) for j, c in enumerate(players)],
                 2_000, direction=Direction.OUTBOUND, sample_one_in=500)
    for i in range(10):
        server = str(QUIET[i + 1])
        lab.flow(f"quiet{i}", 3, [udp_frame(c, server, 40000 + j, 53, bytes(40)) for j, c in enumerate(players)], 5)
    lab.run(FAST.warmup_s + 60)
    assert lab.events == []
    return lab


def carpet_over(lab: Lab, prefix: ipaddress.IPv4Network, pps: float) -> None:
    targets = [str(a) for a in prefix.hosts()]
    frames = [udp_frame(s, d, 1024 + i, 5000 + i, bytes(400), ttl=50)
              for i, (s, d) in enumerate(zip(spoofed(len(targets)), targets, strict=True))]
    lab.flow("carpet", 3, frames, pps, attack=True, sample_one_in=20, max_samples_per_s=800)


def test_carpet_over_the_quiet_prefix_of_a_two_prefix_tenant_is_detected_and_named(tmp_path):
    lab = two_prefix_tenant(tmp_path)
    # 15 kpps over the quiet /25 (~120 pps per address): the tenant's 40 kpps aggregate hides it.
    carpet_over(lab, QUIET, 15_000)
    lab.run(5)
    assert not lab.engine.last_detection.tenant_anomalous[3].any()     # the tenant as a whole looks normal
    (start,) = lab.of_type(EventType.ATTACK_START)
    assert "carpet_bombing" in start.vectors and start.details["target"] is None
    carpet = start.details["evidence"]["carpet_bombing"]
    assert carpet["tenant_prefix"] == str(QUIET)
    assert ipaddress.ip_network(carpet["prefix"]).subnet_of(QUIET)
    assert lab.dp.rules and all(r.dst is None for r in lab.dp.rules.values())
    lab.run(5)
    flood = next(f for f in lab.dp.flows if f.name == "carpet")
    assert flood.dropped / flood.sent > 0.5
    assert all(f.dropped == 0 for f in lab.dp.flows if not f.attack)


def test_a_tenant_with_one_prefix_has_no_prefix_baselines(tmp_path):
    lab = two_prefix_tenant(tmp_path, prefixes=(ipaddress.ip_network("192.0.2.0/24"),))
    assert lab.engine.prefixes.networks == []


def test_bad_prefixes_are_rejected(tmp_path):
    lab = Lab(tmp_path, [])
    with pytest.raises(ValueError, match="prefixes"):
        lab.engine.set_tenants({3: ("gamma", TenantMode.MITIGATE, TenantPolicy(), ("not a prefix",))})


def test_each_address_is_counted_in_its_own_prefix(tmp_path):
    lab = Lab(tmp_path, [])
    lab.engine.set_tenants({3: ("gamma", TenantMode.MITIGATE, TenantPolicy(),
                                ("192.0.2.0/25", "2001:db8:c::/48", "192.0.2.128/26"))})
    rates = {"192.0.2.5": 1000, "192.0.2.130": 2000, "2001:db8:c::9": 4000, "2001:db8:c:ffff::1": 8000,
             "192.0.2.250": 16000}
    for address, pps in rates.items():
        src = "2001:db8:ff::9" if ":" in address else "203.0.113.9"
        lab.flow(address, 3, [udp_frame(src, address, 4000, 53, bytes(40))], pps)
    lab.run(3)
    dest, _ = lab.engine.last_rates
    # The aggregates only: no carpets need the destinations' caps and excess (detection's are valid until
    # learning, over by now), so zeros stand for them.
    det = lab.engine.last_detection
    found = lab.engine.prefixes.detect(dest, lab.engine.prefixes.rows_of(dest), np.zeros_like(det.threshold),
                                       det.warm, det.anomalous, np.zeros_like(det.threshold),
                                       lab.engine.policy_table.min_tenant_pps, lab.engine.policy_table.sensitivity, 8)
    assert not found.carpets
    # 192.0.2.250 lies in none of the three prefixes (the /26 ends at .191).
    assert found.pps.sum(axis=1).tolist() == pytest.approx([1000, 12000, 2000], rel=0.1)


def test_prefix_baselines_survive_a_restart(tmp_path):
    lab = two_prefix_tenant(tmp_path)
    lab.engine.save_state()
    spec = {3: ("gamma", TenantMode.MITIGATE, TenantPolicy(), (str(BUSY), str(QUIET)))}
    again = PolicyEngine(lab.dp, spec, lab.bus, tmp_path, config=FAST)
    assert again.prefixes.networks == lab.engine.prefixes.networks
    assert again.prefixes.baseline.mean == pytest.approx(lab.engine.prefixes.baseline.mean)
    assert (again.prefixes.baseline.learned_s >= FAST.warmup_s).any()
    # A prefix the tenant no longer has is dropped; a new one starts its warm-up.
    moved = PolicyEngine(lab.dp, {3: ("gamma", TenantMode.MITIGATE, TenantPolicy(), (str(BUSY), "192.0.2.128/26"))},
                         lab.bus, tmp_path, config=FAST)
    assert moved.prefixes.baseline.mean[0] == pytest.approx(lab.engine.prefixes.baseline.mean[0])
    assert not moved.prefixes.baseline.learned_s[1].any()
