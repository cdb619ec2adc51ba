"""Issue 15: the connections a blocked source holds are reset at the server when it is blocked, not at its
next segment (a silent connection-flood bot sends none, and its connections held the server's slots until
the server's own idle timeout). dataplane/bpf/flows.h (sw_flow_conn_frame, sw_flows_reset_held) and
dataplane/flows.py (Flows.reset_held).

The connection entry records the client's next sequence number (exact: Linux takes a RST only at
rcv_nxt) and the client -> server frame's Ethernet header; at the block, one batch read finds the
source's entries, the reset program writes each RST from them, and it leaves by the internal NIC: here a
veth pair made for the test, whose peer end captures what a server would receive.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import structlog.testing
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from dataplane import testing
from dataplane.api import BlockedSource
from dataplane.constants import Direction, FlowState
from tests.bpf import frames
from tests.bpf.conftest import ALPHA_DST, ALPHA_DST6, XDP_REDIRECT, XDP_TX, run
from tests.bpf.test_flows import rows
from tests.bpf.test_synauth import (
    Splice,
    assert_checksums,
    run_frame,
    server_segment,
    syn_attack,  # noqa: F401 - the fixture, for the splice test
)

AN_HOUR_NS = 3600 * 10**9
ETH_P_ALL = 0x0003
CAPTURE_S = 2.0          # seconds to wait for a reset at the capturing end
ISN = 0xFFFFFFF0         # the client's initial sequence number: its data wraps past 2**32 (serial arithmetic)


def frame(client: str, server: str, cport: int, sport: int, flags: str, seq: int, ack_no: int = 0,
          payload: bytes = b"", vlan: int | None = None, inbound: bool = True) -> bytes:
    """A client -> server (inbound) or server -> client segment with explicit numbers."""
    v6 = ":" in server
    src, dst = (client, server) if inbound else (server, client)
    ports = dict(sport=cport, dport=sport) if inbound else dict(sport=sport, dport=cport)
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    macs = (frames.MAC_EXTERNAL, frames.MAC_INTERNAL) if inbound else (frames.MAC_INTERNAL, frames.MAC_EXTERNAL)
    head = Ether(src=macs[0], dst=macs[1])
    if vlan is not None:
        head = head / Dot1Q(vlan=vlan)
    return bytes(head / ip / TCP(flags=flags, seq=seq, ack=ack_no, window=502, **ports) / Raw(payload))


class Client:
    """One client connection through the inbound and outbound programs, with its own numbers."""

    def __init__(self, dp, client: str, server: str, cport: int, sport: int = 80, vlan: int | None = None):
        self.dp, self.client, self.server, self.cport, self.sport, self.vlan = dp, client, server, cport, sport, vlan
        self.next = ISN + 1

    def send(self, flags: str, seq: int, payload: bytes = b"", inbound: bool = True) -> int:
        f = frame(self.client, self.server, self.cport, self.sport, flags, seq, 1000, payload, self.vlan, inbound)
        return run(self.dp, f, Direction.INBOUND if inbound else Direction.OUTBOUND)

    def open(self) -> Client:
        assert self.send("S", ISN) == XDP_REDIRECT
        assert self.send("SA", 999, inbound=False) == XDP_REDIRECT
        assert self.send("A", ISN + 1) == XDP_REDIRECT
        return self

    def data(self, payload: bytes) -> None:
        assert self.send("PA", self.next, payload) == XDP_REDIRECT
        self.next = (self.next + len(payload)) & 0xFFFFFFFF

    def entry(self):
        return testing.flow_conn(self.dp, self.server, self.client, self.sport, self.cport)


@pytest.fixture
def wire(dp) -> Iterator[socket.socket]:
    """A veth pair as the internal NIC: resets at the block leave by one end (Flows.reset_ifindex); the
    socket returned captures at the other, as the server would receive them. Removed after the test."""
    name = f"swrb{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b"], check=True)
    try:
        for end in "ab":
            subprocess.run(["ip", "link", "set", f"{name}{end}", "up"], check=True)
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        capture.bind((f"{name}b", 0))
        dp.flows.reset_ifindex = socket.if_nametoindex(f"{name}a")
        delay, dp.flows.reset_delay_ns = dp.flows.reset_delay_ns, 0   # at the block (test_resets_wait_... the delay)
        try:
            yield capture
        finally:
            dp.flows.reset_ifindex = None
            dp.flows.reset_delay_ns = delay
            capture.close()
    finally:
        subprocess.run(["ip", "link", "del", f"{name}a"], check=False)


def resets(capture: socket.socket, want: int, timeout: float = CAPTURE_S) -> list[Ether]:
    """The TCP resets captured, until `want` of them or the timeout (a veth coming up also sends IPv6
    neighbour discovery and MLD: skipped)."""
    got: list[Ether] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([capture], [], [], left)
        if not ready:
            break
        raw = capture.recv(65536)
        packet = Ether(raw)
        if TCP in packet and "R" in str(packet[TCP].flags):
            got.append(packet)
    return got


def block(dp, tenant: int, *sources: str) -> None:
    dp.block_sources([BlockedSource(tenant, ipaddress.ip_address(s), time.monotonic_ns() + AN_HOUR_NS, "conn-flood")
                      for s in sources])


def tick(dp):
    """The engine's tick, as far as the resets go: its per-destination read of the flow counters."""
    return dp.read_flow_counters()


