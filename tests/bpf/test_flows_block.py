"""What the dynamic block list does to the connections a blocked source already holds (issue 15,
dataplane/bpf/flows.h): the list applies before the SYN-auth splice, a blocked source's next segment reaches
the server as a reset of its connection (so a slowloris or connection-flood bot loses the slots it holds),
and the list's gate closes once every block expired."""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from dataplane.api import BlockedSource
from dataplane.constants import Direction, DropReason, FlowGate, TcpFlag
from tests.bpf import frames
from tests.bpf.conftest import ALPHA_DST, ALPHA_DST6, XDP_DROP, XDP_REDIRECT, run, tenant_counters
from tests.bpf.test_flows import Counts, Lab, rows
from tests.bpf.test_synauth import Splice, assert_checksums, client_segment, run_frame
from tests.bpf.test_synauth import syn_attack as syn_attack  # noqa: PLC0414 - the splice test's fixture
from tests.support import wait_until

SYN, PSH, ACK = int(TcpFlag.SYN), int(TcpFlag.PSH), int(TcpFlag.ACK)
AN_HOUR_NS = 3600 * 10**9


def segment(client: str, server: str, sport: int, seq: int, ack_no: int, flags: str = "PA",
            payload: bytes = b"") -> bytes:
    ip = IPv6(src=client, dst=server) if ":" in server else IP(src=client, dst=server)
    tcp = TCP(sport=sport, dport=80, flags=flags, seq=seq, ack=ack_no, window=502)
    return bytes(Ether(src=frames.MAC_EXTERNAL, dst=frames.MAC_INTERNAL) / ip / tcp / Raw(payload))


def caps(dp) -> dict[str, int]:
    return dp.read_flow_cap_counters()


def gate(dp) -> FlowGate:
    from dataplane import testing  # noqa: PLC0415 - the bpf tier imports the adapter only when it runs

    table = testing.table(dp, "sw_config")
    return FlowGate(table[table.Key(0)].flags)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_block_list_resets_the_servers_connection_at_the_blocked_sources_next_segment(dp, tenants, v6):
    """A bot holding an open connection (slowloris) is blocked: its next segment goes on to the server as
    a reset of that connection (the segment's sequence number, RST, no payload, valid checksums), the
    connection's gauges drop, and the reset is counted. A second segment is reset again (should the first
    be lost); a SYN of the blocked source, or a segment of a connection the server does not hold, is dropped."""
    alpha = tenants["alpha"]
    server = ALPHA_DST6 if v6 else ALPHA_DST
    client = "2001:db8:5::4401" if v6 else "198.19.44.1"
    lab = Lab(dp)
    lab.handshake(server, client, 80, 51000)
    lab.send(Direction.INBOUND, server, client, 80, 51000, PSH | ACK, b"GET / HTTP/1.1\r\nX-a: 1\r\n")
    assert rows(dp, True)[(server, client)].established == 1
    dp.block_sources([BlockedSource(alpha, ipaddress.ip_address(client), time.monotonic_ns() + AN_HOUR_NS,
                                    "slowloris")])
    try:
        before, counters = caps(dp), tenant_counters(dp, alpha)
        action, out = run_frame(dp, segment(client, server, 51000, 0x89ABCDEF, 4242, "PA", b"X-b: 2\r\n"))
        assert action == XDP_REDIRECT, f"the reset goes on to the server ({action})"
        assert_checksums(out)
        sent = Ether(out)
        assert (sent.src, sent.dst) == (frames.MAC_EXTERNAL, frames.MAC_INTERNAL)
        ip = sent[IPv6] if v6 else sent[IP]
        assert (ip.src, ip.dst) == (client, server)
        assert (ip.plen if v6 else ip.len) == (20 if v6 else 40)
        tcp = sent[TCP]
        assert (tcp.sport, tcp.dport, str(tcp.flags), tcp.seq) == (51000, 80, "R", 0x89ABCDEF)
        assert len(tcp.payload) == 0
        assert caps(dp)["block_resets"] - before["block_resets"] == 1
        assert tenant_counters(dp, alpha).reason_packets[0, DropReason.BLOCKED] - \
            counters.reason_packets[0, DropReason.BLOCKED] == 1
        got = rows(dp, True)[(server, client)]
        assert (got.new_connections, got.established, got.http_requests) == (1, 0, 1)
        # The next segment (a lost reset, a retransmission): reset again, the gauges stay.
        action, out = run_frame(dp, segment(client, server, 51000, 0x89ABCDF7, 4242, "A"))
        assert action == XDP_REDIRECT and str(Ether(out)[TCP].flags) == "R" and Ether(out)[TCP].seq == 0x89ABCDF7
        assert rows(dp, True)[(server, client)].established == 0
        assert caps(dp)["block_resets"] - before["block_resets"] == 2
        # Nothing the server holds: dropped.
        assert run(dp, frames.tcp(client, server, sport=51001, dport=80, flags="S")) == XDP_DROP
        assert run(dp, segment(client, server, 51002, 1, 1, "PA", b"x")) == XDP_DROP
        assert caps(dp)["block_resets"] - before["block_resets"] == 2
    finally:
        dp.unblock_source(alpha, ipaddress.ip_address(client))


