"""Connection accounting, per-source limits and the dynamic block list (issue 15, dataplane/bpf/flows.h)
through BPF_PROG_TEST_RUN on the real program, against a small Python reference model.

The model (`FlowModel`) states the accounting rules: a connection opens when the server's handshake
completes (client SYN, server SYN-ACK, client ACK) and closes at the first FIN or RST; HTTP/1.x request
lines and TLS ClientHellos are counted per client segment; payload bytes per direction reach the rows
in batches (at a request, a hello, the opening, the close, or FLOW_FLUSH_BYTES). Every test uses its own
addresses (the shared dataplane's counters are cumulative), so its rows are its own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import time
import zlib

import pytest

from dataplane.api import BlockedSource, DataplaneError, SourceLimit
from dataplane.constants import FLOW_FLUSH_BYTES, Direction, DropReason, FlowState, TcpFlag
from tests.bpf import frames
from tests.bpf.conftest import ALPHA_DST, ALPHA_DST6, BETA_DST, XDP_DROP, XDP_REDIRECT, run, tenant_counters
from tests.support import wait_until

FIN, SYN, RST, PSH, ACK = (int(TcpFlag.FIN), int(TcpFlag.SYN), int(TcpFlag.RST), int(TcpFlag.PSH),
                           int(TcpFlag.ACK))
HTTP_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")
CLIENT_HELLO = bytes([0x16, 0x03, 0x01, 0x00, 0xF4, 0x01, 0x00, 0x00, 0xF0, 0x03, 0x03]) + b"\x00" * 32
SERVER_HELLO = bytes([0x16, 0x03, 0x03, 0x00, 0x5A, 0x02, 0x00, 0x00, 0x56, 0x03, 0x03]) + b"\x00" * 32


# -- the reference model ---------------------------------------------------------------------------

@dataclasses.dataclass
class Counts:
    new_connections: int = 0
    established: int = 0
    http_requests: int = 0
    tls_hellos: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0


@dataclasses.dataclass
class Conn:
    state: FlowState
    to_server: int = 0
    to_client: int = 0
    flushed_server: int = 0
    flushed_client: int = 0


def payload_kind(payload: bytes) -> str | None:
    """What a client segment starts: an HTTP/1.x request line (method, space), a TLS ClientHello."""
    if len(payload) >= 6 and payload[0] == 0x16 and payload[1] == 0x03 and payload[2] < 0x10 and payload[5] == 1:
        return "tls"
    if len(payload) >= 6 and any(payload.startswith(m + b" ") for m in HTTP_METHODS):
        return "http"
    return None


class FlowModel:
    """Expected rows per destination and per (destination, source) from the packets the server sees."""

    def __init__(self) -> None:
        self.conns: dict[tuple, Conn] = {}
        self.dests: dict[str, Counts] = {}
        self.pairs: dict[tuple[str, str], Counts] = {}

    def _flush(self, server: str, client: str, opened: int, kind: str | None, to_server: int, to_client: int):
        for row in (self.dests.setdefault(server, Counts()), self.pairs.setdefault((server, client), Counts())):
            row.new_connections += opened > 0
            row.established += opened
            row.http_requests += kind == "http"
            row.tls_hellos += kind == "tls"
            row.bytes_to_server += to_server
            row.bytes_to_client += to_client

    def _close(self, key: tuple, conn: Conn) -> None:
        del self.conns[key]
        if conn.state == FlowState.ESTABLISHED:
            self._flush(key[0], key[1], -1, None, conn.to_server - conn.flushed_server,
                        conn.to_client - conn.flushed_client)

    def packet(self, direction: Direction, server: str, client: str, server_port: int, client_port: int,
               flags: int, payload: bytes = b"") -> None:
        inbound = direction == Direction.INBOUND
        key = (server, client, server_port, client_port)
        conn = self.conns.get(key)
        if inbound and flags & (SYN | ACK) == SYN:
            if conn is not None and conn.state != FlowState.ESTABLISHED:
                return
            if conn is not None:
                self._close(key, conn)
            self.conns[key] = Conn(FlowState.SYN)
            return
        if not inbound and flags & (SYN | ACK) == SYN | ACK:
            if conn is None:
                self.conns[key] = Conn(FlowState.SYN_ACK)
            elif conn.state == FlowState.SYN:
                conn.state = FlowState.SYN_ACK
            return
        closing = flags & (FIN | RST)
        if conn is None or (not payload and not closing and not inbound):
            return
        opened = 0
        if conn.state != FlowState.ESTABLISHED:
            if conn.state == FlowState.SYN_ACK and inbound and flags & ACK and not flags & (SYN | RST):
                conn.state, opened = FlowState.ESTABLISHED, 1
            else:
                if flags & RST:
                    self._close(key, conn)
                return
        kind = None
        if inbound:
            conn.to_server += len(payload)
            kind = payload_kind(payload) if payload else None
        else:
            conn.to_client += len(payload)
        if closing:
            if opened or kind:
                self._flush(server, client, opened, kind, 0, 0)
            self._close(key, conn)
            return
        ds, dc = conn.to_server - conn.flushed_server, conn.to_client - conn.flushed_client
        if opened or kind or ds + dc >= FLOW_FLUSH_BYTES:
            conn.flushed_server, conn.flushed_client = conn.to_server, conn.to_client
            self._flush(server, client, opened, kind, ds, dc)


# -- driving the program and the model together ----------------------------------------------------------

def server_isn_of(server: str, client: str, server_port: int, client_port: int) -> int:
    """A server's initial sequence number for a flow: fixed per flow, spread as a real one."""
    return zlib.crc32(f"{server} {client} {server_port} {client_port}".encode())


