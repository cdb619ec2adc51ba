"""SYN authentication (issue 19, dataplane/bpf/synauth.h) through BPF_PROG_TEST_RUN on the real
program: for a destination under SYN attack the bridge answers unknown sources' SYNs with cookie
SYN-ACKs (XDP_TX), a returning ACK with a valid cookie validates its source and is either spliced
(syn_auth = "splice", the default: the bridge sends the client's SYN to the server and translates
sequence numbers for the connection's life) or answered with a reset (syn_auth = "reset"), forged
ACKs validate nothing, validated sources bypass the shared SYN limits but meet their own, and the
SYN-ACKs the bridge sends stay within their budgets.

The cookies come from the kernel's own helpers: a cookie SYN-ACK is checked by answering it the
way the client's stack would and seeing the kernel accept that ACK."""

from __future__ import annotations

import copy
import ctypes
import ipaddress
import itertools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from dataplane import constants
from dataplane.api import Range, Rule
from dataplane.constants import Direction, DropReason, RuleAction, SynAuthStat, TcpFlag, TrafficClass
from tests.bpf import frames
from tests.bpf.conftest import (
    ALPHA_DST,
    ALPHA_DST6,
    BETA_DST,
    STANDARD_TENANTS,
    XDP_DROP,
    XDP_REDIRECT,
    XDP_TX,
    apply_tenant_dicts,
    observe,
    run,
)

XDP_TX_ACTION = XDP_TX
# The MSS values a cookie can carry (the kernel's tables, docs/design/syn-cookies.md).
COOKIE_MSS_V4 = (536, 1300, 1440, 1460)
COOKIE_MSS_V6 = (1220, 1420, 1440, 8940)
LINUX_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None), ("WScale", 7)]

_sources = itertools.count(1)


def new_source(v6: bool) -> str:
    """A source address no other test used (validation is per source and outlives a test)."""
    n = next(_sources)
    return f"2001:db8:19::{n:x}" if v6 else f"198.19.{100 + n // 250}.{n % 250 + 1}"


def dst_of(v6: bool) -> str:
    return ALPHA_DST6 if v6 else ALPHA_DST


def l3(src: str, dst: str):
    return IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)


def syn(src: str, dst: str, sport: int = 40000, dport: int = 80, seq: int = 1000, options=None) -> bytes:
    tcp = TCP(sport=sport, dport=dport, flags="S", seq=seq, window=64240, options=options or [])
    return bytes(Ether(src=frames.MAC_EXTERNAL, dst=frames.MAC_INTERNAL) / l3(src, dst) / tcp)


def ack(src: str, dst: str, sport: int, seq: int, ack_no: int, dport: int = 80, flags: str = "A",
        payload: bytes = b"") -> bytes:
    tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack_no, window=502)
    return bytes(Ether(src=frames.MAC_EXTERNAL, dst=frames.MAC_INTERNAL) / l3(src, dst) / tcp / Raw(payload))


def run_frame(dp, frame: bytes, direction: Direction = Direction.INBOUND) -> tuple[int, bytes]:
    from dataplane import testing  # noqa: PLC0415 - the bpf tier imports the adapter only when it runs

    return testing.run_frame(dp, frame, direction)


def stats(dp) -> dict[SynAuthStat, int]:
    from dataplane import testing  # noqa: PLC0415

    table = testing.table(dp, "sw_synauth_stats")
    return {s: int(sum(table[ctypes.c_int(int(s))])) for s in SynAuthStat}


def stat_delta(before: dict, after: dict) -> dict[SynAuthStat, int]:
    return {s: after[s] - before[s] for s in SynAuthStat if after[s] != before[s]}


@pytest.fixture
def syn_attack(dp, tenants):
    """ALPHA_DST and ALPHA_DST6 under SYN attack (all ports) for the test."""
    marked = [ALPHA_DST, ALPHA_DST6]
    for dst in marked:
        dp.set_under_attack(tenants["alpha"], ipaddress.ip_address(dst), [TrafficClass.TCP_SYN])
    yield
    for dst in marked:
        dp.set_under_attack(tenants["alpha"], ipaddress.ip_address(dst), ())


@pytest.fixture
def reset_mode(dp, syn_attack):
    """Tenant alpha with syn_auth = "reset" (the standard set otherwise) for the test."""
    tables = copy.deepcopy(STANDARD_TENANTS)
    tables[0]["policy"] = {"syn_auth": "reset"}
    yield apply_tenant_dicts(dp, tables)
    apply_tenant_dicts(dp, STANDARD_TENANTS)


