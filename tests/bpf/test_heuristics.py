"""Always-on heuristics in the XDP program: the stateful reflection filter and SYN authentication
with validated sources (details in test_synauth.py), switched on per destination by `set_under_attack`."""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from dataplane.constants import Direction, DropReason, TrafficClass
from tests.bpf import frames
from tests.bpf.conftest import (
    ALPHA_DST,
    CLEAN_SRC,
    XDP_DROP,
    XDP_REDIRECT,
    XDP_TX,
    apply_tenant_dicts,
    observe,
    run,
)
from tests.support import wait_until

REFLECTOR = "198.19.40.4"


@pytest.fixture
def attacked(dp, tenants):
    """Marks ALPHA_DST as under attack (per test), cleared in teardown."""
    marked = []

    def mark(*classes: TrafficClass, dst: str = ALPHA_DST) -> None:
        dp.set_under_attack(tenants["alpha"], ipaddress.ip_address(dst), classes)
        marked.append(dst)

    yield mark
    for dst in marked:
        dp.set_under_attack(tenants["alpha"], ipaddress.ip_address(dst), ())


def test_reflection_replies_pass_when_nobody_is_under_attack(dp, tenants):
    assert run(dp, frames.udp(REFLECTOR, ALPHA_DST, sport=123, dport=40001)) == XDP_REDIRECT


def test_unrequested_reflection_replies_are_dropped_under_attack(dp, tenants, attacked):
    attacked(TrafficClass.UDP)
    action, sample = observe(dp, frames.udp(REFLECTOR, ALPHA_DST, sport=123, dport=40002))
    assert action == XDP_DROP and sample.reason == DropReason.HEURISTIC
    # Other UDP (a game client from port 40000) is not a reflection reply: untouched.
    assert run(dp, frames.udp(CLEAN_SRC, ALPHA_DST, sport=40000, dport=28960)) == XDP_REDIRECT


def test_a_request_from_the_server_admits_its_reflectors_reply(dp, tenants, attacked):
    attacked(TrafficClass.UDP)
    reply = frames.udp(REFLECTOR, ALPHA_DST, sport=53, dport=40003)
    assert run(dp, reply) == XDP_DROP
    # The server asks REFLECTOR (outbound, port 53): its answers now pass; other reflectors' do not.
    assert run(dp, frames.udp(ALPHA_DST, REFLECTOR, sport=40003, dport=53), Direction.OUTBOUND) == XDP_REDIRECT
    assert run(dp, reply) == XDP_REDIRECT
    assert run(dp, frames.udp("198.19.40.5", ALPHA_DST, sport=53, dport=40003)) == XDP_DROP


def test_reflection_filter_always_acts_without_an_attack(dp, tenants):
    apply_tenant_dicts(dp, [{"id": "alpha", "name": "A", "prefixes": ["198.51.100.0/25"],
                             "policy": {"reflection_filter": "always"}}])
    assert run(dp, frames.udp(REFLECTOR, ALPHA_DST, sport=11211, dport=40004)) == XDP_DROP
    assert run(dp, frames.udp(REFLECTOR, ALPHA_DST, sport=40000, dport=40004)) == XDP_REDIRECT


def syn(src: str, sport: int) -> bytes:
    return frames.tcp(src, ALPHA_DST, sport=sport, dport=80, flags="S")


def test_a_retransmitted_syn_of_an_unknown_source_gets_a_cookie_again_and_passes_nothing(dp, tenants, attacked):
    """Issue 19: the old challenge admitted any SYN whose tuple came back 0.2-5 s later, which a flood
    replaying its frames does by construction. Now only a returned cookie admits a source."""
    attacked(TrafficClass.TCP_SYN)
    action, sample = observe(dp, syn("198.19.50.1", 41000))
    assert action == XDP_TX and sample.reason == DropReason.SYN_COOKIE   # answered by the bridge
    start = time.monotonic()
    wait_until(lambda: time.monotonic() - start > 0.25, timeout=2, what="the old retransmission interval")
    assert run(dp, syn("198.19.50.1", 41000)) == XDP_TX        # the retransmission is no proof
    assert run(dp, syn("198.19.50.1", 41001)) == XDP_TX