class Lab:
    """Sends each segment through the program (inbound: client to server on the external NIC) and the model."""

    def __init__(self, dp) -> None:
        self.dp = dp
        self.model = FlowModel()

    def send(self, direction: Direction, server: str, client: str, server_port: int, client_port: int, flags: int,
             payload: bytes = b"", pad: int = 0) -> int:
        # The server's segments carry its ISN, and the client's acknowledge it (ISN + 1), as on the wire: a
        # handshake ends at the pure ACK that acknowledges the SYN-ACK's number.
        server_isn = server_isn_of(server, client, server_port, client_port)
        if direction == Direction.INBOUND:
            frame = frames.tcp(client, server, sport=client_port, dport=server_port, flags=flags, payload=payload,
                               ack=(server_isn + 1) % 2**32)
        else:
            frame = frames.tcp(server, client, sport=server_port, dport=client_port, flags=flags, payload=payload,
                               seq=server_isn)
        action = run(self.dp, frame + b"\0" * pad, direction)
        if action != XDP_DROP:
            self.model.packet(direction, server, client, server_port, client_port, flags, payload)
        return action

    def handshake(self, server: str, client: str, server_port: int, client_port: int) -> None:
        assert self.send(Direction.INBOUND, server, client, server_port, client_port, SYN) == XDP_REDIRECT
        assert self.send(Direction.OUTBOUND, server, client, server_port, client_port, SYN | ACK) == XDP_REDIRECT
        assert self.send(Direction.INBOUND, server, client, server_port, client_port, ACK) == XDP_REDIRECT


def rows(dp, per_source: bool) -> dict:
    """The program's rows as {destination or (destination, source): Counts}."""
    fc = dp.read_flow_counters(per_source=per_source)
    out = {}
    for i, address in enumerate(fc.addresses):
        key = str(address) if not per_source else (str(address), str(fc.source_addresses[i]))
        out[key] = Counts(int(fc.new_connections[i]), int(fc.established[i]), int(fc.http_requests[i]),
                          int(fc.tls_hellos[i]), int(fc.bytes_to_server[i]), int(fc.bytes_to_client[i]))
    return out