@pytest.fixture(params=["splice", "reset"])
def syn_mode(request, dp, syn_attack):
    """Each syn_auth mode with cookies, for tenant alpha under SYN attack."""
    tables = copy.deepcopy(STANDARD_TENANTS)
    tables[0]["policy"] = {"syn_auth": request.param}
    yield apply_tenant_dicts(dp, tables)
    apply_tenant_dicts(dp, STANDARD_TENANTS)


def cookie_synack(dp, src: str, dst: str, sport: int, seq: int = 1000, options=None) -> TCP:
    action, out = run_frame(dp, syn(src, dst, sport=sport, seq=seq, options=options))
    assert action == XDP_TX, f"a SYN of an unknown source is answered by the bridge (action {action})"
    return Ether(out)[TCP]


def complete(dp, src: str, dst: str, sport: int, seq: int = 1000) -> int:
    """The client's side of the cookie handshake: the SYN, then the ACK its stack sends. Returns the
    action on the ACK (XDP_REDIRECT: spliced to the server; XDP_TX: reset)."""
    reply = cookie_synack(dp, src, dst, sport, seq=seq)
    return run_frame(dp, ack(src, dst, sport, seq=seq + 1, ack_no=reply.seq + 1))[0]


def is_validated(dp, src: str, dst: str) -> bool:
    """A validated source's SYN passes to the server; anyone else's is answered by the bridge."""
    action = run(dp, syn(src, dst, sport=65000))
    assert action in (XDP_TX, XDP_REDIRECT), action
    return action == XDP_REDIRECT


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("options", [[], LINUX_OPTIONS, [("MSS", 8960)]], ids=["no-options", "linux", "jumbo"])
def test_cookie_synack_is_a_correct_reply_to_the_syn(dp, syn_attack, v6, options):
    src, dst = new_source(v6), dst_of(v6)
    before = stats(dp)
    frame = syn(src, dst, sport=41000, seq=0xFFFFFFFF, options=options)   # ack wraps around to 0
    action, out = run_frame(dp, frame)
    assert action == XDP_TX
    reply = Ether(out)
    sent = Ether(frame)
    assert (reply.src, reply.dst) == (sent.dst, sent.src)
    ip = reply[IPv6] if v6 else reply[IP]
    assert (ip.src, ip.dst) == (dst, src)
    tcp = reply[TCP]
    assert (tcp.sport, tcp.dport) == (80, 41000)
    assert tcp.flags == "SA"
    assert tcp.ack == 0                                   # client seq + 1, modulo 2^32
    assert tcp.window == 0                                # splice: no data before the server answered
    assert tcp.dataofs == 6 and tcp.options == [("MSS", tcp.options[0][1])]
    mss = tcp.options[0][1]
    table = COOKIE_MSS_V6 if v6 else COOKIE_MSS_V4
    requested = dict(options).get("MSS")
    assert mss in table and (requested is None or mss <= max(requested, table[0]))
    if v6:
        assert ip.plen == 24 and ip.hlim == constants.SYNACK_TTL and len(out) == 14 + 40 + 24
    else:
        assert ip.len == 44 and ip.ttl == constants.SYNACK_TTL and len(out) == 14 + 20 + 24
        # Checksums as scapy computes them from scratch.
        fresh = IP(bytes(ip))
        del fresh.chksum
        assert IP(bytes(fresh)).chksum == ip.chksum
    rebuilt = (IPv6 if v6 else IP)(bytes(ip))
    del rebuilt[TCP].chksum
    assert (IPv6 if v6 else IP)(bytes(rebuilt))[TCP].chksum == tcp.chksum
    assert stat_delta(before, stats(dp)) == {SynAuthStat.SYNACK_SENT: 1}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_valid_cookie_ack_validates_the_source_and_resets_the_half_open_connection(dp, reset_mode, v6):
    src, dst = new_source(v6), dst_of(v6)
    reply = cookie_synack(dp, src, dst, sport=42000, seq=5000)
    assert not is_validated(dp, src, dst)                 # a SYN-ACK alone proves nothing
    before = stats(dp)
    dp.drain_samples()
    action, sample = observe(dp, ack(src, dst, 42000, seq=5001, ack_no=reply.seq + 1))
    dp.set_sample_every(0)
    assert action == XDP_TX and sample.reason == DropReason.SYN_COOKIE   # never reaches the server
    after = stats(dp)
    assert stat_delta(before, after) == {SynAuthStat.COOKIE_VALID: 1, SynAuthStat.RST_SENT: 1}
    assert is_validated(dp, src, dst)                     # its next SYN goes straight to the server


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_reset_after_a_cookie_ack_is_acceptable_to_the_client(dp, reset_mode, v6):
    src, dst = new_source(v6), dst_of(v6)
    reply = cookie_synack(dp, src, dst, sport=42100, seq=7000)
    assert reply.window == constants.SYNACK_WINDOW        # reset mode: the usual window
    action, out = run_frame(dp, ack(src, dst, 42100, seq=7001, ack_no=reply.seq + 1))
    assert action == XDP_TX
    rst = Ether(out)
    ip = rst[IPv6] if v6 else rst[IP]
    assert (ip.src, ip.dst) == (dst, src)
    assert rst[TCP].flags == "R" and (rst[TCP].sport, rst[TCP].dport) == (80, 42100)
    assert rst[TCP].seq == (reply.seq + 1) & 0xFFFFFFFF   # exactly the client's rcv_nxt
    rebuilt = (IPv6 if v6 else IP)(bytes(ip))
    del rebuilt[TCP].chksum
    assert (IPv6 if v6 else IP)(bytes(rebuilt))[TCP].chksum == rst[TCP].chksum


