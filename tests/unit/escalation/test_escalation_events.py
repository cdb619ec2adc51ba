"""Issue 14, item 4: every announce, withdraw and refusal is an event on the bus (ESCALATION), which
the notifiers carry like ATTACK_START; the speaker is not started here (its routes are kept for it)."""

from __future__ import annotations

import ipaddress
import json

from dataplane.api import Range, Rule
from escalation.config import BgpSettings, EscalationSettings, PeerSettings
from escalation.controller import Escalation
from escalation.ladder import IncidentView
from policy.events import EventBus, EventType, Severity
from securewatch.notify.snmp import NOTIFICATION_OIDS
from tenants import Tenant

ALPHA = Tenant.from_dict({"id": "alpha", "name": "alpha", "prefixes": ["203.0.113.0/26"]})


def test_announce_withdraw_and_refusal_are_published_as_escalation_events(tmp_path):
    bus = EventBus()
    events = bus.subscribe("test")
    esc = Escalation(BgpSettings(64512, "192.0.2.1", (PeerSettings("192.0.2.2", 64500),)),
                     EscalationSettings(uplink_bps=1000, hold_down_s=10, max_announcements=1), tmp_path, bus)
    incs = [IncidentView(f"i{n}", "alpha", True, (f"203.0.113.{n}",),
                         (Rule(0, ipaddress.ip_address(f"203.0.113.{n}"), proto=17, dport=Range(53, 53)),))
            for n in (1, 2)]
    esc.step(0.0, 900.0, incs, {"alpha": ALPHA})
    assert list(esc.speaker.routes) == ["flowspec destination 203.0.113.1/32; protocol =17; destination-port =53;"]
    esc.withdraw("i1", "noc-alice")
    got = [events.get_nowait() for _ in range(events.qsize())]
    assert [e.type for e in got] == [EventType.ESCALATION] * 3
    assert [e.details["action"] for e in got] == ["announce", "refuse", "withdraw"]
    announce, refuse, withdraw = got
    assert (announce.incident_id, announce.tenant, announce.destinations) == ("i1", "alpha", ("203.0.113.1/32",))
    assert announce.severity is Severity.WARNING and announce.details["peers"] == ["192.0.2.2"]
    assert "max_announcements" in refuse.message and refuse.incident_id == "i2"
    assert withdraw.details["actor"] == "noc-alice" and "noc-alice" in withdraw.message
    assert esc.speaker.routes == {}
    assert EventType.ESCALATION in NOTIFICATION_OIDS      # SNMP has a trap for it


def test_announcements_are_saved_for_the_next_process_while_fresh(tmp_path):
    settings = EscalationSettings(uplink_bps=1000, hold_down_s=10)
    bgp = BgpSettings(64512, "192.0.2.1", (PeerSettings("192.0.2.2", 64500),))
    esc = Escalation(bgp, settings, tmp_path)
    inc = IncidentView("i1", "alpha", True, ("203.0.113.1",),
                       (Rule(0, ipaddress.ip_address("203.0.113.1"), proto=17, dport=Range(53, 53)),))
    esc.step(0.0, 900.0, [inc], {"alpha": ALPHA})
    nxt = Escalation(bgp, settings, tmp_path)
    [saved] = nxt.saved_announcements()
    assert (saved["kind"], saved["incident"], saved["match"]["destination"]) == ("flowspec", "i1", "203.0.113.1/32")
    stale = json.loads(esc.saved_path.read_text())
    stale["saved_at"] -= settings.hold_down_s + 1
    esc.saved_path.write_text(json.dumps(stale))
    assert nxt.saved_announcements() == []                       # older than the hold-down: over by now
