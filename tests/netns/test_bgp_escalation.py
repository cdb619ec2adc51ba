"""Issue 14, items 1, 4 and 7: Seawall's speaker (ExaBGP) against an independent peer (BIRD 2).

The escalation controller runs here with the real speaker; BIRD, in its own namespace, decodes
what it receives. Incidents are given to the ladder as the appliance gives them each second
(`IncidentView`), so each case is exact and quick; `test_bgp_seawall_run.py` drives the same
through `seawall run` with a real flood.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import time
import uuid

import pytest
from structlog.testing import capture_logs

from appliance.lab.bgp_peer import LOCAL_AS, PEER_AS, BirdPeer
from dataplane.api import Range, Rule
from escalation.config import BgpSettings, EscalationSettings, PeerSettings
from escalation.controller import Escalation
from escalation.ladder import ANNOUNCE, REFUSE, IncidentView
from escalation.routes import FLOWSPEC, RTBH
from escalation.speaker import STATE_ESTABLISHED, Speaker
from tenants import Tenant
from tests.support import await_until

UPLINK = 1_000_000                 # bits/s
FULL = 0.9 * UPLINK
HOLD = 4.0                         # seconds: a short hold-down for the test
CAP = 4                            # max_announcements: room for the first test's four routes
MANAGEMENT_LINK = 1                # this module's /30 beside the root namespace (tests/netns/conftest.py)
SESSION_WARN_S = 2.0               # peer_down_warn_s for the lost session: seconds, not the default's 30
# ExaBGP 4.2.25's reason in its JSON "down" message: a NOTIFICATION's, or a closed TCP connection's.
EXABGP_RESET = re.compile(r"^peer reset, message \(.+\) error\(.+\)$")

TENANTS = {t.id: t for t in (
    Tenant.from_dict({"id": "alpha", "name": "alpha", "prefixes": ["203.0.113.0/26", "2001:db8:1::/48"],
                      "policy": {"escalate_rtbh": True}}),
    Tenant.from_dict({"id": "mon", "name": "mon", "prefixes": ["203.0.113.128/26"], "mode": "monitor"}))}


def bgp_settings(peer: BirdPeer) -> BgpSettings:
    return BgpSettings(LOCAL_AS, peer.appliance, (PeerSettings(peer.address, PEER_AS, flowspec=True, rtbh=True,
                                                               rtbh_communities=("65535:666", "64500:666"),
                                                               local_address=peer.appliance,
                                                               rtbh_next_hop6=peer.appliance6),))


def udp_incident(iid: str, tenant: str, address: str, active: bool = True) -> IncidentView:
    rule = Rule(0, ipaddress.ip_address(address), proto=17, sport=Range(123, 123), dport=Range(80, 80))
    return IncidentView(iid, tenant, active, (address,), (rule,))


@pytest.fixture
def peer(tmp_path):
    with BirdPeer(f"swb{uuid.uuid4().hex[:6]}", tmp_path, link=MANAGEMENT_LINK) as bird:
        yield bird


@pytest.fixture
async def escalation(tmp_path, peer):
    esc = Escalation(bgp_settings(peer), EscalationSettings(uplink_bps=UPLINK, flowspec_at=0.7, hold_down_s=HOLD,
                                                        max_announcements=CAP), tmp_path / "run")
    await esc.start()
    try:
        await await_until(peer.established, 30, 0.2, what="BGP session with BIRD")
        yield esc
    finally:
        await esc.stop()


async def test_flowspec_v4_v6_and_rtbh_reach_the_peer_with_their_components(escalation, peer):
    v4 = udp_incident("inc-4", "alpha", "203.0.113.5")
    v6 = udp_incident("inc-6", "alpha", "2001:db8:1::5")
    changes = escalation.step(time.monotonic(), FULL, [v4, v6], TENANTS)
    assert [c.action for c in changes] == [ANNOUNCE, ANNOUNCE]
    flow4 = await await_until(lambda: peer.flow4(), 15, 0.2, what="FlowSpec v4 route at BIRD")
    assert list(flow4) == ["flow4 { dst 203.0.113.5/32; proto 17; dport 80; sport 123; }"]
    assert "(generic, 0x80060000, 0x0)" in next(iter(flow4.values()))      # traffic-rate 0: discard
    flow6 = await await_until(lambda: peer.flow6(), 15, 0.2, what="FlowSpec v6 route at BIRD")
    assert list(flow6) == ["flow6 { dst 2001:db8:1::5/128; next header 17; dport 80; sport 123; }"]

    [rtbh] = escalation.escalate(v4, TENANTS["alpha"], RTBH, "noc")
    assert rtbh.action == ANNOUNCE
    unicast = await await_until(lambda: peer.unicast4(), 15, 0.2, what="RTBH route at BIRD")
    assert list(unicast) == ["203.0.113.5/32"]
    assert "BGP.community: (65535,666) (64500,666)" in unicast["203.0.113.5/32"]
    [rtbh6] = escalation.escalate(v6, TENANTS["alpha"], RTBH, "noc")
    assert rtbh6.action == ANNOUNCE
    unicast6 = await await_until(lambda: peer.unicast6(), 15, 0.2, what="IPv6 RTBH route at BIRD")
    assert list(unicast6) == ["2001:db8:1::5/128"]
    assert "BGP.community: (65535,666) (64500,666)" in unicast6["2001:db8:1::5/128"]

    status = escalation.status()
    assert status["peers"][0]["state"] == STATE_ESTABLISHED and status["peers"][0]["peer_as"] == PEER_AS
    assert sorted(a["kind"] for a in status["announcements"]) == [FLOWSPEC, FLOWSPEC, RTBH, RTBH]


async def test_nothing_for_a_monitor_tenant_or_outside_the_tenant_prefixes(escalation, peer):
    mon = udp_incident("inc-m", "mon", "203.0.113.130")
    outside = udp_incident("inc-o", "alpha", "198.51.100.7")
    inside = udp_incident("inc-i", "alpha", "203.0.113.9")
    changes = escalation.step(time.monotonic(), FULL, [mon, outside, inside], TENANTS)
    assert [(c.action, c.announcement.incident) for c in changes] == [(REFUSE, "inc-o"), (ANNOUNCE, "inc-i")]
    await await_until(lambda: peer.flow4(), 15, 0.2, what="the inside route at BIRD")
    # Once the inside route is there, whatever was sent before it is there too (one session, in order).
    assert list(peer.flow4()) == ["flow4 { dst 203.0.113.9/32; proto 17; dport 80; sport 123; }"]
    assert peer.unicast4() == {}


async def test_withdrawn_after_the_hold_down(escalation, peer):
    inc = udp_incident("inc-h", "alpha", "203.0.113.10")
    escalation.step(time.monotonic(), FULL, [inc], TENANTS)
    await await_until(lambda: peer.flow4(), 15, 0.2, what="FlowSpec route at BIRD")
    ended = udp_incident("inc-h", "alpha", "203.0.113.10", active=False)
    ended_at = time.monotonic()
    escalation.step(ended_at, 0.0, [ended], TENANTS)
    withdrawn = []

    async def gone():
        withdrawn.extend(escalation.step(time.monotonic(), 0.0, [ended], TENANTS))
        return not peer.flow4()

    await await_until(gone, HOLD + 15, 0.2, what="the withdraw at BIRD")
    assert withdrawn and time.monotonic() - ended_at >= HOLD


async def test_session_reestablished_and_reannounced_after_the_speaker_is_killed(escalation, peer):
    escalation.step(time.monotonic(), FULL, [udp_incident("inc-k", "alpha", "203.0.113.11")], TENANTS)
    await await_until(lambda: peer.flow4(), 15, 0.2, what="FlowSpec route at BIRD")
    pid = escalation.speaker.proc.pid
    os.kill(pid, signal.SIGKILL)
    await await_until(lambda: not peer.flow4(), 15, 0.2, what="BIRD to drop the dead session's routes")
    await await_until(lambda: escalation.speaker.restarts == 1, 15, 0.1, what="the speaker's restart")
    assert escalation.speaker.proc.pid != pid
    flow4 = await await_until(lambda: peer.flow4(), 40, 0.2, what="the route announced again")
    assert list(flow4) == ["flow4 { dst 203.0.113.11/32; proto 17; dport 80; sport 123; }"]
    await await_until(lambda: escalation.status()["peers"][0]["state"] == STATE_ESTABLISHED, 15, 0.2,
                      what="the session shown established again")


async def test_cap_holds_at_the_peer(escalation, peer):
    incs = [udp_incident(f"inc-c{n}", "alpha", f"203.0.113.{20 + n}") for n in range(CAP + 2)]
    changes = escalation.step(time.monotonic(), FULL, incs, TENANTS)
    assert [c.action for c in changes] == [ANNOUNCE] * CAP + [REFUSE] * 2
    await await_until(lambda: len(peer.flow4()) == CAP, 15, 0.2, what="the cap's number of routes at BIRD")
    escalation.step(time.monotonic(), FULL, incs, TENANTS)
    marker = udp_incident("inc-x", "alpha", "203.0.113.40")
    escalation.withdraw("inc-c0", "noc")               # room for one: the marker takes it
    escalation.step(time.monotonic(), FULL, [marker], TENANTS)
    await await_until(lambda: any("203.0.113.40" in r for r in peer.flow4()), 15, 0.2, what="the marker route")
    assert len(peer.flow4()) == CAP


async def test_clean_stop_leaves_nothing_announced(tmp_path, peer):
    esc = Escalation(bgp_settings(peer), EscalationSettings(uplink_bps=UPLINK, hold_down_s=HOLD), tmp_path / "run2")
    await esc.start()
    try:
        await await_until(peer.established, 30, 0.2, what="BGP session with BIRD")
        esc.step(time.monotonic(), FULL, [udp_incident("inc-s", "alpha", "203.0.113.12")], TENANTS)
        await await_until(lambda: peer.flow4(), 15, 0.2, what="FlowSpec route at BIRD")
    finally:
        await esc.stop()
    assert not esc.speaker.running
    await await_until(lambda: not peer.flow4() and not peer.unicast4(), 15, 0.2, what="an empty table")


def test_a_second_peer_on_a_management_link_in_use_is_refused_and_leaves_nothing(tmp_path, peer):
    name = f"swb{uuid.uuid4().hex[:6]}"
    second = BirdPeer(name, tmp_path / "second", link=MANAGEMENT_LINK)
    with pytest.raises(RuntimeError, match=f"management link {MANAGEMENT_LINK} .* already on {peer.veth_root}"):
        second.__enter__()

    def ip(*argv: str) -> str:
        return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True).stdout

    assert name not in ip("netns", "list")
    # The first peer keeps its link: its address, on its veth only, and BIRD running.
    holders = ip("-o", "addr", "show", "to", f"{peer.appliance}/32").splitlines()
    assert len(holders) == 1 and holders[0].split()[1] == peer.veth_root
    assert peer.proc.poll() is None


async def test_a_lost_session_shows_since_when_and_why_and_is_warned_about_once_more(tmp_path, peer):
    """Up, the outage is over (no reason, no warning); lost (BIRD disables the session: a NOTIFICATION,
    then BIRD closes each retry), a new outage with ExaBGP's last reason, warned about once."""
    spk = Speaker(bgp_settings(peer), tmp_path / "run", peer_down_warn_s=SESSION_WARN_S)
    with capture_logs() as logs:
        await spk.start()
        try:
            await await_until(lambda: spk.peers()[0]["state"] == STATE_ESTABLISHED, 30, 0.1, what="established")
            up = time.time()
            assert (spk.peers()[0]["down_since"], spk.peers()[0]["last_reason"]) == (None, None)
            spk.warn_stuck_sessions(time.monotonic() + 10 * SESSION_WARN_S)       # nothing is down
            assert not [e for e in logs if e["event"] == "bgp.peer_not_established"]

            peer.birdc("disable seawall")
            [down] = await await_until(lambda: [p for p in spk.peers() if p["last_reason"]], 15, 0.05,
                                       what="the session lost, with ExaBGP's reason")
            assert down["state"] != STATE_ESTABLISHED and up <= down["down_since"] <= time.time()
            assert EXABGP_RESET.match(down["last_reason"]), down["last_reason"]
            # BIRD's NOTIFICATION says why; the retries BIRD then closes do not replace it.
            await await_until(lambda: time.time() - down["down_since"] > 2, what="retries after the NOTIFICATION")
            assert "Administrative Shutdown" in spk.peers()[0]["last_reason"], spk.peers()[0]["last_reason"]
            [warning] = await await_until(lambda: [e for e in logs if e["event"] == "bgp.peer_not_established"],
                                          SESSION_WARN_S + 5, 0.05, what="the warning")
            assert warning["log_level"] == "warning" and warning["peer"] == peer.address
            assert EXABGP_RESET.match(warning["reason"]) and warning["since"] == down["down_since"]
            spk.warn_stuck_sessions(time.monotonic() + 10 * SESSION_WARN_S)       # once per outage
            assert len([e for e in logs if e["event"] == "bgp.peer_not_established"]) == 1
        finally:
            await spk.stop()