def test_block_list_resets_a_padded_minimum_size_ack_of_a_blocked_source(dp, tenants):
    """A pure ACK in a 60-byte frame (Ethernet padding after the segment) becomes a 54-byte reset: the
    padding is gone and the IP length and checksums are the reset's own."""
    alpha = tenants["alpha"]
    server, client = ALPHA_DST, "198.19.44.2"
    lab = Lab(dp)
    lab.handshake(server, client, 80, 51003)
    dp.block_sources([BlockedSource(alpha, ipaddress.ip_address(client), time.monotonic_ns() + AN_HOUR_NS, "x")])
    try:
        frame = segment(client, server, 51003, 777, 1, "A") + b"\0" * 6
        assert len(frame) == 60
        action, out = run_frame(dp, frame)
        assert action == XDP_REDIRECT and len(out) == 54
        assert_checksums(out)
        assert (str(Ether(out)[TCP].flags), Ether(out)[TCP].seq, Ether(out)[IP].len) == ("R", 777, 40)
    finally:
        dp.unblock_source(alpha, ipaddress.ip_address(client))


def test_block_list_applies_before_the_syn_auth_splice(dp, tenants, syn_attack):
    """A source that passed SYN authentication holds a spliced connection; once blocked, its segments no
    longer pass translated: the server gets a reset of the connection in its own numbering."""
    s = Splice(dp, False, client_isn=5000, server_isn=9000)
    s.server_answers()
    action, out = run_frame(dp, client_segment(s.client, s.server, s.sport, 5001, s.cookie + 1, "PA", b"GET / "))
    assert action == XDP_REDIRECT and Ether(out)[TCP].ack == 9001          # spliced: translated
    assert rows(dp, True)[(s.server, s.client)].established == 1
    alpha = tenants["alpha"]
    dp.block_sources([BlockedSource(alpha, ipaddress.ip_address(s.client), time.monotonic_ns() + AN_HOUR_NS,
                                    "http flood")])
    try:
        action, out = run_frame(dp, client_segment(s.client, s.server, s.sport, 5007, s.cookie + 1, "PA", b"x"))
        assert action == XDP_REDIRECT
        assert_checksums(out)
        tcp = Ether(out)[TCP]
        assert (str(tcp.flags), tcp.seq, len(tcp.payload)) == ("R", 5007, 0)
        assert rows(dp, True)[(s.server, s.client)] == Counts(new_connections=1, established=0, http_requests=1,
                                                                bytes_to_server=6)
    finally:
        dp.unblock_source(alpha, ipaddress.ip_address(s.client))


def test_block_list_gate_closes_once_every_block_expired(dp, tenants):
    """The gate bit that makes packets look the list up goes once no live block is left, at the engine's
    next read of the flow counters (it reads them every interval), not only when someone lists the blocks."""
    alpha = tenants["alpha"]
    for entry in dp.read_blocked_sources():
        dp.unblock_source(entry.tenant_idx, entry.src)
    src = ipaddress.ip_address("198.19.44.3")
    expires = time.monotonic_ns() + 1_000_000_000
    dp.block_sources([BlockedSource(alpha, src, expires, "short")])
    assert FlowGate.BLOCKED in gate(dp)
    assert run(dp, frames.tcp(str(src), ALPHA_DST, dport=80, flags="A")) == XDP_DROP

    def closed() -> bool:
        dp.read_flow_counters()
        return FlowGate.BLOCKED not in gate(dp)

    wait_until(closed, timeout=10, what="the gate to close after the block expired")
    assert time.monotonic_ns() >= expires
    assert run(dp, frames.tcp(str(src), ALPHA_DST, dport=80, flags="A")) == XDP_REDIRECT
