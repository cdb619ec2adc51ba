"""Issue 14, item 2: the [bgp] and [escalation] tables, validated with the key named, nothing applied."""

from __future__ import annotations

import pytest

from appliance.config import parse_config
from escalation.config import BLACKHOLE_COMMUNITY, parse_community, parse_escalation_tables
from tenants import ConfigError
from tenants.policy import TenantPolicy

GOOD = """
[bgp]
local_as = 64512
router_id = "192.0.2.1"
[[bgp.peers]]
address = "192.0.2.2"
peer_as = 64500
flowspec = true
rtbh = true
rtbh_communities = ["65535:666", "64500:666"]
[escalation]
uplink_bps = 10_000_000_000
flowspec_at = 0.7
hold_down_s = 120
max_announcements = 1000
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    return exc.value.problems


def test_issue_example_parses_into_typed_settings():
    config = parse_config(GOOD)
    assert config.bgp is not None
    assert (config.bgp.local_as, config.bgp.router_id) == (64512, "192.0.2.1")
    peer = config.bgp.peers[0]
    assert (peer.address, peer.peer_as, peer.flowspec, peer.rtbh) == ("192.0.2.2", 64500, True, True)
    assert peer.rtbh_communities == ("65535:666", "64500:666")
    e = config.escalation
    assert (e.uplink_bps, e.flowspec_at, e.hold_down_s, e.max_announcements) == (10_000_000_000, 0.7, 120.0, 1000)
    assert e.rtbh_after_s == 30.0


def test_without_bgp_nothing_escalates_and_communities_default_to_blackhole():
    assert parse_config("").bgp is None
    config = parse_config(GOOD.replace('rtbh_communities = ["65535:666", "64500:666"]\n', ""))
    assert config.bgp.peers[0].rtbh_communities == (BLACKHOLE_COMMUNITY,)


@pytest.mark.parametrize(("edit", "named"), [
    (("local_as = 64512", "local_as = 0"), "[bgp] local_as"),
    (("local_as = 64512", "local_as = 4294967296"), "[bgp] local_as"),
    (("peer_as = 64500", "peer_as = -1"), "[bgp] peers[0] peer_as"),
    (('router_id = "192.0.2.1"', 'router_id = "2001:db8::1"'), "[bgp] router_id"),
    (('router_id = "192.0.2.1"', 'router_id = "not-an-id"'), "[bgp] router_id"),
    (("flowspec_at = 0.7", "flowspec_at = 0"), "[escalation] flowspec_at"),
    (("flowspec_at = 0.7", "flowspec_at = 1.5"), "[escalation] flowspec_at"),
    (("max_announcements = 1000", "max_announcements = 0"), "[escalation] max_announcements"),
    (("hold_down_s = 120", "hold_down_s = -5"), "[escalation] hold_down_s"),
    (("uplink_bps = 10_000_000_000", "uplink_bps = 0"), "[escalation] uplink_bps"),
    (('"64500:666"]', '"64500:70000"]'), "[bgp] peers[0] rtbh_communities[1]"),
    (("flowspec = true", "flowspec = 1"), "[bgp] peers[0] flowspec"),
    (("max_announcements = 1000", "max_announcements = 1000\nflowspec_when = 0.5"), "[escalation] flowspec_when"),
    (("local_as = 64512", "local_as = 64512\nlocal_asn = 1"), "[bgp] local_asn"),
    (("peer_as = 64500", "peer_as = 64500\npassword = 'x'"), "[bgp] peers[0] password"),
    (("peer_as = 64500", "peer_as = 64500\nrtbh_next_hop6 = '192.0.2.1'"), "[bgp] peers[0] rtbh_next_hop6"),
])
def test_bad_values_are_refused_with_the_key_named(edit, named):
    old, new = edit
    assert old in GOOD
    problems = problems_of(GOOD.replace(old, new))
    assert any(p.startswith(named) for p in problems), problems


def test_every_problem_is_reported_at_once_and_nothing_is_returned():
    with pytest.raises(ConfigError) as exc:
        parse_escalation_tables({"local_as": 0, "router_id": "x", "peers": [{"address": "192.0.2.2"}]},
                                {"flowspec_at": 2, "bogus": 1})
    text = "\n".join(exc.value.problems)
    for key in ("[bgp] local_as", "[bgp] router_id", "[bgp] peers[0] peer_as", "[escalation] flowspec_at",
                "[escalation] bogus"):
        assert key in text


def test_ipv6_peer_needs_its_local_address_and_duplicate_peers_are_refused():
    problems = problems_of(GOOD.replace('address = "192.0.2.2"', 'address = "2001:db8::2"'))
    assert any("local_address" in p for p in problems)
    twice = GOOD + '[[bgp.peers]]\naddress = "192.0.2.2"\npeer_as = 64501\n'
    assert any("listed twice" in p for p in problems_of(twice.replace("[escalation]\n", "[escalation]\n", 1)))


def test_escalation_without_bgp_is_allowed_for_its_uplink_figure():
    config = parse_config("[escalation]\nuplink_bps = 1_000_000_000\n")
    assert config.bgp is None and config.escalation.uplink_bps == 1_000_000_000


@pytest.mark.parametrize("text", ["65535:666", " 0:0 ", "65535:65535"])
def test_communities_parse(text):
    assert parse_community(text) == ":".join(str(int(x)) for x in text.strip().split(":"))


@pytest.mark.parametrize("text", ["65536:1", "666", "a:b", "1:2:3", 666, "-1:5"])
def test_bad_communities_are_refused(text):
    with pytest.raises(ValueError):
        parse_community(text)


def test_tenant_policy_escalation_keys_default_and_validate():
    policy = TenantPolicy()
    assert (policy.escalate_flowspec, policy.escalate_rtbh) == (True, False)
    assert TenantPolicy.from_dict({"escalate_rtbh": True}).escalate_rtbh is True
    with pytest.raises(ConfigError) as exc:
        TenantPolicy.from_dict({"escalate_rtbh": "yes", "escalate_flowspec": 1})
    assert {p.split(":")[0] for p in exc.value.problems} == {"policy.escalate_rtbh", "policy.escalate_flowspec"}
