"""Counters (per tenant, per destination, per reason) and packet samples."""

from __future__ import annotations

import os

import numpy as np

from dataplane.constants import SAMPLE_BYTES, Direction, DropReason, TrafficClass
from tests.bpf import frames
from tests.bpf.conftest import (
    ALPHA_DST,
    ALPHA_DST6,
    CLEAN_SRC,
    CLEAN_SRC6,
    XDP_DROP,
    XDP_REDIRECT,
    counter_delta,
    destination_row,
    observe,
    run,
    tenant_counters,
)

IN = Direction.INBOUND


def test_tenant_counters_count_packets_bytes_classes_and_reasons(dp, tenants):
    index = tenants["alpha"]
    sent = [
        (frames.tcp(CLEAN_SRC, ALPHA_DST, flags="S"), TrafficClass.TCP_SYN, None),
        (frames.tcp(CLEAN_SRC6, ALPHA_DST6, flags="A", payload=b"x" * 100), TrafficClass.TCP_OTHER, None),
        (frames.udp(CLEAN_SRC, ALPHA_DST), TrafficClass.UDP, None),
        (frames.icmp(CLEAN_SRC6, ALPHA_DST6), TrafficClass.ICMP, None),
        (frames.l2(frames.ip(CLEAN_SRC, ALPHA_DST, proto=47) / b"gre"), TrafficClass.OTHER, None),
        (frames.l2(frames.ip(CLEAN_SRC, ALPHA_DST, proto=17, frag=10) / b"frag"), TrafficClass.FRAGMENT, None),
        (frames.tcp(CLEAN_SRC, ALPHA_DST, flags=0), TrafficClass.TCP_OTHER, DropReason.BAD_TCP_FLAGS),
        (frames.udp(CLEAN_SRC6, ALPHA_DST6, dport=0), TrafficClass.UDP, DropReason.PORT_ZERO),
        (frames.tcp(ALPHA_DST, ALPHA_DST, flags="S"), TrafficClass.TCP_SYN, DropReason.LAND),
    ]
    before = tenant_counters(dp, index)
    for frame, _, reason in sent:
        assert run(dp, frame) == (XDP_DROP if reason else XDP_REDIRECT)
    delta = counter_delta(before, tenant_counters(dp, index))
    passed = [f for f, _, r in sent if r is None]
    dropped = [f for f, _, r in sent if r is not None]
    assert delta["passed_packets"][IN] == len(passed)
    assert delta["passed_bytes"][IN] == sum(map(len, passed))
    assert delta["dropped_packets"][IN] == len(dropped)
    assert delta["dropped_bytes"][IN] == sum(map(len, dropped))
    expected_classes = np.zeros(len(TrafficClass), dtype=np.int64)
    expected_class_bytes = np.zeros(len(TrafficClass), dtype=np.int64)
    expected_reasons = np.zeros(len(DropReason), dtype=np.int64)
    for frame, cls, reason in sent:
        expected_classes[cls] += 1
        expected_class_bytes[cls] += len(frame)
        if reason:
            expected_reasons[reason] += 1
    assert delta["class_packets"][IN].tolist() == expected_classes.tolist()
    assert delta["class_bytes"][IN].tolist() == expected_class_bytes.tolist()
    assert delta["reason_packets"][IN].tolist() == expected_reasons.tolist()
    assert not delta["passed_packets"][Direction.OUTBOUND] and not delta["class_packets"][Direction.OUTBOUND].any()


def test_other_tenants_counters_do_not_move(dp, tenants):
    others = [tenants["beta"], tenants["gamma"]]
    before = dp.read_tenant_counters(others)
    run(dp, frames.tcp(CLEAN_SRC, ALPHA_DST, flags=0))
    after = dp.read_tenant_counters(others)
    for index in others:
        assert all(not v.any() for v in counter_delta(before[index], after[index]).values())


def test_destination_counters_per_address(dp, tenants):
    def row(address):
        found = destination_row(dp, address)
        zeros = np.zeros(len(TrafficClass), dtype=np.int64)
        return found or {"tenant_idx": None, "packets": zeros, "bytes": zeros, "dropped_packets": 0}

    for dst, src in ((ALPHA_DST, CLEAN_SRC), (ALPHA_DST6, CLEAN_SRC6)):
        before = row(dst)
        syn, bad = frames.tcp(src, dst, flags="S"), frames.udp(src, dst, dport=0)
        for frame in (syn, syn, bad):
            run(dp, frame)
        after = row(dst)
        assert after["tenant_idx"] == tenants["alpha"]
        assert (after["packets"] - before["packets"]).tolist() == \
            [2 if c == TrafficClass.TCP_SYN else 1 if c == TrafficClass.UDP else 0 for c in TrafficClass]
        assert (after["bytes"] - before["bytes"])[TrafficClass.TCP_SYN] == 2 * len(syn)
        assert after["dropped_packets"] - before["dropped_packets"] == 1
    # Outbound traffic of the address does not count as inbound.
    before = row(ALPHA_DST)
    run(dp, frames.udp(ALPHA_DST, CLEAN_SRC), Direction.OUTBOUND)
    assert (row(ALPHA_DST)["packets"] - before["packets"]).sum() == 0


