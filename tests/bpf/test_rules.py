"""Dynamic rules: every match field, scopes, actions, counters, add/remove, and the rate limiter."""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment

from dataplane.api import DataplaneError, Range, Rule
from dataplane.constants import MAX_RULES, RULES_PER_TARGET, Direction, DropReason, RuleAction
from tests.bpf import frames
from tests.bpf.conftest import (
    ALLOWED_SRC,
    ALPHA_DST,
    ALPHA_DST6,
    BETA_DST,
    CLEAN_SRC,
    CLEAN_SRC6,
    XDP_DROP,
    XDP_REDIRECT,
    observe,
    run,
)

ALPHA_OTHER = "198.51.100.11"


def udp_len(total: int, dst: str = ALPHA_DST, src: str = CLEAN_SRC) -> bytes:
    header = 20 if ":" not in dst else 40
    return frames.udp(src, dst, dport=9999, payload=b"u" * (total - header - 8))


# (rule fields, frames it must drop, frames it must pass) -- for ALPHA_DST unless the frame says otherwise.
CASES = {
    "proto": (dict(proto=17), [frames.udp(CLEAN_SRC, ALPHA_DST)], [frames.tcp(CLEAN_SRC, ALPHA_DST)]),
    "sport": (dict(proto=17, sport=Range(123, 123)), [frames.udp(CLEAN_SRC, ALPHA_DST, sport=123)],
              [frames.udp(CLEAN_SRC, ALPHA_DST, sport=124)]),
    "dport-range": (dict(dport=Range(1000, 2000)),
                    [frames.udp(CLEAN_SRC, ALPHA_DST, dport=1000), frames.tcp(CLEAN_SRC, ALPHA_DST, dport=2000)],
                    [frames.udp(CLEAN_SRC, ALPHA_DST, dport=999), frames.tcp(CLEAN_SRC, ALPHA_DST, dport=2001),
                     frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, proto=17, frag=20) / (b"\x03\xe8" * 8))]),
    "length": (dict(length=Range(100, 200)), [udp_len(100), udp_len(200)], [udp_len(99), udp_len(201)]),
    "length-v6": (dict(dst=ALPHA_DST6, length=Range(100, 200)), [udp_len(100, ALPHA_DST6, CLEAN_SRC6)],
                  [udp_len(201, ALPHA_DST6, CLEAN_SRC6)]),
    "ttl": (dict(ttl=Range(0, 10)), [frames.udp(CLEAN_SRC, ALPHA_DST, ttl=10)],
            [frames.udp(CLEAN_SRC, ALPHA_DST, ttl=11)]),
    "tcp-flags": (dict(tcp_flags=(0x12, 0x02)), [frames.tcp(CLEAN_SRC, ALPHA_DST, flags="S"),
                                                  frames.tcp(CLEAN_SRC, ALPHA_DST, flags="SP")],
                  [frames.tcp(CLEAN_SRC, ALPHA_DST, flags="SA"), frames.udp(CLEAN_SRC, ALPHA_DST)]),
    "payload": (dict(proto=17, payload=b"\x00\x01GET"),
                [frames.udp(CLEAN_SRC, ALPHA_DST, payload=b"\x00\x01GETxxxx")],
                [frames.udp(CLEAN_SRC, ALPHA_DST, payload=b"\x00\x02GETxxxx"),
                 frames.udp(CLEAN_SRC, ALPHA_DST, payload=b"\x00\x01GE")]),  # fewer than 8 bytes in the frame
    "payload-mask": (dict(payload=b"\x00\x00\x00\x00\xde\xad", payload_mask=b"\x00\x00\x00\x00\xff\xf0"),
                     [frames.tcp(CLEAN_SRC, ALPHA_DST, flags="PA", payload=b"abcd\xde\xa7zz")],
                     [frames.tcp(CLEAN_SRC, ALPHA_DST, flags="PA", payload=b"abcd\xde\x9dzz")]),
    "fragments-only": (dict(fragments=True),
                       [frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, flags="MF") / UDP(sport=1, dport=2, len=900)),
                        frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, proto=17, frag=9) / b"later")],
                       [frames.udp(CLEAN_SRC, ALPHA_DST)]),
    "non-fragments-only": (dict(fragments=False), [frames.udp(CLEAN_SRC, ALPHA_DST)],
                           [frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, proto=17, frag=9) / b"later")]),
    "v6-fragment": (dict(dst=ALPHA_DST6, fragments=True, proto=17),
                    [frames.l2(IPv6(src=CLEAN_SRC6, dst=ALPHA_DST6) / IPv6ExtHdrFragment(offset=0, m=1) /
                               UDP(sport=1, dport=2, len=900))],
                    [frames.udp(CLEAN_SRC6, ALPHA_DST6)]),
}