def forged_acks(src: str, dst: str, sport: int, cookie: int, v6: bool) -> dict[str, bytes]:
    """ACKs that must not validate `src` (or anyone) although `cookie` is its SYN-ACK's seq."""
    good = cookie + 1
    other = new_source(v6)
    return {
        "random ack": ack(src, dst, sport, seq=1001, ack_no=(good ^ 0x5A5A5A5A) & 0xFFFFFFFF),
        "ack + 4": ack(src, dst, sport, seq=1001, ack_no=(good + 4) & 0xFFFFFFFF),
        "ack - 5": ack(src, dst, sport, seq=1001, ack_no=(good - 5) & 0xFFFFFFFF),
        "ack + 2^24 (cookie age)": ack(src, dst, sport, seq=1001, ack_no=(good + (1 << 24)) & 0xFFFFFFFF),
        "seq + 4": ack(src, dst, sport, seq=1005, ack_no=good),
        "another source port": ack(src, dst, sport + 1, seq=1001, ack_no=good),
        "another destination port": ack(src, dst, sport, seq=1001, ack_no=good, dport=81),
        "another source address": ack(other, dst, sport, seq=1001, ack_no=good),
        "ACK+FIN": ack(src, dst, sport, seq=1001, ack_no=good, flags="FA"),
        "ACK+RST": ack(src, dst, sport, seq=1001, ack_no=good, flags="RA"),
        "ACK+SYN": ack(src, dst, sport, seq=1001, ack_no=good, flags="SA"),
        "ACK with payload": ack(src, dst, sport, seq=1001, ack_no=good, payload=b"GET / HTTP/1.1\r\n"),
        "truncated TCP header": ack(src, dst, sport, seq=1001, ack_no=good)[: (14 + (40 if v6 else 20) + 16)],
    }


FORGED = ("random ack", "ack + 4", "ack - 5", "ack + 2^24 (cookie age)", "seq + 4", "another source port",
          "another destination port", "another source address", "ACK+FIN", "ACK+RST", "ACK+SYN", "ACK with payload",
          "truncated TCP header")


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_forged_and_malformed_acks_validate_nothing_and_are_not_dropped_for_the_cookie(dp, syn_mode, v6):
    dst = dst_of(v6)
    for name in FORGED:
        src = new_source(v6)
        reply = cookie_synack(dp, src, dst, sport=43000, seq=1000)
        frame = forged_acks(src, dst, 43000, reply.seq, v6)[name]
        before = stats(dp)
        dp.drain_samples()
        action, sample = observe(dp, frame)
        dp.set_sample_every(0)                            # only this frame is sampled
        after = stats(dp)
        assert action != XDP_TX, name
        assert not {SynAuthStat.COOKIE_VALID, SynAuthStat.SPLICE_SYN} & set(stat_delta(before, after)), name
        # Never dropped because of the cookie: whatever the usual checks say (a truncated header
        # is MALFORMED, ACK+SYN is a SYN-ACK nobody asked for and passes, like other ACKs).
        if action == XDP_DROP:
            assert sample.reason != DropReason.SYN_COOKIE, name
        assert not is_validated(dp, src, dst), name