def test_destination_counters_survive_a_tenant_set_reapply(dp, tenants):
    from tests.bpf.conftest import STANDARD_TENANTS, apply_tenant_dicts  # noqa: PLC0415

    run(dp, frames.udp(CLEAN_SRC, ALPHA_DST))
    before = destination_row(dp, ALPHA_DST)
    apply_tenant_dicts(dp, STANDARD_TENANTS, previous=tenants.indices)
    run(dp, frames.udp(CLEAN_SRC, ALPHA_DST))
    after = destination_row(dp, ALPHA_DST)
    assert after["packets"][TrafficClass.UDP] == before["packets"][TrafficClass.UDP] + 1


def test_sample_carries_frame_tenant_direction_and_reason(dp, tenants):
    frame = frames.tcp(CLEAN_SRC, ALPHA_DST, flags=0, payload=b"evidence")
    action, sample = observe(dp, frame)
    assert action == XDP_DROP
    assert sample.data == frame and sample.wire_length == len(frame)
    assert (sample.tenant_idx, sample.direction, sample.dropped, sample.reason) == \
        (tenants["alpha"], Direction.INBOUND, True, DropReason.BAD_TCP_FLAGS)
    assert sample.timestamp_ns > 0
    clean = frames.udp(CLEAN_SRC6, ALPHA_DST6, payload=b"y" * 10)
    action, sample = observe(dp, clean)
    assert (action, sample.data, sample.dropped, sample.reason) == (XDP_REDIRECT, clean, False, DropReason.NONE)
    outbound = frames.udp(ALPHA_DST, CLEAN_SRC)
    _, sample = observe(dp, outbound, Direction.OUTBOUND)
    assert (sample.direction, sample.tenant_idx, sample.data) == (Direction.OUTBOUND, tenants["alpha"], outbound)


def test_sample_of_a_long_frame_holds_its_first_bytes(dp, tenants):
    for size in (SAMPLE_BYTES - 1, SAMPLE_BYTES, SAMPLE_BYTES + 1, 1500):
        header = len(frames.udp(CLEAN_SRC, ALPHA_DST, payload=b""))
        frame = frames.udp(CLEAN_SRC, ALPHA_DST, payload=bytes(range(256)) * 6)[:header] + \
            bytes(i % 251 for i in range(size - header))
        frame = frames.udp(CLEAN_SRC, ALPHA_DST, payload=frame[header:])
        assert len(frame) == size
        _, sample = observe(dp, frame)
        assert sample.wire_length == size
        assert sample.data == frame[:SAMPLE_BYTES]


def test_sampling_one_in_n(dp, tenants):
    every = 3
    frame = frames.udp(CLEAN_SRC, ALPHA_DST)
    cpu = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpu)})  # the countdown is per CPU: stay on one
    try:
        dp.set_sample_every(every)
        for _ in range(every):  # synchronise with the countdown: stop right after a sample
            run(dp, frame)
            if dp.drain_samples():
                break
        else:
            raise AssertionError(f"no sample in {every} packets with sample_every={every}")
        got = []
        for _ in range(4 * every):
            run(dp, frame)
            got.append(len(dp.drain_samples()))
        assert got == [0] * (every - 1) + [1] + [0] * (every - 1) + [1] + [0] * (every - 1) + [1] + \
            [0] * (every - 1) + [1]
        dp.set_sample_every(0)
        for _ in range(2 * every):
            run(dp, frame)
        assert dp.drain_samples() == []
    finally:
        dp.set_sample_every(1)  # leave the countdown at 1 for the tests that sample every packet
        for _ in range(every):
            run(dp, frame)
        dp.drain_samples(limit=1 << 20)
        os.sched_setaffinity(0, cpu)


def test_non_ip_frames_are_neither_counted_nor_sampled(dp, tenants):
    from dataplane.dataplane import UNPROTECTED  # noqa: PLC0415

    indices = [tenants["alpha"], UNPROTECTED]
    before = dp.read_tenant_counters(indices)
    action, sample = observe(dp, frames.arp())
    after = dp.read_tenant_counters(indices)
    assert (action, sample) == (XDP_REDIRECT, None)
    for index in indices:
        assert all(not v.any() for v in counter_delta(before[index], after[index]).values())
