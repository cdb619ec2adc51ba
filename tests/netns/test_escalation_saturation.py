"""Issue 14, items 6 and 7: a flood bigger than the uplink, removed upstream by FlowSpec through a real BGP peer.

The lab's upstream mode (`appliance.lab.upstream`): the flood comes from the attacker's host
through the upstream router, whose link to the appliance is shaped to UPLINK_BPS; the router runs
BIRD 2 and the lab's edge-router agent, which enforces the FlowSpec routes BIRD receives as
nftables rules. `seawall run` escalates to it. What is asserted is measured at the router,
independently of Seawall: BIRD's table, the agent's rules, the flood handed to the uplink (an
nftables counter after the FlowSpec rules), and the legitimate clients' success.
"""

from __future__ import annotations

import time

import pytest

from appliance.lab import lab_config, saturation
from appliance.lab.attack import AttackSpec
from appliance.lab.traffic import TrafficProfile, TrafficRun
from appliance.lab.upstream import SAMPLE_S, RoutedAttack, Upstream
from appliance.runner import ApplianceProcess
from dataplane.dataplane import purge
from tests.support import wait_until

UPLINK_BPS = 20_000_000       # bits/s: the shaped uplink
INTERNET_BPS = 80_000_000     # bits/s: the attacker's link (paces the flood)
FLOOD_PPS = 20_000            # NTP replies of ~470 bytes: ~75 Mbit/s, 3.7x the uplink
HOLD_DOWN_S = 2.0             # seconds: short, the engine's quiet time comes first anyway
# Seconds without anomaly before the engine ends the incident ([policy] quiet_s, set in the test's config;
# the default is 30). Once FlowSpec takes the flood the appliance sees none of it, so the quiet time counts
# from "flood gone" (~10 s into the legitimate run): the withdrawal comes ~QUIET_S later, after the flood
# has stopped (the test checks that the route is still installed when it stops the flood).
QUIET_S = 15.0
LEGIT_S = 20.0                # seconds of legitimate traffic: before, during and after the saturation
LEAD_S = 4.0                  # seconds of legitimate traffic before the flood (the engine meets the servers)
LEGIT = TrafficProfile(game_pps=100, http_rps=4, dns_qps=10)


@pytest.fixture
def upstream(lab, tmp_path, request):
    up = Upstream(lab, UPLINK_BPS, tmp_path / "upstream", internet_bps=INTERNET_BPS)
    request.addfinalizer(up.down)
    return up.up()


def test_flowspec_takes_the_flood_off_the_uplink_legit_recovers_and_the_route_is_withdrawn(
        lab, upstream, tmp_path, request):
    config = lab_config(lab.name)
    config["appliance"]["state_dir"] = str(tmp_path / "state")
    config["securewatch"] = {"enabled": False}
    config["bgp"] = upstream.bgp_config()
    config["escalation"] = {"uplink_bps": UPLINK_BPS, "flowspec_at": 0.7, "hold_down_s": HOLD_DOWN_S}
    config["policy"] = {"quiet_s": QUIET_S}
    proc = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")

    def teardown():
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    proc.start()
    peer, agent = upstream.peer, upstream.agent
    wait_until(peer.established, timeout=30, interval=0.2, what="the BGP session with the router's BIRD")

    server = lab.server("s1")                        # alpha's game server
    legit = TrafficRun(lab, LEGIT_S, LEGIT).start()
    request.addfinalizer(legit.kill)
    wait_until(lambda: len(legit.seconds) >= LEAD_S - 1, timeout=15, interval=0.1, what="legitimate traffic")
    attack = RoutedAttack(lab, AttackSpec("ntp", server.ipv4, pps=FLOOD_PPS, duration=LEGIT_S))
    request.addfinalizer(attack.kill)
    attack.start()

    wanted = f"flow4 {{ dst {server.ipv4}/32; proto 17;"
    route = wait_until(lambda: next((r for r in agent.installed() if r.startswith(wanted)), None), timeout=40,
                       interval=0.1, what="the flood's FlowSpec rule enforced at the router")
    assert "sport 123;" in route                     # the reflection's source port, from Seawall's signature
    # The flood no longer reaches the uplink: the router drops it before the shaped queue.
    def flood_gone() -> bool:
        last = upstream.samples[-1].time
        pps = upstream.flood_pps(last - 1.0, last)
        return pps is not None and pps < saturation.GONE_SHARE * FLOOD_PPS

    wait_until(flood_gone, timeout=10, interval=0.1, what="the flood gone from the uplink")
    [(dropped, _)] = agent.counters().values()
    assert dropped > 0                               # the rule's own counter: it is what took the flood

    summary = legit.wait(LEGIT_S + 30)
    # The route outlives the flood: it is still enforced at the router when the flood stops.
    assert any(r.startswith(wanted) for r in agent.installed()), "the FlowSpec rule was gone before the flood stopped"
    result = attack.stop()
    assert result is not None, f"the routed flood printed no summary: {attack.failure}"
    assert result["transmitted"] > 0
    # Onset: the first uplink sample with flood packets, less a sampling period (it came since the last).
    onset = next(s.time for s in upstream.samples if s.flood_packets > 0) - SAMPLE_S
    figs = saturation.figures(server.ipv4, "ntp", (onset, time.time()),
                              events=list(agent.events), rates=upstream.rates(), uplink_bps=UPLINK_BPS,
                              legit_seconds=legit.seconds, legit_started_at=summary["started_at"],
                              server_of={s.ipv4: s.name for s in lab.servers})
    print(figs.to_dict())
    assert figs.peak_flood_bps > 2 * UPLINK_BPS and figs.peak_drops_pps > 0      # the link was full
    assert figs.flowspec_s is not None and figs.enforced_s is not None and figs.flood_gone_s is not None
    assert figs.legit_saturated is not None and figs.legit_saturated < 0.9        # every tenant suffered
    assert figs.legit_after is not None and figs.legit_after >= 0.97              # and recovered

    # Withdrawn once the engine has ended the incident and the hold-down has passed; the agent follows.
    wait_until(lambda: not peer.flow4(), timeout=QUIET_S + HOLD_DOWN_S + 20, interval=0.2,
               what="the FlowSpec route withdrawn after the attack")
    wait_until(lambda: not agent.installed(), timeout=5, interval=0.1, what="the router's rule removed")
    assert "bgp.withdraw" in (tmp_path / "seawall.log").read_text()
