"""A small in-memory dataplane for the policy engine's unit tests, and frame builders.

`FakeDataplane` implements `dataplane.api.DataplaneLike`. Traffic is a set of
`Flow`s, each a pool of real Ethernet frames (built with scapy) sent at a rate;
`advance(t, dt)` delivers one interval: every frame's packets are matched against
the installed rules (parsed with scapy, independently of policy.packets), counted
per destination, tenant, class and rule exactly like the XDP program counts them,
and a bounded share is sampled.

Connection accounting (issue 15) is given as `ConnTraffic`: what each of a set of
sources does to one server, per second; `advance` adds it to cumulative per-source
and per-destination counters, read back as `FlowCounters`. Source limits and the
block list are stored as given (the bpf tier checks that the program enforces them).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from dataplane.api import (
    BlockedSource,
    DataplaneError,
    DestinationCounters,
    FlowCounters,
    Rule,
    RuleCounters,
    Sample,
    SourceLimit,
    TenantCounterArrays,
    TenantCounters,
)
from dataplane.constants import (
    ADDRESS_OVERFLOW_ENTRIES,
    MAX_ADDRESSES,
    MAX_TENANTS,
    NO_TENANT,
    PAYLOAD_MATCH_BYTES,
    SAMPLE_BYTES,
    Direction,
    DropReason,
    RuleAction,
    TrafficClass,
)
from dataplane.keys import address_keys

N_CLASSES = len(TrafficClass)
N_REASONS = len(DropReason)
READ_WORDS = 2 * N_CLASSES + 1    # a destination read's row: packets[C], bytes[C], dropped packets


def distinct_keys(n: int) -> np.ndarray:
    """(n, 2) distinct map keys (the rate tracker never makes addresses of them unless asked)."""
    keys = np.zeros((n, 2), np.uint64)
    keys[:, 1] = np.arange(1, n + 1, dtype=np.uint64)
    return keys


def destination_read(keys: np.ndarray, counters: np.ndarray) -> DestinationCounters:
    """A destination read of `keys` whose (N, READ_WORDS) `counters` rows are viewed, not copied."""
    return DestinationCounters(keys=keys, tenant_idx=np.ones(len(keys), np.uint32), packets=counters[:, :N_CLASSES],
                               bytes=counters[:, N_CLASSES:2 * N_CLASSES], dropped_packets=counters[:, 2 * N_CLASSES])
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


# -- frames -------------------------------------------------------------------------------------

def _ip(src: str, dst: str, ttl: int, **kw):
    if ipaddress.ip_address(dst).version == 6:
        return IPv6(src=src, dst=dst, hlim=ttl)
    return IP(src=src, dst=dst, ttl=ttl, **kw)


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes = b"", ttl: int = 57,
              vlan: int | None = None) -> bytes:
    pkt = Ether(src=MAC_A, dst=MAC_B)
    if vlan is not None:
        pkt = pkt / Dot1Q(vlan=vlan)
    return bytes(pkt / _ip(src, dst, ttl) / UDP(sport=sport, dport=dport) / Raw(payload))


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes = b"", ttl: int = 57,
              options: list | None = None) -> bytes:
    tcp = TCP(sport=sport, dport=dport, flags=flags, options=options or [])
    return bytes(Ether(src=MAC_A, dst=MAC_B) / _ip(src, dst, ttl) / tcp / Raw(payload))


def syn_frame(src: str, dst: str, sport: int, dport: int, ttl: int = 57) -> bytes:
    """A SYN as real stacks send it (MSS, SACK, timestamps, window scale: 60 bytes of IPv4)."""
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    return tcp_frame(src, dst, sport, dport, "S", ttl=ttl, options=opts)


def icmp_frame(src: str, dst: str, size: int = 56, ttl: int = 57) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst, ttl=ttl) / ICMP(type=8) / Raw(b"\x00" * size))


def fragment_frame(src: str, dst: str, offset: int, ident: int = 7, size: int = 1000, ttl: int = 57) -> bytes:
    """A non-first IPv4 fragment of a UDP datagram (offset in 8-byte units)."""
    ip = IP(src=src, dst=dst, ttl=ttl, proto=17, flags="MF", frag=offset, id=ident)
    return bytes(Ether(src=MAC_A, dst=MAC_B) / ip / Raw(b"\xab" * size))


# -- the fake ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FrameFields:
    local: str                 # customer-side address (dst inbound, src outbound)
    proto: int
    length: int
    ttl: int
    sport: int | None
    dport: int | None
    flags: int | None
    fragment: bool
    payload: bytes
    tclass: TrafficClass


def frame_fields(frame: bytes, direction: Direction) -> FrameFields:
    pkt = Ether(frame)
    if IP in pkt:
        ip = pkt[IP]
        proto, length, ttl = ip.proto, ip.len, ip.ttl
        fragment = bool(ip.flags.MF) or ip.frag > 0
        first = ip.frag == 0
    else:
        ip = pkt[IPv6]
        proto, length, ttl = ip.nh, ip.plen + 40, ip.hlim
        fragment, first = False, True
    local = ip.dst if direction == Direction.INBOUND else ip.src
    sport = dport = flags = None
    payload = b""
    if first and TCP in pkt:
        sport, dport, flags = pkt[TCP].sport, pkt[TCP].dport, int(pkt[TCP].flags)
        payload = bytes(pkt[TCP].payload)[:PAYLOAD_MATCH_BYTES]
    elif first and UDP in pkt:
        sport, dport = pkt[UDP].sport, pkt[UDP].dport
        payload = bytes(pkt[UDP].payload)[:PAYLOAD_MATCH_BYTES]
    if fragment:
        tclass = TrafficClass.FRAGMENT
    elif proto == 6:
        tclass = TrafficClass.TCP_SYN if flags is not None and flags & 0x12 == 0x02 else TrafficClass.TCP_OTHER
    elif proto == 17:
        tclass = TrafficClass.UDP
    elif proto in (1, 58):
        tclass = TrafficClass.ICMP
    else:
        tclass = TrafficClass.OTHER
    return FrameFields(local, proto, length, ttl, sport, dport, flags, fragment, payload, tclass)


def rule_matches(rule: Rule, tenant_idx: int, f: FrameFields) -> bool:
    if rule.tenant_idx != tenant_idx or (rule.dst is not None and ipaddress.ip_address(f.local) != rule.dst):
        return False
    if rule.proto is not None and f.proto != rule.proto:
        return False
    for name, value in (("sport", f.sport), ("dport", f.dport), ("length", f.length), ("ttl", f.ttl)):
        r = getattr(rule, name)
        if r is not None and (value is None or not r.lo <= value <= r.hi):
            return False
    if rule.tcp_flags is not None:
        mask, want = rule.tcp_flags
        if f.flags is None or f.flags & mask != want:
            return False
    if rule.fragments is not None and f.fragment != rule.fragments:
        return False
    if rule.payload is not None:
        mask = rule.payload_mask or b"\xff" * len(rule.payload)
        if len(f.payload) < PAYLOAD_MATCH_BYTES:   # the program compares 8 bytes inside the frame
            return False
        if any((a & m) != (b & m) for a, b, m in zip(f.payload, rule.payload, mask, strict=False)):
            return False
    return True


@dataclasses.dataclass
class Flow:
    """Packets from a pool of frames at `pps` (a number or a function of time)."""

    name: str
    tenant_idx: int
    frames: list[bytes]
    pps: float | Callable[[float], float]
    direction: Direction = Direction.INBOUND
    attack: bool = False
    sample_one_in: int = 50          # the dataplane samples one packet in N ...
    max_samples_per_s: int = 200     # ... up to this many per flow and second
    fields: list[FrameFields] = dataclasses.field(default_factory=list)
    classes: np.ndarray | None = None        # TrafficClass of each frame
    wire_lengths: np.ndarray | None = None   # bytes on the wire of each frame
    rows_by_local: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Delivered packets, for assertions.
    sent: int = 0
    dropped: int = 0

    def rate(self, t: float) -> float:
        return float(self.pps(t) if callable(self.pps) else self.pps)


@dataclasses.dataclass
class ConnTraffic:
    """Every source of `sources` does this to `dst`, per second (established: open connections now)."""

    name: str
    tenant_idx: int
    dst: str
    sources: list[str]
    new_per_s: float = 0.0
    established: float = 0.0
    http_per_s: float = 0.0
    tls_per_s: float = 0.0
    client_bytes_per_s: float = 0.0
    server_bytes_per_s: float = 0.0
    # Cumulative counters per source: new, http, tls, client bytes, server bytes.
    totals: np.ndarray | None = None

    def per_second(self) -> np.ndarray:
        return np.array([self.new_per_s, self.http_per_s, self.tls_per_s, self.client_bytes_per_s,
                         self.server_bytes_per_s])


class FakeDataplane:
    def __init__(self, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.flows: list[Flow] = []
        self.rules: dict[int, Rule] = {}
        self.rule_counters: dict[int, list[int]] = {}
        self._next_rule = 1
        self.dest: dict[str, dict] = {}
        self.tenant: dict[int, dict[str, np.ndarray]] = {}
        self.samples: list[Sample] = []
        self._rules_version = 0
        self._scratch = self._tenant(NO_TENANT)
        del self.tenant[NO_TENANT]
        self._match_cache: dict[tuple[int, int], list[int | None]] = {}
        self.rule_log: list[tuple[str, int, Rule]] = []
        self.class_budgets: dict[int, dict[TrafficClass, int]] = {}
        self.conns: dict[str, ConnTraffic] = {}
        self.source_limits: list[SourceLimit] = []
        self.limit_log: list[list[SourceLimit]] = []
        self.blocked: dict[tuple[int, str], BlockedSource] = {}
        self.flow_reads: list[bool] = []            # per_source of each read_flow_counters call
        self.refuse_limits = 0                      # set_source_limits calls to refuse, as a full map would
        self.block_resets_sent = 0                  # connections reset at the block, as the dataplane counts them
        self.block_resets_deferred = 0
        self.block_resets_unsent = 0
        # Sources on the block list at each per-destination read (the read that resets their connections).
        self.blocked_at_read: list[set[tuple[int, str]]] = []

    def spill_store_status(self) -> dict[str, int]:
        """`Dataplane.spill_store_status()`: the fake keeps every address's counters in one place, so its
        store of the default size never holds one."""
        return {"slots": MAX_ADDRESSES, "in_use": 0, "handed_out": 0, "freed": 0, "retiring": 0,
                "overflow_entries": 0, "overflow_capacity": ADDRESS_OVERFLOW_ENTRIES}

    def splice_gate_status(self) -> dict[str, int | bool]:
        """`Dataplane.splice_gate_status()`: the fake splices nothing."""
        return {"open": False, "closes": 0, "active_destinations": 0}

    # traffic -------------------------------------------------------------------------------------
    def add_flow(self, flow: Flow) -> Flow:
        flow.fields = [frame_fields(fr, flow.direction) for fr in flow.frames]
        flow.classes = np.array([int(f.tclass) for f in flow.fields], np.int64)
        flow.wire_lengths = np.array([len(fr) + 4 for fr in flow.frames], np.int64)   # + FCS
        locals_ = sorted({f.local for f in flow.fields})
        flow.rows_by_local = {a: np.array([i for i, f in enumerate(flow.fields) if f.local == a]) for a in locals_}
        self.flows.append(flow)
        return flow

    def add_conns(self, traffic: ConnTraffic) -> ConnTraffic:
        old = self.conns.get(traffic.name)
        traffic.totals = old.totals if old is not None and old.sources == traffic.sources \
            else np.zeros((len(traffic.sources), 5))
        self.conns[traffic.name] = traffic
        return traffic

    def stop_conns(self, name: str) -> None:
        """The sources go quiet; their rows stay in the map (with their counts) until evicted."""
        c = self.conns[name]
        self.add_conns(dataclasses.replace(c, new_per_s=0.0, established=0.0, http_per_s=0.0, tls_per_s=0.0,
                                           client_bytes_per_s=0.0, server_bytes_per_s=0.0))

    def remove_flow(self, name: str) -> None:
        self.flows = [f for f in self.flows if f.name != name]

    def evict(self, address: str) -> None:
        """What the LRU map does under pressure: the row and its counters vanish."""
        self.dest.pop(str(ipaddress.ip_address(address)), None)

    def _tenant(self, idx: int) -> dict[str, np.ndarray]:
        if idx not in self.tenant:
            self.tenant[idx] = {"passed_packets": np.zeros(2, np.uint64), "passed_bytes": np.zeros(2, np.uint64),
                                "dropped_packets": np.zeros(2, np.uint64), "dropped_bytes": np.zeros(2, np.uint64),
                                "class_packets": np.zeros((2, N_CLASSES), np.uint64),
                                "class_bytes": np.zeros((2, N_CLASSES), np.uint64),
                                "reason_packets": np.zeros((2, N_REASONS), np.uint64)}
        return self.tenant[idx]

    def _matching_rules(self, flow: Flow) -> list[list[int]]:
        """Per frame, the rules it meets in id order: count-only rules count and let the packet
        go on; the first drop or rate-limit rule decides (as sw_apply_rules does)."""
        key = (id(flow), self._rules_version)
        cached = self._match_cache.get(key)
        if cached is None:
            cached = []
            for f in flow.fields:
                hits: list[int] = []
                if flow.direction == Direction.INBOUND:
                    for rid in sorted(self.rules):
                        if rule_matches(self.rules[rid], flow.tenant_idx, f):
                            hits.append(rid)
                            if self.rules[rid].action != RuleAction.COUNT:
                                break
                cached.append(hits)
            self._match_cache[key] = cached
        return cached

    def advance(self, t: float, dt: float = 1.0) -> None:
        """Deliver the traffic of the interval (t, t + dt]."""
        for c in self.conns.values():
            c.totals += c.per_second()[None, :] * dt
        budgets = {rid: r.rate_pps * dt for rid, r in self.rules.items() if r.action == RuleAction.RATE_LIMIT}
        for flow in self.flows:
            mean = flow.rate(t) * dt
            if mean <= 0:
                continue
            n_frames = len(flow.frames)
            total = int(self.rng.poisson(mean))
            counts = self.rng.multinomial(total, np.full(n_frames, 1.0 / n_frames))
            dropped = np.zeros(n_frames, np.int64)
            reasons = [DropReason.NONE] * n_frames
            matching = self._matching_rules(flow)
            for rid in sorted({r for hits in matching for r in hits}):
                rows = [i for i, hits in enumerate(matching) if rid in hits]
                rule = self.rules[rid]
                matched = int(counts[rows].sum())
                c = self.rule_counters[rid]
                c[0] += matched
                if rule.action == RuleAction.DROP:
                    dropped[rows] = counts[rows]
                elif rule.action == RuleAction.RATE_LIMIT:
                    admitted = int(min(matched, budgets[rid]))
                    budgets[rid] -= admitted
                    share = 1.0 - admitted / matched if matched else 0.0
                    dropped[rows] = np.floor(counts[rows] * share).astype(np.int64)
                else:
                    continue
                c[1] += int(dropped[rows].sum())
                for i in rows:
                    reasons[i] = DropReason.RULE if rule.action == RuleAction.DROP else DropReason.RATE_LIMIT
            passed = counts - dropped
            flow.sent += total
            flow.dropped += int(dropped.sum())
            d = int(flow.direction)
            nbytes = flow.wire_lengths
            # Addresses no tenant owns are counted per address only, as in the XDP program.
            tc = self._tenant(flow.tenant_idx) if flow.tenant_idx != NO_TENANT else self._scratch
            cls_packets = np.bincount(flow.classes, weights=counts, minlength=N_CLASSES).astype(np.uint64)
            cls_bytes = np.bincount(flow.classes, weights=counts * nbytes, minlength=N_CLASSES).astype(np.uint64)
            tc["class_packets"][d] += cls_packets
            tc["class_bytes"][d] += cls_bytes
            tc["passed_packets"][d] += np.uint64(passed.sum())
            tc["passed_bytes"][d] += np.uint64((passed * nbytes).sum())
            tc["dropped_packets"][d] += np.uint64(dropped.sum())
            tc["dropped_bytes"][d] += np.uint64((dropped * nbytes).sum())
            if flow.direction == Direction.INBOUND:
                for local, rows in flow.rows_by_local.items():
                    row = self.dest.setdefault(local, {"tenant": flow.tenant_idx,
                                                       "packets": np.zeros(N_CLASSES, np.uint64),
                                                       "bytes": np.zeros(N_CLASSES, np.uint64), "dropped": 0})
                    row["packets"] += np.bincount(flow.classes[rows], weights=counts[rows],
                                                  minlength=N_CLASSES).astype(np.uint64)
                    row["bytes"] += np.bincount(flow.classes[rows], weights=counts[rows] * nbytes[rows],
                                                minlength=N_CLASSES).astype(np.uint64)
                    row["dropped"] += int(dropped[rows].sum())
            # Sampling: one in N of each verdict, at most max_samples_per_s for the flow.
            budget = int(flow.max_samples_per_s * dt)
            for is_dropped, k in ((True, dropped), (False, passed)):
                picks = self.rng.binomial(k, 1.0 / flow.sample_one_in)
                for i in np.flatnonzero(picks):
                    for _ in range(min(int(picks[i]), budget)):
                        budget -= 1
                        frame = flow.frames[i]
                        self.samples.append(Sample(
                            timestamp_ns=int((t + self.rng.random() * dt) * 1e9), tenant_idx=flow.tenant_idx,
                            direction=flow.direction, dropped=is_dropped,
                            reason=reasons[i] if is_dropped else DropReason.NONE, wire_length=int(nbytes[i]),
                            data=frame[:SAMPLE_BYTES]))

    # DataplaneLike ---------------------------------------------------------------------------------
    def read_tenant_counters(self) -> dict[int, TenantCounters]:
        return {idx: TenantCounters(**{k: v.copy() for k, v in c.items()}) for idx, c in self.tenant.items()}

    def read_tenant_counter_arrays(self) -> TenantCounterArrays:
        return TenantCounterArrays.from_mapping(self.read_tenant_counters(), MAX_TENANTS + 1)

    def read_destination_counters(self) -> DestinationCounters:
        items = list(self.dest.items())
        order = self.rng.permutation(len(items))      # row order means nothing in an LRU map
        items = [items[i] for i in order]
        n = len(items)
        return DestinationCounters.from_addresses(
            addresses=[ipaddress.ip_address(a) for a, _ in items],
            tenant_idx=np.array([r["tenant"] if r["tenant"] is not None else NO_TENANT for _, r in items],
                                np.uint32),
            packets=np.array([r["packets"] for _, r in items], np.uint64).reshape(n, N_CLASSES),
            bytes=np.array([r["bytes"] for _, r in items], np.uint64).reshape(n, N_CLASSES),
            dropped_packets=np.array([r["dropped"] for _, r in items], np.uint64).reshape(n))

    def add_rule(self, rule: Rule) -> int:
        if rule.payload is not None and len(rule.payload) > PAYLOAD_MATCH_BYTES:
            raise ValueError("payload longer than PAYLOAD_MATCH_BYTES")
        if rule.action == RuleAction.RATE_LIMIT and rule.rate_pps <= 0:
            raise ValueError("rate limit rule without a rate")
        rule_id = self._next_rule
        self._next_rule += 1
        self.rules[rule_id] = rule
        self.rule_counters[rule_id] = [0, 0, 0]
        self._rules_version += 1
        self.rule_log.append(("add", rule_id, rule))
        return rule_id

    def remove_rule(self, rule_id: int) -> None:
        if rule_id not in self.rules:
            raise KeyError(f"no rule {rule_id}")
        self.rule_log.append(("remove", rule_id, self.rules.pop(rule_id)))
        self._rules_version += 1
        self.rule_counters.pop(rule_id)

    def read_rule_counters(self) -> dict[int, RuleCounters]:
        return {rid: RuleCounters(matched_packets=c[0], matched_bytes=0, dropped_packets=c[1])
                for rid, c in self.rule_counters.items()}

    def set_class_budgets(self, tenant_idx: int, budgets: dict[TrafficClass, int]) -> dict[TrafficClass, int]:
        """Recorded, not enforced: the fake counts no per-destination budget (tests/bpf checks the program's)."""
        self.class_budgets.setdefault(tenant_idx, {}).update(budgets)
        return dict(self.class_budgets[tenant_idx])

    def read_flow_counters(self, per_source: bool = False) -> FlowCounters:
        self.flow_reads.append(per_source)
        if not per_source:
            self.blocked_at_read.append(set(self.blocked))
        rows: dict[tuple[str, str | None], list] = {}
        for c in self.conns.values():
            for i, src in enumerate(c.sources):
                key = (c.dst, src if per_source else None)
                row = rows.setdefault(key, [c.tenant_idx, np.zeros(5), 0.0])
                row[1] += c.totals[i]
                row[2] += c.established
        keys = list(rows)
        n = len(keys)
        totals = np.array([r[1] for r in rows.values()]).reshape(n, 5).astype(np.uint64)
        return FlowCounters(
            keys=address_keys([ipaddress.ip_address(d) for d, _ in keys]).reshape(n, 2),
            sources=address_keys([ipaddress.ip_address(s) for _, s in keys]).reshape(n, 2) if per_source else None,
            tenant_idx=np.array([r[0] for r in rows.values()], np.uint32),
            new_connections=totals[:, 0], established=np.array([r[2] for r in rows.values()], np.int64),
            http_requests=totals[:, 1], tls_hellos=totals[:, 2], bytes_to_server=totals[:, 3],
            bytes_to_client=totals[:, 4], block_resets_sent=self.block_resets_sent,
            block_resets_deferred=self.block_resets_deferred, block_resets_unsent=self.block_resets_unsent)

    def set_source_limits(self, limits) -> None:
        if self.refuse_limits:
            self.refuse_limits -= 1
            raise DataplaneError("source limits: map update refused")
        self.source_limits = list(limits)
        self.limit_log.append(list(limits))

    def block_sources(self, entries) -> int:
        for b in entries:
            self.blocked[(b.tenant_idx, str(b.src))] = b
        return len(entries)

    def unblock_source(self, tenant_idx: int, src) -> None:
        self.blocked.pop((tenant_idx, str(src)), None)

    def read_blocked_sources(self) -> list[BlockedSource]:
        return list(self.blocked.values())

    def drain_samples(self, limit: int = 4096) -> list[Sample]:
        out, self.samples = self.samples[:limit], self.samples[limit:]
        return out
