"""Issue 20: the fixed floors (`min_pps`, `min_tenant_pps`) get defaults that scale with the link
(`[escalation] uplink_bps`), never below a few hundred packets/s; a value the operator set stays."""

from __future__ import annotations

import dataclasses

import pytest

from dataplane.constants import Direction
from policy.config import LOWEST_LINK_FLOOR_PPS, PolicyConfig, floors_for_link, link_floors
from policy.events import EventType
from tenants.policy import TenantPolicy
from tests.unit.policy.fakes import tcp_frame
from tests.unit.policy.scenarios import FAST, Lab, Tenant, clients, udp_flood_frames

WEB = "198.51.100.20"
GBPS = 10 ** 9               # bits/s


def test_link_floors_are_todays_defaults_at_10_gbps_and_scale_with_the_link():
    defaults = TenantPolicy()
    assert link_floors(10 * GBPS) == (defaults.min_pps, defaults.min_tenant_pps)
    assert link_floors(100 * GBPS) == (10_000, 5_000)
    assert link_floors(40 * GBPS) == (4_000, 2_000)


def test_link_floors_never_go_below_a_few_hundred_pps():
    assert link_floors(1 * GBPS) == (LOWEST_LINK_FLOOR_PPS, LOWEST_LINK_FLOOR_PPS)
    assert link_floors(1) == (LOWEST_LINK_FLOOR_PPS, LOWEST_LINK_FLOOR_PPS)
    assert LOWEST_LINK_FLOOR_PPS >= 200


def test_floors_the_operator_set_are_kept_and_without_uplink_nothing_changes():
    own = TenantPolicy(min_pps=2_500)
    scaled = floors_for_link(own, 100 * GBPS)
    assert scaled.min_pps == 2_500 and scaled.min_tenant_pps == 5_000
    assert floors_for_link(own, None) is own


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10G", 10 ** 16])
def test_uplink_bps_is_validated(bad):
    with pytest.raises(ValueError, match="uplink_bps"):
        PolicyConfig(uplink_bps=bad)


def quiet_web_server(lab: Lab) -> None:
    peers = clients(10)
    lab.flow("web", 1, [tcp_frame(c, WEB, 40000 + i, 443, "A") for i, c in enumerate(peers)], 20)
    lab.flow("web-out", 1, [tcp_frame(WEB, c, 443, 40000 + i, "PA", bytes(600)) for i, c in enumerate(peers)], 20,
             direction=Direction.OUTBOUND)


@pytest.mark.parametrize(("uplink_bps", "attack"), [(1 * GBPS, True), (10 * GBPS, False), (None, False)])
def test_the_engine_detects_against_the_links_floor(tmp_path, uplink_bps, attack):
    # 700 pps of UDP at a quiet web server: over the floor of a 1 Gbit/s edge (300 pps), under the
    # fixed 1,000 pps default that a 10 Gbit/s edge and an unknown link keep.
    lab = Lab(tmp_path, [Tenant(1, "alpha")], config=dataclasses.replace(FAST, uplink_bps=uplink_bps))
    quiet_web_server(lab)
    lab.run(FAST.warmup_s + 30)
    assert lab.events == []
    lab.flow("flood", 1, udp_flood_frames(WEB, dport=9999), 700, attack=True)
    lab.run(10)
    assert bool(lab.of_type(EventType.ATTACK_START)) is attack
    assert lab.engine.policy_table.min_pps[1] == (300 if uplink_bps == GBPS else 1000)