def test_ipv4_options_are_no_way_around_the_cookie(dp, syn_attack):
    from scapy.layers.inet import IPOption_NOP  # noqa: PLC0415

    src = new_source(False)
    frame = bytes(Ether() / IP(src=src, dst=ALPHA_DST, options=[IPOption_NOP()] * 4) /
                  TCP(sport=44000, dport=80, flags="S"))
    before = stats(dp)
    action = run(dp, frame)
    assert action == XDP_DROP                             # no cookie possible: dropped, counted
    assert stat_delta(before, stats(dp)) == {SynAuthStat.INELIGIBLE: 1}


def test_a_validated_source_bypasses_the_shared_syn_limits_but_meets_its_own(dp, tenants, syn_attack, rules):
    src, dst = new_source(False), ALPHA_DST
    assert complete(dp, src, dst, sport=45000) == XDP_REDIRECT
    # The engine's shared SYN rule at 1 pps, already spent by the flood.
    rules.add(Rule(tenant_idx=tenants["alpha"], dst=ipaddress.ip_address(dst), action=RuleAction.RATE_LIMIT,
                   proto=6, tcp_flags=(int(TcpFlag.SYN | TcpFlag.ACK), int(TcpFlag.SYN)), rate_pps=1))
    other = new_source(False)
    assert complete(dp, other, dst, sport=45001) == XDP_REDIRECT
    dp.test_run(syn(other, dst, sport=45002), repeat=50)  # another validated source spends the rule
    assert run(dp, syn(src, dst, sport=45003)) == XDP_REDIRECT
    # Its own limit: SYN_SOURCE_BURST at once, then SYN_SOURCE_PPS.
    before = stats(dp)
    start = time.monotonic()
    dp.test_run(syn(src, dst, sport=45004), repeat=constants.SYN_SOURCE_BURST + 100)
    elapsed = time.monotonic() - start
    delta = stat_delta(before, stats(dp))
    admitted = delta.get(SynAuthStat.VALIDATED_SYN, 0)
    refill = int(elapsed * constants.SYN_SOURCE_PPS) + 1
    assert constants.SYN_SOURCE_BURST - 1 - refill <= admitted <= constants.SYN_SOURCE_BURST + refill, delta
    assert delta[SynAuthStat.SOURCE_OVER_LIMIT] == constants.SYN_SOURCE_BURST + 100 - admitted


def set_bucket(dp, table_name: str, key, tokens: int) -> None:
    """Give a SYN-ACK bucket `tokens` and a last refill in the future: it does not refill."""
    from dataplane import testing  # noqa: PLC0415

    table = testing.table(dp, table_name)
    leaf = table.Leaf()
    leaf.last_ns = time.monotonic_ns() + 60 * 10**9
    leaf.tokens = tokens
    table[key] = leaf


def test_the_synack_budget_per_destination_holds(dp, tenants, syn_attack):
    from dataplane import testing  # noqa: PLC0415

    table = testing.table(dp, "sw_synack_buckets")
    key = table.Key()
    mapped = b"\0" * 10 + b"\xff\xff" + ipaddress.ip_address(ALPHA_DST).packed   # as the program keys IPv4
    ctypes.memmove(key.addr, mapped, 16)
    set_bucket(dp, "sw_synack_buckets", key, 3)
    try:
        before = stats(dp)
        actions = [run(dp, syn(new_source(False), ALPHA_DST, sport=46000)) for _ in range(6)]
        assert actions == [XDP_TX] * 3 + [XDP_DROP] * 3
        assert stat_delta(before, stats(dp)) == {SynAuthStat.SYNACK_SENT: 3, SynAuthStat.SYNACK_BUDGET: 3}
        # Another destination has its own budget.
        assert run(dp, syn(new_source(False), "198.51.100.11", sport=46001)) == XDP_REDIRECT  # not under attack
        assert run(dp, syn(new_source(True), ALPHA_DST6, sport=46002)) == XDP_TX
    finally:
        del table[key]