def set_link(dp, up: bool) -> None:
    """The internal NIC (the wire's sending end) up or down: a send out of a NIC that is down fails."""
    name = socket.if_indextoname(dp.flows.reset_ifindex)
    subprocess.run(["ip", "link", "set", name, "up" if up else "down"], check=True)


@contextlib.contextmanager
def link_down(dp) -> Iterator[None]:
    """The internal NIC down for the block (sends refused), up again after it, also on failure."""
    set_link(dp, False)
    try:
        yield
    finally:
        set_link(dp, True)


@contextlib.contextmanager
def blocked(dp, tenant: int, *sources: str) -> Iterator[None]:
    try:
        block(dp, tenant, *sources)
        yield
    finally:
        for s in sources:
            dp.unblock_source(tenant, ipaddress.ip_address(s))


# -- what the entry records ------------------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_connection_entry_records_the_clients_next_sequence_number_after_the_handshake_and_each_data_segment(
        dp, tenants, v6):
    """The handshake's last ACK leaves ISN + 1; a segment with payload moves it to the segment's end (across
    the 2**32 wrap); a pure ACK, a retransmission and the server's segments leave it; the client -> server
    frame's Ethernet header (MACs and type) is recorded with its length."""
    server = ALPHA_DST6 if v6 else ALPHA_DST
    c = Client(dp, "2001:db8:5::4501" if v6 else "198.19.45.1", server, 52000).open()
    e = c.entry()
    assert e is not None and e.state == FlowState.ESTABLISHED
    assert e.client_next == ISN + 1
    assert e.l2_len == 14
    assert bytes(e.l2)[:14] == bytes(Ether(src=frames.MAC_EXTERNAL, dst=frames.MAC_INTERNAL,
                                           type=0x86DD if v6 else 0x0800))[:14]
    c.data(b"GET / HTTP/1.1\r\n")                  # 16 bytes: ISN + 17 wraps past 2**32
    assert c.entry().client_next == (ISN + 17) & 0xFFFFFFFF
    c.data(b"x" * 0x20)
    assert c.entry().client_next == c.next
    assert c.send("PA", ISN + 1, b"GET / HTTP/1.1\r\n") == XDP_REDIRECT   # a retransmission: not back
    assert c.send("A", c.next) == XDP_REDIRECT                           # a pure ACK
    assert c.send("PA", 5000, b"HTTP/1.1 200 OK\r\n", inbound=False) == XDP_REDIRECT
    assert c.entry().client_next == c.next


def test_connection_entry_records_the_vlan_tag_of_the_client_frames(dp, tenants):
    """A tagged client -> server frame: the tag is part of the recorded header (l2_len 18), so the reset
    reaches the server on its VLAN; the first data segment of a connection whose ACK went unseen records
    its own end."""
    c = Client(dp, "198.19.45.2", ALPHA_DST, 52001, vlan=42).open()
    e = c.entry()
    assert e.l2_len == 18
    want = bytes(Ether(src=frames.MAC_EXTERNAL, dst=frames.MAC_INTERNAL) / Dot1Q(vlan=42, type=0x0800))[:18]
    assert bytes(e.l2)[:18] == want
    # No tag for the handshake's ACK: the entry begins at the first data segment.
    d = Client(dp, "198.19.45.3", ALPHA_DST, 52002)
    assert d.send("S", ISN) == XDP_REDIRECT and d.send("SA", 999, inbound=False) == XDP_REDIRECT
    assert d.send("PA", ISN + 1, b"hello") == XDP_REDIRECT
    assert d.entry().client_next == ISN + 6


