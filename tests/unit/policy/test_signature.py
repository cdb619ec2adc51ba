"""Signatures: the narrowest rule that drops the attack and never matches the server's legitimate packets."""

from __future__ import annotations

import ipaddress

import numpy as np

from dataplane.api import Range
from dataplane.constants import RuleAction, TrafficClass
from policy.packets import match_rule
from policy.signature import derive_signature
from tests.unit.policy.fakes import tcp_frame, udp_frame
from tests.unit.policy.scenarios import (
    GAME,
    game_legit_frames,
    reflection_frames,
    spoofed,
    syn_flood_frames,
    udp_flood_frames,
    web_legit_frames,
)
from tests.unit.policy.test_classify import features

DST = ipaddress.ip_address(GAME)


def derive(tc, attack, legit, share, rate=500.0):
    return derive_signature(tenant_idx=1, dst=DST, traffic_class=tc, attack=attack, legit=legit, attack_share=share,
                            rate_limit_pps=rate, comment="test")


def test_game_server_udp_flood_gets_exact_length_and_payload_and_spares_players():
    legit_frames = game_legit_frames()
    # Attack window: 5 kpps flood + 800 pps players, sampled alike.
    attack = features((udp_flood_frames(GAME), 500), (legit_frames, 80))
    legit = features((legit_frames, 300))
    sig = derive(TrafficClass.UDP, attack, legit, share=5000 / 5800)
    rule = sig.rule
    assert sig.kind == "drop" and rule.action == RuleAction.DROP
    assert rule.proto == 17 and rule.dport == Range(28960, 28960)
    assert rule.length == Range(540, 540)
    assert rule.payload is not None and rule.payload.startswith(b"\x13\x37")
    assert rule.sport is None                       # spoofed random source ports: not a shared field
    assert rule.dst == DST
    # Narrow: no legitimate packet of the server matches, every attack packet does.
    assert not match_rule(rule, features((legit_frames, len(legit_frames)))).any()
    assert match_rule(rule, features((udp_flood_frames(GAME), 100))).all()


def test_syn_flood_indistinguishable_from_real_syns_gets_a_rate_limit_from_the_baseline():
    syns, _ = web_legit_frames(GAME)
    attack = features((syn_flood_frames(GAME), 500), (syns, 5))
    sig = derive(TrafficClass.TCP_SYN, attack, features((syns, 200)), share=0.99, rate=180.0)
    rule = sig.rule
    assert sig.kind == "rate_limit" and rule.action == RuleAction.RATE_LIMIT
    assert rule.rate_pps == 180
    assert rule.proto == 6 and rule.tcp_flags == (0x12, 0x02)
    assert rule.dport == Range(443, 443)                  # SYNs to other services are not limited
    assert rule.sport is None and rule.length is None and rule.payload is None


def test_syn_flood_without_options_is_separated_from_real_syns_by_length():
    syns, _ = web_legit_frames(GAME)
    bare = [tcp_frame(s, GAME, 1024 + i, 443, "S", ttl=64) for i, s in enumerate(spoofed(200))]   # hping style
    sig = derive(TrafficClass.TCP_SYN, features((bare, 400), (syns, 5)), features((syns, 200)), share=0.99)
    assert sig.kind == "drop"
    assert sig.rule.length == Range(40, 40)
    assert not match_rule(sig.rule, features((syns, len(syns)))).any()


def test_reflection_without_legitimate_samples_drops_by_source_port():
    attack = features((reflection_frames(GAME, 53, 1200), 400))
    sig = derive(TrafficClass.UDP, attack, features(), share=0.98)
    assert sig.kind == "drop"
    assert sig.rule.sport == Range(53, 53) and sig.rule.proto == 17


def test_resolver_answers_are_spared_when_legit_samples_show_them():
    # The destination is a resolver: it normally receives small answers from port 53 too.
    answers = [udp_frame(f"198.51.100.{200 + i % 50}", GAME, 53, 33000 + i, bytes(60)) for i in range(100)]
    attack = features((reflection_frames(GAME, 53, 1200), 400), (answers, 20))
    sig = derive(TrafficClass.UDP, attack, features((answers, 200)), share=0.95)
    assert sig.kind == "drop"
    assert sig.rule.sport == Range(53, 53) and sig.rule.length == Range(1228, 1228)
    assert not match_rule(sig.rule, features((answers, len(answers)))).any()
    assert match_rule(sig.rule, features((reflection_frames(GAME, 53, 1200), 100))).mean() > 0.9