@pytest.mark.parametrize("fields,drops,passes", CASES.values(), ids=CASES.keys())
def test_rule_match_fields(dp, tenants, rules, fields, drops, passes):
    fields = dict(fields)
    dst = ipaddress.ip_address(fields.pop("dst", ALPHA_DST))
    rule_id = rules.add(Rule(tenant_idx=tenants["alpha"], dst=dst, **fields))
    for frame in drops:
        action, sample = observe(dp, frame)
        assert (action, sample.reason) == (XDP_DROP, DropReason.RULE), frame.hex()
    for frame in passes:
        action, sample = observe(dp, frame)
        assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE), frame.hex()
    counters = dp.read_rule_counters()[rule_id]
    assert (counters.matched_packets, counters.dropped_packets) == (len(drops), len(drops))
    assert counters.matched_bytes == sum(map(len, drops))


def test_address_rule_and_tenant_rule_scopes(dp, tenants, rules):
    udp_here, udp_there = frames.udp(CLEAN_SRC, ALPHA_DST), frames.udp(CLEAN_SRC, ALPHA_OTHER)
    address_rule = rules.add(Rule(tenant_idx=tenants["alpha"], dst=ipaddress.ip_address(ALPHA_DST), proto=17))
    assert (run(dp, udp_here), run(dp, udp_there)) == (XDP_DROP, XDP_REDIRECT)
    rules.remove(address_rule)
    assert run(dp, udp_here) == XDP_REDIRECT
    rules.add(Rule(tenant_idx=tenants["alpha"], dst=None, proto=17))
    assert (run(dp, udp_here), run(dp, udp_there)) == (XDP_DROP, XDP_DROP)
    assert run(dp, frames.udp(CLEAN_SRC6, ALPHA_DST6)) == XDP_DROP
    assert run(dp, frames.udp(CLEAN_SRC, BETA_DST)) == XDP_REDIRECT  # another tenant


def test_rules_never_apply_to_allowed_or_outbound_traffic(dp, tenants, rules):
    rules.add(Rule(tenant_idx=tenants["alpha"], dst=None, proto=17))
    assert run(dp, frames.udp(ALLOWED_SRC, ALPHA_DST)) == XDP_REDIRECT
    assert run(dp, frames.udp(ALPHA_DST, CLEAN_SRC), Direction.OUTBOUND) == XDP_REDIRECT


def test_invalid_filters_come_before_rules(dp, tenants, rules):
    rule_id = rules.add(Rule(tenant_idx=tenants["alpha"], dst=None, proto=17))
    action, sample = observe(dp, frames.udp(CLEAN_SRC, ALPHA_DST, dport=0))
    assert (action, sample.reason) == (XDP_DROP, DropReason.PORT_ZERO)
    assert dp.read_rule_counters()[rule_id].matched_packets == 0


def test_count_rule_counts_and_lets_later_rules_decide(dp, tenants, rules):
    alpha = tenants["alpha"]
    counting = rules.add(Rule(tenant_idx=alpha, dst=ipaddress.ip_address(ALPHA_DST), action=RuleAction.COUNT))
    frame = frames.udp(CLEAN_SRC, ALPHA_DST, dport=7)
    assert run(dp, frame) == XDP_REDIRECT
    dropping = rules.add(Rule(tenant_idx=alpha, dst=None, proto=17, dport=Range(7, 7)))
    action, sample = observe(dp, frame)
    assert (action, sample.reason) == (XDP_DROP, DropReason.RULE)
    counters = dp.read_rule_counters()
    assert (counters[counting].matched_packets, counters[counting].dropped_packets) == (2, 0)
    assert (counters[dropping].matched_packets, counters[dropping].dropped_packets) == (1, 1)


def test_removed_rule_stops_dropping_and_its_slot_is_reused_clean(dp, tenants, rules):
    frame = frames.udp(CLEAN_SRC, ALPHA_DST)
    first = rules.add(Rule(tenant_idx=tenants["alpha"], dst=ipaddress.ip_address(ALPHA_DST), proto=17))
    assert run(dp, frame) == XDP_DROP
    rules.remove(first)
    assert run(dp, frame) == XDP_REDIRECT
    assert first not in dp.read_rule_counters()
    second = rules.add(Rule(tenant_idx=tenants["alpha"], dst=ipaddress.ip_address(ALPHA_DST), proto=6))
    assert run(dp, frame) == XDP_REDIRECT
    assert dp.read_rule_counters()[second].matched_packets == 0