def test_a_completed_handshake_validates_the_source(dp, tenants, attacked):
    attacked(TrafficClass.TCP_SYN)
    client, cport = "198.19.60.6", 42000
    synack = bytes(Ether() / IP(src=ALPHA_DST, dst=client) / TCP(sport=80, dport=cport, flags="SA", seq=1000,
                                                                   ack=1))
    assert run(dp, synack, Direction.OUTBOUND) == XDP_REDIRECT
    wrong = bytes(Ether() / IP(src=client, dst=ALPHA_DST) / TCP(sport=cport, dport=80, flags="A", seq=1, ack=999))
    assert run(dp, wrong) == XDP_REDIRECT                       # ACKs pass, but this one validates nothing
    assert run(dp, syn(client, cport + 1)) == XDP_TX           # not validated: a cookie SYN-ACK
    right = bytes(Ether() / IP(src=client, dst=ALPHA_DST) / TCP(sport=cport, dport=80, flags="A", seq=1, ack=1001))
    assert run(dp, right) == XDP_REDIRECT
    assert run(dp, syn(client, cport + 2)) == XDP_REDIRECT      # validated: its new SYNs pass at once


def test_syn_challenge_only_while_under_attack_and_per_destination(dp, tenants, attacked):
    assert run(dp, syn("198.19.70.7", 43000)) == XDP_REDIRECT
    attacked(TrafficClass.TCP_SYN, dst="198.51.100.11")
    assert run(dp, syn("198.19.70.7", 43001)) == XDP_REDIRECT   # ALPHA_DST is not the one under attack


def test_per_destination_class_budget_acts_from_the_first_packets(dp):
    applied = apply_tenant_dicts(dp, [{"id": "alpha", "name": "A", "prefixes": ["198.51.100.0/25"],
                                       "policy": {"udp_rate_pps": 2000}}])
    before = dp.read_tenant_counters([applied["alpha"]])[applied["alpha"]]
    flood = frames.udp("198.19.80.8", ALPHA_DST, sport=5555, dport=28960)
    dp.test_run(flood, repeat=1000)   # 1,000 packets within microseconds: far above 2,000 pps
    after = dp.read_tenant_counters([applied["alpha"]])[applied["alpha"]]
    dropped = int(after.reason_packets[0, DropReason.HEURISTIC] - before.reason_packets[0, DropReason.HEURISTIC])
    passed = int(after.passed_packets[0] - before.passed_packets[0])
    # Each CPU's share of the rate holds 100 ms of burst: about 2000 / CPUs / 10 packets pass.
    assert passed + dropped == 1000
    assert 20 <= passed <= 250 and dropped >= 750, (passed, dropped)
    # TCP to the same server has no budget set: untouched.
    assert run(dp, frames.tcp(CLEAN_SRC, ALPHA_DST, flags="A")) == XDP_REDIRECT


def test_syn_challenge_covers_only_the_attacked_ports(dp, tenants):
    from dataplane.api import Range  # noqa: PLC0415

    dst = ipaddress.ip_address(ALPHA_DST)
    dp.set_under_attack(tenants["alpha"], dst, [TrafficClass.TCP_SYN], syn_ports=Range(443, 443))
    try:
        assert run(dp, frames.tcp("198.19.90.9", ALPHA_DST, sport=44000, dport=443, flags="S")) == XDP_TX
        assert run(dp, frames.tcp("198.19.90.9", ALPHA_DST, sport=44001, dport=80, flags="S")) == XDP_REDIRECT
    finally:
        dp.set_under_attack(tenants["alpha"], dst, ())