# -- the reset at the block ------------------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_block_resets_a_silent_connection_at_the_server_at_once_with_the_exact_sequence_number(
        dp, tenants, wire, v6):
    """A connection-flood bot completes its handshake and sends nothing. Blocking it sends the server, by
    the internal NIC, a RST of that connection: the client's MACs, addresses and ports, seq = ISN + 1
    (what the server's rcv_nxt is), no ACK, no payload, valid checksums; one per held connection, counted
    in `block_resets_sent`; the gauges drop. Another of its connections that sent data is reset at the
    end of its data."""
    alpha = tenants["alpha"]
    server = ALPHA_DST6 if v6 else ALPHA_DST
    client = "2001:db8:5::4601" if v6 else "198.19.46.1"
    silent = Client(dp, client, server, 53000).open()
    talker = Client(dp, client, server, 53001).open()
    talker.data(b"GET / HTTP/1.1\r\nX-a: 1\r\n")
    assert rows(dp, True)[(server, client)].established == 2
    before = dp.read_flow_cap_counters()
    with blocked(dp, alpha, client):
        tick(dp)
        got = resets(wire, 2)
        assert len(got) == 2, f"resets captured: {[g.summary() for g in got]}"
        by_port = {g[TCP].sport: g for g in got}
        for conn in (silent, talker):
            sent = by_port[conn.cport]
            assert_checksums(bytes(sent))
            assert (sent.src, sent.dst) == (frames.MAC_EXTERNAL, frames.MAC_INTERNAL)
            ip = sent[IPv6] if v6 else sent[IP]
            assert (ip.src, ip.dst) == (client, server)
            assert (ip.plen if v6 else ip.len) == (20 if v6 else 40)
            tcp = sent[TCP]
            assert (tcp.sport, tcp.dport, str(tcp.flags), tcp.seq, len(tcp.payload)) == \
                (conn.cport, 80, "R", conn.next, 0)
            assert conn.entry().state == FlowState.RESET
        after = dp.read_flow_cap_counters()
        assert after["block_resets_sent"] - before["block_resets_sent"] == 2
        assert after["block_resets"] == before["block_resets"]       # no segment of the bot was needed
        got_row = rows(dp, True)[(server, client)]
        assert (got_row.new_connections, got_row.established, got_row.http_requests) == (2, 0, 1)
        assert dp.read_flow_counters().block_resets_sent == after["block_resets_sent"]
        # A refreshed block finds nothing left to reset.
        block(dp, alpha, client)
        tick(dp)
        tick(dp)
        assert resets(wire, 1, timeout=0.5) == []
        assert dp.read_flow_cap_counters()["block_resets_sent"] == after["block_resets_sent"]



@pytest.mark.usefixtures("syn_attack")
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_spliced_connection_the_bridge_ended_for_a_silent_client_is_reset_at_the_block(dp, tenants, wire, v6):
    """Under SYN authentication (splice), a silent client's handshake with the server ends with the bridge's own
    ACK (the server retransmits its SYN-ACK; the splice program answers it by XDP_TX, past the port program):
    the connection is accounted from that ACK, with the client's next sequence number (its ISN + 1) and the
    frame's Ethernet header, and a block resets it at the server like any held connection (before, it had
    no connection entry and held its slot until the server's idle timeout)."""
    s = Splice(dp, v6, client_isn=0xFFFFFFFF, server_isn=0x12345678)   # ISN + 1 wraps to 0
    s.server_answers()                                                  # the client's window update
    assert testing.flow_conn(dp, s.server, s.client, 80, s.sport) is None
    action, _ = run_frame(dp, server_segment(s.server, s.client, s.sport, s.server_isn, s.client_isn + 1,
                                             flags="SA"), Direction.OUTBOUND)
    assert action == XDP_TX                                             # the bridge's ACK, to the server
    entry = testing.flow_conn(dp, s.server, s.client, 80, s.sport)
    assert entry is not None and entry.state == FlowState.ESTABLISHED and entry.client_next == 0
    assert entry.l2_len == 14
    assert rows(dp, True)[(s.server, s.client)].established == 1
    before = dp.read_flow_cap_counters()
    with blocked(dp, tenants["alpha"], s.client):
        tick(dp)
        got = resets(wire, 1)
        assert len(got) == 1
        sent = got[0]
        assert_checksums(bytes(sent))
        assert (sent.src, sent.dst) == (frames.MAC_EXTERNAL, frames.MAC_INTERNAL)
        ip = sent[IPv6] if v6 else sent[IP]
        assert (ip.src, ip.dst) == (s.client, s.server)
        assert (sent[TCP].sport, sent[TCP].dport, str(sent[TCP].flags), sent[TCP].seq) == (s.sport, 80, "R", 0)
        assert dp.read_flow_cap_counters()["block_resets_sent"] - before["block_resets_sent"] == 1
        assert rows(dp, True)[(s.server, s.client)].established == 0

