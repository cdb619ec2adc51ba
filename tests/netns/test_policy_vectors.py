"""The policy engine on the lab, one vector at a time: each flood (~20 kpps, a few seconds) is
detected, classified with its own vector at confidence >= 0.8, and mitigated by a rule, while
the legitimate traffic to the same server keeps >= 99 % success. One lab and one appliance
serve every vector; each vector hits its own server, so no incident carries over. The legitimate
clients run for the whole module too (from the appliance fixture); each vector's account is their
seconds from 2 s before the flood's onset to 2 s after its end."""

from __future__ import annotations

import pytest

from appliance.lab.attack import AttackSpec
from appliance.lab.topology import SPOOF_V4
from appliance.lab.traffic import TrafficProfile, TrafficRun, reported_until, seconds_within
from tests.netns.test_policy_reference import (
    ATTACK_TIMEOUT_S,
    TimedAttack,
    TimedCapture,
    rule_adds,
    start_appliance,
    wait_for_incident,
)
from tests.support import running_traffic, started_lab, wait_until

ATTACK_PPS = 20_000
ATTACK_S = 6.0
LEGIT = TrafficProfile(game_pps=200, http_rps=10, dns_qps=50)
LEGIT_RUN_S = 600.0            # seconds: the module's legitimate clients, stopped after the last vector
LEGIT_MARGIN_S = 2.0           # seconds of legitimate traffic accounted before the onset and after the end
MAX_PASSED_AFTER_RULE = 0.05   # share of the flood that may still reach the server once its rule is in
                               # (rate-limit fallbacks admit ~100 pps of 20,000)

# vector -> (server, expected classification, extra attack options)
VECTORS = {
    # The game server, no visitors on port 80: once the SYN flood is an incident the appliance
    # turns on the dataplane's SYN challenge for the whole address, which drops every unknown
    # source's first SYN, and the lab's HTTP clients give up before their stack retransmits (1 s).
    "syn": ("s1", "syn_flood", {}),
    "ack": ("s3", "tcp_ack_flood", {}),            # port 80, next to the real visitors
    "udp": ("s2", "udp_flood", {}),                # random source ports to 28960 (the players: reference test)
    "dns": ("s4", "dns_amplification", {}),
    "ntp": ("s5", "ntp_amplification", {}),
    "memcached": ("s6", "memcached_amplification", {}),
    "icmp": ("s7", "icmp_flood", {}),
    "frag": ("s8", "fragment_flood", {}),
}


@pytest.fixture(scope="module")
def lab(request):
    return started_lab(request, "v")


@pytest.fixture(scope="module")
def appliance(lab, tmp_path_factory, request):
    proc = start_appliance(lab, tmp_path_factory.mktemp("vectors"), request)
    # The first contact of every client and server (neighbour discovery, first connections through
    # the new bridge) happens here, not in the first vector's legitimate-traffic account.
    TrafficRun(lab, 3.0, LEGIT).start().wait(60)
    return proc


@pytest.fixture(scope="module")
def legit(lab, appliance, request):
    """The legitimate clients, running from before the first vector to after the last."""
    return running_traffic(lab, LEGIT_RUN_S, LEGIT, request)


@pytest.mark.parametrize("vector", list(VECTORS))
def test_vector_is_detected_classified_and_mitigated(lab, appliance, legit, vector, request):
    server_name, expected, options = VECTORS[vector]
    server = lab.server(server_name)
    attack = TimedAttack(lab, AttackSpec(vector, server.ipv4, pps=ATTACK_PPS, duration=ATTACK_S, **options))
    request.addfinalizer(attack.process.kill)
    attack.start()

    incident = wait_for_incident(appliance, server.ipv4, {expected}, timeout=ATTACK_TIMEOUT_S)
    assert incident["vectors"][expected] >= 0.8
    rules = wait_until(lambda: rule_adds(appliance, expected, server.ipv4), timeout=5, what=f"a rule for {expected}")
    after = TimedCapture(server.namespace, lab.HOST_IF, f"src net {SPOOF_V4}", keep=0).start()
    try:
        summary = attack.wait(ATTACK_TIMEOUT_S)
    finally:
        after.stop()
    sent_after = summary["achieved_pps"] * max(0.0, attack.ended - after.started)
    assert sent_after > 0.2 * ATTACK_PPS, (summary, attack.ended - after.started)
    assert after.matched <= MAX_PASSED_AFTER_RULE * sent_after, (after.matched, sent_after, rules)

    # The legitimate clients' seconds from before the onset to after the end, once all are reported.
    window = (attack.onset - LEGIT_MARGIN_S, attack.ended + LEGIT_MARGIN_S)
    wait_until(lambda: reported_until(legit.seconds) >= window[1] or not legit.running, timeout=30,
               what="the legitimate clients' seconds after the flood")
    seconds = seconds_within(legit.seconds, *window)
    assert len(seconds) >= ATTACK_S + 2 * LEGIT_MARGIN_S - 1, (window, len(seconds))   # the run covered it
    stats = [cell for r in seconds for cell in r["servers"].get(server.name, {}).values()]
    sent = sum(s["sent"] for s in stats)
    ok = sum(s["ok"] for s in stats)
    assert sent > 0 and ok >= 0.99 * sent, [(r["second"], r["servers"].get(server.name)) for r in seconds]
    print(f"\n{vector}: {expected} {incident['vectors'][expected]:.2f}, onset to first rule "
          f"{rules[0]['at'] - attack.onset:.2f} s ({rules[0]['kind']}: {rules[0]['rule']}), passed after the rule "
          f"{after.matched}/{sent_after:.0f}, legitimate {ok}/{sent}")
