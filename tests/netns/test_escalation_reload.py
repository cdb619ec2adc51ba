"""Issue 14 (reload): [bgp] and [escalation] follow the config file on SIGHUP, against real BIRD 2 peers.

Two BIRD peers, each in its own namespace with its own management link. First the controller with
the live speaker (ExaBGP): a peer added by a reload receives what is announced, a removed peer's
session closes (so BIRD drops the routes), a peer that stops taking RTBH gets its RTBH route
withdrawn while FlowSpec stays. Then `seawall run` itself: SIGHUP with a peer added, with a bad
value (refused, the key named, nothing changed), and with [bgp] removed (the speaker stops).
"""

from __future__ import annotations

import copy
import ipaddress
import time
import uuid

import pytest
import tomli_w

from appliance.lab import lab_config
from appliance.lab.bgp_peer import LOCAL_AS, BirdPeer
from appliance.runner import ApplianceProcess
from dataplane.api import Range, Rule
from dataplane.dataplane import purge
from escalation.config import BgpSettings, EscalationSettings, PeerSettings
from escalation.controller import Escalation
from escalation.ladder import WITHDRAW, IncidentView
from escalation.routes import RTBH
from tenants import Tenant
from tests.support import await_until, wait_until

UPLINK = 1_000_000                 # bits/s
MANAGEMENT_LINKS = (3, 4)          # this module's two /30s beside the root namespace (tests/netns/conftest.py)
FULL = 0.9 * UPLINK
ALPHA = Tenant.from_dict({"id": "alpha", "name": "alpha", "prefixes": ["203.0.113.0/26"],
                          "policy": {"escalate_rtbh": True}})
FLOW = "flow4 { dst 203.0.113.5/32; proto 17; dport 80; sport 123; }"


@pytest.fixture
def peers(tmp_path):
    tag = uuid.uuid4().hex[:5]
    first = BirdPeer(f"swr{tag}", tmp_path / "a", link=MANAGEMENT_LINKS[0])
    second = BirdPeer(f"sws{tag}", tmp_path / "b", link=MANAGEMENT_LINKS[1], peer_as=64501)
    with first, second:
        yield first, second


def settings_for(*peers: tuple[BirdPeer, bool]) -> BgpSettings:
    return BgpSettings(LOCAL_AS, peers[0][0].appliance, tuple(
        PeerSettings(p.address, p.peer_as, flowspec=True, rtbh=rtbh, local_address=p.appliance)
        for p, rtbh in peers))


async def test_reload_adds_and_removes_peers_and_keeps_the_announcements(peers, tmp_path):
    a, b = peers
    escalation = EscalationSettings(uplink_bps=UPLINK, hold_down_s=60.0)
    esc = Escalation(settings_for((a, True)), escalation, tmp_path / "run")
    await esc.start()
    try:
        await await_until(a.established, 30, 0.2, what="the session with the first peer")
        rule = Rule(0, ipaddress.ip_address("203.0.113.5"), proto=17, sport=Range(123, 123), dport=Range(80, 80))
        inc = IncidentView("inc-r", "alpha", True, ("203.0.113.5",), (rule,))
        esc.step(time.monotonic(), FULL, [inc], {"alpha": ALPHA})
        esc.escalate(inc, ALPHA, RTBH, "noc")
        await await_until(lambda: list(a.flow4()) == [FLOW] and list(a.unicast4()) == ["203.0.113.5/32"], 20, 0.2,
                          what="FlowSpec and RTBH at the first peer")

        # A second peer added: it receives both routes; nothing was withdrawn.
        assert await esc.reconfigure(settings_for((a, True), (b, True)), escalation) == []
        await await_until(lambda: list(b.flow4()) == [FLOW] and list(b.unicast4()) == ["203.0.113.5/32"], 30, 0.2,
                          what="both routes at the added peer")
        await await_until(lambda: list(a.flow4()) == [FLOW], 30, 0.2, what="the first peer to have them again")
        assert len(esc.status()["announcements"]) == 2

        # The first peer removed, the second no longer taking RTBH: RTBH withdrawn, FlowSpec kept.
        changes = await esc.reconfigure(settings_for((b, False)), escalation)
        assert [(c.action, c.announcement.kind) for c in changes] == [(WITHDRAW, RTBH)]
        await await_until(lambda: not a.flow4() and not a.unicast4(), 20, 0.2,
                          what="the removed peer to drop Seawall's routes")
        await await_until(lambda: list(b.flow4()) == [FLOW] and not b.unicast4(), 30, 0.2,
                          what="FlowSpec only at the remaining peer")
        assert [p["address"] for p in esc.status()["peers"]] == [b.address]
    finally:
        await esc.stop()