def test_flood_that_only_shares_the_service_port_never_drops_the_whole_port():
    rng = np.random.default_rng(5)
    # Random sizes and random payloads on the game port: nothing but the port is shared.
    frames = [udp_frame(s, GAME, 1024 + i, 28960, rng.integers(0, 256, int(rng.integers(20, 1200)), np.uint8).tobytes())
              for i, s in enumerate(spoofed(300))]
    sig = derive(TrafficClass.UDP, features((frames, 500)), features((game_legit_frames(), 200)), share=0.9)
    assert sig.kind == "rate_limit"
    assert sig.rule.action == RuleAction.RATE_LIMIT and sig.rule.dport == Range(28960, 28960)
    assert sig.rule.length is None and sig.rule.payload is None


def test_too_few_samples_fall_back_to_a_rate_limit():
    sig = derive(TrafficClass.UDP, features((udp_flood_frames(GAME), 5)), features(), share=0.9, rate=1234.0)
    assert sig.kind == "rate_limit" and sig.rule.rate_pps == 1234


def test_tenant_wide_rule_for_carpet_bombing_keeps_a_narrowing_field():
    frames = [udp_frame(f"203.0.113.{150 + i % 50}", f"192.0.2.{1 + i % 200}", 123, 3000 + i, bytes(440))
              for i in range(400)]
    sig = derive_signature(tenant_idx=3, dst=None, traffic_class=TrafficClass.UDP, attack=features((frames, 400), tenant=3),
                           legit=features(), attack_share=0.95, rate_limit_pps=1000, comment="carpet")
    assert sig.rule.dst is None
    assert sig.kind == "drop" and sig.rule.sport == Range(123, 123)


# -- issue 20, item 3: floods without a fixed port or length ------------------------------------------

def random_udp_flood(n: int = 300, ttl: int = 57) -> list[bytes]:
    rnd = np.random.default_rng(20)
    return [udp_frame(src, GAME, int(rnd.integers(1024, 65536)), int(rnd.integers(1, 65536)),
                      rnd.bytes(int(rnd.integers(40, 1400))), ttl=ttl + int(rnd.integers(0, 2)))
            for src in spoofed(n)]


def visitors(ttl: int) -> list[bytes]:
    return [tcp_frame(f"192.0.2.{10 + i}", GAME, 40000 + i, 80, "A", ttl=ttl) for i in range(40)]


def test_random_port_and_size_flood_is_dropped_by_its_ttl_band_when_real_clients_sit_elsewhere():
    attack = features((random_udp_flood(), 500))
    sig = derive(TrafficClass.UDP, attack, features((visitors(ttl=63), 200)), share=0.99)
    rule = sig.rule
    assert sig.kind == "drop" and rule.action == RuleAction.DROP, sig.reason
    assert rule.proto == 17 and rule.ttl is not None and rule.ttl.lo <= 57 and rule.ttl.hi < 63
    assert rule.dport is None and rule.length is None and rule.payload is None
    assert match_rule(rule, features((random_udp_flood(), 300))).all()
    assert not match_rule(rule, features((visitors(ttl=63), 40))).any()


def test_random_flood_in_the_real_clients_ttl_band_gets_a_rate_limit():
    attack = features((random_udp_flood(ttl=62), 500))
    sig = derive(TrafficClass.UDP, attack, features((visitors(ttl=63), 200)), share=0.99)
    assert sig.kind == "rate_limit"


def test_random_flood_without_any_legitimate_sample_gets_a_rate_limit():
    attack = features((random_udp_flood(), 500))
    sig = derive(TrafficClass.UDP, attack, features(), share=0.99)
    assert sig.kind == "rate_limit"


def test_too_few_legitimate_samples_are_no_evidence_for_a_ttl_band():
    attack = features((random_udp_flood(), 500))
    few = visitors(ttl=63)[:5]
    sig = derive(TrafficClass.UDP, attack, features((few, len(few))), share=0.99)
    assert sig.kind == "rate_limit"


def test_a_quiet_target_borrows_its_tenants_clients_as_ttl_evidence():
    attack = features((random_udp_flood(), 500))
    sig = derive_signature(tenant_idx=1, dst=DST, traffic_class=TrafficClass.UDP, attack=attack,
                           legit=features((visitors(ttl=63)[:3], 3)), attack_share=0.99, rate_limit_pps=500.0,
                           ttl_evidence=features((visitors(ttl=63), 100)))
    assert sig.kind == "drop" and sig.rule.ttl is not None and "tenant" in sig.reason