def test_a_late_bot_segment_after_the_reset_at_the_block_is_reset_again_without_counting_twice(dp, tenants, wire):
    """Reset at the block, then the bot speaks after all: its segment goes on as a reset again (should the
    first be lost), counted in `block_resets`, and the gauges stay where the first reset left them."""
    alpha = tenants["alpha"]
    server, client = ALPHA_DST, "198.19.46.2"
    c = Client(dp, client, server, 53002).open()
    with blocked(dp, alpha, client):
        tick(dp)
        assert len(resets(wire, 1)) == 1
        counts = rows(dp, True)[(server, client)]
        dests = rows(dp, False)[server]
        before = dp.read_flow_cap_counters()
        action, out = run_frame(dp, frame(client, server, c.cport, 80, "PA", c.next, 1000, b"late"))
        assert action == XDP_REDIRECT
        assert (str(Ether(out)[TCP].flags), Ether(out)[TCP].seq) == ("R", c.next)
        after = dp.read_flow_cap_counters()
        assert after["block_resets"] - before["block_resets"] == 1
        assert after["block_resets_sent"] == before["block_resets_sent"]
        assert rows(dp, True)[(server, client)] == counts
        assert rows(dp, False)[server] == dests
        assert counts.established == 0


def test_reset_at_the_block_leaves_other_sources_and_an_unattached_dataplane_alone(dp, tenants, wire):
    """Only the blocked source's connections are reset; with no internal NIC known nothing is sent and no
    entry changes (the bot's next segment still resets its connection)."""
    alpha = tenants["alpha"]
    server = ALPHA_DST
    bot = Client(dp, "198.19.46.3", server, 53003).open()
    browser = Client(dp, "198.19.46.4", server, 53004).open()
    with blocked(dp, alpha, bot.client):
        tick(dp)
        assert len(resets(wire, 2, timeout=1.0)) == 1
        assert browser.entry().state == FlowState.ESTABLISHED
    ifindex, dp.flows.reset_ifindex = dp.flows.reset_ifindex, None
    try:
        quiet = Client(dp, "198.19.46.5", server, 53005).open()
        with blocked(dp, alpha, quiet.client):
            tick(dp)
            assert quiet.entry().state == FlowState.ESTABLISHED
    finally:
        dp.flows.reset_ifindex = ifindex


def test_resets_wait_the_delay_after_the_block_then_go_at_the_next_read_of_the_counters(dp, tenants, wire):
    """With `reset_delay_ns` (BLOCK_RESET_DELAY_MS: the engine's next tick still sees what it blocked), the
    held connection stays open at the block and is reset at the first read of the flow counters (the engine's
    tick) after the delay."""
    alpha = tenants["alpha"]
    c = Client(dp, "198.19.46.7", ALPHA_DST, 53020).open()
    dp.flows.reset_delay_ns = 400_000_000
    with blocked(dp, alpha, c.client):
        blocked_at = time.monotonic()
        dp.read_flow_counters()
        assert resets(wire, 1, timeout=0.1) == []
        assert c.entry().state == FlowState.ESTABLISHED
        got: list[Ether] = []
        while not got and time.monotonic() - blocked_at < 5.0:
            dp.read_flow_counters()
            got = resets(wire, 1, timeout=0.05)
        assert len(got) == 1 and got[0][TCP].seq == c.next
        assert time.monotonic() - blocked_at >= 0.4
        assert c.entry().state == FlowState.RESET