def assert_matches_model(lab: Lab, servers: list[str]) -> None:
    dests, pairs = rows(lab.dp, False), rows(lab.dp, True)
    for server in servers:
        assert dests.get(server, Counts()) == lab.model.dests.get(server, Counts()), server
    wanted_pairs = {k: v for k, v in lab.model.pairs.items() if k[0] in servers}
    got_pairs = {k: v for k, v in pairs.items() if k[0] in servers}
    assert got_pairs == wanted_pairs


# -- accounting ---------------------------------------------------------------------------------------------

def test_flow_accounting_counts_a_handshake_requests_bytes_and_the_close(dp, tenants):
    lab = Lab(dp)
    server, client = "198.51.100.21", "198.19.21.1"
    lab.handshake(server, client, 80, 41000)
    assert rows(dp, False)[server] == Counts(new_connections=1, established=1)
    request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    lab.send(Direction.INBOUND, server, client, 80, 41000, PSH | ACK, request)
    lab.send(Direction.OUTBOUND, server, client, 80, 41000, PSH | ACK, b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 500)
    post = b"POST /form HTTP/1.1\r\n\r\n"
    lab.send(Direction.INBOUND, server, client, 80, 41000, PSH | ACK, post)
    got = rows(dp, True)[(server, client)]
    assert (got.new_connections, got.established, got.http_requests, got.tls_hellos) == (1, 1, 2, 0)
    lab.send(Direction.INBOUND, server, client, 80, 41000, FIN | ACK)
    assert_matches_model(lab, [server])
    final = rows(dp, False)[server]
    assert final.established == 0 and final.bytes_to_client == 519 and final.bytes_to_server == len(request) + len(post)


def test_flow_accounting_counts_tls_client_hellos_not_server_hellos_or_other_records(dp, tenants):
    lab = Lab(dp)
    server, client = "198.51.100.22", "198.19.22.1"
    lab.handshake(server, client, 443, 41001)
    lab.send(Direction.INBOUND, server, client, 443, 41001, PSH | ACK, CLIENT_HELLO)
    lab.send(Direction.OUTBOUND, server, client, 443, 41001, PSH | ACK, SERVER_HELLO)
    lab.send(Direction.INBOUND, server, client, 443, 41001, PSH | ACK, bytes([0x17, 0x03, 0x03, 0, 20]) + b"y" * 20)
    lab.send(Direction.INBOUND, server, client, 443, 41001, PSH | ACK, b"GETX / HTTP/1.1\r\n")   # no space
    got = rows(dp, True)[(server, client)]
    assert (got.tls_hellos, got.http_requests) == (1, 0)
    assert_matches_model(lab, [server])


@pytest.mark.parametrize("method", HTTP_METHODS)
def test_flow_accounting_knows_every_http_1_method(dp, tenants, method):
    lab = Lab(dp)
    server, client = "198.51.100.23", f"198.19.23.{HTTP_METHODS.index(method) + 1}"
    lab.handshake(server, client, 80, 41002)
    lab.send(Direction.INBOUND, server, client, 80, 41002, PSH | ACK, method + b" /x HTTP/1.1\r\n\r\n")
    assert rows(dp, True)[(server, client)].http_requests == 1


def test_flow_accounting_needs_the_whole_handshake(dp, tenants):
    """A SYN the server never answers, an ACK of no handshake and a refused SYN open nothing."""
    lab = Lab(dp)
    server = "198.51.100.24"
    lab.send(Direction.INBOUND, server, "198.19.24.1", 80, 41003, SYN)
    lab.send(Direction.INBOUND, server, "198.19.24.1", 80, 41003, ACK)           # no SYN-ACK yet
    lab.send(Direction.INBOUND, server, "198.19.24.2", 80, 41004, ACK, b"GET / HTTP/1.1\r\n\r\n")  # no SYN at all
    lab.send(Direction.INBOUND, server, "198.19.24.3", 80, 41005, SYN)
    lab.send(Direction.OUTBOUND, server, "198.19.24.3", 80, 41005, RST | ACK)   # refused
    lab.send(Direction.INBOUND, server, "198.19.24.3", 80, 41005, ACK)
    assert rows(dp, False).get(server, Counts()) == Counts()
    assert_matches_model(lab, [server])


