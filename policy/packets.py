"""Parse sampled frames into column arrays, and match rules against them.

Samples are raw Ethernet frames (at most `SAMPLE_BYTES`). Untagged IPv4 frames
are parsed column-wise with numpy; the rest with plain `struct`, frame by frame
(a few microseconds each), which keeps scapy out of the hot path. Everything after parsing (grouping, histograms, rule matching) works
on numpy columns.

`match_rule` mirrors the dataplane's rule semantics (see `dataplane.api.Rule`)
so that a signature can be checked against legitimate samples before it is
installed; the bpf tier fuzzes it against the XDP program (tests/bpf/test_fuzz.py),
which is the truth where the two differ.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

import numpy as np

from dataplane.api import IPAddress, Rule, Sample
from dataplane.constants import PAYLOAD_MATCH_BYTES, Direction, EtherType, IpProto, TcpFlag, TrafficClass

ETH_P_IPV4 = int(EtherType.IP)
ETH_P_IPV6 = int(EtherType.IPV6)
VLAN_ETHERTYPES = (int(EtherType.VLAN), int(EtherType.QINQ))
IPV6_EXT_HEADERS = {int(IpProto.HOPOPTS), int(IpProto.ROUTING), int(IpProto.DSTOPTS), int(IpProto.AH)}
IPV6_FRAGMENT_HEADER = int(IpProto.FRAGMENT)
IPV6_HEADER_BYTES = 40               # fixed IPv6 header; Rule.length = payload length + 40

TCP_FIN = int(TcpFlag.FIN)
TCP_SYN = int(TcpFlag.SYN)
TCP_RST = int(TcpFlag.RST)
TCP_PSH = int(TcpFlag.PSH)
TCP_ACK = int(TcpFlag.ACK)

PROTO_TCP = int(IpProto.TCP)
PROTO_UDP = int(IpProto.UDP)
PROTO_ICMP = int(IpProto.ICMP)
PROTO_ICMPV6 = int(IpProto.ICMPV6)

NO_PORT = -1                         # port columns of packets without an L4 header
TCP_HEADER_BYTES = 20               # without options
UDP_HEADER_BYTES = 8
ICMP_HEADER_BYTES = 4                # type, code, checksum: the program's payload starts after them


@dataclasses.dataclass(slots=True)
class PacketFeatures:
    """Header fields of N sampled packets, one numpy column per field.

    `ip_len` follows `Rule.length` (IPv4 total length, IPv6 payload length + 40).
    `sport`/`dport` are NO_PORT where the packet carries no TCP/UDP header (ICMP,
    non-first fragments, unparsable). `l4_ok` says that the TCP, UDP or ICMP header
    was captured (the program's l4_ok: its rules match ports, flags and payload only
    then, and see ICMP's ports as 0). `payload` holds the first PAYLOAD_MATCH_BYTES
    bytes of the L4 payload (after the 4-byte ICMP header for ICMP), zero padded;
    `payload_len` says how many of them the sample really captured.
    """

    src: list[IPAddress | None]
    dst: list[IPAddress | None]
    parsed: np.ndarray          # bool: an IPv4/IPv6 header was found
    direction: np.ndarray       # uint8, Direction
    dropped: np.ndarray         # bool
    tenant_idx: np.ndarray      # uint32
    timestamp_ns: np.ndarray    # uint64
    wire_length: np.ndarray     # int32, bytes of the frame on the wire
    proto: np.ndarray           # int16, IP protocol (-1 when unparsed)
    ip_len: np.ndarray          # int32, bytes
    ttl: np.ndarray             # int16
    sport: np.ndarray           # int32
    dport: np.ndarray           # int32
    tcp_flags: np.ndarray       # int16 (0 for non-TCP)
    fragment: np.ndarray        # bool: any fragment (first or later)
    traffic_class: np.ndarray   # int8, TrafficClass
    payload: np.ndarray         # uint8 (N, PAYLOAD_MATCH_BYTES)
    payload_len: np.ndarray     # int16, captured payload bytes (0..PAYLOAD_MATCH_BYTES)
    l4_ok: np.ndarray           # bool: the TCP, UDP or ICMP header is in the sample
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index: np.ndarray) -> PacketFeatures:
        """Rows selected by a boolean mask or an integer index array."""
        idx = np.flatnonzero(index) if index.dtype == bool else index
        kwargs = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kwargs[field.name] = value[idx] if isinstance(value, np.ndarray) else [value[i] for i in idx]
        return PacketFeatures(**kwargs)

    @classmethod
    def empty(cls) -> PacketFeatures:
        """No rows, as parsing no samples gives them, without the parse: a tick under a wide attack asks
        for the sample window of thousands of targets that have none (parsing nothing cost ~30 µs each)."""
        return cls(**{field.name: value.copy() if isinstance(value, np.ndarray) else []
                      for field in dataclasses.fields(cls) for value in (getattr(_NO_ROWS, field.name),)})

    @classmethod
    def concat(cls, parts: list[PacketFeatures]) -> PacketFeatures:
        if not parts:
            return cls.empty()
        kwargs = {}
        for field in dataclasses.fields(cls):
            values = [getattr(p, field.name) for p in parts]
            if isinstance(values[0], np.ndarray):
                kwargs[field.name] = np.concatenate(values)
            else:
                kwargs[field.name] = [v for part in values for v in part]
        return cls(**kwargs)


_address_cache: dict[bytes, IPAddress] = {}
_ADDRESS_CACHE_LIMIT = 65536  # entries; spoofed floods bring endless new sources


def _address(raw: bytes) -> IPAddress:
    addr = _address_cache.get(raw)
    if addr is None:
        addr = ipaddress.ip_address(raw)
        if len(_address_cache) >= _ADDRESS_CACHE_LIMIT:
            _address_cache.clear()
        _address_cache[raw] = addr
    return addr


def classify_fields(proto: int, flags: int, fragment: bool) -> TrafficClass:
    """The dataplane's coarse traffic class of one packet."""
    if fragment:
        return TrafficClass.FRAGMENT
    if proto == PROTO_TCP:
        return TrafficClass.TCP_SYN if flags & (TCP_SYN | TCP_ACK) == TCP_SYN else TrafficClass.TCP_OTHER
    if proto == PROTO_UDP:
        return TrafficClass.UDP
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        return TrafficClass.ICMP
    return TrafficClass.OTHER


def parse_frame(data: bytes, wire_length: int | None = None) -> tuple | None:
    """(src, dst, proto, ip_len, ttl, sport, dport, flags, fragment, payload, l4_ok) or None.

    `data` may be a snapshot of a longer frame of `wire_length` bytes (default: all of it).
    As in the program, the L4 header counts only inside the IP length, and only when the
    IP length fits the frame on the wire: a truncated packet has no ports, flags or payload.
    """
    n = len(data)
    wire = n if wire_length is None else wire_length
    if n < 14:
        return None
    off = 12
    (ethertype,) = struct.unpack_from("!H", data, off)
    off = 14
    depth = 0
    while ethertype in VLAN_ETHERTYPES and depth < 2:
        if n < off + 4:
            return None
        (ethertype,) = struct.unpack_from("!H", data, off + 2)
        off += 4
        depth += 1
    fragment = False
    l4_present = True
    if ethertype == ETH_P_IPV4:
        if n < off + 20:
            return None
        vihl, _tos, total_len, _ident, frag, ttl, proto = struct.unpack_from("!BBHHHBB", data, off)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20:
            return None
        src = _address(data[off + 12:off + 16])
        dst = _address(data[off + 16:off + 20])
        frag_offset = frag & 0x1FFF
        more_fragments = bool(frag & 0x2000)
        fragment = more_fragments or frag_offset != 0
        ip_len = total_len
        ip_end = off + total_len
        l4_present = frag_offset == 0 and total_len >= ihl and ip_end <= wire
        off += ihl
    elif ethertype == ETH_P_IPV6:
        if n < off + 40:
            return None
        payload_len, proto, ttl = struct.unpack_from("!HBB", data, off + 4)
        src = _address(data[off + 8:off + 24])
        dst = _address(data[off + 24:off + 40])
        ip_len = payload_len + IPV6_HEADER_BYTES
        ip_end = off + ip_len
        l4_present = ip_end <= wire
        off += 40
        for _ in range(6 if l4_present else 0):
            if proto == IPV6_FRAGMENT_HEADER:
                if n < off + 8 or off + 8 > ip_end:
                    l4_present = False
                    break
                nxt, _res, frag = struct.unpack_from("!BBH", data, off)
                fragment = True
                l4_present = (frag >> 3) == 0
                proto = nxt
                off += 8
            elif proto in IPV6_EXT_HEADERS:
                if n < off + 2:
                    l4_present = False
                    break
                nxt, hdr_len = data[off], data[off + 1]
                off += (hdr_len + 2) * 4 if proto == IpProto.AH else (hdr_len + 1) * 8
                proto = nxt
                if off > ip_end:
                    l4_present = False
                    break
            else:
                break
    else:
        return None
    sport = dport = NO_PORT
    flags = 0
    payload = b""
    l4_ok = False
    if l4_present:
        # The program's header checks (sw_parse_l4): a header or a length that runs past the
        # IP length makes the packet BAD_LENGTH or MALFORMED, and leaves its L4 unparsed.
        if (proto == PROTO_TCP and n >= off + 14 and off + TCP_HEADER_BYTES <= ip_end
                and (doff := (data[off + 12] >> 4) * 4) >= TCP_HEADER_BYTES and off + doff <= ip_end):
            sport, dport = struct.unpack_from("!HH", data, off)
            flags = data[off + 13]
            payload = data[off + doff:off + doff + PAYLOAD_MATCH_BYTES]
            l4_ok = True
        elif (proto == PROTO_UDP and n >= off + 4 and off + UDP_HEADER_BYTES <= ip_end
              and (n < off + 6 or _udp_length_ok(struct.unpack_from("!H", data, off + 4)[0], off, ip_end,
                                                 fragment))):
            sport, dport = struct.unpack_from("!HH", data, off)
            payload = data[off + 8:off + 8 + PAYLOAD_MATCH_BYTES]
            l4_ok = True
        elif proto in (PROTO_ICMP, PROTO_ICMPV6) and n >= off + ICMP_HEADER_BYTES and off + ICMP_HEADER_BYTES <= ip_end:
            payload = data[off + ICMP_HEADER_BYTES:off + ICMP_HEADER_BYTES + PAYLOAD_MATCH_BYTES]
            l4_ok = True
    return src, dst, proto, ip_len, ttl, sport, dport, flags, fragment, payload, l4_ok


def _udp_length_ok(ulen: int, off: int, ip_end: int, fragment: bool) -> bool:
    """The UDP length covers its header and, unless a first fragment (which carries only part of
    the datagram), stays inside the IP length."""
    return ulen >= UDP_HEADER_BYTES and (fragment or off + ulen <= ip_end)


# The vectorised path reads this many leading bytes of each frame: Ethernet (14), IPv4 with
# options (at most 60), TCP with options (at most 60), then PAYLOAD_MATCH_BYTES of payload.
_FAST_SPAN = 14 + 60 + 60 + PAYLOAD_MATCH_BYTES


def parse_samples(samples: list[Sample]) -> PacketFeatures:
    """Parse every sample; unparsable frames keep a row with parsed=False.

    Untagged IPv4 frames (nearly every sample) are parsed column-wise with numpy over a
    zero-padded byte matrix; VLAN-tagged, IPv6 and other frames go through `parse_frame`
    frame by frame. Both paths give the same fields (a unit test holds them to it).
    """
    n = len(samples)
    src: list[IPAddress | None] = [None] * n
    dst: list[IPAddress | None] = [None] * n
    parsed = np.zeros(n, bool)
    proto = np.full(n, -1, np.int16)
    ip_len = np.zeros(n, np.int32)
    ttl = np.zeros(n, np.int16)
    sport = np.full(n, NO_PORT, np.int32)
    dport = np.full(n, NO_PORT, np.int32)
    flags = np.zeros(n, np.int16)
    fragment = np.zeros(n, bool)
    tclass = np.full(n, int(TrafficClass.OTHER), np.int8)
    payload = np.zeros((n, PAYLOAD_MATCH_BYTES), np.uint8)
    payload_len = np.zeros(n, np.int16)
    l4_ok = np.zeros(n, bool)
    cols = (parsed, proto, ip_len, ttl, sport, dport, flags, fragment, tclass, payload, payload_len, l4_ok)
    frames = [s.data for s in samples]
    wire = [s.wire_length for s in samples]
    slow = _parse_ipv4_columns(frames, wire, src, dst, cols) if n else np.zeros(0, np.int64)
    for i in slow.tolist():
        fields = parse_frame(frames[i], wire[i])
        if fields is None:
            continue
        s, d, p, length, t, sp, dp, fl, frag, pl, l4 = fields
        src[i], dst[i] = s, d
        parsed[i] = True
        proto[i], ip_len[i], ttl[i], sport[i], dport[i], flags[i], fragment[i] = p, length, t, sp, dp, fl, frag
        tclass[i] = classify_fields(p, fl, frag)
        payload[i, :len(pl)] = np.frombuffer(pl, np.uint8)
        payload_len[i] = len(pl)
        l4_ok[i] = l4
    meta = np.array([(int(s.direction), s.dropped, s.tenant_idx, s.timestamp_ns, s.wire_length) for s in samples],
                    np.uint64).reshape(n, 5)
    return PacketFeatures(
        src=src, dst=dst, parsed=parsed,
        direction=meta[:, 0].astype(np.uint8), dropped=meta[:, 1].astype(bool),
        tenant_idx=meta[:, 2].astype(np.uint32), timestamp_ns=meta[:, 3].copy(),
        wire_length=meta[:, 4].astype(np.int32),
        proto=proto, ip_len=ip_len, ttl=ttl, sport=sport, dport=dport, tcp_flags=flags,
        fragment=fragment, traffic_class=tclass, payload=payload, payload_len=payload_len, l4_ok=l4_ok,
        samples=list(samples),
    )


def _parse_ipv4_columns(frames: list[bytes], wire_lengths: list[int], src: list[IPAddress | None], dst: list[IPAddress | None],
                        cols: tuple[np.ndarray, ...]) -> np.ndarray:
    """Fill the columns of untagged IPv4 frames with whole-array operations, as `parse_frame`
    would; returns the rows left for `parse_frame` (other frames)."""
    parsed, proto, ip_len, ttl, sport, dport, flags, fragment, tclass, payload, payload_len, l4_ok = cols
    n = len(frames)
    length = np.fromiter(map(len, frames), np.int64, n)
    span = _FAST_SPAN
    buf = np.frombuffer(b"".join(f[:span].ljust(span, b"\0") for f in frames), np.uint8).reshape(n, span)
    ethertype = (buf[:, 12].astype(np.int64) << 8) | buf[:, 13]
    ihl = (buf[:, 14] & 0x0F).astype(np.int64) * 4
    v4 = (ethertype == ETH_P_IPV4) & (length >= 14 + 20)
    rows = np.flatnonzero(v4 & (ihl >= 20))
    slow = np.flatnonzero(~v4)         # IPv4 with a header length below 20 bytes is unparsable: no row
    if not len(rows):
        return slow
    r = buf[rows].astype(np.int32)      # (rows, span): small, and wide enough for shifts
    nr = length[rows]
    frag = (r[:, 20] << 8) | r[:, 21]
    frag_offset = frag & 0x1FFF
    is_fragment = ((frag & 0x2000) != 0) | (frag_offset != 0)
    p = r[:, 23]
    off = 14 + ihl[rows]
    parsed[rows] = True
    proto[rows] = p
    total = (r[:, 16] << 8) | r[:, 17]
    ip_len[rows] = total
    ip_end = 14 + total
    fits = (total >= ihl[rows]) & (ip_end <= np.asarray(wire_lengths, np.int64)[rows])
    ttl[rows] = r[:, 22]
    fragment[rows] = is_fragment
    at = np.arange(len(rows))

    def byte(k: np.ndarray) -> np.ndarray:
        return r[at, np.minimum(k, span - 1)]

    first = (frag_offset == 0) & fits
    doff = (byte(off + 12) >> 4) * 4
    ulen = (byte(off + 4) << 8) | byte(off + 5)
    tcp = (first & (p == PROTO_TCP) & (nr >= off + 14) & (off + TCP_HEADER_BYTES <= ip_end)
           & (doff >= TCP_HEADER_BYTES) & (off + doff <= ip_end))
    udp = (first & (p == PROTO_UDP) & (nr >= off + 4) & (off + UDP_HEADER_BYTES <= ip_end)
           & ((nr < off + 6) | ((ulen >= UDP_HEADER_BYTES) & (is_fragment | (off + ulen <= ip_end)))))
    icmp = (first & ((p == PROTO_ICMP) | (p == PROTO_ICMPV6)) & (nr >= off + ICMP_HEADER_BYTES)
            & (off + ICMP_HEADER_BYTES <= ip_end))
    ports = tcp | udp
    l4_ok[rows] = ports | icmp
    sp = (byte(off) << 8) | byte(off + 1)
    dp = (byte(off + 2) << 8) | byte(off + 3)
    sport[rows] = np.where(ports, sp, NO_PORT)
    dport[rows] = np.where(ports, dp, NO_PORT)
    fl = np.where(tcp, byte(off + 13), 0)
    flags[rows] = fl
    start = np.where(tcp, off + doff, np.where(icmp, off + ICMP_HEADER_BYTES, off + 8))
    has_payload = tcp | udp | icmp
    plen = np.where(has_payload, np.clip(nr - start, 0, PAYLOAD_MATCH_BYTES), 0)
    payload_len[rows] = plen
    k = np.arange(PAYLOAD_MATCH_BYTES)
    idx = np.minimum(start[:, None] + k, span - 1)
    payload[rows] = np.where(k < plen[:, None], r[at[:, None], idx], 0)
    cls = np.full(len(rows), int(TrafficClass.OTHER), np.int8)
    cls[p == PROTO_UDP] = int(TrafficClass.UDP)
    cls[(p == PROTO_ICMP) | (p == PROTO_ICMPV6)] = int(TrafficClass.ICMP)
    cls[p == PROTO_TCP] = np.where((fl[p == PROTO_TCP] & (TCP_SYN | TCP_ACK)) == TCP_SYN,
                                   int(TrafficClass.TCP_SYN), int(TrafficClass.TCP_OTHER))
    cls[is_fragment] = int(TrafficClass.FRAGMENT)
    tclass[rows] = cls
    # Address objects: one per distinct address (a tick's samples share few destinations).
    for column, word_at in ((src, 26), (dst, 30)):
        words = (r[:, word_at].astype(np.int64) << 24) | (r[:, word_at + 1] << 16) | (r[:, word_at + 2] << 8) | r[:, word_at + 3]
        distinct, inverse = np.unique(words, return_inverse=True)
        objects = np.array([None] + [_address(int(w).to_bytes(4, "big")) for w in distinct.tolist()],
                           object)[1:]             # (a leading None keeps numpy from unpacking addresses)
        if len(rows) == n:
            column[:] = objects[inverse].tolist()
        else:
            for row, obj in zip(rows.tolist(), objects[inverse].tolist(), strict=True):
                column[row] = obj
    return slow


def match_rule(rule: Rule, f: PacketFeatures, *, inbound_only: bool = True) -> np.ndarray:
    """Which rows the rule would match (boolean array), by the dataplane's semantics.

    Port, flag and payload conditions match only packets whose TCP, UDP or ICMP header
    the program parsed (`l4_ok`; never later fragments); ICMP has ports 0 there. TCP flags
    compare under the mask on both sides, as the program stores value & mask. An empty
    payload checks nothing, as the program installs no payload match for it.
    """
    m = f.parsed.copy()
    if inbound_only:
        m &= f.direction == int(Direction.INBOUND)
    m &= f.tenant_idx == rule.tenant_idx
    if rule.dst is not None:
        m &= np.fromiter((d == rule.dst for d in f.dst), bool, len(f))
    if rule.proto is not None:
        m &= f.proto == rule.proto
    if rule.sport is not None or rule.dport is not None:
        m &= f.l4_ok
    if rule.sport is not None:
        sport = np.where(f.sport == NO_PORT, 0, f.sport)    # ICMP: the program's ports are 0
        m &= (sport >= rule.sport.lo) & (sport <= rule.sport.hi)
    if rule.dport is not None:
        dport = np.where(f.dport == NO_PORT, 0, f.dport)
        m &= (dport >= rule.dport.lo) & (dport <= rule.dport.hi)
    if rule.length is not None:
        m &= (f.ip_len >= rule.length.lo) & (f.ip_len <= rule.length.hi)
    if rule.ttl is not None:
        m &= (f.ttl >= rule.ttl.lo) & (f.ttl <= rule.ttl.hi)
    if rule.tcp_flags is not None:
        mask, value = rule.tcp_flags
        m &= f.l4_ok & (f.proto == PROTO_TCP) & ((f.tcp_flags & mask) == (value & mask))
    if rule.fragments is not None:
        m &= f.fragment == rule.fragments
    if rule.payload:
        want = np.frombuffer(rule.payload, np.uint8)
        mask_bytes = rule.payload_mask if rule.payload_mask is not None else b"\xff" * len(rule.payload)
        mask = np.frombuffer(mask_bytes, np.uint8)
        k = len(want)
        # The XDP program compares 8 bytes and needs them all inside the frame.
        m &= f.l4_ok & (f.payload_len >= PAYLOAD_MATCH_BYTES)
        m &= np.all((f.payload[:, :k] & mask) == (want & mask), axis=1)
    return m


_NO_ROWS = parse_samples([])    # the template of PacketFeatures.empty()
