"""Every vector from synthetic sample sets (confidence >= 0.8), and look-alikes that must not be called attacks."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from dataplane.api import Sample
from dataplane.constants import Direction, DropReason, TrafficClass
from policy.classify import ClassEvidence, Vector, classify_carpet, classify_destination
from policy.packets import PacketFeatures, parse_samples
from tests.unit.policy.fakes import fragment_frame, tcp_frame, udp_frame
from tests.unit.policy.scenarios import (
    GAME,
    clients,
    icmp_flood_frames,
    reflection_frames,
    spoofed,
    syn_flood_frames,
    udp_flood_frames,
)

MIN_CONFIDENCE = 0.5
DST = GAME


def features(*groups: tuple[list[bytes], int], tenant: int = 1) -> PacketFeatures:
    """Samples: each frame list repeated until it contributes `count` samples."""
    samples = []
    for frames, count in groups:
        for i in range(count):
            fr = frames[i % len(frames)]
            samples.append(Sample(timestamp_ns=i, tenant_idx=tenant, direction=Direction.INBOUND, dropped=False,
                                  reason=DropReason.NONE, wire_length=len(fr) + 4, data=fr[:128]))
    return parse_samples(samples)


def flood(tc: TrafficClass, pps: float = 100_000, threshold: float = 2_000, mean: float = 500) -> ClassEvidence:
    return ClassEvidence(tc, pps, threshold, mean)


def top(scores) -> tuple[Vector, float]:
    assert scores, "no vector reported"
    return scores[0].vector, scores[0].confidence


def test_syn_flood():
    v, conf = top(classify_destination([flood(TrafficClass.TCP_SYN)], features((syn_flood_frames(DST), 300)), set(),
                                       MIN_CONFIDENCE))
    assert v == Vector.SYN_FLOOD and conf >= 0.8


def test_tcp_ack_flood():
    acks = [tcp_frame(s, DST, 1000 + i, 443, "A") for i, s in enumerate(spoofed(200))]
    v, conf = top(classify_destination([flood(TrafficClass.TCP_OTHER)], features((acks, 300)), set(), MIN_CONFIDENCE))
    assert v == Vector.TCP_ACK_FLOOD and conf >= 0.8


@pytest.mark.parametrize("flags", ["R", "F", "RA", "FA"])
def test_rst_fin_flood(flags):
    frames = [tcp_frame(s, DST, 1000 + i, 443, flags) for i, s in enumerate(spoofed(200))]
    v, conf = top(classify_destination([flood(TrafficClass.TCP_OTHER)], features((frames, 300)), set(),
                                       MIN_CONFIDENCE))
    assert v == Vector.RST_FIN_FLOOD and conf >= 0.8


def test_synack_reflection_is_its_own_vector():
    """Issue 20, item 2: SYN-ACKs to a server that sent no SYN are reflection, not an ACK flood."""
    frames = [tcp_frame(s, DST, 443, 1024 + i, "SA") for i, s in enumerate(spoofed(200))]
    v, conf = top(classify_destination([flood(TrafficClass.TCP_OTHER)], features((frames, 300)), set(),
                                       MIN_CONFIDENCE))
    assert v == Vector.TCP_SYNACK_REFLECTION and conf >= 0.8


def test_synack_answers_from_the_servers_own_peers_are_no_reflection():
    peers = spoofed(20)
    frames = [tcp_frame(s, DST, 443, 1024 + i, "SA") for i, s in enumerate(peers)]
    scores = classify_destination([flood(TrafficClass.TCP_OTHER, mean=90_000)], features((frames, 300)),
                                  {ipaddress.ip_address(p) for p in peers}, MIN_CONFIDENCE)
    assert all(s.vector != Vector.TCP_SYNACK_REFLECTION for s in scores), scores


def test_udp_flood():
    v, conf = top(classify_destination([flood(TrafficClass.UDP)], features((udp_flood_frames(DST), 300)), set(),
                                       MIN_CONFIDENCE))
    assert v == Vector.UDP_FLOOD and conf >= 0.8


@pytest.mark.parametrize(("sport", "size", "vector"), [
    (53, 1200, Vector.DNS_AMPLIFICATION),
    (123, 440, Vector.NTP_AMPLIFICATION),
    (1900, 300, Vector.SSDP_AMPLIFICATION),
    (11211, 1400, Vector.MEMCACHED_AMPLIFICATION),
    (389, 1400, Vector.CLDAP_AMPLIFICATION),
    (19, 1000, Vector.CHARGEN_AMPLIFICATION),
    (161, 1000, Vector.OTHER_REFLECTION),
    (3702, 600, Vector.OTHER_REFLECTION),
    (17, 300, Vector.OTHER_REFLECTION),
])
def test_reflection_vectors(sport, size, vector):
    samples = features((reflection_frames(DST, sport, size), 300))
    v, conf = top(classify_destination([flood(TrafficClass.UDP)], samples, set(), MIN_CONFIDENCE))
    assert v == vector and conf >= 0.8


def test_fragmented_dns_answers_are_dns_amplification_not_fragment_flood():
    firsts = [bytes(Ether() / IP(src=f"203.0.113.{150 + i}", dst=DST, flags="MF", frag=0, proto=17)
                    / UDP(sport=53, dport=20000 + i) / Raw(b"x" * 1400)) for i in range(50)]
    later = [fragment_frame(f"203.0.113.{150 + i}", DST, offset=176, ident=i) for i in range(50)]
    scores = classify_destination([flood(TrafficClass.UDP), flood(TrafficClass.FRAGMENT)],
                                  features((firsts, 150), (later, 150), (reflection_frames(DST, 53, 900), 100)),
                                  set(), MIN_CONFIDENCE)
    v, conf = top(scores)
    assert v == Vector.DNS_AMPLIFICATION and conf >= 0.8
    assert set(scores[0].classes) == {TrafficClass.UDP, TrafficClass.FRAGMENT}


def test_icmp_flood():
    v, conf = top(classify_destination([flood(TrafficClass.ICMP)], features((icmp_flood_frames(DST), 200)), set(),
                                       MIN_CONFIDENCE))
    assert v == Vector.ICMP_FLOOD and conf >= 0.8


def test_fragment_flood():
    frames = [fragment_frame(s, DST, offset=100 + i) for i, s in enumerate(spoofed(50))]
    v, conf = top(classify_destination([flood(TrafficClass.FRAGMENT)], features((frames, 200)), set(),
                                       MIN_CONFIDENCE))
    assert v == Vector.FRAGMENT_FLOOD and conf >= 0.8


def test_other_protocol_flood():
    gre = [bytes(Ether() / IP(src=s, dst=DST, proto=47) / Raw(bytes(500))) for s in spoofed(50)]
    v, conf = top(classify_destination([flood(TrafficClass.OTHER)], features((gre, 200)), set(), MIN_CONFIDENCE))
    assert v == Vector.OTHER_FLOOD and conf >= 0.8


def test_multi_vector():
    samples = features((syn_flood_frames(DST), 200), (udp_flood_frames(DST), 200))
    scores = classify_destination([flood(TrafficClass.TCP_SYN), flood(TrafficClass.UDP, pps=20_000)], samples, set(),
                                  MIN_CONFIDENCE)
    vectors = {s.vector: s.confidence for s in scores}
    assert vectors[Vector.SYN_FLOOD] >= 0.8 and vectors[Vector.UDP_FLOOD] >= 0.8
    assert vectors[Vector.MULTI_VECTOR] >= 0.8


def test_carpet_bombing_with_its_underlying_vector():
    dsts = [f"192.0.2.{i}" for i in range(1, 200)]
    frames = [udp_frame(f"203.0.113.{150 + i % 50}", d, 53, 3000 + i, bytes(900)) for i, d in enumerate(dsts)]
    scores = classify_carpet([ClassEvidence(TrafficClass.UDP, 150_000, 25_000, 3_000)], features((frames, 400)),
                             n_destinations=199, top_share=0.01, min_destinations=8, min_confidence=MIN_CONFIDENCE)
    vectors = {s.vector: s.confidence for s in scores}
    assert vectors[Vector.CARPET_BOMBING] >= 0.8
    assert vectors[Vector.DNS_AMPLIFICATION] >= 0.8


def test_no_samples_caps_confidence_below_high():
    scores = classify_destination([flood(TrafficClass.TCP_OTHER)], features(), set(), MIN_CONFIDENCE)
    assert scores and scores[0].confidence < 0.9


# -- look-alikes ---------------------------------------------------------------------------------

def test_speed_test_acks_from_a_peer_are_not_an_ack_flood():
    client = "203.0.113.77"
    acks = [tcp_frame(client, DST, 50123, 8080, "A") for _ in range(5)]
    scores = classify_destination([flood(TrafficClass.TCP_OTHER, pps=60_000, threshold=3_000, mean=200)],
                                  features((acks, 300)), {ipaddress.ip_address(client)}, MIN_CONFIDENCE)
    assert scores == []


def test_dns_queries_inbound_are_not_dns_amplification():
    queries = [udp_frame(c, DST, 40000 + i, 53, b"\x12\x34\x01\x00\x00\x01" + bytes(20))
               for i, c in enumerate(clients(100))]
    scores = classify_destination([flood(TrafficClass.UDP, pps=30_000, threshold=20_000, mean=15_000)],
                                  features((queries, 300)), {ipaddress.ip_address(c) for c in clients(100)},
                                  MIN_CONFIDENCE)
    assert Vector.DNS_AMPLIFICATION not in {s.vector for s in scores}
    assert all(s.confidence < 0.8 for s in scores)


def test_game_players_surge_from_peers_is_not_a_udp_flood():
    from tests.unit.policy.scenarios import game_legit_frames

    players = {ipaddress.ip_address(c) for c in clients(60)}
    scores = classify_destination([flood(TrafficClass.UDP, pps=2_600, threshold=2_400, mean=1_800)],
                                  features((game_legit_frames(), 300)), players, MIN_CONFIDENCE)
    assert scores == []
