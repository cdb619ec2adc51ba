"""Issue 14, items 2-4: the escalation decisions and the announcements' life cycle (pure ladder)."""

from __future__ import annotations

import ipaddress

import pytest

from dataplane.api import Range, Rule
from escalation.config import BgpSettings, EscalationSettings, PeerSettings
from escalation.ladder import ANNOUNCE, AUTO, MANUAL, REFUSE, WITHDRAW, IncidentView, Ladder
from escalation.routes import FLOWSPEC, RTBH, Refused
from tenants import Tenant

UPLINK = 1_000_000_000          # bits/s
FULL = 0.8 * UPLINK             # above flowspec_at (0.7)
CALM = 0.3 * UPLINK
HOLD = 120.0                    # seconds


def tenant(tid: str, prefix: str, mode: str = "mitigate", **policy) -> Tenant:
    return Tenant.from_dict({"id": tid, "name": tid, "prefixes": [prefix], "mode": mode, "policy": policy})


TENANTS = {t.id: t for t in (tenant("alpha", "203.0.113.0/26"),
                             tenant("beta", "203.0.113.64/26", escalate_rtbh=True),
                             tenant("mon", "203.0.113.128/26", mode="monitor"),
                             tenant("quiet", "198.51.100.0/24", escalate_flowspec=False))}


def ladder(cap: int = 1000, rtbh_peer: bool = True) -> Ladder:
    bgp = BgpSettings(64512, "192.0.2.1", (PeerSettings("192.0.2.2", 64500, flowspec=True, rtbh=rtbh_peer),))
    return Ladder(bgp, EscalationSettings(uplink_bps=UPLINK, flowspec_at=0.7, hold_down_s=HOLD,
                                          max_announcements=cap))


def incident(iid: str, tid: str, address: str, active: bool = True, port: int = 53) -> IncidentView:
    rule = Rule(0, ipaddress.ip_address(address), proto=17, sport=Range(port, port))
    return IncidentView(iid, tid, active, (address,), (rule,))


def actions(changes) -> list[tuple[str, str]]:
    return [(c.action, c.announcement.kind) for c in changes]


def test_flowspec_only_when_inbound_reaches_flowspec_at_of_the_uplink():
    lad = ladder()
    inc = incident("i1", "alpha", "203.0.113.5")
    assert lad.tick(0, CALM, [inc], TENANTS) == []
    assert lad.tick(1, 0.69 * UPLINK, [inc], TENANTS) == []
    changes = lad.tick(2, 0.7 * UPLINK, [inc], TENANTS)
    assert actions(changes) == [(ANNOUNCE, FLOWSPEC)]
    ann = changes[0].announcement
    assert (ann.incident, ann.tenant, ann.reason) == ("i1", "alpha", AUTO)
    assert lad.tick(3, FULL, [inc], TENANTS) == []            # announced once


def test_no_uplink_figure_means_no_automatic_escalation():
    bgp = BgpSettings(64512, "192.0.2.1", (PeerSettings("192.0.2.2", 64500),))
    lad = Ladder(bgp, EscalationSettings(uplink_bps=None))
    assert lad.tick(0, 1e12, [incident("i1", "alpha", "203.0.113.5")], TENANTS) == []


def test_monitor_tenants_and_tenants_without_escalate_flowspec_never_escalate():
    lad = ladder()
    incs = [incident("m", "mon", "203.0.113.130"), incident("q", "quiet", "198.51.100.7")]
    for t in range(0, 200, 10):
        assert lad.tick(t, FULL, incs, TENANTS) == []
    with pytest.raises(Refused, match="monitor"):
        lad.escalate(incs[0], TENANTS["mon"], FLOWSPEC, "noc", 0)


def test_nothing_outside_the_tenant_prefixes_is_announced_and_the_refusal_is_reported_once():
    lad = ladder()
    outside = incident("o", "alpha", "203.0.113.100")           # beta's address in alpha's incident
    first = lad.tick(0, FULL, [outside], TENANTS)
    assert actions(first) == [(REFUSE, FLOWSPEC)] and "not inside" in first[0].why
    assert lad.tick(1, FULL, [outside], TENANTS) == []
    assert lad.announcements == {} and lad.refused == 1