def test_sighup_reloads_bgp_refuses_a_bad_value_and_removes_bgp(lab, peers, tmp_path, request):
    a, b = peers
    config = lab_config(lab.name)
    config["appliance"]["state_dir"] = str(tmp_path / "state")
    config["securewatch"] = {"enabled": False}
    config["bgp"] = {"local_as": LOCAL_AS, "router_id": a.appliance, "peers": [
        {"address": a.address, "peer_as": a.peer_as, "local_address": a.appliance}]}
    config["escalation"] = {"uplink_bps": 10_000_000, "hold_down_s": 30}
    config["policy"] = {"quiet_s": 20}
    proc = ApplianceProcess(config, tmp_path / "seawall.toml", tmp_path / "seawall.log")

    def teardown():
        proc.stop()
        purge(config["appliance"]["bpffs"])

    request.addfinalizer(teardown)
    proc.start()

    def states() -> dict[str, str]:
        return {p["address"]: p["state"] for p in (proc.status().get("bgp") or {}).get("peers", [])}

    wait_until(lambda: states() == {a.address: "established"}, timeout=30, interval=0.2, what="the first session")

    added = copy.deepcopy(config)
    added["bgp"]["peers"].append({"address": b.address, "peer_as": b.peer_as, "local_address": b.appliance})
    added["escalation"]["hold_down_s"] = 45
    added["policy"]["quiet_s"] = 25         # the engine keeps its knobs until the next start, and says so
    proc.config_path.write_text(tomli_w.dumps(added))
    log_before = len(proc.log_path.read_text())
    proc.reload()
    wait_until(lambda: states() == {a.address: "established", b.address: "established"}, timeout=40, interval=0.2,
               what="both sessions after the reload")
    assert b.established()
    assert proc.status()["bgp"]["speaker"]["restarts"] == 0      # a reconfiguration, not a death
    partial = [line for line in proc.log_path.read_text()[log_before:].splitlines() if "appliance.reload_partial" in line]
    assert len(partial) == 1 and "[policy]" in partial[0], partial
    assert proc.status()["policy"]["knobs"]["quiet_s"] == 20     # the engine's, until the next start

    bad = copy.deepcopy(added)
    bad["bgp"]["local_as"] = 0
    bad["escalation"]["flowspec_at"] = 1.5
    bad["policy"]["quiet_s"] = 0
    proc.config_path.write_text(tomli_w.dumps(bad))
    log_before = len(proc.log_path.read_text())
    proc.reload()
    wait_until(lambda: "appliance.reload_rejected" in proc.log_path.read_text()[log_before:], timeout=10,
               interval=0.1, what="the bad reload refused")
    rejected = proc.log_path.read_text()[log_before:]
    assert "[bgp] local_as" in rejected and "[escalation] flowspec_at" in rejected and "[policy] quiet_s" in rejected
    assert states() == {a.address: "established", b.address: "established"}
    assert proc.status()["bgp"]["flowspec_at"] == 0.7                 # the running value, not 1.5

    gone = copy.deepcopy(added)
    del gone["bgp"], gone["escalation"]
    proc.config_path.write_text(tomli_w.dumps(gone))
    proc.reload()
    wait_until(lambda: proc.status().get("bgp", "absent") is None, timeout=20, interval=0.2,
               what="no [bgp] in the status after the reload")
    wait_until(lambda: not a.established() and not b.established(), timeout=20, interval=0.2,
               what="both sessions closed")
