"""Issue 14, items 1, 4, 5: `seawall run` with [bgp] on the lab, a real flood, BIRD 2 as the upstream peer.

A flood bigger than `flowspec_at` x `uplink_bps` becomes an incident with a rule; the appliance
announces the rule as FlowSpec, BIRD (its own namespace, its own implementation) holds it with
the destination, protocol and port; `seawall status --json` shows the session and the
announcement; the speaker killed by its pid is noticed, restarted and the route announced
again; a clean stop leaves nothing announced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from appliance.lab import lab_config
from appliance.lab.attack import AttackProcess, AttackSpec
from appliance.lab.bgp_peer import LOCAL_AS, PEER_AS, BirdPeer
from appliance.lab.traffic import TrafficProfile, TrafficRun
from appliance.runner import ApplianceProcess
from dataplane.dataplane import purge
from tests.support import wait_until

UPLINK_BPS = 10_000_000       # bits/s: the lab's flood (20 kpps of ~470-byte NTP replies, ~75 Mbit/s) fills it
ATTACK_PPS = 20_000
ATTACK_S = 60.0               # seconds at most; killed once the test has what it needs
HOLD_DOWN_S = 30.0            # seconds: longer than a restart of seawall run
LEGIT = TrafficProfile(game_pps=200, http_rps=10, dns_qps=50)
MANAGEMENT_LINK = 2          # this module's /30 beside the root namespace (tests/netns/conftest.py)


@pytest.fixture
def peer(tmp_path):
    with BirdPeer(f"swb{uuid.uuid4().hex[:6]}", tmp_path, link=MANAGEMENT_LINK) as bird:
        yield bird


def config_for(lab, tmp_path, peer: BirdPeer) -> dict:
    config = lab_config(lab.name)
    config["appliance"]["state_dir"] = str(tmp_path / "state")
    config["appliance"]["tick_ms"] = 1000
    config["securewatch"] = {"enabled": False}
    config["bgp"] = {"local_as": LOCAL_AS, "router_id": peer.appliance,
                     "peers": [{"address": peer.address, "peer_as": PEER_AS, "flowspec": True, "rtbh": True,
                                "rtbh_communities": ["65535:666"], "local_address": peer.appliance}]}
    config["escalation"] = {"uplink_bps": UPLINK_BPS, "flowspec_at": 0.5, "hold_down_s": HOLD_DOWN_S,
                            "max_announcements": 10}
    return config


def cli_status(config_path) -> dict:
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "status", "--config", str(config_path), "--json"],
                         capture_output=True, text=True, timeout=30, env={**os.environ})
    return json.loads(out.stdout)


def test_flood_escalates_to_flowspec_at_the_peer_survives_a_speaker_kill_and_a_clean_stop_withdraws(
        lab, peer, tmp_path, request):
    config = config_for(lab, tmp_path, peer)
    proc = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")

    def teardown():
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    proc.start()
    wait_until(lambda: (proc.status().get("bgp") or {}).get("peers", [{}])[0].get("state") == "established",
               timeout=30, interval=0.2, what="the BGP session in the appliance's status")

    # The engine meets the servers' own traffic first: a flood is then an onset it witnessed
    # (policy.config's onset floors), not the first thing an address ever received.
    TrafficRun(lab, 4.0, LEGIT).start().wait(60)
    server = lab.server("s1")                        # alpha's game server
    attack = AttackProcess(lab, AttackSpec("ntp", server.ipv4, pps=ATTACK_PPS, duration=ATTACK_S))
    request.addfinalizer(attack.kill)
    attack.start()

    wanted = f"flow4 {{ dst {server.ipv4}/32; proto 17;"
    route = wait_until(lambda: next((r for r in peer.flow4() if r.startswith(wanted)), None), timeout=60,
                       interval=0.2, what="the flood's FlowSpec route at BIRD")
    assert "sport 123;" in route                     # the reflection's source port, from the signature

    status = cli_status(tmp_path / "seawall.toml")
    [session] = status["bgp"]["peers"]
    assert (session["address"], session["peer_as"], session["state"]) == (peer.address, PEER_AS, "established")
    assert session["uptime_s"] >= 0
    ann = next(a for a in status["bgp"]["announcements"] if a["match"]["destination"] == f"{server.ipv4}/32")
    assert (ann["kind"], ann["tenant"], ann["reason"]) == ("flowspec", "alpha", "auto")
    assert ann["incident"] in {i["id"] for i in status["incidents"]} and ann["since"] > 0

    speaker_pid = status["bgp"]["speaker"]["pid"]
    os.kill(speaker_pid, signal.SIGKILL)
    wait_until(lambda: proc.status()["bgp"]["speaker"]["restarts"] == 1, timeout=20, interval=0.2,
               what="the speaker's death noticed and a restart")
    assert proc.status()["bgp"]["speaker"]["pid"] != speaker_pid
    wait_until(lambda: any(r.startswith(wanted) for r in peer.flow4()), timeout=40, interval=0.2,
               what="the route announced again after the restart")
    log = (tmp_path / "seawall.log").read_text()
    assert "bgp.speaker_died" in log

    attack.kill()
    assert proc.stop() == 0
    wait_until(lambda: not peer.flow4() and not peer.flow6() and not peer.unicast4(), timeout=15, interval=0.2,
               what="nothing announced after the clean stop")


def test_a_crash_of_seawall_run_leaves_nothing_announced_and_a_restart_announces_again(
        lab, peer, tmp_path, request):
    config = config_for(lab, tmp_path, peer)
    proc = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")

    def teardown():
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    proc.start()
    TrafficRun(lab, 4.0, LEGIT).start().wait(60)
    server = lab.server("s2")                        # alpha's first web server
    attack = AttackProcess(lab, AttackSpec("ntp", server.ipv4, pps=ATTACK_PPS, duration=ATTACK_S))
    request.addfinalizer(attack.kill)
    attack.start()
    wait_until(lambda: any(r.startswith(f"flow4 {{ dst {server.ipv4}/32;") for r in peer.flow4()), timeout=60,
               interval=0.2, what="the flood's FlowSpec route at BIRD")
    speaker_pid = proc.status()["bgp"]["speaker"]["pid"]
    os.kill(proc.proc.pid, signal.SIGKILL)           # no clean stop: the control plane is gone at once
    proc.proc.wait(10)
    wait_until(lambda: not peer.flow4(), timeout=15, interval=0.2, what="the peer to drop Seawall's routes")

    def speaker_gone() -> bool:
        try:
            os.kill(speaker_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(speaker_gone, timeout=15, interval=0.2, what="ExaBGP to exit with seawall run")

    # The flood goes on: a new `seawall run` announces again what the crashed one had announced
    # (saved under state_dir/bgp), before its own engine has found the attack again.
    proc.start()
    wait_until(lambda: any(r.startswith(f"flow4 {{ dst {server.ipv4}/32;") for r in peer.flow4()), timeout=20,
               interval=0.2, what="the route announced again by the restarted seawall run")
    assert "bgp.announcement_restored" in (tmp_path / "seawall.log").read_text()
