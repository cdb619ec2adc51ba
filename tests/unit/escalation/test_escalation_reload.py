"""Issue 14 (reload): new [bgp] and [escalation] settings keep what is announced where a peer still takes it."""

from __future__ import annotations

import dataclasses

import pytest

from escalation.config import BgpSettings, PeerSettings, parse_escalation_tables
from escalation.ladder import WITHDRAW
from escalation.routes import FLOWSPEC, RTBH
from tenants import ConfigError
from tests.unit.escalation.test_escalation_ladder import FULL, TENANTS, UPLINK, incident, ladder


def announced(lad) -> list[tuple[str, str]]:
    return sorted((a.kind, a.route.to_dict()["destination"]) for a in lad.announcements.values())


def with_flowspec_and_rtbh():
    lad = ladder()
    inc = incident("i1", "beta", "203.0.113.70")
    lad.tick(0, FULL, [inc], TENANTS)
    lad.tick(lad.settings.rtbh_after_s + 1, FULL, [inc], TENANTS)
    assert announced(lad) == [(FLOWSPEC, "203.0.113.70/32"), (RTBH, "203.0.113.70/32")]
    return lad


def test_reload_with_the_same_peers_keeps_every_announcement():
    lad = with_flowspec_and_rtbh()
    bgp = lad.bgp
    changes = lad.reconfigure(bgp, dataclasses.replace(lad.settings, hold_down_s=60.0, flowspec_at=0.5))
    assert changes == []
    assert announced(lad) == [(FLOWSPEC, "203.0.113.70/32"), (RTBH, "203.0.113.70/32")]
    assert lad.settings.hold_down_s == 60.0 and lad.congested(0.5 * UPLINK)      # the new values apply


def test_reload_withdraws_what_no_peer_takes_any_more():
    lad = with_flowspec_and_rtbh()
    no_rtbh = BgpSettings(64512, "192.0.2.1", (PeerSettings("192.0.2.3", 64501, flowspec=True, rtbh=False),))
    changes = lad.reconfigure(no_rtbh, lad.settings)
    assert [(c.action, c.announcement.kind) for c in changes] == [(WITHDRAW, RTBH)]
    assert "no BGP peer takes rtbh" in changes[0].why
    assert announced(lad) == [(FLOWSPEC, "203.0.113.70/32")]


def test_reload_that_lowers_the_cap_withdraws_the_newest_beyond_it():
    lad = ladder()
    for n in range(3):
        lad.tick(n, FULL, [incident(f"i{n}", "alpha", f"203.0.113.{10 + n}")], TENANTS, wall=1000.0 + n)
    changes = lad.reconfigure(lad.bgp, dataclasses.replace(lad.settings, max_announcements=1))
    assert sorted(c.announcement.route.to_dict()["destination"] for c in changes) == ["203.0.113.11/32",
                                                                                     "203.0.113.12/32"]
    assert all(c.action == WITHDRAW and "max_announcements lowered to 1" in c.why for c in changes)
    assert announced(lad) == [(FLOWSPEC, "203.0.113.10/32")]


@pytest.mark.parametrize(("bgp", "escalation", "key"), [
    ({"local_as": 0, "router_id": "192.0.2.1", "peers": [{"address": "192.0.2.2", "peer_as": 64500}]}, None,
     "[bgp] local_as"),
    ({"local_as": 64512, "router_id": "2001:db8::1", "peers": [{"address": "192.0.2.2", "peer_as": 64500}]}, None,
     "[bgp] router_id"),
    ({"local_as": 64512, "router_id": "192.0.2.1", "peers": [{"address": "192.0.2.2", "peer_as": 64500,
                                                               "flowspecs": True}]}, None, "[bgp] peers[0] flowspecs"),
    (None, {"flowspec_at": 1.5}, "[escalation] flowspec_at"),
])
def test_a_bad_reloaded_value_is_refused_with_its_key(bgp, escalation, key):
    with pytest.raises(ConfigError) as exc:
        parse_escalation_tables(bgp, escalation)
    assert key in str(exc.value)