def test_the_appliance_wide_synack_budget_holds(dp, tenants, syn_attack):
    from dataplane import testing  # noqa: PLC0415

    table = testing.table(dp, "sw_synack_global")
    key = ctypes.c_int(0)
    saved = table[key]
    set_bucket(dp, "sw_synack_global", key, 2)
    try:
        actions = [run(dp, syn(new_source(i % 2 == 1), dst_of(i % 2 == 1), sport=47000)) for i in range(4)]
        assert actions == [XDP_TX] * 2 + [XDP_DROP] * 2      # across both destinations
    finally:
        saved.last_ns = 0
        table[key] = saved


def test_monitor_mode_never_answers(dp, tenants):
    dp.set_under_attack(tenants["beta"], ipaddress.ip_address(BETA_DST), [TrafficClass.TCP_SYN])
    try:
        assert run(dp, syn(new_source(False), BETA_DST, sport=48000)) == XDP_REDIRECT
    finally:
        dp.set_under_attack(tenants["beta"], ipaddress.ip_address(BETA_DST), ())


def test_cookies_cover_only_the_attacked_ports(dp, tenants):
    dst = ipaddress.ip_address(ALPHA_DST)
    dp.set_under_attack(tenants["alpha"], dst, [TrafficClass.TCP_SYN], syn_ports=Range(443, 443))
    try:
        assert run(dp, syn(new_source(False), ALPHA_DST, sport=49000, dport=443)) == XDP_TX
        assert run(dp, syn(new_source(False), ALPHA_DST, sport=49001, dport=80)) == XDP_REDIRECT
    finally:
        dp.set_under_attack(tenants["alpha"], dst, ())


def test_synauth_layouts_are_pinned(dp):
    """The LRU values Python and the tests read: one lookup per SYN holds validation and bucket."""
    from dataplane import testing  # noqa: PLC0415

    source = testing.table(dp, "sw_syn_sources").Leaf
    bucket = testing.table(dp, "sw_synack_buckets").Leaf
    assert ctypes.sizeof(source) == 24 and ctypes.sizeof(bucket) == 16
    assert (source.validated_ns.offset, source.bucket.offset) == (0, 8)
    assert (bucket.last_ns.offset, bucket.tokens.offset) == (0, 8)


# --- The splice (syn_auth = "splice", the default) --------------------------------------------

MOD = 1 << 32


def server_segment(server: str, client: str, cport: int, seq: int, ack_no: int, flags: str = "A",
                   payload: bytes = b"", window: int = 29200, sport: int = 80) -> bytes:
    """What the server sends towards a client (the outbound program's input)."""
    tcp = TCP(sport=sport, dport=cport, flags=flags, seq=seq % MOD, ack=ack_no % MOD, window=window)
    return bytes(Ether(src=frames.MAC_INTERNAL, dst=frames.MAC_EXTERNAL) / l3(server, client) / tcp / Raw(payload))


def open_splice(dp, tenant_idx: int, client: str, server: str, sport: int, client_isn: int,
                server_isn: int) -> int:
    """Splice a connection from `client` to `server` as a SYN flood's cookie does (the SYN mark set
    for the handshake, then taken away again: a splice outlives it). Returns the cookie."""
    dst = ipaddress.ip_address(server)
    dp.set_under_attack(tenant_idx, dst, [TrafficClass.TCP_SYN])
    try:
        cookie = cookie_synack(dp, client, server, sport, seq=client_isn).seq
        assert run_frame(dp, ack(client, server, sport, seq=client_isn + 1, ack_no=cookie + 1))[0] == XDP_REDIRECT
        assert run_frame(dp, server_segment(server, client, sport, server_isn, client_isn + 1, flags="SA"),
                         Direction.OUTBOUND)[0] == XDP_REDIRECT
    finally:
        dp.set_under_attack(tenant_idx, dst, ())
    return cookie


def client_segment(client: str, server: str, sport: int, seq: int, ack_no: int, flags: str = "A",
                   payload: bytes = b"") -> bytes:
    return ack(client, server, sport, seq=seq % MOD, ack_no=ack_no % MOD, flags=flags, payload=payload)