def test_monitor_tenant_rule_counts_but_passes(dp, tenants, rules):
    rule_id = rules.add(Rule(tenant_idx=tenants["beta"], dst=None, proto=17))
    action, sample = observe(dp, frames.udp(CLEAN_SRC, BETA_DST))
    assert (action, sample.reason, sample.dropped) == (XDP_REDIRECT, DropReason.RULE, False)
    assert dp.read_rule_counters()[rule_id].matched_packets == 1


FLOOD_PACKETS = 1_500_000  # back to back in one BPF_PROG_TEST_RUN: a sustained flood, ~0.1-0.5 s here


def _flood(dp, frame: bytes) -> tuple[float, float]:
    """Runs the frame back to back in the kernel; returns (seconds the kernel spent running it,
    wall-clock seconds around the call), both measured, not assumed. The bucket refills by the
    clock, so what it admits lies between the two: the kernel's figure leaves out the moments
    the run was preempted (the clock runs on), the wall clock adds the call's own overhead."""
    dp.test_run(frame)  # ports for the direction, address cache warm
    start = time.monotonic()
    _, ns_per_packet = dp.test_run(frame, repeat=FLOOD_PACKETS)
    return ns_per_packet * FLOOD_PACKETS / 1e9, time.monotonic() - start


@pytest.mark.parametrize("rate_pps", [900, 1500, 20000])
def test_rate_limit_rule_admits_about_its_rate(dp, tenants, rules, rate_pps):
    frame = frames.udp(CLEAN_SRC, ALPHA_DST, dport=123)
    rule_id = rules.add(Rule(tenant_idx=tenants["alpha"], dst=ipaddress.ip_address(ALPHA_DST), proto=17,
                             action=RuleAction.RATE_LIMIT, rate_pps=rate_pps))
    running, wall = _flood(dp, frame)
    counters = dp.read_rule_counters()[rule_id]
    admitted = counters.matched_packets - counters.dropped_packets
    burst = rate_pps // 10 + 1  # the bucket starts full
    print(f"rate {rate_pps} pps over {running:.3f}-{wall:.3f} s: admitted {admitted}, expected "
          f"{burst + rate_pps * running:.0f}-{burst + rate_pps * wall:.0f}, matched {counters.matched_packets}")
    assert counters.dropped_packets > 0, "the flood never exceeded the rate: the test proves nothing"
    assert 0.85 * (burst + rate_pps * running) <= admitted <= 1.1 * (burst + rate_pps * wall) + 2
    dp.set_sample_every(1)
    dp.test_run(frame, repeat=burst + 100)  # more than a full bucket: the last ones are over the rate
    over = [s for s in dp.drain_samples(limit=1 << 20) if s.dropped]
    assert over and all(s.reason == DropReason.RATE_LIMIT for s in over)


def test_the_table_fills_to_max_rules_lowest_free_id_first_and_freed_ids_come_back(dp, tenants, rules):
    """Ids are the lowest free ones, a freed id is used again first, a target's refusal takes none, and past
    MAX_RULES the dataplane refuses naming the limit (the free ids are kept, not searched for: a wide attack
    adds thousands of rules in one tick)."""
    assert not dp.installed_rules()
    alpha = tenants["alpha"]
    base = ipaddress.ip_address(ALPHA_DST6)
    targets = [base + 0x1000 + i for i in range(MAX_RULES // RULES_PER_TARGET)]
    ids = [rules.add(Rule(tenant_idx=alpha, dst=t, proto=17, dport=Range(p, p)))
           for t in targets for p in range(1, RULES_PER_TARGET + 1)]
    assert ids == list(range(MAX_RULES))
    with pytest.raises(DataplaneError, match=f"all {MAX_RULES} rule slots are in use"):
        dp.add_rule(Rule(tenant_idx=alpha, dst=None, proto=6))
    for rule_id in (4000, 7, 3):
        rules.remove(rule_id)
    with pytest.raises(DataplaneError, match=f"already has {RULES_PER_TARGET} rules"):
        dp.add_rule(Rule(tenant_idx=alpha, dst=targets[1], proto=6))     # ids 8..15: full
    again = [rules.add(Rule(tenant_idx=alpha, dst=targets[0], proto=6, dport=Range(1, 1))),
             rules.add(Rule(tenant_idx=alpha, dst=targets[0], proto=6, dport=Range(2, 2))),
             rules.add(Rule(tenant_idx=alpha, dst=targets[500], proto=6, dport=Range(3, 3)))]
    assert again == [3, 7, 4000]
    assert run(dp, frames.tcp(CLEAN_SRC6, str(targets[0]), dport=2)) == XDP_DROP
    assert run(dp, frames.tcp(CLEAN_SRC6, str(targets[0]), dport=4)) == XDP_REDIRECT