async def test_a_restart_announces_again_only_routes_of_tenants_that_still_allow_them(tmp_path, peer):
    """The previous process (its speaker never started) announced a FlowSpec route for alpha and an
    RTBH route for beta; the restarted one has no tenant beta: BIRD gets alpha's route, not beta's."""
    alpha = Tenant.from_dict({"id": "alpha", "name": "alpha", "prefixes": ["203.0.113.0/26"],
                              "policy": {"escalate_rtbh": True}})
    beta = Tenant.from_dict({"id": "beta", "name": "beta", "prefixes": ["203.0.113.64/26"],
                             "policy": {"escalate_rtbh": True}})
    settings = EscalationSettings(uplink_bps=UPLINK, hold_down_s=600)
    run_dir = tmp_path / "run"
    run_dir.mkdir()                                       # made by the previous process's speaker
    before = Escalation(bgp_settings(peer), settings, run_dir)
    before.escalate(udp_incident("inc-a", "alpha", "203.0.113.5"), alpha, FLOWSPEC, "noc-alice")
    before.escalate(udp_incident("inc-b", "beta", "203.0.113.70"), beta, RTBH, "noc-alice")
    assert len(before.saved_announcements()) == 2

    after = Escalation(bgp_settings(peer), settings, run_dir)
    await after.start()
    try:
        await await_until(peer.established, 30, 0.2, what="BGP session with BIRD")
        with capture_logs() as logs:
            after.step(time.monotonic(), 0.0, [], {"alpha": alpha})
        assert [(a["kind"], a["tenant"]) for a in after.status()["announcements"]] == [(FLOWSPEC, "alpha")]
        [dropped] = [e for e in logs if e["event"] == "bgp.announcement_not_restored"]
        assert (dropped["log_level"], dropped["kind"], dropped["tenant"], dropped["incident"]) == \
            ("warning", RTBH, "beta", "inc-b")
        assert dropped["match"] == {"destination": "203.0.113.70/32"}
        assert dropped["why"] == "tenant 'beta' is not configured any more"
        assert [a["tenant"] for a in after.saved_announcements()] == ["alpha"]     # gone from the saved state

        flow4 = await await_until(lambda: peer.flow4(), 15, 0.2, what="the restored FlowSpec route at BIRD")
        assert list(flow4) == ["flow4 { dst 203.0.113.5/32; proto 17; dport 80; sport 123; }"]
        # An RTBH route sent after the restore: once BIRD has it, a restored beta route would be there too.
        after.escalate(udp_incident("inc-m", "alpha", "203.0.113.9"), alpha, RTBH, "noc-alice")
        unicast = await await_until(lambda: peer.unicast4(), 15, 0.2, what="the RTBH marker at BIRD")
        assert list(unicast) == ["203.0.113.9/32"]
    finally:
        await after.stop()
