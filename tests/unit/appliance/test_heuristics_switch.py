"""The policy marks destinations under attack in the dataplane while incidents are open (policy.heuristics)."""

from __future__ import annotations

import ipaddress

from dataplane.constants import TrafficClass
from policy.classify import APP_VECTORS, VECTOR_CLASSES, Vector
from policy.events import Event, EventType
from policy.heuristics import HeuristicsSwitch


class RecordingDataplane:
    """Records set_under_attack calls (the only dataplane call the switch makes)."""

    def __init__(self) -> None:
        self.marks: dict[tuple[int, object], tuple] = {}
        self.ports: dict[tuple[int, object], object] = {}

    def set_under_attack(self, tenant_idx, dst, classes, syn_ports=None) -> None:
        key = (tenant_idx, dst)
        self.ports[key] = syn_ports
        if classes:
            self.marks[key] = tuple(classes)
        else:
            self.marks.pop(key, None)


def event(kind: EventType, vectors=(), destinations=("198.51.100.10",), tenant="alpha", rules=()) -> Event:
    return Event(kind, tenant, "test", incident_id="inc-1", vectors=tuple(vectors), destinations=destinations,
                 details={"rules": list(rules)})


def test_start_marks_the_flooded_classes_and_end_clears_them():
    dp = RecordingDataplane()
    switch = HeuristicsSwitch(dp, {"alpha": 3})
    switch.on_event(event(EventType.ATTACK_START, ["syn_flood", "ntp_amplification"]))
    assert dp.marks == {(3, ipaddress.ip_address("198.51.100.10")):
                        (TrafficClass.TCP_SYN, TrafficClass.UDP, TrafficClass.FRAGMENT)}
    switch.on_event(event(EventType.ATTACK_END))
    assert dp.marks == {}


def test_carpet_bombing_marks_the_whole_tenant_and_unknown_tenants_are_ignored():
    dp = RecordingDataplane()
    switch = HeuristicsSwitch(dp, {"alpha": 3})
    switch.on_event(event(EventType.ATTACK_START, ["carpet_bombing", "udp_flood"], destinations=()))
    assert dp.marks == {(3, None): (TrafficClass.UDP,)}
    switch.on_event(event(EventType.ATTACK_START, ["udp_flood"], tenant="nobody"))
    switch.on_event(event(EventType.POLICY_CHANGE, ["udp_flood"]))
    assert list(dp.marks) == [(3, None)]


def test_the_syn_challenge_covers_the_ports_of_the_incidents_syn_rules():
    dp = RecordingDataplane()
    switch = HeuristicsSwitch(dp, {"alpha": 3})
    switch.on_event(event(EventType.ATTACK_START, ["syn_flood"]))
    key = (3, ipaddress.ip_address("198.51.100.10"))
    assert dp.ports[key] is None                                  # port not known yet: every port
    switch.on_event(event(EventType.ATTACK_UPDATE, ["syn_flood"],
                          rules=[{"class": "tcp_syn", "dport": [443, 443]}, {"class": "udp", "dport": [53, 53]}]))
    assert (dp.ports[key].lo, dp.ports[key].hi) == (443, 443)


def test_every_vector_of_one_protocol_names_the_classes_it_floods():
    """Issue 13 item 4: the vector → traffic class mapping sits beside the vectors (policy.classify),
    keyed by them; only vectors made of others, or of protocols with no heuristic, have none."""
    assert all(isinstance(v, Vector) and classes for v, classes in VECTOR_CLASSES.items())
    # The application-layer vectors (issue 15) come from sources that complete handshakes: per-source limits
    # and the block list mitigate them, no class heuristic does.
    assert set(Vector) - set(VECTOR_CLASSES) == {Vector.OTHER_FLOOD, Vector.CARPET_BOMBING, Vector.MULTI_VECTOR,
                                                 *map(Vector, APP_VECTORS)}
    assert VECTOR_CLASSES["ntp_amplification"] == (TrafficClass.UDP, TrafficClass.FRAGMENT)   # events carry strings