def test_flow_accounting_ignores_ethernet_padding_and_counts_the_handshake_that_a_spliced_syn_ack_begins(dp, tenants):
    """A 60-byte frame's padding is no payload. Under syn_auth = "splice" the server's SYN comes from the
    bridge, so its SYN-ACK is the first packet of the connection here: the client's ACK still opens it."""
    lab = Lab(dp)
    server, client = "198.51.100.25", "198.19.25.1"
    lab.send(Direction.OUTBOUND, server, client, 80, 41006, SYN | ACK)
    lab.send(Direction.INBOUND, server, client, 80, 41006, ACK, pad=6)
    got = rows(dp, True)[(server, client)]
    assert (got.new_connections, got.established, got.bytes_to_server) == (1, 1, 0)
    lab.send(Direction.INBOUND, server, client, 80, 41006, PSH | ACK, b"abc", pad=3)
    lab.send(Direction.OUTBOUND, server, client, 80, 41006, RST)
    assert_matches_model(lab, [server])
    assert rows(dp, False)[server].bytes_to_server == 3


def test_flow_accounting_matches_the_reference_model_on_random_conversations(dp, tenants):
    """Random interleavings of handshakes, requests, hellos, bulk data, retransmitted SYNs and closes over
    IPv4 and IPv6 clients of two servers."""
    rng = random.Random(15)
    lab = Lab(dp)
    servers = ["198.51.100.26", "198.51.100.27"]
    servers6 = ["2001:db8:a::26"]
    clients = [f"198.19.26.{i}" for i in range(1, 6)]
    clients6 = ["2001:db8:5::26", "2001:db8:5::27"]
    flows = [(s, c, 80, 42000 + i) for i, (s, c) in enumerate((s, c) for s in servers for c in clients)]
    flows += [(s, c, 443, 43000 + i) for i, (s, c) in enumerate((s, c) for s in servers6 for c in clients6)]
    payloads = [b"GET / HTTP/1.1\r\n\r\n", b"POST /login HTTP/1.1\r\n\r\n", CLIENT_HELLO, b"x" * 700,
                b"z" * 1400, b"\x17\x03\x03\x00\x10" + b"q" * 16]
    for _ in range(700):
        server, client, sport, cport = rng.choice(flows)
        step = rng.random()
        if step < 0.12:
            lab.send(Direction.INBOUND, server, client, sport, cport, SYN)
        elif step < 0.24:
            lab.send(Direction.OUTBOUND, server, client, sport, cport, SYN | ACK)
        elif step < 0.38:
            lab.send(Direction.INBOUND, server, client, sport, cport, ACK)
        elif step < 0.65:
            lab.send(Direction.INBOUND, server, client, sport, cport, PSH | ACK, rng.choice(payloads))
        elif step < 0.9:
            lab.send(Direction.OUTBOUND, server, client, sport, cport, PSH | ACK, b"r" * rng.choice((10, 1400, 9000)))
        elif step < 0.95:
            lab.send(rng.choice(list(Direction)), server, client, sport, cport, FIN | ACK)
        else:
            lab.send(rng.choice(list(Direction)), server, client, sport, cport, RST)
    assert_matches_model(lab, servers + [str(ipaddress.ip_address(s)) for s in servers6])
    assert sum(row.new_connections for row in lab.model.dests.values()) > 10   # the walk did open connections


def test_flow_accounting_covers_protected_tenants_only(dp, tenants):
    lab = Lab(dp)
    server = "192.0.2.30"   # no tenant
    lab.handshake(server, "198.19.30.1", 80, 41007)
    assert server not in rows(dp, False)


# -- per-source limits --------------------------------------------------------------------------------------

@pytest.fixture
def limits(dp):
    yield dp
    dp.set_source_limits([])


