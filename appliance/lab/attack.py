"""Attack vectors as frame templates (scapy), ready for the live-frames generator.

A vector becomes one or more `Stream`s; a stream is a list of template frames
(fragments, RST/FIN variants, carpet destinations) that share one `FrameEdits`:
the fields the XDP program varies per frame (spoofed source, ports, IP id, TCP
sequence) with the checksums fixed incrementally. Frames are addressed to the
target server's MAC, so they cross the appliance and the customer switch
without ARP. Pure code: no bcc, no namespaces (unit-tested on its own).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import struct
import sys

from appliance.lab.botnet import BOTNET_VECTORS, DEFAULT_BOTS, BotnetPlan
from appliance.lab.jsonlines import JsonLinesProcess
from appliance.lab.livegen import ETH_HLEN, FrameEdits
from appliance.lab.topology import GAME_PORT, HTTP_PORT, SPOOF_V4, SPOOF_V6, TENANTS, Lab, Server

IPV4_HLEN = 20
IPV6_HLEN = 40
IPV6_FRAG_HLEN = 8
UDP_HLEN = 8
EPHEMERAL_PORTS = (1024, 65535 - 1024 + 1)   # (min, span) of randomized client ports
MTU = 1500                        # bytes, the lab's veth MTU; larger datagrams are fragmented
MAX_CARPET_TARGETS = 256          # destinations rotated through by a carpet attack
ATTACKER_SOURCE_V4 = "192.0.2.130"   # the attacker's real address, for --spoof off
ATTACKER_SOURCE_V6 = "2001:db8:fffe::10"

REFLECTION_PORTS = {"dns": 53, "ntp": 123, "ssdp": 1900, "memcached": 11211, "cldap": 389, "chargen": 19}
RANDOM_SIZES = 16                 # distinct datagram sizes a udp-random stream rotates through
RANDOM_SIZE_RANGE = (64, MTU)     # bytes (IP datagram) of those sizes: never fragmented
TCP_REFLECTOR_PORTS = (80, 443)   # source ports of reflected SYN-ACKs (web servers answering spoofed SYNs)
# What differs between the reflectors of a SYN-ACK reflection: their stacks' options (so the
# length: 44, 52 and 60 bytes) and their distance (the TTL left: Linux 64 and Windows 128 minus hops).
REFLECTOR_OPTIONS = ([("MSS", 1460)],
                     [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)],
                     [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 1)), ("WScale", 7)])
REFLECTOR_TTLS = (46, 51, 57, 109, 115, 121)
# Frame vectors (spoofed or reflected, sent by the live-frames generator), then the botnet's modes
# (real sources completing handshakes, sockets from `<p>-att`: appliance/lab/botnet.py).
FRAME_VECTORS = ("syn", "ack", "rst", "synack", "udp", "udp-random", *REFLECTION_PORTS, "icmp", "frag", "carpet",
                 "multi")
VECTORS = (*FRAME_VECTORS, *BOTNET_VECTORS)
MULTI_DEFAULT = ("syn", "udp", "dns", "ntp", "icmp")


@dataclasses.dataclass(frozen=True, slots=True)
class AttackSpec:
    """What to send; validated by `validate()` before any frame is built."""

    vector: str
    target: str                     # an address or a prefix inside the lab's tenant prefixes
    pps: int = 10_000               # packets/s over all streams; 0 = as fast as possible
    duration: float = 10.0          # seconds
    dport: int | None = None        # None = the vector's default (random for UDP and reflection)
    sport: int | None = None        # None = random (or the reflector's port)
    size: int | None = None         # IP datagram bytes; None = the vector's realistic size
    spoof: str | None = None        # CIDR of spoofed sources; None = 198.18.0.0/15 (v4) or SPOOF_V6; "off"
    vectors: tuple[str, ...] = MULTI_DEFAULT   # for "multi"
    pulse: tuple[float, float] | None = None   # (on, off) seconds: a pulse wave; None = steady
    ramp: float | None = None       # seconds from 0 to --pps (linear), then steady; None = full rate at once
    bots: int | None = None         # botnet: sources; None = DEFAULT_BOTS
    rate: float | None = None       # botnet: requests, connections, handshakes or clients per second
    sources: str | None = None      # botnet: CIDR of the bots' addresses

    def botnet_plan(self) -> BotnetPlan:
        return BotnetPlan(mode=self.vector, target=self.target, duration=self.duration,
                          bots=DEFAULT_BOTS if self.bots is None else self.bots, rate=self.rate,
                          port=self.dport, sources=self.sources)

    def validate(self) -> None:
        if self.vector not in VECTORS:
            raise ValueError(f"unknown vector {self.vector!r} (known: {', '.join(VECTORS)})")
        if self.vector in BOTNET_VECTORS:
            # Real sources, real handshakes: nothing of a frame to shape or spoof.
            for flag, value in (("sport", self.sport), ("size", self.size), ("spoof", self.spoof),
                                ("pulse", self.pulse), ("ramp", self.ramp)):
                if value is not None:
                    raise ValueError(f"--{flag} does not apply to {self.vector} (bots are real sources; "
                                     f"use --bots, --rate, --sources)")
            self.botnet_plan().validate()
            return
        for flag, value in (("bots", self.bots), ("rate", self.rate), ("sources", self.sources)):
            if value is not None:
                raise ValueError(f"--{flag} applies to the botnet vectors only ({', '.join(BOTNET_VECTORS)})")
        if self.pps < 0:
            raise ValueError(f"--pps must be >= 0, got {self.pps}")
        if self.duration <= 0:
            raise ValueError(f"--duration must be > 0, got {self.duration}")
        for name, port in (("dport", self.dport), ("sport", self.sport)):
            if port is not None and not 1 <= port <= 65535:
                raise ValueError(f"--{name} must be 1..65535, got {port}")
        if self.size is not None and not 28 <= self.size <= 9000:
            raise ValueError(f"--size must be 28..9000 bytes (IP datagram), got {self.size}")
        if self.pulse is not None and (len(self.pulse) != 2 or min(self.pulse) <= 0):
            raise ValueError(f"--pulse must be ON,OFF with both > 0 seconds, got {self.pulse}")
        if self.ramp is not None and self.ramp <= 0:
            raise ValueError(f"--ramp must be > 0 seconds, got {self.ramp}")
        if self.pulse is not None and self.ramp is not None:
            raise ValueError("--pulse and --ramp cannot be combined")
        if self.vector == "multi":
            bad = [v for v in self.vectors if v not in FRAME_VECTORS or v in ("multi", "carpet")]
            if bad or not self.vectors:
                raise ValueError(f"multi: bad sub-vectors {bad or 'none'}")
        try:
            network = ipaddress.ip_network(self.target, strict=False)
        except ValueError as exc:
            raise ValueError(f"--target {self.target!r}: not an address or prefix ({exc})") from None
        if self.vector == "carpet" and network.num_addresses < 2:
            raise ValueError("carpet needs a prefix as --target (e.g. 198.51.100.0/25)")
        if self.spoof not in (None, "off"):
            try:
                spoof = ipaddress.ip_network(self.spoof, strict=False)
            except ValueError as exc:
                raise ValueError(f"--spoof {self.spoof!r}: not a prefix ({exc})") from None
            if spoof.version != network.version:
                raise ValueError(f"--spoof {self.spoof} and --target {self.target} differ in IP version")


@dataclasses.dataclass(frozen=True, slots=True)
class Stream:
    """Frames sent with one set of per-frame edits, at `weight` of the total rate."""

    vector: str
    frames: tuple[bytes, ...]
    edits: FrameEdits
    weight: float = 1.0


# -- payloads of the reflection vectors ---------------------------------------------------------

def dns_any_response(size: int) -> bytes:
    """A DNS response to `ANY example.com` padded with TXT records to about `size` bytes of payload."""
    ident = 0x5eed
    qname = b"\x07example\x03com\x00"
    records = [struct.pack("!HHHIH", 0xC00C, 1, 1, 3600, 4) + bytes([192, 0, 2, 80]),
               struct.pack("!HHHIH", 0xC00C, 28, 1, 3600, 16) + ipaddress.IPv6Address("2001:db8::80").packed]
    mx = struct.pack("!H", 10) + b"\x04mail\xc0\x0c"
    records.append(struct.pack("!HHHIH", 0xC00C, 15, 1, 3600, len(mx)) + mx)
    body = b"".join(records)
    header_len = 12 + len(qname) + 4
    txt_index = itertools.count()
    while header_len + len(body) < size:
        text = f"v=spf1 ip4:192.0.2.0/24 include:_spf{next(txt_index)}.example.com ~all ".encode()
        text = (text * (255 // len(text) + 1))[:min(255, max(1, size - header_len - len(body) - 13))]
        rdata = bytes([len(text)]) + text
        records.append(struct.pack("!HHHIH", 0xC00C, 16, 1, 3600, len(rdata)) + rdata)
        body = b"".join(records)
    header = struct.pack("!HHHHHH", ident, 0x8180, 1, len(records), 0, 0)
    return header + qname + struct.pack("!HH", 255, 1) + body


def ntp_monlist_response(items: int = 6) -> bytes:
    """An NTP mode 7 MON_GETLIST_1 response: 8-byte header + `items` x 72-byte entries (6 -> 440 B)."""
    header = struct.pack("!BBBBHH", 0xD7, 0x01, 3, 42, items, 72)  # response, more; impl XNTPD; req 42
    entries = b""
    for i in range(items):
        entry = struct.pack("!IIIIIIHBB", 3600 + i, 3600 + i, 0, 1, 0,
                            int(ipaddress.IPv4Address("192.0.2.0")) + 20 + i, 123, 3, 4)
        entries += entry.ljust(72, b"\x00")
    return header + entries


SSDP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"CACHE-CONTROL: max-age=1800\r\n"
    b"DATE: Tue, 24 Nov 2026 03:00:00 GMT\r\n"
    b"EXT:\r\n"
    b"LOCATION: http://192.0.2.77:49152/rootDesc.xml\r\n"
    b"OPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n"
    b"SERVER: Linux/3.14.0 UPnP/1.0 MiniUPnPd/1.9\r\n"
    b"ST: upnp:rootdevice\r\n"
    b"USN: uuid:5eed0000-1dea-11e6-8000-0002c0000277::upnp:rootdevice\r\n"
    b"\r\n")


def memcached_stats_response(size: int) -> bytes:
    """A memcached UDP response to `stats`: 8-byte frame header + STAT lines up to about `size` bytes."""
    stats = [("pid", "2718"), ("uptime", "8640000"), ("time", "1795489200"), ("version", "1.4.25"),
             ("libevent", "2.0.21-stable"), ("pointer_size", "64"), ("rusage_user", "123.456789"),
             ("rusage_system", "456.789012"), ("curr_connections", "10"), ("total_connections", "31337"),
             ("connection_structures", "11"), ("cmd_get", "98765432"), ("cmd_set", "1234567"),
             ("get_hits", "87654321"), ("get_misses", "11111111"), ("bytes_read", "9876543210"),
             ("bytes_written", "12345678901"), ("limit_maxbytes", "67108864"), ("threads", "4"),
             ("bytes", "52428800"), ("curr_items", "424242"), ("total_items", "999999"),
             ("evictions", "0"), ("reclaimed", "0")]
    text = b""
    for i in itertools.count():
        key, value = stats[i % len(stats)]
        line = f"STAT {key}{'' if i < len(stats) else f'_{i // len(stats)}'} {value}\r\n".encode()
        if 8 + len(text) + len(line) + 5 > size and i >= len(stats):
            break
        text += line
    return struct.pack("!HHHH", 0x5eed, 0, 1, 0) + text + b"END\r\n"


def _ber(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + content


def cldap_search_response(size: int) -> bytes:
    """A CLDAP rootDSE searchResEntry (+ searchResDone) padded with attribute values to about `size` bytes."""
    def attribute(name: str, values: list[str]) -> bytes:
        return _ber(0x30, _ber(0x04, name.encode()) + _ber(0x31, b"".join(_ber(0x04, v.encode()) for v in values)))

    attributes = [
        attribute("currentTime", ["20261124030000.0Z"]),
        attribute("dnsHostName", ["dc01.corp.example.com"]),
        attribute("defaultNamingContext", ["DC=corp,DC=example,DC=com"]),
        attribute("domainFunctionality", ["7"]),
        attribute("supportedLDAPVersion", ["3", "2"]),
    ]
    oids = (f"1.2.840.113556.1.4.{n}" for n in itertools.count(800))
    done = _ber(0x30, _ber(0x02, b"\x01") + _ber(0x65, _ber(0x0A, b"\x00") + _ber(0x04, b"") + _ber(0x04, b"")))

    def message(attrs: list[bytes]) -> bytes:
        entry = _ber(0x64, _ber(0x04, b"") + _ber(0x30, b"".join(attrs)))  # [APPLICATION 4] searchResEntry
        return _ber(0x30, _ber(0x02, b"\x01") + entry) + done

    controls: list[str] = []
    while len(message([*attributes, attribute("supportedControl", controls)])) < size:
        controls.append(next(oids))
    return message([*attributes, attribute("supportedControl", controls)])


def chargen_response(size: int) -> bytes:
    """RFC 864 text: 72-character lines of rotating printable ASCII, about `size` bytes."""
    printable = bytes(range(33, 127))
    lines = []
    for i in itertools.count():
        if 74 * len(lines) >= size:
            break
        start = i % len(printable)
        lines.append((printable[start:] + printable[:start])[:72] + b"\r\n")
    return b"".join(lines)[:size]


# -- frame building ----------------------------------------------------------------------------------

def _frame_edits(frame: bytes, version: int, proto: str, *, spoof: bool, spoof_bits: int,
                 random_sport: tuple[int, int] | None, random_dport: tuple[int, int] | None,
                 random_seq: bool, first_fragment: bool = True) -> FrameEdits:
    """Offsets of the fields the XDP program varies in this frame."""
    if version == 4:
        ihl = (frame[ETH_HLEN] & 0x0F) * 4
        l3, l4 = ETH_HLEN, ETH_HLEN + ihl
        src_off, ip_csum_off, ipid_off = l3 + 12, l3 + 10, l3 + 4
    else:
        l3 = ETH_HLEN
        has_frag = frame[l3 + 6] == 44
        l4 = l3 + IPV6_HLEN + (IPV6_FRAG_HLEN if has_frag else 0)
        src_off, ip_csum_off = l3 + 8 + 12, 0   # the low 32 bits of the source address
        ipid_off = l3 + IPV6_HLEN + 6 if has_frag else 0  # low 16 bits of the fragment id
    if not first_fragment:
        return FrameEdits(src_off=src_off if spoof else 0, src_mask=spoof_bits if spoof else 0,
                          ip_csum_off=ip_csum_off, ipid_off=ipid_off)
    csum = {"tcp": 16, "udp": 6, "icmp": 2}[proto]
    l4_csum_off = l4 + csum
    if proto == "udp" and frame[l4_csum_off:l4_csum_off + 2] == b"\x00\x00":
        l4_csum_off = 0                          # UDP over IPv4 without a checksum stays without one
    port_field = l4 + 4 if proto == "icmp" else l4  # the ICMP echo id stands in for a source port
    return FrameEdits(
        src_off=src_off if spoof else 0, src_mask=spoof_bits if spoof else 0,
        ip_csum_off=ip_csum_off, l4_csum_off=l4_csum_off,
        l4_pseudo=proto in ("tcp", "udp") or version == 6, l4_udp=proto == "udp",
        ipid_off=ipid_off,
        sport_off=port_field if random_sport else 0, sport_range=random_sport or (0, 0),
        dport_off=l4 + 2 if random_dport and proto != "icmp" else 0, dport_range=random_dport or (0, 0),
        seq_off=l4 + 4 if random_seq and proto == "tcp" else 0)


class TemplateBuilder:
    """Builds the streams of an `AttackSpec` for a lab (scapy is imported here, lazily)."""

    def __init__(self, lab: Lab, spec: AttackSpec, source_mac: str = "02:53:57:00:ff:01"):
        spec.validate()
        if spec.vector in BOTNET_VECTORS:
            raise ValueError(f"{spec.vector} is sent by the botnet's sockets, not as frames (appliance/lab/botnet.py)")
        self.lab, self.spec, self.source_mac = lab, spec, source_mac
        self.network = ipaddress.ip_network(spec.target, strict=False)
        self.version = self.network.version
        self.targets = self._targets()
        if spec.spoof == "off":
            self.source, self.spoof_bits = (ATTACKER_SOURCE_V4 if self.version == 4 else ATTACKER_SOURCE_V6), 0
        else:
            spoof = ipaddress.ip_network(spec.spoof or (SPOOF_V4 if self.version == 4 else SPOOF_V6), strict=False)
            self.source = str(spoof.network_address)
            self.spoof_bits = (1 << min(32, spoof.max_prefixlen - spoof.prefixlen)) - 1

    def _targets(self) -> list[tuple[str, Server]]:
        """Destination addresses with the server whose MAC each frame is addressed to."""
        tenant = next((t for t in TENANTS for p in (t.ipv4, t.ipv6)
                       if self.network.version == ipaddress.ip_network(p).version
                       and self.network.subnet_of(ipaddress.ip_network(p))), None)
        if tenant is None:
            prefixes = ", ".join(p for t in TENANTS for p in (t.ipv4, t.ipv6))
            raise ValueError(f"--target {self.spec.target} is not inside a lab tenant prefix ({prefixes})")
        tenant_servers = [s for s in self.lab.servers if s.tenant == tenant.id]
        by_address = {(s.ipv4 if self.version == 4 else s.ipv6): s for s in tenant_servers}
        if self.network.num_addresses == 1:
            address = str(self.network.network_address)
            return [(address, by_address.get(address, tenant_servers[0]))]
        # Carpet: every server address first, then other addresses of the prefix, addressed to a
        # tenant server's MAC (the frame crosses the appliance; that server's stack drops it).
        hosts = [a for a in itertools.islice(self.network.hosts(), MAX_CARPET_TARGETS)]
        addresses = [a for a in by_address if ipaddress.ip_address(a) in self.network]
        addresses += [str(a) for a in hosts if str(a) not in by_address][:MAX_CARPET_TARGETS - len(addresses)]
        cycle = itertools.cycle(tenant_servers)
        return [(a, by_address.get(a) or next(cycle)) for a in addresses]

    # One builder per vector; each returns streams.
    def streams(self) -> list[Stream]:
        spec = self.spec
        if spec.vector == "multi":
            streams = []
            for vector in spec.vectors:
                sub = dataclasses.replace(spec, vector=vector, size=None)
                for stream in TemplateBuilder(self.lab, sub, self.source_mac).streams():
                    streams.append(dataclasses.replace(stream, weight=stream.weight / len(spec.vectors)))
            return streams
        if spec.vector == "carpet":
            return self._udp("carpet")
        if spec.vector in ("syn", "ack", "rst", "synack"):
            return self._tcp(spec.vector)
        if spec.vector == "udp":
            return self._udp("udp")
        if spec.vector == "udp-random":
            return self._udp_random()
        if spec.vector in REFLECTION_PORTS:
            return self._reflection(spec.vector)
        if spec.vector == "icmp":
            return self._icmp()
        return self._fragments()

    def _ip(self, dst: str, **kwargs):
        from scapy.layers.inet import IP  # noqa: PLC0415 - scapy loads slowly; only when building
        from scapy.layers.inet6 import IPv6  # noqa: PLC0415
        if self.version == 4:
            return IP(src=self.source, dst=dst, ttl=kwargs.get("ttl", 57), id=0x5eed)
        return IPv6(src=self.source, dst=dst, hlim=kwargs.get("ttl", 57))

    def _eth(self, server: Server):
        from scapy.layers.l2 import Ether  # noqa: PLC0415
        return Ether(src=self.source_mac, dst=server.mac)

    def _pad(self, packet, base_size: int):
        from scapy.packet import Raw  # noqa: PLC0415
        size = self.spec.size or base_size
        header = len(packet)
        return packet / Raw(b"\x00" * (size - header)) if size > header else packet

    def _tcp(self, vector: str) -> list[Stream]:
        from scapy.layers.inet import TCP  # noqa: PLC0415
        # Reflected SYN-ACKs come from a reflector's service port to the victim's random ports
        # (the ports the attacker put in its spoofed SYNs); the others target a service.
        reflected = vector == "synack"
        dport = self.spec.dport or (40000 if reflected else HTTP_PORT)
        sport = self.spec.sport or 40000
        variants = {"syn": [("S", [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])],
                    "ack": [("A", [])],
                    "rst": [("R", []), ("FA", [])],
                    "synack": [("SA", [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])]}[vector]
        streams = []
        for flags, options in variants:
            frames = []
            # Reflected: one template per reflector kind (port, options, distance), rotated through.
            kinds = ([(p, o, t) for p in ((self.spec.sport,) if self.spec.sport else TCP_REFLECTOR_PORTS)
                      for o in REFLECTOR_OPTIONS for t in REFLECTOR_TTLS] if reflected else [(sport, options, 57)])
            for port, opts, ttl in kinds:
                for dst, server in self.targets:
                    l3 = self._ip(dst, ttl=ttl)
                    packet = l3 / TCP(sport=port, dport=dport, flags=flags, seq=1,
                                      ack=0 if "A" not in flags else 1, window=64240, options=opts)
                    packet = self._pad(packet, 0)
                    frames.append(bytes(self._eth(server) / packet))
            edits = _frame_edits(frames[0], self.version, "tcp", spoof=self.spoof_bits > 0,
                                 spoof_bits=self.spoof_bits,
                                 random_sport=None if self.spec.sport or reflected else EPHEMERAL_PORTS,
                                 random_dport=EPHEMERAL_PORTS if reflected and not self.spec.dport else None,
                                 random_seq=True)
            streams.append(Stream(vector, tuple(frames), edits, weight=1.0 / len(variants)))
        return streams

    def _udp(self, vector: str) -> list[Stream]:
        from scapy.layers.inet import UDP  # noqa: PLC0415
        random_dport = None if self.spec.dport else (1, 65535)
        default_size = 512  # bytes: a typical botnet UDP flood datagram
        return self._udp_streams(vector, UDP(sport=self.spec.sport or 40000, dport=self.spec.dport or GAME_PORT),
                                 b"", default_size,
                                 random_sport=None if self.spec.sport else EPHEMERAL_PORTS,
                                 random_dport=random_dport)

    def _udp_random(self) -> list[Stream]:
        """UDP with random destination ports and sizes: no port or length for a signature to key on.

        Sizes: RANDOM_SIZES fixed draws (seeded, so runs repeat) within RANDOM_SIZE_RANGE, one template
        per size and target, random bytes as payload; the generator rotates through the templates."""
        import random  # noqa: PLC0415

        from scapy.layers.inet import UDP  # noqa: PLC0415
        from scapy.packet import Raw  # noqa: PLC0415
        if self.spec.size is not None:
            raise ValueError("udp-random: sizes are random; drop --size")
        draw = random.Random(0x5eed)
        hlen = (IPV4_HLEN if self.version == 4 else IPV6_HLEN) + UDP_HLEN
        sizes = sorted(draw.randrange(max(RANDOM_SIZE_RANGE[0], hlen + 1), RANDOM_SIZE_RANGE[1] + 1)
                       for _ in range(RANDOM_SIZES))
        frames = []
        for size in sizes:
            for dst, server in self.targets:
                udp = UDP(sport=self.spec.sport or 40000, dport=self.spec.dport or GAME_PORT)
                packet = self._ip(dst) / udp / Raw(draw.randbytes(size - hlen))
                frames.append(bytes(self._eth(server) / packet))
        edits = _frame_edits(frames[0], self.version, "udp", spoof=self.spoof_bits > 0, spoof_bits=self.spoof_bits,
                             random_sport=None if self.spec.sport else EPHEMERAL_PORTS,
                             random_dport=None if self.spec.dport else (1, 65535), random_seq=False)
        return [Stream("udp-random", tuple(frames), edits)]

    def _reflection(self, vector: str) -> list[Stream]:
        from scapy.layers.inet import UDP  # noqa: PLC0415
        size = self.spec.size
        payload_size = (size or 0) - (IPV4_HLEN if self.version == 4 else IPV6_HLEN) - UDP_HLEN
        if vector == "dns":
            payload = dns_any_response(payload_size if size else 3400)   # ANY: ~3.4 KB, fragmented
        elif vector == "ntp":
            payload = ntp_monlist_response(max(1, (payload_size - 8) // 72) if size else 6)   # 468-byte datagram
        elif vector == "ssdp":
            if size:
                raise ValueError("ssdp: responses have a fixed size; drop --size")
            payload = SSDP_RESPONSE
        elif vector == "memcached":
            payload = memcached_stats_response(payload_size if size else 1400)
        elif vector == "cldap":
            payload = cldap_search_response(payload_size if size else 2900)
        else:
            payload = chargen_response(payload_size if size else 1024)
        udp = UDP(sport=REFLECTION_PORTS[vector], dport=self.spec.dport or 40000)
        return self._udp_streams(vector, udp, payload, 0, random_sport=None,
                                 random_dport=None if self.spec.dport else EPHEMERAL_PORTS)

    def _udp_streams(self, vector: str, udp, payload: bytes, default_size: int, *,
                     random_sport, random_dport) -> list[Stream]:
        """UDP datagrams to every target; fragmented (one stream per fragment slot) beyond the MTU."""
        from scapy.packet import Raw  # noqa: PLC0415
        per_slot: list[list[bytes]] = []
        for dst, server in self.targets:
            packet = self._ip(dst) / udp.copy() / Raw(payload)
            if not payload:
                packet = self._pad(packet, default_size)
            for slot, fragment in enumerate(self._fragment(packet)):
                if slot == len(per_slot):
                    per_slot.append([])
                per_slot[slot].append(bytes(self._eth(server) / fragment))
        streams = []
        for slot, frames in enumerate(per_slot):
            edits = _frame_edits(frames[0], self.version, "udp", spoof=self.spoof_bits > 0,
                                 spoof_bits=self.spoof_bits, random_sport=random_sport,
                                 random_dport=random_dport, random_seq=False, first_fragment=slot == 0)
            streams.append(Stream(vector, tuple(frames), edits, weight=1.0 / len(per_slot)))
        return streams

    def _fragment(self, packet) -> list:
        from scapy.layers.inet import fragment  # noqa: PLC0415
        from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6  # noqa: PLC0415
        if len(packet) <= MTU:
            return [packet]
        if self.version == 4:
            return fragment(packet, MTU - IPV4_HLEN)
        ip6 = packet.copy()
        payload = ip6.payload
        ip6.remove_payload()
        frag = ip6 / IPv6ExtHdrFragment(id=0x5eed) / payload
        return fragment6(frag, MTU)

    def _icmp(self) -> list[Stream]:
        from scapy.layers.inet import ICMP  # noqa: PLC0415
        from scapy.layers.inet6 import ICMPv6EchoRequest  # noqa: PLC0415
        frames = []
        for dst, server in self.targets:
            if self.version == 4:
                packet = self._ip(dst) / ICMP(type=8, id=1, seq=1)
            else:
                packet = self._ip(dst) / ICMPv6EchoRequest(id=1, seq=1)
            frames.append(bytes(self._eth(server) / self._pad(packet, 84)))  # 84 B: ping's default datagram
        edits = _frame_edits(frames[0], self.version, "icmp", spoof=self.spoof_bits > 0,
                             spoof_bits=self.spoof_bits, random_sport=(0, 65535), random_dport=None,
                             random_seq=False)
        return [Stream("icmp", tuple(frames), edits)]

    def _fragments(self) -> list[Stream]:
        """Fragment flood: datagrams of --size (default 2,900 B) split into MTU-sized fragments."""
        from scapy.layers.inet import UDP  # noqa: PLC0415
        size = self.spec.size or 2900
        if size <= MTU:
            raise ValueError(f"frag: --size must exceed the MTU ({MTU} B) to fragment, got {size}")
        udp = UDP(sport=self.spec.sport or 40000, dport=self.spec.dport or GAME_PORT)
        hlen = IPV4_HLEN if self.version == 4 else IPV6_HLEN
        # Every frame gets a fresh IP id, so fragments never complete a datagram: a fragment flood.
        return self._udp_streams("frag", udp, b"\xa5" * (size - hlen - UDP_HLEN), 0,
                                 random_sport=None, random_dport=None)


def build_streams(lab: Lab, spec: AttackSpec) -> list[Stream]:
    """Validated streams for `spec` in `lab` (ValueError names the option at fault)."""
    return TemplateBuilder(lab, spec).streams()


class AttackProcess(JsonLinesProcess):
    """A `seawall attack ... --json` child process (the generator enters `<p>-up`, a botnet `<p>-att`;
    the caller stays put).

    `start()`, then `wait()` for the generator's JSON summary; `seconds` fills with
    per-second reports while it runs; `stop()` ends it early and still returns the summary.
    """

    def __init__(self, lab: Lab, spec: AttackSpec):
        spec.validate()
        self.lab, self.spec = lab, spec
        argv = [sys.executable, "-m", "appliance.cli", "attack", spec.vector, "--target", spec.target,
                "--pps", str(spec.pps), "--duration", str(spec.duration), "--lab", lab.name, "--json"]
        for flag, value in (("--dport", spec.dport), ("--sport", spec.sport), ("--size", spec.size),
                            ("--spoof", spec.spoof), ("--bots", spec.bots), ("--rate", spec.rate),
                            ("--sources", spec.sources)):
            if value is not None:
                argv += [flag, str(value)]
        if spec.vector == "multi":
            argv += ["--vectors", ",".join(spec.vectors)]
        if spec.pulse is not None:
            argv += ["--pulse", ",".join(str(s) for s in spec.pulse)]
        if spec.ramp is not None:
            argv += ["--ramp", str(spec.ramp)]
        super().__init__(argv, name=f"attack-{spec.vector}")