def test_rtbh_only_for_agreeing_tenants_after_a_quarter_of_the_hold_down_still_congested():
    lad = ladder()
    beta = incident("b", "beta", "203.0.113.70")
    alpha = incident("a", "alpha", "203.0.113.5")
    assert actions(lad.tick(0, FULL, [beta, alpha], TENANTS)) == [(ANNOUNCE, FLOWSPEC)] * 2
    assert lad.tick(HOLD / 4 - 1, FULL, [beta, alpha], TENANTS) == []
    assert lad.tick(HOLD / 4, CALM, [beta, alpha], TENANTS) == []      # FlowSpec was enough
    changes = lad.tick(HOLD / 4 + 1, FULL, [beta, alpha], TENANTS)
    assert actions(changes) == [(ANNOUNCE, RTBH)]                        # beta only: alpha did not agree
    assert str(changes[0].announcement.route.destination) == "203.0.113.70/32"


def test_manual_rtbh_needs_the_tenants_agreement():
    lad = ladder()
    with pytest.raises(Refused, match="escalate_rtbh"):
        lad.escalate(incident("a", "alpha", "203.0.113.5"), TENANTS["alpha"], RTBH, "noc", 0)
    changes = lad.escalate(incident("b", "beta", "203.0.113.70"), TENANTS["beta"], RTBH, "noc", 0)
    assert actions(changes) == [(ANNOUNCE, RTBH)] and changes[0].announcement.reason == MANUAL
    assert changes[0].actor == "noc"


def test_rtbh_needs_a_peer_that_takes_it():
    lad = ladder(rtbh_peer=False)
    with pytest.raises(Refused, match="no BGP peer"):
        lad.escalate(incident("b", "beta", "203.0.113.70"), TENANTS["beta"], RTBH, "noc", 0)


def test_withdrawn_hold_down_after_the_incident_ends_and_kept_when_it_reopens():
    lad = ladder()
    inc = incident("i1", "alpha", "203.0.113.5")
    lad.tick(0, FULL, [inc], TENANTS)
    ended = incident("i1", "alpha", "203.0.113.5", active=False)
    assert lad.tick(10, CALM, [ended], TENANTS) == []
    assert lad.tick(10 + HOLD - 1, CALM, [ended], TENANTS) == []
    lad.tick(10 + HOLD - 0.5, CALM, [inc], TENANTS)                      # re-attack within the hold-down
    assert lad.tick(10 + HOLD + 5, CALM, [ended], TENANTS) == []         # its clock restarted
    changes = lad.tick(10 + HOLD + 5 + HOLD, CALM, [], TENANTS)          # closed by the engine meanwhile
    assert actions(changes) == [(WITHDRAW, FLOWSPEC)] and "hold-down" in changes[0].why
    assert lad.announcements == {}


def test_operator_withdraw_removes_everything_and_the_ladder_leaves_the_incident_alone():
    lad = ladder()
    inc = incident("b", "beta", "203.0.113.70")
    lad.tick(0, FULL, [inc], TENANTS)
    lad.escalate(inc, TENANTS["beta"], RTBH, "admin", 1)
    changes = lad.withdraw("b", "admin")
    assert sorted(actions(changes)) == [(WITHDRAW, FLOWSPEC), (WITHDRAW, RTBH)]
    assert lad.tick(100, FULL, [inc], TENANTS) == []
    assert actions(lad.escalate(inc, TENANTS["beta"], FLOWSPEC, "admin", 101)) == [(ANNOUNCE, FLOWSPEC)]


def test_cap_refuses_the_announcement_that_would_exceed_it():
    lad = ladder(cap=2)
    incs = [incident(f"i{n}", "alpha", f"203.0.113.{n}") for n in (1, 2, 3)]
    changes = lad.tick(0, FULL, incs, TENANTS)
    assert actions(changes) == [(ANNOUNCE, FLOWSPEC), (ANNOUNCE, FLOWSPEC), (REFUSE, FLOWSPEC)]
    assert "max_announcements (2)" in changes[2].why
    assert len(lad.announcements) == 2 and lad.refused == 1
    manual = lad.escalate(incs[2], TENANTS["alpha"], FLOWSPEC, "noc", 1)
    assert actions(manual) == [(REFUSE, FLOWSPEC)]                       # an operator hears it every time


