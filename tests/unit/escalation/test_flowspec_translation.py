"""Issue 14, item 3: FlowSpec from the same signatures the XDP rules use; RTBH host routes."""

from __future__ import annotations

import ipaddress

import pytest

from dataplane.api import Range, Rule
from dataplane.constants import RuleAction
from escalation.routes import (
    ASSUMED_PACKET_BYTES,
    BlackholeRoute,
    Refused,
    blackhole_for,
    flowspec_for_rule,
)

V4 = [ipaddress.ip_network("203.0.113.0/26")]
V6 = [ipaddress.ip_network("2001:db8:1::/48")]


def test_udp_reflection_rule_carries_destination_protocol_ports_and_length():
    rule = Rule(0, ipaddress.ip_address("203.0.113.5"), RuleAction.DROP, proto=17, sport=Range(53, 53),
                dport=Range(1024, 65535), length=Range(1200, 1260))
    [route] = flowspec_for_rule(rule, V4)
    assert str(route.destination) == "203.0.113.5/32"
    assert route.exabgp_nlri() == (
        "flow route { match { destination 203.0.113.5/32; protocol =17; source-port =53; "
        "destination-port >=1024&<=65535; packet-length >=1200&<=1260; } then { discard; } }")
    assert route.to_dict()["action"] == "discard"


def test_syn_rule_flags_become_match_and_not_terms():
    rule = Rule(0, ipaddress.ip_address("203.0.113.6"), RuleAction.DROP, proto=6, dport=Range(443, 443),
                tcp_flags=(0x12, 0x02))      # SYN set, ACK clear
    [route] = flowspec_for_rule(rule, V4)
    assert "tcp-flags [ =syn&!ack ];" in route.match_text()
    rst = Rule(0, ipaddress.ip_address("203.0.113.6"), proto=6, tcp_flags=(0x17, 0x04))
    assert "tcp-flags [ =rst&!fin+syn+ack ];" in flowspec_for_rule(rst, V4)[0].match_text()


def test_fragments_and_any_port_ranges():
    frag = Rule(0, ipaddress.ip_address("203.0.113.7"), fragments=True, sport=Range(0, 0xFFFF))
    [route] = flowspec_for_rule(frag, V4)
    assert route.match_text() == "destination 203.0.113.7/32; fragment [ is-fragment ];"
    whole = Rule(0, ipaddress.ip_address("203.0.113.7"), proto=17, fragments=False)
    assert "fragment [ !is-fragment ];" in flowspec_for_rule(whole, V4)[0].match_text()


def test_ipv6_uses_next_header_a_128_and_payload_length():
    rule = Rule(0, ipaddress.ip_address("2001:db8:1::5"), proto=17, dport=Range(123, 123), length=Range(508, 508))
    [route] = flowspec_for_rule(rule, V6)
    assert route.match_text() == ("destination 2001:db8:1::5/128; next-header =17; destination-port =123; "
                                  "packet-length =468;")   # RFC 8956: payload only, the rule's 508 - 40


def test_rate_limit_rule_becomes_traffic_rate_in_bytes():
    rule = Rule(0, ipaddress.ip_address("203.0.113.8"), RuleAction.RATE_LIMIT, proto=6, tcp_flags=(0x12, 0x02),
                rate_pps=2000, length=Range(40, 60))
    [route] = flowspec_for_rule(rule, V4)
    assert route.rate_bytes == 2000 * 60
    assert route.exabgp_nlri().endswith("then { rate-limit 120000; } }")
    loose = Rule(0, ipaddress.ip_address("203.0.113.8"), RuleAction.RATE_LIMIT, proto=17, rate_pps=10)
    assert flowspec_for_rule(loose, V4)[0].rate_bytes == 10 * ASSUMED_PACKET_BYTES


def test_fields_flowspec_cannot_carry_are_listed():
    rule = Rule(0, ipaddress.ip_address("203.0.113.9"), proto=17, ttl=Range(50, 60), payload=b"\x00\x01")
    [route] = flowspec_for_rule(rule, V4)
    assert route.omitted == ("ttl", "payload")
    assert "ttl" not in route.match_text()


def test_destination_outside_the_tenant_prefixes_is_refused():
    rule = Rule(0, ipaddress.ip_address("203.0.113.200"), proto=17)   # outside 203.0.113.0/26
    with pytest.raises(Refused, match="not inside"):
        flowspec_for_rule(rule, V4)
    with pytest.raises(Refused):
        flowspec_for_rule(Rule(0, ipaddress.ip_address("2001:db8:2::1"), proto=17), V6)


def test_tenant_wide_rule_is_announced_per_tenant_prefix_never_wider():
    prefixes = [ipaddress.ip_network("203.0.113.0/26"), ipaddress.ip_network("2001:db8:1::/48")]
    routes = flowspec_for_rule(Rule(0, None, proto=17, dport=Range(53, 53)), prefixes)
    assert [str(r.destination) for r in routes] == ["203.0.113.0/26", "2001:db8:1::/48"]


def test_count_rules_of_monitor_tenants_are_never_translated():
    with pytest.raises(Refused, match="monitor"):
        flowspec_for_rule(Rule(0, ipaddress.ip_address("203.0.113.5"), RuleAction.COUNT, proto=17), V4)


def test_rtbh_host_route_with_each_peers_communities():
    route = blackhole_for("203.0.113.5", V4)
    assert isinstance(route, BlackholeRoute) and str(route.destination) == "203.0.113.5/32"
    assert route.exabgp_nlri(["65535:666", "64500:666"], "192.0.2.1") == \
        "route 203.0.113.5/32 next-hop self community [ 65535:666 64500:666 ]"
    v6 = blackhole_for("2001:db8:1::5", V6)
    assert v6.exabgp_nlri(["65535:666"], "192.0.2.1") == \
        "route 2001:db8:1::5/128 next-hop ::ffff:192.0.2.1 community [ 65535:666 ]"
    assert v6.exabgp_nlri(["65535:666"], "192.0.2.1", "2001:db8:ffff::1") == \
        "route 2001:db8:1::5/128 next-hop 2001:db8:ffff::1 community [ 65535:666 ]"
    with pytest.raises(Refused):
        blackhole_for("198.51.100.1", V4)