def age_attack_mark(dp, tenant_idx: int, dst: str, seconds: float) -> None:
    """Backdate a mark past the learning grace period (instead of waiting 5 s)."""
    from dataplane import testing  # noqa: PLC0415 - the bpf tier imports the adapter only when it runs

    table = testing.table(dp, "sw_attack")
    for key, leaf in table.items():
        if key.tenant_idx == tenant_idx and bytes(key.addr)[12:] == ipaddress.ip_address(dst).packed:
            leaf.since_ns -= int(seconds * 1e9)
            table[key] = leaf


def test_ack_flood_passes_only_connections_the_server_talks_on(dp, tenants, attacked):
    attacked(TrafficClass.TCP_OTHER)
    client, cport = "198.19.99.1", 45000
    stray = frames.tcp("198.19.99.2", ALPHA_DST, sport=45001, dport=80, flags="A")
    assert run(dp, stray) == XDP_REDIRECT             # grace period: connections are being learned
    # The server sends on its connection with the client: learned.
    assert run(dp, frames.tcp(ALPHA_DST, client, sport=80, dport=cport, flags="PA"), Direction.OUTBOUND) \
        == XDP_REDIRECT
    age_attack_mark(dp, tenants["alpha"], ALPHA_DST, 10)
    dp.set_under_attack(tenants["alpha"], ipaddress.ip_address(ALPHA_DST), [TrafficClass.TCP_OTHER])
    action, sample = observe(dp, stray)
    assert action == XDP_DROP and sample.reason == DropReason.HEURISTIC
    assert run(dp, frames.tcp("198.19.99.3", ALPHA_DST, sport=45002, dport=80, flags="R")) == XDP_DROP
    assert run(dp, frames.tcp(client, ALPHA_DST, sport=cport, dport=80, flags="A")) == XDP_REDIRECT
    assert run(dp, frames.tcp(client, ALPHA_DST, sport=cport, dport=80, flags="FA")) == XDP_REDIRECT
    # New connections still start: SYNs are not this heuristic's business.
    assert run(dp, frames.tcp("198.19.99.4", ALPHA_DST, sport=45003, dport=80, flags="S")) == XDP_REDIRECT


# -- issue 20, item 2: SYN-ACK and other out-of-state TCP reflection, dropped by state -----------------

def synack(src: str, sport: int, dport: int) -> bytes:
    return frames.tcp(src, ALPHA_DST, sport=sport, dport=dport, flags="SA")


def test_synack_reflection_is_dropped_by_state_from_the_attacks_onset(dp, tenants, attacked):
    reflector = "198.19.91.1"
    assert run(dp, synack(reflector, 443, 46000)) == XDP_REDIRECT     # no attack, reflection "auto": untouched
    attacked(TrafficClass.TCP_OTHER)
    # No grace period: no server here sent the SYN this SYN-ACK answers.
    action, sample = observe(dp, synack(reflector, 443, 46001))
    assert action == XDP_DROP and sample.reason == DropReason.HEURISTIC
    # A connection the server opens itself: its SYN-ACK passes, a reflector's on another port does not.
    peer = "198.19.91.2"
    assert run(dp, frames.tcp(ALPHA_DST, peer, sport=46002, dport=443, flags="S"), Direction.OUTBOUND) \
        == XDP_REDIRECT
    assert run(dp, synack(peer, 443, 46002)) == XDP_REDIRECT
    assert run(dp, synack(peer, 443, 46003)) == XDP_DROP
    assert run(dp, synack(peer, 80, 46002)) == XDP_DROP