def test_source_limits_cap_the_new_connection_rate_of_each_source(limits, tenants):
    dp = limits
    dst = ipaddress.ip_address("198.51.100.31")
    dp.set_source_limits([SourceLimit(tenants["alpha"], dst, 80, new_per_s=1, new_burst=3, max_concurrent=0)])
    before = tenant_counters(dp, tenants["alpha"])
    verdicts = [run(dp, frames.tcp("198.19.31.1", str(dst), sport=44000 + i, dport=80, flags="S")) for i in range(5)]
    assert verdicts == [XDP_REDIRECT] * 3 + [XDP_DROP] * 2
    # Another source, another port of the destination: their own budgets / no limit.
    assert run(dp, frames.tcp("198.19.31.2", str(dst), sport=44000, dport=80, flags="S")) == XDP_REDIRECT
    assert all(run(dp, frames.tcp("198.19.31.1", str(dst), sport=44100 + i, dport=443, flags="S")) == XDP_REDIRECT
               for i in range(5))
    after = tenant_counters(dp, tenants["alpha"])
    assert after.reason_packets[0, DropReason.SOURCE_LIMIT] - before.reason_packets[0, DropReason.SOURCE_LIMIT] == 2
    assert dp.read_flow_cap_counters()["limit_rate_drops"] >= 2


def test_source_limits_cap_the_open_connections_of_each_source(limits, tenants):
    dp = limits
    lab = Lab(dp)
    server, client = "198.51.100.32", "198.19.32.1"
    dp.set_source_limits([SourceLimit(tenants["alpha"], ipaddress.ip_address(server), None, new_per_s=0, new_burst=0,
                                      max_concurrent=2)])
    lab.handshake(server, client, 80, 45000)
    lab.handshake(server, client, 8080, 45001)
    assert lab.send(Direction.INBOUND, server, client, 80, 45002, SYN) == XDP_DROP
    assert lab.send(Direction.INBOUND, server, "198.19.32.2", 80, 45002, SYN) == XDP_REDIRECT   # other source
    lab.send(Direction.INBOUND, server, client, 80, 45000, FIN | ACK)
    assert lab.send(Direction.INBOUND, server, client, 80, 45002, SYN) == XDP_REDIRECT
    assert dp.read_flow_cap_counters()["limit_concurrent_drops"] >= 1
    assert_matches_model(lab, [server])


def test_source_limits_are_replaced_as_a_whole_and_refused_beyond_the_cap(limits, tenants):
    dp = limits
    dst = ipaddress.ip_address("198.51.100.33")
    dp.set_source_limits([SourceLimit(tenants["alpha"], dst, 80, new_per_s=1, new_burst=1, max_concurrent=0)])
    assert run(dp, frames.tcp("198.19.33.1", str(dst), sport=46000, dport=80, flags="S")) == XDP_REDIRECT
    assert run(dp, frames.tcp("198.19.33.1", str(dst), sport=46001, dport=80, flags="S")) == XDP_DROP
    dp.set_source_limits([])
    assert run(dp, frames.tcp("198.19.33.1", str(dst), sport=46002, dport=80, flags="S")) == XDP_REDIRECT
    too_many = [SourceLimit(tenants["alpha"], dst, port, 1, 1, 0) for port in range(1, dp.flow_sizes.source_limits_max + 2)]
    with pytest.raises(DataplaneError, match="source_limits_max"):
        dp.set_source_limits(too_many)
    with pytest.raises(DataplaneError, match="dport"):
        dp.set_source_limits([SourceLimit(tenants["alpha"], dst, 70000, 1, 1, 0)])
    assert dp.flows.source_limits() == []


# -- block list -------------------------------------------------------------------------------------------

