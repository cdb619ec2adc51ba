"""Inbound policy in the spec's order (allow, deny, invalid filters), per mode, and the paths that never
filter: traffic to no tenant and outbound traffic. Also atomic replacement of the tenant set."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from dataplane.constants import NO_TENANT, Direction, DropReason
from dataplane.dataplane import UNPROTECTED
from tests.bpf import frames
from tests.bpf.conftest import (
    ALLOWED_DNS_SRC6,
    ALLOWED_HTTPS_SRC,
    ALLOWED_SRC,
    ALPHA_DST,
    ALPHA_DST6,
    BETA_DST,
    BETA_DST6,
    CLEAN_SRC,
    CLEAN_SRC6,
    DENIED_SRC,
    DENIED_SRC6,
    GAMMA_DST,
    GAMMA_DST6,
    STANDARD_TENANTS,
    UNPROTECTED_DST,
    UNPROTECTED_DST6,
    XDP_DROP,
    XDP_REDIRECT,
    apply_tenant_dicts,
    counter_delta,
    observe,
    run,
    tenant_counters,
)

FAMILIES = pytest.mark.parametrize("src,dst", [(CLEAN_SRC, ALPHA_DST), (CLEAN_SRC6, ALPHA_DST6)], ids=["v4", "v6"])

# Flag sets no TCP stack sends (BAD_TCP_FLAGS) and ones that stacks do send.
BAD_FLAGS = {"null": 0, "syn-fin": "SF", "syn-rst": "SR", "xmas": "FPU", "syn-fin-ack": "SFA", "all": "FSRPAU"}
GOOD_FLAGS = {"syn": "S", "syn-ack": "SA", "ack": "A", "psh-ack": "PA", "fin-ack": "FA", "rst": "R",
              "rst-ack": "RA", "fin-psh-ack": "FPA", "urg-ack": "UA"}


@FAMILIES
@pytest.mark.parametrize("flags", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_tcp_flag_sets_are_dropped(dp, tenants, src, dst, flags):
    action, sample = observe(dp, frames.tcp(src, dst, flags=flags))
    assert (action, sample.reason, sample.dropped) == (XDP_DROP, DropReason.BAD_TCP_FLAGS, True)


@FAMILIES
@pytest.mark.parametrize("flags", GOOD_FLAGS.values(), ids=GOOD_FLAGS.keys())
def test_ordinary_tcp_flag_sets_pass(dp, tenants, src, dst, flags):
    action, sample = observe(dp, frames.tcp(src, dst, flags=flags))
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)


@pytest.mark.parametrize("dst", [ALPHA_DST, ALPHA_DST6], ids=["v4", "v6"])
def test_land_is_dropped(dp, tenants, dst):
    action, sample = observe(dp, frames.tcp(dst, dst, flags="S"))
    assert (action, sample.reason) == (XDP_DROP, DropReason.LAND)
    action, sample = observe(dp, frames.icmp(dst, dst))
    assert (action, sample.reason) == (XDP_DROP, DropReason.LAND)


@FAMILIES
@pytest.mark.parametrize("builder,sport,dport", [
    (frames.tcp, 0, 80), (frames.tcp, 1234, 0), (frames.udp, 0, 53), (frames.udp, 1234, 0)],
    ids=["tcp-sport", "tcp-dport", "udp-sport", "udp-dport"])
def test_port_zero_is_dropped(dp, tenants, src, dst, builder, sport, dport):
    action, sample = observe(dp, builder(src, dst, sport=sport, dport=dport))
    assert (action, sample.reason) == (XDP_DROP, DropReason.PORT_ZERO)


@FAMILIES
def test_clean_traffic_of_every_protocol_passes(dp, tenants, src, dst):
    for frame in (frames.tcp(src, dst, flags="S"), frames.udp(src, dst), frames.icmp(src, dst),
                  frames.l2(frames.ip(src, dst) / b"gre-ish payload")):
        action, sample = observe(dp, frame)
        assert (action, sample.reason, sample.tenant_idx) == (XDP_REDIRECT, DropReason.NONE, tenants["alpha"])


def test_deny_list_drops_by_source_in_both_families(dp, tenants):
    for src, dst in ((DENIED_SRC, ALPHA_DST), (DENIED_SRC6, ALPHA_DST6)):
        action, sample = observe(dp, frames.tcp(src, dst, flags="S"))
        assert (action, sample.reason) == (XDP_DROP, DropReason.DENY_LIST)


@FAMILIES
def test_deny_entry_without_source_applies_to_both_families(dp, tenants, src, dst):
    action, sample = observe(dp, frames.udp(src, dst, dport=19))
    assert (action, sample.reason) == (XDP_DROP, DropReason.DENY_LIST)
    assert run(dp, frames.udp(src, dst, dport=20)) == XDP_REDIRECT
    assert run(dp, frames.tcp(src, dst, dport=19)) == XDP_REDIRECT  # the entry is udp only


def test_allow_list_passes_and_skips_every_further_check(dp, tenants):
    # Invalid in three ways (NULL flags, port 0, and a destination port on the udp/19 deny entry).
    for frame in (frames.tcp(ALLOWED_SRC, ALPHA_DST, sport=0, flags=0), frames.udp(ALLOWED_SRC, ALPHA_DST, dport=19)):
        action, sample = observe(dp, frame)
        assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)


def test_allow_wins_over_a_covering_deny_entry_only_for_what_it_names(dp, tenants):
    # 198.18.5.0/24 tcp/443 is allowed inside the denied 198.18.0.0/16.
    action, sample = observe(dp, frames.tcp(ALLOWED_HTTPS_SRC, ALPHA_DST, dport=443, flags="S"))
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)
    for frame in (frames.tcp(ALLOWED_HTTPS_SRC, ALPHA_DST, dport=80, flags="S"),
                  frames.udp(ALLOWED_HTTPS_SRC, ALPHA_DST, dport=443),
                  frames.l2(IP(src=ALLOWED_HTTPS_SRC, dst=ALPHA_DST, proto=6, frag=50) / (b"x" * 30))):
        action, sample = observe(dp, frame)  # a later fragment has no ports: the port entry cannot allow it
        assert (action, sample.reason) == (XDP_DROP, DropReason.DENY_LIST)


def test_allow_by_source_port_in_ipv6(dp, tenants):
    action, sample = observe(dp, frames.udp(ALLOWED_DNS_SRC6, ALPHA_DST6, sport=53, dport=0))
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)
    action, sample = observe(dp, frames.udp(ALLOWED_DNS_SRC6, ALPHA_DST6, sport=54, dport=0))
    assert (action, sample.reason) == (XDP_DROP, DropReason.PORT_ZERO)


@pytest.mark.parametrize("dst,src", [(BETA_DST, DENIED_SRC), (BETA_DST6, CLEAN_SRC6)], ids=["v4", "v6"])
def test_monitor_mode_never_drops_but_counts_reasons(dp, tenants, dst, src):
    index = tenants["beta"]
    before = tenant_counters(dp, index)
    expected_first = DropReason.DENY_LIST if src == DENIED_SRC else DropReason.BAD_TCP_FLAGS
    cases = [(frames.tcp(src, dst, flags=0), expected_first),
             (frames.udp(CLEAN_SRC if ":" not in dst else CLEAN_SRC6, dst, dport=0), DropReason.PORT_ZERO),
             (frames.tcp(dst, dst, flags="S"), DropReason.LAND)]
    for frame, reason in cases:
        action, sample = observe(dp, frame)
        assert (action, sample.reason, sample.dropped, sample.tenant_idx) == (XDP_REDIRECT, reason, False, index)
    delta = counter_delta(before, tenant_counters(dp, index))
    inbound = Direction.INBOUND
    assert delta["passed_packets"][inbound] == 3 and delta["dropped_packets"][inbound] == 0
    for _, reason in cases:
        assert delta["reason_packets"][inbound, reason] == 1


@pytest.mark.parametrize("src,dst", [(CLEAN_SRC, GAMMA_DST), (CLEAN_SRC6, GAMMA_DST6)], ids=["v4", "v6"])
def test_tenant_without_invalid_filters_passes_invalid_packets(dp, tenants, src, dst):
    for frame in (frames.tcp(src, dst, flags=0), frames.udp(src, dst, dport=0), frames.tcp(dst, dst),
                  frames.l2(frames.ip(src, dst, proto=6) / b"\x12\x34")):
        action, sample = observe(dp, frame)
        assert (action, sample.reason, sample.tenant_idx) == (XDP_REDIRECT, DropReason.NONE, tenants["gamma"])


@pytest.mark.parametrize("src,dst", [(DENIED_SRC, UNPROTECTED_DST), (CLEAN_SRC6, UNPROTECTED_DST6)],
                         ids=["v4", "v6"])
def test_traffic_to_no_tenant_passes_and_is_counted_unprotected(dp, tenants, src, dst):
    before = tenant_counters(dp, UNPROTECTED)
    for frame in (frames.tcp(src, dst, flags=0), frames.udp(src, dst, dport=0), frames.tcp(dst, dst)):
        action, sample = observe(dp, frame)
        assert (action, sample.tenant_idx, sample.reason) == (XDP_REDIRECT, NO_TENANT, DropReason.NONE)
    delta = counter_delta(before, tenant_counters(dp, UNPROTECTED))
    assert delta["passed_packets"][Direction.INBOUND] == 3
    assert delta["reason_packets"].sum() == 0


@pytest.mark.parametrize("src,dst", [(ALPHA_DST, DENIED_SRC), (ALPHA_DST6, DENIED_SRC6)], ids=["v4", "v6"])
def test_outbound_traffic_is_never_filtered_and_counts_by_source(dp, tenants, src, dst):
    index = tenants["alpha"]
    before = tenant_counters(dp, index)
    sent = [frames.tcp(src, dst, flags=0), frames.udp(src, dst, sport=0), frames.tcp(src, src),
            frames.l2(frames.ip(src, dst, proto=17) / b"\x01")]
    for frame in sent:
        action, sample = observe(dp, frame, Direction.OUTBOUND)
        assert (action, sample.direction, sample.tenant_idx) == (XDP_REDIRECT, Direction.OUTBOUND, index)
    delta = counter_delta(before, tenant_counters(dp, index))
    out = Direction.OUTBOUND
    assert delta["passed_packets"][out] == len(sent)
    assert delta["passed_bytes"][out] == sum(len(f) for f in sent)
    assert delta["dropped_packets"].sum() == 0 and delta["reason_packets"].sum() == 0
    assert delta["passed_packets"][Direction.INBOUND] == 0


def test_outbound_from_no_tenant_counts_unprotected(dp, tenants):
    before = tenant_counters(dp, UNPROTECTED)
    assert run(dp, frames.udp(UNPROTECTED_DST, CLEAN_SRC), Direction.OUTBOUND) == XDP_REDIRECT
    delta = counter_delta(before, tenant_counters(dp, UNPROTECTED))
    assert delta["passed_packets"][Direction.OUTBOUND] == 1


SET_B = [
    {"id": "beta", "name": "Beta", "prefixes": ["198.51.100.128/25"], "mode": "mitigate"},
    {"id": "delta", "name": "Delta", "prefixes": ["192.0.2.0/24", "2001:db8:ffff::/48"]},
]


def test_tenant_set_replacement_is_followed_by_traffic(dp, tenants):
    null_to = {name: frames.tcp(CLEAN_SRC, dst, flags=0) for name, dst in
               (("alpha", ALPHA_DST), ("beta", BETA_DST), ("unprotected", UNPROTECTED_DST))}
    # Warm the address cache under set A, so the switch must invalidate cached lookups.
    assert [run(dp, f) for f in null_to.values()] == [XDP_DROP, XDP_REDIRECT, XDP_REDIRECT]
    slot_before = dp.active_slot
    applied = apply_tenant_dicts(dp, SET_B, previous=tenants.indices)
    assert dp.active_slot != slot_before
    action, sample = observe(dp, null_to["alpha"])  # alpha is gone: no longer filtered
    assert (action, sample.tenant_idx) == (XDP_REDIRECT, NO_TENANT)
    action, sample = observe(dp, null_to["beta"])   # beta now mitigates
    assert (action, sample.reason, sample.tenant_idx) == (XDP_DROP, DropReason.BAD_TCP_FLAGS, applied["beta"])
    action, sample = observe(dp, null_to["unprotected"])  # delta's new prefix
    assert (action, sample.tenant_idx) == (XDP_DROP, applied["delta"])
    action, _ = observe(dp, frames.tcp(CLEAN_SRC6, ALPHA_DST6, flags=0))
    assert action == XDP_REDIRECT
    assert run(dp, frames.tcp(CLEAN_SRC6, UNPROTECTED_DST6, flags=0)) == XDP_DROP
    # And back to A: the old slot was cleared and rebuilt.
    apply_tenant_dicts(dp, STANDARD_TENANTS, previous=applied.indices)
    assert [run(dp, f) for f in null_to.values()] == [XDP_DROP, XDP_REDIRECT, XDP_REDIRECT]


def test_ipv6_traffic_to_a_v4_mapped_address_does_not_change_the_ipv4_verdict(dp, tenants):
    """::ffff:198.51.100.10 is an IPv6 destination no tenant owns; 198.51.100.10 is alpha's.
    Traffic to the first must not make the second unprotected (nor the reverse)."""
    mapped = "::ffff:" + ALPHA_DST
    null_v4 = frames.tcp(CLEAN_SRC, ALPHA_DST, flags=0)
    null_v6 = frames.l2(IPv6(src=CLEAN_SRC6, dst=mapped) / TCP(flags=0))
    apply_tenant_dicts(dp, STANDARD_TENANTS, previous=tenants.indices)  # an empty address cache
    action, sample = observe(dp, null_v6)
    assert (action, sample.tenant_idx) == (XDP_REDIRECT, NO_TENANT)
    action, sample = observe(dp, null_v4)
    assert (action, sample.tenant_idx) == (XDP_DROP, tenants["alpha"])
    action, sample = observe(dp, null_v6)
    assert (action, sample.tenant_idx) == (XDP_REDIRECT, NO_TENANT)


def test_ipv4_udp_with_every_header_field_at_an_edge_passes(dp, tenants):
    frame = frames.l2(IP(src=CLEAN_SRC, dst=ALPHA_DST, ttl=1, tos=0xFF, id=0xFFFF, flags="DF") /
                      UDP(sport=65535, dport=65535) / b"")
    action, sample = observe(dp, frame)
    assert (action, sample.reason) == (XDP_REDIRECT, DropReason.NONE)
