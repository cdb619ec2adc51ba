"""Issue 14, item 6: the lab router's agent enforces what BIRD shows of a FlowSpec route, or nothing of it."""

from __future__ import annotations

import pytest

from appliance.lab.edge_router import Untranslatable, parse_routes, translate

DISCARD = "\tBGP.ext_community: (generic, 0x80060000, 0x0)"
RATE_2000 = "\tBGP.ext_community: (generic, 0x80060000, 0x44fa0000)"    # IEEE float 2000.0 bytes/s


def test_a_discard_route_becomes_a_drop_rule_with_its_components():
    rule = translate("flow4 { dst 198.51.100.10/32; proto 17; sport 123; length 468; }", DISCARD)
    assert rule.nft == "ip daddr 198.51.100.10/32 meta l4proto 17 th sport 123 ip length 468 counter drop"
    assert rule.rate_bytes == 0


def test_ranges_alternatives_flags_fragments_and_a_rate_limit():
    rule = translate("flow4 { dst 203.0.113.5/32; proto 6; dport >= 1024 && <= 2048, 80; length 40..60; "
                     "tcp flags 0x2/0x12; fragment !is_fragment; }", RATE_2000)
    assert rule.nft == ("ip daddr 203.0.113.5/32 meta l4proto 6 th dport { 1024-2048, 80 } ip length 40-60 "
                        "tcp flags & 0x12 == 0x2 ip frag-off & 0x3fff == 0 counter limit rate over 2000 "
                        "bytes/second drop")


def test_ipv6_uses_next_header_and_ip6():
    rule = translate("flow6 { dst 2001:db8:1::5/128; next header 17; dport 80; sport 123; }", DISCARD)
    assert rule.nft == "ip6 daddr 2001:db8:1::5/128 meta l4proto 17 th dport 80 th sport 123 counter drop"


@pytest.mark.parametrize(("route", "attributes"), [
    ("flow4 { dst 203.0.113.5/32; dscp 46; }", DISCARD),                 # a component the lab does not enforce
    ("flow4 { dst 203.0.113.5/32; dport != 80; }", DISCARD),
    ("flow4 { dst 203.0.113.5/32; proto 17; }", "\tBGP.origin: IGP"),    # no traffic-rate: no action to take
])
def test_what_cannot_be_enforced_is_refused_whole(route, attributes):
    with pytest.raises(Untranslatable):
        translate(route, attributes)


def test_birdc_output_is_split_into_routes_with_their_attributes():
    text = ("Table flowtab4:\n"
            "flow4 { dst 198.51.100.10/32; proto 17; }  unicast [seawall 15:14:38.077] * (100) [AS64512i]\n"
            "\tType: BGP univ\n" + DISCARD + "\n"
            "Table master4:\n"
            "203.0.113.10/32      unicast [seawall 15:14:40.000] * (100) [AS64512i]\n"
            "\tBGP.community: (65535,666)\n")
    routes = parse_routes(text)
    assert list(routes) == ["flow4 { dst 198.51.100.10/32; proto 17; }", "203.0.113.10/32"]
    assert "(65535,666)" in routes["203.0.113.10/32"]