def test_block_list_drops_a_source_until_its_ttl_then_forgets_it(dp, tenants):
    src, src6 = ipaddress.ip_address("198.19.40.1"), ipaddress.ip_address("2001:db8:5::40")
    alpha = tenants["alpha"]
    expires = time.monotonic_ns() + 2_000_000_000
    count = dp.block_sources([BlockedSource(alpha, src, expires, "new connections 900/s vs limit 20/s"),
                              BlockedSource(alpha, src6, time.monotonic_ns() + 60_000_000_000, "slowloris")])
    assert count >= 2
    listed = {(b.src, b.reason) for b in dp.read_blocked_sources()}
    assert (src, "new connections 900/s vs limit 20/s") in listed and (src6, "slowloris") in listed
    before = tenant_counters(dp, alpha)
    assert run(dp, frames.tcp(str(src), ALPHA_DST, dport=80, flags="A")) == XDP_DROP
    assert run(dp, frames.udp(str(src6), ALPHA_DST6)) == XDP_DROP
    assert run(dp, frames.tcp("198.19.40.2", ALPHA_DST, dport=80, flags="A")) == XDP_REDIRECT
    after = tenant_counters(dp, alpha)
    assert after.reason_packets[0, DropReason.BLOCKED] - before.reason_packets[0, DropReason.BLOCKED] == 2
    # Another tenant's addresses: the list is per tenant.
    assert run(dp, frames.tcp(str(src), "203.0.113.201", dport=80, flags="A")) == XDP_REDIRECT
    wait_until(lambda: run(dp, frames.tcp(str(src), ALPHA_DST, dport=80, flags="A")) == XDP_REDIRECT, timeout=10,
               what="the block to expire")
    assert time.monotonic_ns() >= expires
    assert src not in {b.src for b in dp.read_blocked_sources()}
    dp.unblock_source(alpha, src6)
    assert run(dp, frames.udp(str(src6), ALPHA_DST6)) == XDP_REDIRECT
    assert src6 not in {b.src for b in dp.read_blocked_sources()}


def test_block_list_in_monitor_mode_counts_and_passes(dp, tenants):
    src = ipaddress.ip_address("198.19.41.1")
    beta = tenants["beta"]
    dp.block_sources([BlockedSource(beta, src, time.monotonic_ns() + 60_000_000_000, "test")])
    try:
        before = tenant_counters(dp, beta)
        assert run(dp, frames.tcp(str(src), BETA_DST, dport=80, flags="A")) == XDP_REDIRECT
        after = tenant_counters(dp, beta)
        assert after.reason_packets[0, DropReason.BLOCKED] - before.reason_packets[0, DropReason.BLOCKED] == 1
    finally:
        dp.unblock_source(beta, src)


def test_block_list_refuses_bad_entries_naming_the_field(dp, tenants):
    with pytest.raises(DataplaneError, match="tenant_idx"):
        dp.block_sources([BlockedSource(-1, ipaddress.ip_address("198.19.42.1"), time.monotonic_ns() + 10**9, "x")])
    with pytest.raises(DataplaneError, match="src"):
        dp.block_sources([BlockedSource(0, "198.19.42.1", time.monotonic_ns() + 10**9, "x")])  # type: ignore[arg-type]


# -- what pays the accounting program -----------------------------------------------------------------------

def test_flow_accounting_ends_a_handshake_at_the_ack_of_the_syn_ack_not_at_a_blind_one(dp, tenants):
    """The pure ACK that ends a handshake acknowledges the server's SYN-ACK (its ISN + 1). Blind ACKs from the
    client's address and port (a spoofed source never saw the ISN), one of them in the same slot of
    sw_flow_pending, end none and cost no tail call; the real one does. A handshake whose ACK was blind or
    unseen counts at the client's first data segment instead."""
    server, client, other = "198.51.100.34", "198.19.34.1", "198.19.34.2"   # addresses of its own (module-wide dp)
    isn = 0x89ABCDEF
    # The same slot (the top bits of the number as the program reads it, network order loaded
    # little-endian), another number.
    raw = int.from_bytes((isn + 1).to_bytes(4, "big"), "little")
    same_slot = int.from_bytes((raw ^ 1).to_bytes(4, "little"), "big")

    def calls() -> int:
        return dp.read_flow_cap_counters()["accounting_calls"]

    for c in (client, other):
        assert run(dp, frames.tcp(c, server, sport=41020, dport=80, flags="S", seq=1000)) == XDP_REDIRECT
        run(dp, frames.tcp(server, c, sport=80, dport=41020, flags="SA", seq=isn, ack=1001), Direction.OUTBOUND)
        before = calls()
        for blind in (0, isn, isn + 2, same_slot):
            assert run(dp, frames.tcp(c, server, sport=41020, dport=80, flags="A", seq=1001,
                                      ack=blind)) == XDP_REDIRECT
        assert calls() == before
        assert (server, c) not in rows(dp, True)
    run(dp, frames.tcp(client, server, sport=41020, dport=80, flags="A", seq=1001, ack=isn + 1))
    assert calls() == before + 1
    assert rows(dp, True)[(server, client)].established == 1
    # The other client's handshake (its SYN-ACK's entry was taken by the first one's ACK: the same number)
    # opens at its first request.
    run(dp, frames.tcp(other, server, sport=41020, dport=80, flags="PA", seq=1001, ack=isn + 1,
                       payload=b"GET / HTTP/1.1\r\n"))
    row = rows(dp, True)[(server, other)]
    assert (row.new_connections, row.established, row.http_requests) == (1, 1, 1)
    for c in (client, other):   # closed: no gauge left open for the tests after this one
        run(dp, frames.tcp(c, server, sport=41020, dport=80, flags="FA", seq=1001, ack=isn + 1))
    assert rows(dp, False)[server].established == 0