def test_resets_at_the_block_stop_at_the_cap_per_tick_and_the_rest_follow_at_the_next_tick(dp, tenants, wire,
                                                                                         monkeypatch):
    """Above `resets_per_tick` held connections, the rest wait (counted in `block_resets_deferred`, once per
    connection however many ticks it waits) and go at the engine's next read of the flow counters (its tick)."""
    alpha = tenants["alpha"]
    client = "198.19.46.6"
    conns = [Client(dp, client, ALPHA_DST, 53010 + i).open() for i in range(5)]
    monkeypatch.setattr(dp.flows, "resets_per_tick", 2)
    before = dp.read_flow_cap_counters()
    with blocked(dp, alpha, client):
        tick(dp)
        assert len(resets(wire, 3, timeout=1.0)) == 2
        mid = dp.read_flow_cap_counters()
        assert mid["block_resets_sent"] - before["block_resets_sent"] == 2
        assert mid["block_resets_deferred"] - before["block_resets_deferred"] == 3
        assert sorted(c.entry().state for c in conns) == [FlowState.ESTABLISHED] * 3 + [FlowState.RESET] * 2
        dp.read_flow_counters()                                  # the next tick: two more
        assert len(resets(wire, 2)) == 2
        dp.read_flow_counters()                                  # and the last
        assert len(resets(wire, 1)) == 1
        after = dp.read_flow_cap_counters()
        assert after["block_resets_sent"] - before["block_resets_sent"] == 5
        assert after["block_resets_deferred"] - before["block_resets_deferred"] == 3
        assert all(c.entry().state == FlowState.RESET for c in conns)
        assert rows(dp, True)[(ALPHA_DST, client)].established == 0


# -- review of the resets at the block (items 1-6) ----------------------------------------------------------------

def test_item1_a_reset_the_nic_refused_is_sent_again_at_the_next_tick_and_counted_once(dp, tenants, wire):
    """The program moves the entry out of ESTABLISHED before the send: a send refused (here the internal NIC
    is down: ENETDOWN) keeps the frame and tries again at the next tick; only sends count in
    `block_resets_sent`, and a send never waits (the tick holds the engine's lock)."""
    alpha = tenants["alpha"]
    c = Client(dp, "198.19.46.20", ALPHA_DST, 53030).open()
    before = dp.read_flow_cap_counters()
    with blocked(dp, alpha, c.client):
        with link_down(dp):
            tick(dp)
            assert c.entry().state == FlowState.RESET
            mid = dp.read_flow_cap_counters()
            assert mid["block_resets_sent"] == before["block_resets_sent"]
            assert mid["block_resets_unsent"] == before["block_resets_unsent"]   # not yet: it waits
        tick(dp)
        got = resets(wire, 1)
        assert len(got) == 1 and got[0][TCP].seq == c.next
        after = dp.read_flow_cap_counters()
        assert after["block_resets_sent"] - before["block_resets_sent"] == 1
        assert after["block_resets_unsent"] == before["block_resets_unsent"]
        assert tick(dp).block_resets_sent == after["block_resets_sent"]


def test_item2_a_reset_refused_at_every_try_is_counted_unsent_in_the_flow_counters(dp, tenants, wire):
    """After BLOCK_RESET_SEND_TRIES refused sends (one a tick) the frame counts in `block_resets_unsent`,
    which the engine's read of the flow counters carries (status, /metrics); nothing is sent later."""
    from dataplane.constants import BLOCK_RESET_SEND_TRIES
    alpha = tenants["alpha"]
    c = Client(dp, "198.19.46.21", ALPHA_DST, 53031).open()
    before = dp.read_flow_cap_counters()
    with blocked(dp, alpha, c.client):
        with link_down(dp):
            for _ in range(BLOCK_RESET_SEND_TRIES):
                fc = tick(dp)
        after = dp.read_flow_cap_counters()
        assert after["block_resets_unsent"] - before["block_resets_unsent"] == 1
        assert fc.block_resets_unsent == after["block_resets_unsent"]
        assert after["block_resets_sent"] == before["block_resets_sent"]
        tick(dp)
        assert resets(wire, 1, timeout=0.3) == []