def assert_checksums(frame: bytes) -> None:
    """IP (IPv4) and TCP checksums as scapy computes them from scratch."""
    packet = Ether(frame)
    ip = packet[IPv6] if IPv6 in packet else packet[IP]
    fresh = ip.__class__(bytes(ip))
    if IP in packet:
        del fresh.chksum
    del fresh[TCP].chksum
    again = ip.__class__(bytes(fresh))
    if IP in packet:
        assert again.chksum == ip.chksum, "IPv4 header checksum"
    assert again[TCP].chksum == ip[TCP].chksum, "TCP checksum"


class Splice:
    """One spliced connection driven through the real program, with the reference model of its
    numbering: the client numbers the bridge's side from the cookie, the server from its ISN."""

    def __init__(self, dp, v6: bool, client_isn: int, server_isn: int, sport: int = 50000,
                 mss: int | None = None) -> None:
        self.dp, self.v6 = dp, v6
        self.client, self.server, self.sport = new_source(v6), dst_of(v6), sport
        self.client_isn, self.server_isn = client_isn % MOD, server_isn % MOD
        options = [("MSS", mss)] if mss else []
        self.cookie = cookie_synack(dp, self.client, self.server, sport, seq=self.client_isn, options=options).seq
        action, out = run_frame(dp, client_segment(self.client, self.server, sport, self.client_isn + 1,
                                                   self.cookie + 1))
        assert action == XDP_REDIRECT, f"the cookie ACK goes to the server as the client's SYN ({action})"
        self.syn = Ether(out)
        assert_checksums(out)

    @property
    def delta(self) -> int:
        return (self.server_isn - self.cookie) % MOD

    def server_answers(self, window: int = 29200) -> Ether:
        action, out = run_frame(self.dp, server_segment(self.server, self.client, self.sport, self.server_isn,
                                                        self.client_isn + 1, flags="SA", window=window),
                                Direction.OUTBOUND)
        assert action == XDP_REDIRECT, action
        assert_checksums(out)
        return Ether(out)

    # The reference model: what each side must see.
    def to_server(self, seq: int, ack_no: int) -> tuple[int, int]:
        return seq % MOD, (ack_no + self.delta) % MOD

    def to_client(self, seq: int, ack_no: int) -> tuple[int, int]:
        return (seq - self.delta) % MOD, ack_no % MOD


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_cookie_ack_becomes_the_clients_syn_to_the_server(dp, syn_attack, v6):
    before = stats(dp)
    s = Splice(dp, v6, client_isn=0xFFFFFFFF, server_isn=77)        # client ISN + 1 wraps to 0
    sent = s.syn
    ip = sent[IPv6] if v6 else sent[IP]
    assert (sent.src, sent.dst) == (frames.MAC_EXTERNAL, frames.MAC_INTERNAL)   # onwards, not back
    assert (ip.src, ip.dst) == (s.client, s.server)
    tcp = sent[TCP]
    assert (tcp.sport, tcp.dport, str(tcp.flags), tcp.seq, tcp.ack) == (s.sport, 80, "S", 0xFFFFFFFF, 0)
    assert tcp.window == 502                                       # the client's, from its ACK
    assert tcp.options == [("MSS", 536 if not v6 else 1220)]       # MSS only: no wscale, SACK, timestamps
    assert len(tcp.payload) == 0
    assert stat_delta(before, stats(dp)) == {SynAuthStat.SYNACK_SENT: 1, SynAuthStat.COOKIE_VALID: 1,
                                             SynAuthStat.SPLICE_SYN: 1}
    assert is_validated(dp, s.client, s.server)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_servers_synack_becomes_the_clients_window_update(dp, syn_attack, v6):
    s = Splice(dp, v6, client_isn=1000, server_isn=0xFFFFFFF0)
    before = stats(dp)
    update = s.server_answers(window=12345)
    ip = update[IPv6] if v6 else update[IP]
    assert (ip.src, ip.dst) == (s.server, s.client)
    tcp = update[TCP]
    assert str(tcp.flags) == "A" and tcp.options == [] and len(tcp.payload) == 0
    assert (tcp.seq, tcp.ack, tcp.window) == ((s.cookie + 1) % MOD, 1001, 12345)
    assert stat_delta(before, stats(dp)) == {SynAuthStat.SPLICE_OPEN: 1}
    # A retransmitted SYN-ACK means the server missed the handshake's ACK: the bridge sends it.
    action, out = run_frame(dp, server_segment(s.server, s.client, s.sport, s.server_isn, 1001, flags="SA"),
                            Direction.OUTBOUND)
    assert action == XDP_TX
    assert_checksums(out)
    back = Ether(out)
    ip = back[IPv6] if v6 else back[IP]
    assert (back.src, back.dst) == (frames.MAC_EXTERNAL, frames.MAC_INTERNAL)
    assert (ip.src, ip.dst, back[TCP].dport) == (s.client, s.server, 80)
    assert (str(back[TCP].flags), back[TCP].seq, back[TCP].ack) == ("A", 1001, (s.server_isn + 1) % MOD)