def test_manual_flowspec_without_a_signature_is_refused():
    lad = ladder()
    bare = IncidentView("x", "alpha", True, ("203.0.113.5",), ())
    with pytest.raises(Refused, match="no signature"):
        lad.escalate(bare, TENANTS["alpha"], FLOWSPEC, "noc", 0)
    with pytest.raises(Refused, match="kind"):
        lad.escalate(bare, TENANTS["alpha"], "blackhole", "noc", 0)


def test_withdraw_all_at_stop_empties_the_table():
    lad = ladder()
    lad.tick(0, FULL, [incident("i1", "alpha", "203.0.113.5")], TENANTS)
    assert actions(lad.withdraw_all("stopping")) == [(WITHDRAW, FLOWSPEC)]
    assert lad.announcements == {}


def test_a_previous_process_routes_are_kept_for_the_hold_down_or_taken_over_by_an_open_incident():
    old = ladder()
    old.tick(0, FULL, [incident("old-1", "alpha", "203.0.113.5"), incident("old-2", "alpha", "203.0.113.6")],
             TENANTS)
    saved = [a.to_dict() for a in old.announcements.values()]
    lad = ladder()
    restored = lad.restore(saved, now=1000, tenants=TENANTS)
    assert sorted(a.key for a in restored.taken) == sorted(old.announcements) and restored.dropped == []
    again = incident("new-1", "alpha", "203.0.113.5")                 # the attack on .5 goes on
    assert lad.tick(1001, FULL, [again], TENANTS) == []               # same route: nothing new announced
    changes = lad.tick(1000 + HOLD, FULL, [again], TENANTS)
    assert actions(changes) == [(WITHDRAW, FLOWSPEC)]                 # .6's attack is over
    assert str(changes[0].announcement.route.destination) == "203.0.113.6/32"
    [kept] = lad.announcements.values()
    assert (kept.incident, str(kept.route.destination)) == ("new-1", "203.0.113.5/32")


def test_a_previous_process_routes_are_dropped_with_the_reason_when_the_current_tenants_no_longer_allow_them():
    old = ladder()
    beta_incident = incident("b", "beta", "203.0.113.70")
    old.tick(0, FULL, [incident("a", "alpha", "203.0.113.5"), beta_incident,
                       incident("g", "gone", "192.0.2.200"), incident("m", "moved", "198.51.100.9")],
             {**TENANTS, "gone": tenant("gone", "192.0.2.128/25"), "moved": tenant("moved", "198.51.100.0/25")})
    old.escalate(beta_incident, TENANTS["beta"], RTBH, "noc", 1)
    # An operator's FlowSpec route needs no escalate_flowspec, then or after the restart.
    assert old.escalate(incident("q", "quiet", "198.51.100.20"), TENANTS["quiet"], FLOWSPEC, "noc", 1)
    saved = [a.to_dict() for a in old.announcements.values()]
    now = {"alpha": tenant("alpha", "203.0.113.0/26", mode="monitor"),              # monitor now
           "beta": tenant("beta", "203.0.113.64/26"),                              # RTBH consent withdrawn
           "moved": tenant("moved", "198.51.100.128/25"),                          # 198.51.100.9 not its own
           "quiet": TENANTS["quiet"]}
    restored = ladder().restore(saved, now=1000, tenants=now)
    assert [(a.kind, a.tenant) for a in restored.taken] == [(FLOWSPEC, "beta"), (FLOWSPEC, "quiet")]
    why = {(a.kind, a.tenant): reason for a, reason in restored.dropped}
    assert why == {(FLOWSPEC, "alpha"): "tenant 'alpha' is in monitor mode: monitor tenants never escalate",
                   (RTBH, "beta"): "tenant 'beta' has not agreed to blackholing (policy escalate_rtbh = false)",
                   (FLOWSPEC, "gone"): "tenant 'gone' is not configured any more",
                   (FLOWSPEC, "moved"): "198.51.100.9/32 is not inside the tenant's prefixes"}
    no_flowspec = {"beta": tenant("beta", "203.0.113.64/26", escalate_rtbh=True, escalate_flowspec=False)}
    restored = ladder().restore(saved, now=1000, tenants=no_flowspec)
    assert [(a.kind, a.tenant) for a in restored.taken] == [(RTBH, "beta")]
    assert ("tenant 'beta' has not agreed to FlowSpec (policy escalate_flowspec = false)"
            in [reason for _, reason in restored.dropped])