def test_refused_resets_beyond_the_retry_bound_push_out_the_oldest_counted_unsent_with_one_warning_a_tick(
        dp, tenants, wire, monkeypatch):
    """The frames waiting for another send are bounded (`reset_retry_max`, BLOCK_RESET_RETRY_MAX frames): a refused
    frame beyond it pushes out the oldest, which counts in `block_resets_unsent` at once; a tick's refusals
    are one warning, not one per frame; the frames kept go out once the NIC takes them."""
    alpha = tenants["alpha"]
    client = "198.19.46.23"
    conns = [Client(dp, client, ALPHA_DST, 53040 + i).open() for i in range(3)]
    monkeypatch.setattr(dp.flows, "reset_retry_max", 2)
    before = dp.read_flow_cap_counters()
    with blocked(dp, alpha, client):
        with link_down(dp), structlog.testing.capture_logs() as logs:
            tick(dp)
        assert all(c.entry().state == FlowState.RESET for c in conns)
        mid = dp.read_flow_cap_counters()
        assert mid["block_resets_unsent"] - before["block_resets_unsent"] == 1   # the oldest of three
        unsent = [e for e in logs if e["event"] == "dataplane.block_resets_unsent"]
        assert len(unsent) == 1 and unsent[0]["frames"] == 3 and unsent[0]["waiting"] == 2
        tick(dp)
        got = resets(wire, 3, timeout=1.0)
        # The two kept (the frame written first, in the table's order, was pushed out), once each.
        ports = [p[TCP].sport for p in got]
        assert len(ports) == len(set(ports)) == 2 and set(ports) < {c.cport for c in conns}
        after = dp.read_flow_cap_counters()
        assert after["block_resets_sent"] - before["block_resets_sent"] == 2
        assert after["block_resets_unsent"] - before["block_resets_unsent"] == 1


def test_item3_resets_go_only_after_the_first_read_following_the_block_has_taken_its_rows(dp, tenants, wire):
    """Whatever the tick (here the delay passed at once, as with tick_ms >= BLOCK_RESET_DELAY_MS): nothing
    is reset at the block, and the first read after it still counts the connection established; the reset
    goes after that read's rows are taken."""
    alpha = tenants["alpha"]
    c = Client(dp, "198.19.46.22", ALPHA_DST, 53032).open()
    with blocked(dp, alpha, c.client):
        assert resets(wire, 1, timeout=0.3) == []
        assert c.entry().state == FlowState.ESTABLISHED
        fc = tick(dp)
        assert int(fc.established[list(fc.addresses).index(ipaddress.ip_address(ALPHA_DST))]) >= 1
        assert len(resets(wire, 1)) == 1
        assert c.entry().state == FlowState.RESET


def test_item4_a_source_unblocked_before_its_reset_is_not_reset_nor_its_refused_frame_sent_again(dp, tenants, wire):
    """Unblocked (its tenant went to monitor mode, or the block ended) before the tick that would reset its
    connections: nothing is reset; a frame refused before the unblock is not sent again."""
    alpha = tenants["alpha"]
    c = Client(dp, "198.19.46.23", ALPHA_DST, 53033).open()
    with blocked(dp, alpha, c.client):
        pass
    tick(dp)
    assert resets(wire, 1, timeout=0.3) == []
    assert c.entry().state == FlowState.ESTABLISHED
    d = Client(dp, "198.19.46.24", ALPHA_DST, 53034).open()
    with blocked(dp, alpha, d.client), link_down(dp):
        tick(dp)
    tick(dp)
    assert resets(wire, 1, timeout=0.3) == []


def test_item5_one_pass_a_tick_never_at_the_block_nor_at_the_per_source_read(dp, tenants, wire):
    """The connection table is scanned at most once a tick: at the per-destination read, not when sources
    are blocked and not at the per-source read of the same tick."""
    alpha = tenants["alpha"]
    c = Client(dp, "198.19.46.25", ALPHA_DST, 53035).open()
    tick(dp)
    with blocked(dp, alpha, c.client):
        dp.read_flow_counters(per_source=True)
        assert resets(wire, 1, timeout=0.3) == []
        assert c.entry().state == FlowState.ESTABLISHED
        tick(dp)
        assert len(resets(wire, 1)) == 1


def test_item6_a_failing_reset_program_run_leaves_the_block_in_place_and_the_source_pending(dp, tenants, wire):
    """BPF_PROG_TEST_RUN failing (here: a descriptor that is no program) neither escapes the block nor the
    read of the counters, and the source's connections are reset at the next tick that can."""
    alpha = tenants["alpha"]
    c = Client(dp, "198.19.46.26", ALPHA_DST, 53036).open()
    prog = dp.flows.reset_prog_fd
    not_a_program = os.open("/dev/null", os.O_RDONLY)
    try:
        dp.flows.reset_prog_fd = not_a_program
        with blocked(dp, alpha, c.client):
            tick(dp)
            assert any(b.src == ipaddress.ip_address(c.client) for b in dp.read_blocked_sources())
            assert c.entry().state == FlowState.ESTABLISHED
            dp.flows.reset_prog_fd = prog
            tick(dp)
            assert len(resets(wire, 1)) == 1
    finally:
        dp.flows.reset_prog_fd = prog
        os.close(not_a_program)