_isn = st.integers(0, MOD - 1)
_near_wrap = st.integers(MOD - 3000, MOD - 1)
_segments = st.lists(st.tuples(st.booleans(), st.integers(0, 1400), st.sampled_from(["A", "PA", "FA", "RA"])),
                     min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(v6=st.booleans(), client_isn=st.one_of(_isn, _near_wrap), server_isn=st.one_of(_isn, _near_wrap),
       segments=_segments, data=st.data())
def test_splice_translation_matches_the_reference_model(dp, syn_attack, v6, client_isn, server_isn, segments, data):
    """Random ISNs (also just below 2^32, so that numbers wrap inside the connection), payloads and
    both directions: every translated segment carries exactly the reference model's numbers,
    payload and valid checksums."""
    s = Splice(dp, v6, client_isn, server_isn, sport=data.draw(st.integers(1024, 65535)))
    s.server_answers()
    client_next, server_next = (s.client_isn + 1) % MOD, (s.server_isn + 1) % MOD   # each side's own numbers
    client_view_of_server = (s.cookie + 1) % MOD
    for from_client, length, flags in segments:
        payload = data.draw(st.binary(min_size=length, max_size=length))
        if from_client:
            frame = client_segment(s.client, s.server, s.sport, client_next, client_view_of_server, flags, payload)
            action, out = run_frame(dp, frame)
            expected = s.to_server(client_next, client_view_of_server)
            client_next = (client_next + length) % MOD
        else:
            frame = server_segment(s.server, s.client, s.sport, server_next, client_next, flags, payload)
            action, out = run_frame(dp, frame, Direction.OUTBOUND)
            expected = s.to_client(server_next, client_next)
            server_next = (server_next + length) % MOD
            client_view_of_server = (client_view_of_server + length) % MOD
        assert action == XDP_REDIRECT
        assert_checksums(out)
        got, sent = Ether(out), Ether(frame)
        assert (got[TCP].seq, got[TCP].ack) == expected
        assert bytes(got[TCP].payload) == payload
        # Nothing else changes: addresses, ports, flags, window, length, MACs.
        for layer in (TCP,):
            for field in ("sport", "dport", "flags", "window", "dataofs"):
                assert getattr(got[layer], field) == getattr(sent[layer], field), field
        assert (got.src, got.dst) == (sent.src, sent.dst) and len(out) == len(frame)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_splice_recovers_the_mss_the_cookie_carries(dp, syn_attack, v6):
    table = COOKIE_MSS_V6 if v6 else COOKIE_MSS_V4
    for mss in table:
        s = Splice(dp, v6, client_isn=4242, server_isn=99, mss=mss, sport=51000 + mss % 1000)
        assert s.syn[TCP].options == [("MSS", mss)], (mss, s.syn[TCP].options)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_early_client_segments_are_dropped_and_a_probe_resends_the_syn(dp, syn_attack, v6):
    from dataplane import testing  # noqa: PLC0415

    s = Splice(dp, v6, client_isn=3000, server_isn=5)
    before = stats(dp)
    early = client_segment(s.client, s.server, s.sport, 3001, s.cookie + 1, "PA", b"GET / HTTP/1.0\r\n\r\n")
    assert run(dp, early) == XDP_DROP
    probe = client_segment(s.client, s.server, s.sport, 3000, s.cookie + 1)   # a zero-window probe
    assert run(dp, probe) == XDP_DROP                                         # the SYN went out just now
    assert stat_delta(before, stats(dp)) == {SynAuthStat.SPLICE_EARLY_DROP: 2}
    # SPLICE_SYN_RETRY_MS later (the SYN's time moved back instead of waiting) the probe resends it.
    table = testing.table(dp, "sw_splices")
    (key, leaf), = [(k, v) for k, v in table.items() if v.cookie == s.cookie]
    leaf.syn_ns = 0
    table[key] = leaf
    action, out = run_frame(dp, probe)
    assert action == XDP_REDIRECT
    assert_checksums(out)
    again = Ether(out)[TCP]
    assert (str(again.flags), again.seq, again.options) == ("S", 3000, s.syn[TCP].options)
    assert stat_delta(before, stats(dp))[SynAuthStat.SPLICE_SYN_RETRY] == 1


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_server_reset_of_the_spliced_syn_reaches_the_client_in_its_numbering(dp, syn_attack, v6):
    s = Splice(dp, v6, client_isn=0xFFFFFFFF, server_isn=0)
    before = stats(dp)
    refusal = server_segment(s.server, s.client, s.sport, 0, 0, flags="RA", window=0)   # closed port: seq 0
    action, out = run_frame(dp, refusal, Direction.OUTBOUND)
    assert action == XDP_REDIRECT
    assert_checksums(out)
    rst = Ether(out)[TCP]
    assert (str(rst.flags), rst.seq, rst.ack) == ("RA", (s.cookie + 1) % MOD, 0)   # exactly the client's rcv_nxt
    assert stat_delta(before, stats(dp)) == {SynAuthStat.SPLICE_SERVER_RST: 1}
    # The splice is over: the client's next segment is no longer translated (nor early-dropped).
    before = stats(dp)
    run(dp, client_segment(s.client, s.server, s.sport, 0, s.cookie + 1))
    assert SynAuthStat.SPLICE_EARLY_DROP not in stat_delta(before, stats(dp))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_synack_that_does_not_answer_the_spliced_syn_is_dropped(dp, syn_attack, v6):
    s = Splice(dp, v6, client_isn=600, server_isn=700)
    before = stats(dp)
    wrong = server_segment(s.server, s.client, s.sport, 700, 602, flags="SA")
    assert run(dp, wrong, Direction.OUTBOUND) == XDP_DROP
    assert stat_delta(before, stats(dp)) == {SynAuthStat.SPLICE_BAD_SYNACK: 1}
    s.server_answers()                                             # the real answer still opens it


def test_a_spliced_connection_outlives_the_attack_mark(dp, tenants, syn_attack):
    s = Splice(dp, False, client_isn=10, server_isn=20)
    s.server_answers()
    dp.set_under_attack(tenants["alpha"], ipaddress.ip_address(ALPHA_DST), ())
    action, out = run_frame(dp, client_segment(s.client, s.server, s.sport, 11, s.cookie + 1, "PA", b"x"))
    assert action == XDP_REDIRECT and Ether(out)[TCP].ack == 21
    action, out = run_frame(dp, server_segment(s.server, s.client, s.sport, 21, 12, "PA", b"y"), Direction.OUTBOUND)
    assert action == XDP_REDIRECT and Ether(out)[TCP].seq == (s.cookie + 1) % MOD


def test_a_new_syn_on_a_spliced_tuple_ends_the_splice(dp, syn_attack):
    s = Splice(dp, False, client_isn=10, server_isn=20)
    s.server_answers()
    action, out = run_frame(dp, syn(s.client, s.server, sport=s.sport, seq=999))
    assert action == XDP_REDIRECT and Ether(out)[TCP].seq == 999     # a validated source's SYN, untouched
    action, out = run_frame(dp, client_segment(s.client, s.server, s.sport, 1000, 5000))
    assert action == XDP_REDIRECT and Ether(out)[TCP].ack == 5000      # no longer translated


def test_the_splice_layout_is_pinned(dp):
    from dataplane import testing  # noqa: PLC0415

    leaf = testing.table(dp, "sw_splices").Leaf
    assert ctypes.sizeof(leaf) == 24
    assert [getattr(leaf, f).offset for f in ("delta", "client_isn", "cookie", "client_window", "state",
                                              "mss_index", "syn_ns")] == [0, 4, 8, 12, 14, 15, 16]


def test_read_synauth_stats_reports_the_counters_by_name(dp, syn_attack):
    """What `seawall status` and `/metrics` show (appliance.service puts it in the status)."""
    before = dp.read_synauth_stats()
    assert set(before) == {s.name.lower() for s in SynAuthStat}
    Splice(dp, False, client_isn=1, server_isn=2, sport=52000)
    after = dp.read_synauth_stats()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
        "synack_sent": 1, "cookie_valid": 1, "splice_syn": 1}