def test_flow_accounting_settles_padded_pure_acks_without_the_accounting_program(dp, tenants):
    """A pure ACK in a 60-byte frame (Ethernet padding, IP length 40) changes no accounting state: like a
    54-byte one it costs no tail call; a 1-byte segment in a 60-byte frame does (it is payload)."""
    lab = Lab(dp)
    server, client = "198.51.100.28", "198.19.28.1"
    lab.handshake(server, client, 80, 41010)

    def calls() -> int:
        return dp.read_flow_cap_counters()["accounting_calls"]

    before = calls()
    lab.send(Direction.INBOUND, server, client, 80, 41010, ACK, pad=6)
    lab.send(Direction.OUTBOUND, server, client, 80, 41010, ACK, pad=6)
    lab.send(Direction.INBOUND, server, client, 80, 41010, ACK)
    assert calls() - before == 0
    lab.send(Direction.INBOUND, server, client, 80, 41010, PSH | ACK, b"x", pad=5)
    assert calls() - before == 1
    lab.send(Direction.INBOUND, server, client, 80, 41010, FIN | ACK)
    assert rows(dp, True)[(server, client)].bytes_to_server == 1
    assert_matches_model(lab, [server])


def test_flow_accounting_adds_each_byte_once_when_both_ports_flush_at_once(dp, tenants):
    """The two ports' programs run on different CPUs and flush the same connection's bytes into the same
    rows: run both directions' data segments concurrently on two CPUs (both threads on the one CPU of a
    one-CPU machine), many times; every byte is counted exactly once."""
    import os  # noqa: PLC0415
    import threading  # noqa: PLC0415

    cpus = sorted(os.sched_getaffinity(0))
    lab = Lab(dp)
    server, client = "198.51.100.29", "198.19.29.1"
    lab.handshake(server, client, 80, 41011)
    size, repeat, rounds = 1400, 2000, 20
    inbound = frames.tcp(client, server, sport=41011, dport=80, flags="A", payload=b"y" * size)
    outbound = frames.tcp(server, client, sport=80, dport=41011, flags="A", payload=b"z" * size)

    def hammer(cpu: int, frame: bytes, direction: Direction) -> None:
        os.sched_setaffinity(0, {cpu})
        for _ in range(rounds):
            dp.test_run(frame, direction, repeat)

    threads = [threading.Thread(target=hammer, args=(cpus[0], inbound, Direction.INBOUND)),
               threading.Thread(target=hammer, args=(cpus[-1], outbound, Direction.OUTBOUND))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.sched_setaffinity(0, set(cpus))
    run(dp, frames.tcp(client, server, sport=41011, dport=80, flags="FA"))
    got = rows(dp, True)[(server, client)]
    assert (got.bytes_to_server, got.bytes_to_client, got.established) == (size * repeat * rounds,) * 2 + (0,)