def test_rst_ack_answers_pass_only_for_syns_the_server_sent(dp, tenants, attacked):
    # The server's SYN before the attack is known: it is recorded whether or not anything is attacked.
    peer, port = "198.19.92.2", 47000
    assert run(dp, frames.tcp(ALPHA_DST, peer, sport=port, dport=25, flags="S"), Direction.OUTBOUND) \
        == XDP_REDIRECT
    attacked(TrafficClass.TCP_OTHER)
    age_attack_mark(dp, tenants["alpha"], ALPHA_DST, 10)                # past the grace period
    dp.set_under_attack(tenants["alpha"], ipaddress.ip_address(ALPHA_DST), [TrafficClass.TCP_OTHER])
    assert run(dp, frames.tcp(peer, ALPHA_DST, sport=25, dport=port, flags="RA")) == XDP_REDIRECT   # refused: belongs
    action, sample = observe(dp, frames.tcp("198.19.92.3", ALPHA_DST, sport=25, dport=port + 1, flags="RA"))
    assert action == XDP_DROP and sample.reason == DropReason.HEURISTIC


def test_synack_reflection_filter_always_acts_without_an_attack(dp, tenants):
    apply_tenant_dicts(dp, [{"id": "alpha", "name": "A", "prefixes": ["198.51.100.0/25"],
                             "policy": {"reflection_filter": "always"}}])
    assert run(dp, synack("198.19.93.1", 443, 48000)) == XDP_DROP
    assert run(dp, frames.tcp(ALPHA_DST, "198.19.93.2", sport=48001, dport=443, flags="S"), Direction.OUTBOUND) \
        == XDP_REDIRECT
    assert run(dp, synack("198.19.93.2", 443, 48001)) == XDP_REDIRECT
    # Other TCP is no reflection: untouched without an attack.
    assert run(dp, frames.tcp("198.19.93.3", ALPHA_DST, sport=48002, dport=80, flags="A")) == XDP_REDIRECT


def test_synack_reflection_filter_off_leaves_synacks_alone(dp, tenants):
    applied = apply_tenant_dicts(dp, [{"id": "alpha", "name": "A", "prefixes": ["198.51.100.0/25"],
                                       "policy": {"reflection_filter": "off"}}])
    dp.set_under_attack(applied["alpha"], ipaddress.ip_address(ALPHA_DST), [TrafficClass.TCP_OTHER])
    try:
        assert run(dp, synack("198.19.94.1", 443, 49000)) == XDP_REDIRECT
    finally:
        dp.set_under_attack(applied["alpha"], ipaddress.ip_address(ALPHA_DST), ())


def rstack(src: str, sport: int, dport: int, seq: int = 0) -> bytes:
    """An RST/ACK towards ALPHA_DST; sequence number 0 is how a stack refuses a SYN."""
    return bytes(Ether() / IP(src=src, dst=ALPHA_DST) / TCP(sport=sport, dport=dport, flags="RA", seq=seq,
                                                             ack=1))


def test_rst_ack_reflection_filter_always_acts_without_an_attack(dp, tenants):
    apply_tenant_dicts(dp, [{"id": "alpha", "name": "A", "prefixes": ["198.51.100.0/25"],
                             "policy": {"reflection_filter": "always"}}])
    action, sample = observe(dp, rstack("198.19.95.1", 25, 50000))
    assert action == XDP_DROP and sample.reason == DropReason.HEURISTIC
    # The server's own SYN: the refusal answering it passes; the same peer on another port does not.
    peer = "198.19.95.2"
    assert run(dp, frames.tcp(ALPHA_DST, peer, sport=50001, dport=25, flags="S"), Direction.OUTBOUND) \
        == XDP_REDIRECT
    assert run(dp, rstack(peer, 25, 50001)) == XDP_REDIRECT
    assert run(dp, rstack(peer, 25, 50002)) == XDP_DROP
    # A client aborting a connection it opened (its own sequence number, not 0) is no answer to a SYN.
    assert run(dp, rstack("198.19.95.3", 50003, 80, seq=0x5EA11)) == XDP_REDIRECT


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_rst_ack_reflection_passes_without_always_and_without_an_attack(dp, tenants, mode):
    apply_tenant_dicts(dp, [{"id": "alpha", "name": "A", "prefixes": ["198.51.100.0/25"],
                             "policy": {"reflection_filter": mode}}])
    assert run(dp, rstack("198.19.96.1", 25, 51000)) == XDP_REDIRECT
