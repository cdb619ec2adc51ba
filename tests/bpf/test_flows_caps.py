"""The caps of connection accounting, per-source limits and the block list (issue 15): every map has a hard
size from the configuration (`dataplane.sizing.FlowSizes`); at the cap the oldest entries go and a counter
says so. A dataplane of its own, with small sizes."""

from __future__ import annotations

import ipaddress
import time

import pytest

from dataplane.api import BlockedSource, DataplaneError, SourceLimit
from dataplane.constants import Direction
from dataplane.sizing import FlowSizes
from tests.bpf import frames
from tests.bpf.conftest import STANDARD_TENANTS, XDP_DROP, XDP_REDIRECT, apply_tenant_dicts, run

SIZES = FlowSizes(flow_table_entries=1024, flow_handshake_entries=1024, flow_destination_entries=256, flow_source_entries=1024,
                  blocked_sources_max=16, source_limits_max=2)


@pytest.fixture(scope="module")
def small():
    from dataplane import Dataplane  # noqa: PLC0415 - the bpf tier may be skipped before this

    dp = Dataplane(flow_sizes=SIZES)
    try:
        tenants = apply_tenant_dicts(dp, STANDARD_TENANTS)
        yield dp, tenants
    finally:
        dp.close()


def test_flow_caps_size_the_maps_from_the_configuration(small):
    dp, _ = small
    maps = dp.flows.maps
    assert (maps["sw_flow_conns"].max_entries, maps["sw_flow_handshakes"].max_entries,
            maps["sw_flow_dests"].max_entries, maps["sw_flow_pairs"].max_entries,
            maps["sw_limit_buckets"].max_entries, maps["sw_blocked"].max_entries,
            maps["sw_source_limits"].max_entries) == (1024, 1024, 256, 1024, 1024, 16, 2)


def test_flow_caps_evict_connections_and_rows_and_count_them(small):
    dp, _ = small
    server = "198.51.100.50"
    # 3,000 clients each complete a handshake: more connections and (destination, source) rows than fit.
    for i in range(3000):
        client = str(ipaddress.ip_address("198.19.0.0") + 1000 + i)
        isn = 7919 * i + 1   # the server's: the client's ACK acknowledges it
        assert run(dp, frames.tcp(client, server, sport=50000, dport=80, flags="S")) == XDP_REDIRECT
        run(dp, frames.tcp(server, client, sport=80, dport=50000, flags="SA", seq=isn), Direction.OUTBOUND)
        run(dp, frames.tcp(client, server, sport=50000, dport=80, flags="A", ack=isn + 1))
    caps = dp.read_flow_cap_counters()
    pairs = dp.read_flow_counters(per_source=True)
    dests = dp.read_flow_counters()
    conns = dp.flows.maps["sw_flow_conns"]
    present = sum(1 for _ in conns)
    assert present <= 1024 and len(pairs) <= 1024
    assert caps["connections_evicted"] == 3000 - present
    assert caps["source_rows_evicted"] == 3000 - len(pairs) == pairs.evictions
    assert caps["flow_rows_evicted"] == caps["source_rows_evicted"] + caps["destination_rows_evicted"]
    # The destination row lives on (one row) and counted every handshake.
    row = [i for i, a in enumerate(dests.addresses) if str(a) == server]
    assert len(row) == 1 and int(dests.new_connections[row[0]]) == 3000


def test_flow_caps_keep_the_newest_blocked_sources_and_count_the_oldest_that_go(small):
    dp, tenants = small
    alpha = tenants["alpha"]
    later = time.monotonic_ns() + 120_000_000_000
    sources = [ipaddress.ip_address("198.19.60.0") + i for i in range(20)]
    before = dp.read_flow_cap_counters()["blocked_sources_evicted"]
    count = 0
    for src in sources:
        count = dp.block_sources([BlockedSource(alpha, src, later, f"flood from {src}")])
    assert count == 16
    assert dp.read_flow_cap_counters()["blocked_sources_evicted"] - before == 4
    listed = [b.src for b in dp.read_blocked_sources()]
    assert listed == sources[4:]
    assert run(dp, frames.tcp(str(sources[0]), "198.51.100.51", dport=80, flags="A")) == XDP_REDIRECT   # evicted
    assert run(dp, frames.tcp(str(sources[-1]), "198.51.100.51", dport=80, flags="A")) == XDP_DROP
    # A refreshed entry becomes the newest: the next one over the cap pushes out the next oldest instead.
    dp.block_sources([BlockedSource(alpha, sources[4], later, "again")])
    dp.block_sources([BlockedSource(alpha, ipaddress.ip_address("198.19.61.1"), later, "new")])
    listed = [b.src for b in dp.read_blocked_sources()]
    assert sources[4] in listed and sources[5] not in listed
    for src in listed:
        dp.unblock_source(alpha, src)
    assert dp.read_blocked_sources() == []


def test_flow_caps_refuse_more_source_limits_than_the_cap(small):
    dp, tenants = small
    dst = ipaddress.ip_address("198.51.100.52")
    limits = [SourceLimit(tenants["alpha"], dst, port, 10, 20, 5) for port in (80, 443, 8080)]
    with pytest.raises(DataplaneError, match=r"source_limits_max \(2\)"):
        dp.set_source_limits(limits)
    dp.set_source_limits(limits[:2])
    try:
        assert len(dp.flows.maps["sw_source_limits"].items()) == 2
    finally:
        dp.set_source_limits([])


def test_flow_caps_keep_a_syn_flood_from_pushing_out_open_connections(small):
    """Handshakes in progress have a map of their own: 3,000 SYNs nobody answers (a flood, more than either
    map holds) push out only each other, counted in `handshakes_evicted`; the connections open before it
    stay tracked, so their closes bring the `established` gauges back to 0 (in one shared LRU the flood
    evicted them and left the gauges one too high for good, tripping max_concurrent)."""
    dp, _ = small
    server = "198.51.100.53"
    clients = [str(ipaddress.ip_address("198.19.70.0") + i) for i in range(10)]
    for i, client in enumerate(clients):
        isn = 104729 * i + 1   # the server's: the client's ACK acknowledges it
        assert run(dp, frames.tcp(client, server, sport=50100, dport=80, flags="S")) == XDP_REDIRECT
        run(dp, frames.tcp(server, client, sport=80, dport=50100, flags="SA", seq=isn), Direction.OUTBOUND)
        run(dp, frames.tcp(client, server, sport=50100, dport=80, flags="A", ack=isn + 1))
    before = dp.read_flow_cap_counters()["handshakes_evicted"]
    for i in range(3000):
        flooder = str(ipaddress.ip_address("198.19.80.0") + i)
        for _ in range(3):   # retransmitted, as a bot's unanswered SYNs are: each entry is used again
            run(dp, frames.tcp(flooder, server, sport=50101, dport=80, flags="S"))
    assert dp.read_flow_cap_counters()["handshakes_evicted"] - before >= 3000 - 1024
    for client in clients:
        run(dp, frames.tcp(client, server, sport=50100, dport=80, flags="FA"))
    dests = dp.read_flow_counters()
    row = [i for i, a in enumerate(dests.addresses) if str(a) == server]
    assert len(row) == 1 and int(dests.new_connections[row[0]]) == 10
    assert int(dests.established[row[0]]) == 0
