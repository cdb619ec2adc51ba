"""Attack classification with a confidence 0..1 for each vector.

Evidence, per anomalous traffic class of a destination (or of a tenant, for
carpet bombing):
- magnitude: how far the rate is above its threshold (`_magnitude`);
- excess share: the part of the class rate that is above the baseline mean, i.e.
  how much of the traffic is new;
- sampled packets: source-port concentration on a reflection port (and the
  packet sizes those services answer with), TCP flag mix, packet-size and
  payload uniformity, source diversity, first fragments;
- flow symmetry: share of sampled senders that the destination itself talks to
  (outbound samples), counted against the new traffic only (the baseline's share of
  the mix may come from peers). A speed test's ACKs or a game's players come from
  peers the server answers; spoofed floods and reflected answers do not.

Without samples the sample-based evidence counts as neutral (0.5), so a vector
backed by rates alone can reach a moderate confidence but not a high one. A rate
barely above its threshold scales the whole confidence down (to 60 %).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import Any

import numpy as np

from dataplane.api import IPAddress
from dataplane.constants import TrafficClass
from policy.packets import PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, PacketFeatures


class Vector(enum.StrEnum):
    SYN_FLOOD = "syn_flood"
    TCP_ACK_FLOOD = "tcp_ack_flood"
    RST_FIN_FLOOD = "rst_fin_flood"
    TCP_SYNACK_REFLECTION = "tcp_synack_reflection"   # SYN-ACKs answering SYNs nobody here sent
    UDP_FLOOD = "udp_flood"
    DNS_AMPLIFICATION = "dns_amplification"
    NTP_AMPLIFICATION = "ntp_amplification"
    SSDP_AMPLIFICATION = "ssdp_amplification"
    MEMCACHED_AMPLIFICATION = "memcached_amplification"
    CLDAP_AMPLIFICATION = "cldap_amplification"
    CHARGEN_AMPLIFICATION = "chargen_amplification"
    OTHER_REFLECTION = "other_reflection"
    ICMP_FLOOD = "icmp_flood"
    FRAGMENT_FLOOD = "fragment_flood"
    OTHER_FLOOD = "other_flood"          # protocols other than TCP/UDP/ICMP (GRE, ESP, ...)
    CARPET_BOMBING = "carpet_bombing"
    MULTI_VECTOR = "multi_vector"
    # Application-layer and connection floods from real sources (issue 15), classified per server from
    # connection accounting by `policy.appflood`, not from a traffic class.
    HTTP_FLOOD = "http_flood"
    TCP_CONNECTION_FLOOD = "tcp_connection_flood"
    SLOWLORIS = "slowloris"
    TLS_FLOOD = "tls_flood"


# Vectors mitigated by per-source limits and the block list (policy.appflood), not by header rules.
APP_VECTORS = frozenset({str(Vector.HTTP_FLOOD), str(Vector.TCP_CONNECTION_FLOOD), str(Vector.SLOWLORIS),
                         str(Vector.TLS_FLOOD)})


# Which traffic classes each vector floods: the dataplane's stateful heuristics switched on for
# its destination while its incident is open (`policy.heuristics.HeuristicsSwitch`). Carpet
# bombing and multi-vector attacks flood what their component vectors do; other protocols
# (OTHER_FLOOD) have no heuristic.
VECTOR_CLASSES: dict[Vector, tuple[TrafficClass, ...]] = {
    Vector.SYN_FLOOD: (TrafficClass.TCP_SYN,),
    Vector.UDP_FLOOD: (TrafficClass.UDP,),
    Vector.ICMP_FLOOD: (TrafficClass.ICMP,),
    Vector.FRAGMENT_FLOOD: (TrafficClass.FRAGMENT,),
    Vector.TCP_ACK_FLOOD: (TrafficClass.TCP_OTHER,),
    Vector.RST_FIN_FLOOD: (TrafficClass.TCP_OTHER,),
    Vector.TCP_SYNACK_REFLECTION: (TrafficClass.TCP_OTHER,),   # SYN-ACKs checked against the servers' SYNs
    # Reflected answers: UDP datagrams, and the fragments of the large ones.
    **{v: (TrafficClass.UDP, TrafficClass.FRAGMENT)
       for v in (Vector.DNS_AMPLIFICATION, Vector.NTP_AMPLIFICATION, Vector.SSDP_AMPLIFICATION,
                 Vector.MEMCACHED_AMPLIFICATION, Vector.CLDAP_AMPLIFICATION, Vector.CHARGEN_AMPLIFICATION,
                 Vector.OTHER_REFLECTION)},
}

# Reflection source ports → (vector, IP length in bytes that the service's answers usually exceed).
REFLECTION_PORTS: dict[int, tuple[Vector, int]] = {
    53: (Vector.DNS_AMPLIFICATION, 300),
    123: (Vector.NTP_AMPLIFICATION, 200),         # monlist answers: 468 bytes
    1900: (Vector.SSDP_AMPLIFICATION, 200),
    11211: (Vector.MEMCACHED_AMPLIFICATION, 400),
    389: (Vector.CLDAP_AMPLIFICATION, 400),
    19: (Vector.CHARGEN_AMPLIFICATION, 100),
    17: (Vector.OTHER_REFLECTION, 100),           # QOTD
    161: (Vector.OTHER_REFLECTION, 200),          # SNMP GetBulk
    3702: (Vector.OTHER_REFLECTION, 200),         # WS-Discovery
    111: (Vector.OTHER_REFLECTION, 100),          # portmapper
    137: (Vector.OTHER_REFLECTION, 100),          # NetBIOS name service
    5353: (Vector.OTHER_REFLECTION, 100),         # mDNS
    1434: (Vector.OTHER_REFLECTION, 100),         # MS SQL browser
    3283: (Vector.OTHER_REFLECTION, 200),         # Apple Remote Desktop
    10001: (Vector.OTHER_REFLECTION, 100),        # Ubiquiti discovery
    37810: (Vector.OTHER_REFLECTION, 100),        # DVR DHCPDiscover
    520: (Vector.OTHER_REFLECTION, 100),          # RIPv1
    623: (Vector.OTHER_REFLECTION, 100),          # IPMI
    3478: (Vector.OTHER_REFLECTION, 100),         # STUN
    5683: (Vector.OTHER_REFLECTION, 100),         # CoAP
    32414: (Vector.OTHER_REFLECTION, 100),        # Plex media server discovery
    27015: (Vector.OTHER_REFLECTION, 300),        # Steam/Source engine A2S
}
REFLECTION_MIN_SHARE = 0.3     # share of UDP samples from one reflection port before calling it reflection
NEUTRAL = 0.5                  # sample evidence when there are no samples


@dataclasses.dataclass(frozen=True, slots=True)
class VectorScore:
    vector: Vector
    confidence: float
    traffic_class: TrafficClass | None
    evidence: dict[str, Any]
    classes: tuple[TrafficClass, ...] = ()   # every anomalous class this vector explains


@dataclasses.dataclass(frozen=True, slots=True)
class ClassEvidence:
    """Rates of one anomalous class at one destination (or one tenant)."""

    traffic_class: TrafficClass
    pps: float
    threshold: float
    baseline_mean: float


def _magnitude(pps: float, threshold: float) -> float:
    ratio = pps / max(threshold, 1.0)
    return float(np.clip(1.0 - np.exp(-3.0 * (ratio - 1.0)), 0.0, 1.0))


def _excess_share(ev: ClassEvidence) -> float:
    return float(np.clip((ev.pps - ev.baseline_mean) / max(ev.pps, 1.0), 0.0, 1.0))


def _top_share(values: np.ndarray) -> tuple[int | None, float]:
    if not len(values):
        return None, 0.0
    uniq, counts = np.unique(values, return_counts=True)
    i = int(np.argmax(counts))
    return int(uniq[i]), float(counts[i] / len(values))


def _payload_top_share(f: PacketFeatures) -> float:
    if not len(f):
        return 0.0
    keys = f.payload.view(np.uint64).reshape(-1) if f.payload.shape[1] == 8 else f.payload.sum(axis=1)
    return _top_share(keys)[1]


def _symmetric_share(f: PacketFeatures, peers: set[IPAddress]) -> float:
    if not len(f) or not peers:
        return 0.0
    return sum(1 for s in f.src if s in peers) / len(f)


def _peer_share_of_new(symmetric: float, exs: float) -> float:
    """How much the target's peers account for the traffic that made it anomalous.

    The baseline's part of the mix (1 - excess share) is the target's usual traffic and
    may come from peers without saying anything about the rest: only peers beyond that
    part speak for the excess. A flood mixed into a game server's players is then judged
    by the flood's senders, while a download's ACKs (new traffic, all from a peer) still
    are judged benign. When there is little excess (a busy server above a warm-up floor),
    the whole mix is what is judged, so the plain peer share weighs in by (1 - excess share).
    """
    of_new = float(np.clip((symmetric - (1.0 - exs)) / max(exs, 0.05), 0.0, 1.0))
    return exs * of_new + (1.0 - exs) * symmetric


def _score(vector: Vector, parts: list[tuple[float, float]], tclass: TrafficClass | None,
           evidence: dict[str, Any], penalty: float = 1.0) -> VectorScore:
    # parts[0] is always the magnitude: a rate barely over its threshold is weak evidence
    # whatever the samples say, so it also scales the whole score.
    magnitude = parts[0][1]
    confidence = sum(w * v for w, v in parts) * penalty * (0.6 + 0.4 * magnitude)
    return VectorScore(vector, round(float(np.clip(confidence, 0.0, 1.0)), 3), tclass, evidence)


# Classes whose answered share speaks for the traffic: TCP, where spoofed packets draw only
# handshake replies and resets (a spoofed UDP query is answered like a real one).
ANSWERED_CLASSES = frozenset({TrafficClass.TCP_SYN, TrafficClass.TCP_OTHER})


def classify_class(ev: ClassEvidence, samples: PacketFeatures, peers: set[IPAddress],
                   answered: float = 0.0) -> VectorScore:
    """The most likely vector behind one anomalous class, from inbound samples to that target.

    `answered`: the share of the target's new inbound traffic that its own outbound data grew with
    (`PolicyEngine._answered`): a TCP crowd the server answers is no flood whatever peers are known."""
    mag = _magnitude(ev.pps, ev.threshold)
    exs = _excess_share(ev)
    tc = ev.traffic_class
    in_class = samples.subset(samples.traffic_class == int(tc))
    n = len(in_class)
    evidence: dict[str, Any] = {"class": tc.name.lower(), "pps": round(ev.pps, 1),
                                "threshold_pps": round(ev.threshold, 1), "baseline_pps": round(ev.baseline_mean, 1),
                                "samples": n}

    if tc in (TrafficClass.UDP, TrafficClass.FRAGMENT):
        # First fragments still carry the UDP header: big reflected answers arrive fragmented.
        udp = samples.subset((samples.proto == PROTO_UDP) & (samples.sport >= 0))
        port, share = _top_share(udp.sport)
        if port in REFLECTION_PORTS and share >= REFLECTION_MIN_SHARE:
            vector, min_len = REFLECTION_PORTS[port]
            from_port = udp.subset(udp.sport == port)
            size_score = float(np.mean(from_port.ip_len >= min_len)) if len(from_port) else NEUTRAL
            evidence.update(top_sport=port, sport_share=round(share, 3), size_score=round(size_score, 3))
            return _score(vector, [(0.35, mag), (0.45, share), (0.2, size_score)], tc, evidence)
    if tc == TrafficClass.UDP:
        symmetric = _symmetric_share(in_class, peers)
        if n:
            length_share = _top_share(in_class.ip_len)[1]
            payload_share = _payload_top_share(in_class)
            uniformity = max(length_share, payload_share, exs)
        else:
            length_share = payload_share = 0.0
            uniformity = NEUTRAL
        peers_new = _peer_share_of_new(symmetric, exs)
        evidence.update(length_share=round(length_share, 3), payload_share=round(payload_share, 3),
                        symmetric_share=round(symmetric, 3), peer_share_of_new=round(peers_new, 3))
        return _score(Vector.UDP_FLOOD, [(0.45, mag), (0.35, exs), (0.2, uniformity)], tc, evidence,
                      penalty=1.0 - 0.6 * peers_new)
    if tc == TrafficClass.TCP_SYN:
        diversity = len(set(in_class.src)) / n if n else NEUTRAL
        symmetric = _symmetric_share(in_class, peers)
        peers_new = max(_peer_share_of_new(symmetric, exs), answered)
        evidence.update(source_diversity=round(diversity, 3), symmetric_share=round(symmetric, 3),
                        peer_share_of_new=round(peers_new, 3), answered_share=round(answered, 3))
        return _score(Vector.SYN_FLOOD, [(0.45, mag), (0.35, exs), (0.2, diversity)], tc, evidence,
                      penalty=1.0 - 0.5 * peers_new)
    if tc == TrafficClass.TCP_OTHER:
        flags = in_class.tcp_flags
        if n:
            rst_fin = float(np.mean((flags & (TCP_RST | TCP_FIN)) != 0))
            ack_only = float(np.mean(((flags & TCP_ACK) != 0) & ((flags & (TCP_SYN | TCP_RST | TCP_FIN)) == 0)))
            synack = float(np.mean((flags & (TCP_SYN | TCP_ACK | TCP_RST)) == (TCP_SYN | TCP_ACK)))
        else:
            rst_fin = ack_only = synack = NEUTRAL
        symmetric = _symmetric_share(in_class, peers)
        peers_new = max(_peer_share_of_new(symmetric, exs), answered)
        evidence.update(rst_fin_share=round(rst_fin, 3), ack_share=round(ack_only, 3),
                        synack_share=round(synack, 3), symmetric_share=round(symmetric, 3),
                        peer_share_of_new=round(peers_new, 3), answered_share=round(answered, 3))
        if n and synack > max(rst_fin, ack_only):
            # Answers to SYNs the destination's servers did not send: reflected off third parties.
            return _score(Vector.TCP_SYNACK_REFLECTION, [(0.4, mag), (0.3, exs), (0.3, synack)], tc, evidence,
                          penalty=1.0 - peers_new)
        if n and rst_fin > ack_only:
            return _score(Vector.RST_FIN_FLOOD, [(0.4, mag), (0.3, exs), (0.3, rst_fin)], tc, evidence,
                          penalty=1.0 - peers_new)
        return _score(Vector.TCP_ACK_FLOOD, [(0.4, mag), (0.3, exs), (0.3, ack_only)], tc, evidence,
                      penalty=1.0 - peers_new)
    if tc == TrafficClass.ICMP:
        return _score(Vector.ICMP_FLOOD, [(0.5, mag), (0.5, exs)], tc, evidence)
    if tc == TrafficClass.FRAGMENT:
        return _score(Vector.FRAGMENT_FLOOD, [(0.5, mag), (0.5, exs)], tc, evidence)
    return _score(Vector.OTHER_FLOOD, [(0.5, mag), (0.5, exs)], tc, evidence)


def classify_destination(classes: list[ClassEvidence], samples: PacketFeatures, peers: set[IPAddress],
                         min_confidence: float, answered: float = 0.0) -> list[VectorScore]:
    """Vectors (confidence >= min_confidence) for one destination's anomalous classes, best first.

    One vector may cover several classes (a reflection arrives as UDP and as
    fragments); it is reported once with its best confidence. Two or more
    distinct vectors add `multi_vector`.
    """
    best: dict[Vector, VectorScore] = {}
    covered: dict[Vector, set[TrafficClass]] = {}
    for ev in classes:
        score = classify_class(ev, samples, peers, answered if ev.traffic_class in ANSWERED_CLASSES else 0.0)
        if score.confidence < min_confidence:
            continue
        covered.setdefault(score.vector, set()).add(ev.traffic_class)
        if score.vector not in best or score.confidence > best[score.vector].confidence:
            best[score.vector] = score
    scores = sorted((dataclasses.replace(s, classes=tuple(sorted(covered[s.vector]))) for s in best.values()),
                    key=lambda s: -s.confidence)
    if len(scores) >= 2:
        scores.append(VectorScore(Vector.MULTI_VECTOR, scores[1].confidence, None,
                                  {"vectors": [str(s.vector) for s in scores]},
                                  tuple(sorted({c for s in scores for c in s.classes}))))
    return scores


def carpet_prefix(samples: PacketFeatures, classes: list[ClassEvidence]) -> str | None:
    """The smallest prefix holding every sampled destination of the carpet's classes (the attacked
    prefix, as far as the samples show it), or None without samples."""
    wanted = {int(ev.traffic_class) for ev in classes}
    addresses = {d for d, c in zip(samples.dst, samples.traffic_class, strict=True)
                 if d is not None and int(c) in wanted}
    if not addresses:
        return None
    family = max(({a for a in addresses if a.version == v} for v in (4, 6)), key=len)
    low, high = int(min(family)), int(max(family))
    network_type = ipaddress.IPv4Network if min(family).version == 4 else ipaddress.IPv6Network
    bits = 32 if network_type is ipaddress.IPv4Network else 128
    host_bits = (low ^ high).bit_length()
    return str(network_type((low >> host_bits << host_bits, bits - host_bits)))


def classify_carpet(classes: list[ClassEvidence], samples: PacketFeatures, n_destinations: int,
                    top_share: float, min_destinations: int, min_confidence: float,
                    peers: set[IPAddress] | None = None) -> list[VectorScore]:
    """Carpet bombing over a tenant's prefixes, plus the vector(s) the carpet is made of.

    The evidence names the attacked prefix (from the sampled destinations), the spread (how many
    addresses are elevated) and the rate each address receives on average: a carpet is made to
    stay below every per-address threshold, so that rate is the figure that shows how.

    `peers`: remotes the tenant's elevated addresses talk to (outbound samples). Now that a
    tenant's aggregate is judged against its own small baseline, a flash crowd spread over its
    sites is as broad as a carpet; what it is not is one-way: its senders are answered."""
    if not classes:
        return []
    mag = max(_magnitude(ev.pps, ev.threshold) for ev in classes)
    spread = 1.0 - top_share
    breadth = min(1.0, n_destinations / (2.0 * max(min_destinations, 1)))
    carpet_pps = sum(ev.pps for ev in classes)
    wanted = np.isin(samples.traffic_class, [int(ev.traffic_class) for ev in classes])
    symmetric = _symmetric_share(samples.subset(wanted), peers or set())
    exs = float(np.clip((carpet_pps - sum(ev.baseline_mean for ev in classes)) / max(carpet_pps, 1.0), 0.0, 1.0))
    peers_new = _peer_share_of_new(symmetric, exs)
    carpet = dataclasses.replace(
        _score(Vector.CARPET_BOMBING, [(0.4, mag), (0.3, spread), (0.3, breadth)], None,
               {"destinations": n_destinations, "top_share": round(top_share, 3),
                "classes": [ev.traffic_class.name.lower() for ev in classes],
                "prefix": carpet_prefix(samples, classes), "spread": n_destinations,
                "per_address_pps": round(carpet_pps / max(n_destinations, 1), 1),
                "pps": round(carpet_pps, 1), "symmetric_share": round(symmetric, 3),
                "peer_share_of_new": round(peers_new, 3)},
               penalty=1.0 - peers_new),
        classes=tuple(sorted(ev.traffic_class for ev in classes)))
    scores = [carpet] if carpet.confidence >= min_confidence else []
    if scores:
        underlying = classify_destination(classes, samples, peers or set(), min_confidence)
        scores += [s for s in underlying if s.vector != Vector.MULTI_VECTOR]
    return scores
