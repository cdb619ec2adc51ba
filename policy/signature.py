"""From attack samples to the narrowest rule that drops the attack and spares the server.

Method (per target and anomalous traffic class):
1. Take the sampled inbound packets of that class during the attack. They are a
   mix: the attack's share is about `attack_share` (excess over baseline / rate).
2. Fix the protocol (and the TCP flag pattern or fragment flag the class implies),
   then walk the fields source port, destination port, IP length, leading payload
   bytes and TTL. A field joins the rule when one value (or, for length and TTL,
   a tight range) covers at least `COVERAGE`·attack_share of the samples still
   matched: every field the attack packets share, so the rule is as narrow as the
   attack allows.
3. Check the rule against the destination's legitimate samples (taken before the
   attack). If it matches more than `legit_tolerance` of them, the attack cannot be
   told apart by headers; without legitimate samples, the rule must carry a field
   that legitimate traffic of a service does not share (payload bytes, an exact
   length, a reflection source port, a flag pattern no handshake uses).
   A flood with no such field (random ports, sizes and payload: issue 20, item 3) may still be
   dropped by its protocol and TTL band when the target's legitimate samples of other classes
   all lie outside that band (`_ttl_band_apart`).
4. Otherwise fall back to a RATE_LIMIT rule for the class (SYN: tcp_flags SYN; and
   the destination port when the attack aims at one) at a rate derived from the
   baseline, so the dataplane's own heuristics sort out the rest. A drop rule never matches all traffic of a destination, and no rule ever
   matches on source addresses.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dataplane.api import IPAddress, Range, Rule
from dataplane.constants import PAYLOAD_MATCH_BYTES, RuleAction, TrafficClass
from policy.classify import REFLECTION_PORTS
from policy.packets import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    PacketFeatures,
    match_rule,
)

COVERAGE = 0.8             # share of the estimated attack samples a chosen field value must cover
FLAG_MASK = TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN
LENGTH_RANGE_SPAN = 64     # bytes: widest length range used as a signature field
TTL_RANGE_SPAN = 12        # hops: widest TTL range used as a signature field
TTL_SLACK = 2              # hops added on both sides of an observed TTL range
MIN_PAYLOAD_BYTES = 2      # constant leading payload bytes worth matching on
MIN_TTL_EVIDENCE_SAMPLES = 10   # legitimate samples (any class) before a TTL band alone may carry a drop rule
                                # (a quiet server under a 1-in-64 sampling collects a few a minute)


@dataclasses.dataclass(frozen=True, slots=True)
class Signature:
    rule: Rule
    kind: str                 # "drop" (header signature) or "rate_limit" (fallback)
    attack_coverage: float    # share of the class's attack-window samples the rule matches
    legit_matches: float      # share of legitimate samples the rule matches (nan: none known)
    reason: str
    needs_samples: bool = False   # a fallback for want of samples: worth deriving again later
    # A fallback for want of legitimate samples to place the attack's TTL band against: worth deriving
    # again when more arrive (issue 20: a tenant with few clients kept the rate limit for good).
    needs_evidence: bool = False


def _class_base(tc: TrafficClass, a: PacketFeatures) -> dict:
    if tc == TrafficClass.TCP_SYN:
        return {"proto": PROTO_TCP, "tcp_flags": (TCP_SYN | TCP_ACK, TCP_SYN)}
    if tc == TrafficClass.TCP_OTHER:
        return {"proto": PROTO_TCP}
    if tc == TrafficClass.UDP:
        return {"proto": PROTO_UDP}
    if tc == TrafficClass.FRAGMENT:
        proto = _mode(a.proto)[0]
        return {"fragments": True, **({"proto": proto} if proto is not None else {})}
    proto = _mode(a.proto)[0]
    return {"proto": proto} if proto is not None else {}


def _mode(values: np.ndarray) -> tuple[int | None, int]:
    if not len(values):
        return None, 0
    uniq, counts = np.unique(values, return_counts=True)
    i = int(np.argmax(counts))
    return int(uniq[i]), int(counts[i])


def _rate_limit_rule(tenant_idx: int, dst: IPAddress | None, tc: TrafficClass, attack: PacketFeatures,
                     rate_pps: int, comment: str, narrow: dict) -> Rule:
    base = {**_class_base(tc, attack), **narrow}
    return Rule(tenant_idx=tenant_idx, dst=dst, action=RuleAction.RATE_LIMIT, rate_pps=max(int(rate_pps), 1),
                comment=comment, **base)


def derive_signature(*, tenant_idx: int, dst: IPAddress | None, traffic_class: TrafficClass,
                     attack: PacketFeatures, legit: PacketFeatures, attack_share: float, rate_limit_pps: float,
                     min_samples: int = 20, legit_tolerance: float = 0.01, comment: str = "",
                     ttl_evidence: PacketFeatures | None = None) -> Signature:
    """The narrowest rule for one attacked class of one target (dst None: tenant-wide).

    `ttl_evidence`: legitimate samples of the target's tenant, which show where its real clients
    sit when the target itself has too few samples to say (used for the TTL band only)."""
    tc = traffic_class
    a = attack.subset(attack.traffic_class == int(tc))
    legit_in_class = legit.subset(legit.traffic_class == int(tc))
    fallback_rate = max(1, math.ceil(rate_limit_pps))

    # A rate limit still spares other services of the target when the attack aims at one port.
    narrow: dict = {}

    def fallback(reason: str, coverage: float = float("nan"), needs_samples: bool = False,
                 needs_evidence: bool = False) -> Signature:
        rule = _rate_limit_rule(tenant_idx, dst, tc, a, fallback_rate, comment, narrow)
        return Signature(rule, "rate_limit", coverage, float("nan"), reason, needs_samples, needs_evidence)

    if len(a) < min_samples:
        return fallback(f"{len(a)} attack samples, {min_samples} needed for a header signature",
                        needs_samples=True)
    share = float(np.clip(attack_share, 0.2, 1.0))
    need = COVERAGE * share * len(a)
    fields = _class_base(tc, a)
    cluster = np.ones(len(a), bool)
    strong: list[str] = []

    if tc == TrafficClass.TCP_OTHER:
        value, count = _mode(a.tcp_flags & FLAG_MASK)
        if value is not None and count >= need:
            fields["tcp_flags"] = (FLAG_MASK, value)
            cluster &= (a.tcp_flags & FLAG_MASK) == value
            if value & (TCP_RST | TCP_FIN) or value == 0:
                strong.append("tcp_flags")
    for name in ("sport", "dport"):
        col = getattr(a, name)
        value, count = _mode(col[cluster])
        if value is not None and value >= 0 and count >= need:
            fields[name] = Range(value, value)
            cluster &= col == value
            if name == "dport":
                narrow["dport"] = fields[name]
            if name == "sport" and value in REFLECTION_PORTS:
                strong.append("sport")
    value, count = _mode(a.ip_len[cluster])
    if value is not None and count >= need:
        fields["length"] = Range(value, value)
        cluster &= a.ip_len == value
        strong.append("length")
    elif cluster.sum() >= need:
        lo, hi = np.percentile(a.ip_len[cluster], [2, 98])
        if hi - lo <= LENGTH_RANGE_SPAN:
            fields["length"] = Range(int(lo), int(hi))
            cluster &= (a.ip_len >= int(lo)) & (a.ip_len <= int(hi))
    if tc not in (TrafficClass.FRAGMENT, TrafficClass.ICMP, TrafficClass.OTHER):
        payload, mask = _payload_signature(a, cluster, need)
        if payload is not None:
            fields["payload"], fields["payload_mask"] = payload, mask
            cluster &= _payload_match(a, payload, mask)
            strong.append("payload")
    if cluster.sum() >= need:
        ttls = a.ttl[cluster]
        lo, hi = int(np.percentile(ttls, 1)), int(np.percentile(ttls, 99))
        if hi - lo <= TTL_RANGE_SPAN:
            fields["ttl"] = Range(max(0, lo - TTL_SLACK), min(255, hi + TTL_SLACK))

    rule = Rule(tenant_idx=tenant_idx, dst=dst, action=RuleAction.DROP, comment=comment, **fields)
    coverage = float(np.mean(match_rule(rule, a))) if len(a) else 0.0
    if coverage < COVERAGE * share * 0.9:
        return fallback(f"no header signature covers the attack (coverage {coverage:.2f})", coverage)
    # The SYN pattern is implied by the class, so it narrows nothing within it.
    narrowing = [k for k in ("sport", "length", "ttl", "payload", "tcp_flags") if k in fields
                 and not (k == "tcp_flags" and tc == TrafficClass.TCP_SYN)]
    if tc == TrafficClass.TCP_SYN:
        # Spoofed SYNs copy real stacks' sizes and options: only payload is foreign to a handshake.
        strong = [k for k in strong if k == "payload"]
    if not narrowing:
        return fallback("the attack shares only protocol and port with every other packet", coverage)
    if len(legit_in_class):
        legit_hits = float(np.mean(match_rule(rule, legit_in_class)))
        if legit_hits > legit_tolerance:
            return fallback(f"the best signature also matches {legit_hits:.1%} of legitimate samples", coverage)
        return Signature(rule, "drop", coverage, legit_hits, "header signature spares every legitimate sample")
    if not strong:
        evidence = legit if len(legit) >= MIN_TTL_EVIDENCE_SAMPLES or ttl_evidence is None else ttl_evidence
        band = _ttl_band_apart(fields.get("ttl"), evidence, legit_tolerance)
        if band is not None:
            return Signature(rule, "drop", coverage, float("nan"), band)
        short = len(evidence) < MIN_TTL_EVIDENCE_SAMPLES
        return fallback("no legitimate samples to check against and no field that legitimate traffic lacks"
                        + (f" ({len(evidence)} legitimate samples, {MIN_TTL_EVIDENCE_SAMPLES} needed to place the "
                           "TTL band)" if short and "ttl" in fields else ""),
                        coverage, needs_evidence=short and "ttl" in fields)
    return Signature(rule, "drop", coverage, float("nan"), f"no legitimate samples; separated by {', '.join(strong)}")


def _ttl_band_apart(ttl: Range | None, legit: PacketFeatures, legit_tolerance: float) -> str | None:
    """Why the attack's TTL band may carry a drop rule although the class has no legitimate samples,
    or None. A flood without a fixed port, length or payload (random everything) still comes from
    senders at similar hop counts, and the destination's legitimate traffic of other classes (its
    web visitors, its players) shows where real clients sit: a band none of them falls into
    separates the flood. Too few such samples: no evidence, so no drop rule."""
    if ttl is None or len(legit) < MIN_TTL_EVIDENCE_SAMPLES:
        return None
    inside = float(np.mean((legit.ttl >= ttl.lo) & (legit.ttl <= ttl.hi)))
    if inside > legit_tolerance:
        return None
    return (f"no legitimate samples of the class; TTL band {ttl.lo}-{ttl.hi} apart from all "
            f"{len(legit)} legitimate samples of the target (or its tenant)")


def _payload_match(a: PacketFeatures, payload: bytes, mask: bytes) -> np.ndarray:
    k = len(payload)
    want = np.frombuffer(payload, np.uint8)
    m = np.frombuffer(mask, np.uint8)
    return (a.payload_len >= PAYLOAD_MATCH_BYTES) & np.all((a.payload[:, :k] & m) == (want & m), axis=1)


def _payload_signature(a: PacketFeatures, cluster: np.ndarray, need: float) -> tuple[bytes | None, bytes | None]:
    """Leading payload bytes that the attack packets share (others masked out).

    The dataplane matches payload only on packets with at least PAYLOAD_MATCH_BYTES
    bytes of payload, so only such packets can carry a payload signature.
    """
    rows = np.flatnonzero(cluster & (a.payload_len >= PAYLOAD_MATCH_BYTES))
    if len(rows) < need:
        return None, None
    k = PAYLOAD_MATCH_BYTES
    block = a.payload[rows, :k]
    values = np.zeros(k, np.uint8)
    mask = np.zeros(k, np.uint8)
    for i in range(k):
        value, count = _mode(block[:, i])
        if value is not None and count >= need:
            values[i], mask[i] = value, 0xFF
    if np.count_nonzero(mask) < MIN_PAYLOAD_BYTES:
        return None, None
    # Together the chosen bytes must still cover the attack (bytes may be constant in different subsets).
    payload, mask_b = bytes(values), bytes(mask)
    if _payload_match(a, payload, mask_b)[cluster].sum() < need:
        return None, None
    last = int(np.flatnonzero(mask)[-1]) + 1
    return payload[:last], mask_b[:last]
