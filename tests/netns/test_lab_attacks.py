"""Every attack vector, sent by the live-frames generator through the Linux-bridge lab,
arrives at the server with its signature; the generator's counts match the capture."""

from __future__ import annotations

import ipaddress
import os
import pathlib
import subprocess
import sys
import uuid

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether

from appliance.lab import Lab
from appliance.lab.attack import REFLECTION_PORTS, AttackProcess, AttackSpec
from appliance.lab.capture import Capture
from appliance.lab.scenario import parse_scenario, play
from tests.support import wait_until

SPOOF_V4 = ipaddress.ip_network("198.18.0.0/15")
SPOOF_V6 = ipaddress.ip_network("2001:db8:5f00::/40")
SIGNATURE_PPS = 1000           # packets/s: low enough that nothing is lost on the way
SIGNATURE_DURATION_S = 0.4
ATTACK_TIMEOUT_S = 60.0        # seconds for the generator process (bcc compiles first)


@pytest.fixture(scope="module")
def lab(request):
    # One lab for the file: every test's attack process has ended and its frames are counted before the
    # next starts, and the captures match spoofed sources only (the servers' answers go to them).
    lab = Lab(f"a{uuid.uuid4().hex[:6]}")
    request.addfinalizer(lab.down)
    lab.up(linux_bridge=True)
    return lab


def attack_and_capture(lab: Lab, spec: AttackSpec, servers) -> tuple[dict, list[Capture]]:
    """Run `spec` while capturing spoofed-source frames on `servers`; wait until all have arrived."""
    v4 = ipaddress.ip_network(spec.target, strict=False).version == 4
    bpf = f"ip and src net {SPOOF_V4}" if v4 else f"ip6 and src net {SPOOF_V6}"
    captures = [Capture(s.namespace, lab.HOST_IF, bpf, keep=100_000).start() for s in servers]
    try:
        summary = AttackProcess(lab, spec).start().wait(ATTACK_TIMEOUT_S)
        wait_until(lambda: sum(len(c.frames) for c in captures) >= summary["transmitted"], timeout=10,
                   what=f"{summary['transmitted']} frames at the servers")
    finally:
        for capture in captures:
            capture.stop()
    return summary, captures


def _checksum_field(layer) -> str:
    return "chksum" if any(f.name == "chksum" for f in layer.fields_desc) else "cksum"


def assert_checksums_valid(packet: Ether) -> None:
    """The XDP program's incremental checksum updates agree with a full recomputation."""
    is_fragment = (IP in packet and (packet[IP].flags.MF or packet[IP].frag > 0)) or IPv6ExtHdrFragment in packet
    layers = [IP] if IP in packet else []
    if not is_fragment:   # a fragment's L4 checksum spans the whole datagram
        layers += [layer for layer in (TCP, UDP, ICMP, ICMPv6EchoRequest) if layer in packet]
    rebuilt = packet.copy()
    for layer in layers:
        delattr(rebuilt[layer], _checksum_field(rebuilt[layer]))
    again = Ether(bytes(rebuilt))
    for layer in layers:
        field = _checksum_field(packet[layer])
        assert getattr(again[layer], field) == getattr(packet[layer], field), (layer.__name__, packet.summary())


def run_vector(lab: Lab, vector: str, target: str | None = None, servers=None, **kwargs):
    server = lab.game_server
    spec = AttackSpec(vector, target or server.ipv4, pps=SIGNATURE_PPS, duration=SIGNATURE_DURATION_S, **kwargs)
    summary, captures = attack_and_capture(lab, spec, servers or [server])
    packets = [Ether(f) for c in captures for f in c.frames]
    # Honest counts: every frame the generator reports transmitted arrived, and nothing else did.
    assert summary["transmitted"] == sum(c.matched for c in captures) > 0
    assert summary["xmit_errors"] == 0
    for packet in packets[:300]:
        assert_checksums_valid(packet)
    return summary, packets


def sources(packets) -> set[str]:
    return {(p[IP].src if IP in p else p[IPv6].src) for p in packets}


@pytest.mark.parametrize("vector,flags", [("syn", {"S"}), ("ack", {"A"}), ("rst", {"R", "FA"})])
def test_tcp_floods(lab, vector, flags):
    _, packets = run_vector(lab, vector)
    assert {str(p[TCP].flags) for p in packets} == flags
    assert all(p[TCP].dport == 80 and p.dst == lab.game_server.mac for p in packets)
    assert all(ipaddress.ip_address(p[IP].src) in SPOOF_V4 for p in packets)
    assert len(sources(packets)) > 0.9 * len(packets)                  # varied per frame
    assert len({p[TCP].sport for p in packets}) > 0.9 * len(packets)
    assert len({p[TCP].seq for p in packets}) > 0.9 * len(packets)


def test_udp_flood_random_ports_fixed_size(lab):
    _, packets = run_vector(lab, "udp", size=300)
    assert all(p[IP].len == 300 for p in packets)
    assert len({p[UDP].dport for p in packets}) > 0.9 * len(packets)
    _, fixed = run_vector(lab, "udp", dport=28960)
    assert {p[UDP].dport for p in fixed} == {28960}


@pytest.mark.parametrize("vector", sorted(REFLECTION_PORTS))
def test_reflection_vectors(lab, vector):
    _, packets = run_vector(lab, vector)
    first = [p for p in packets if UDP in p and p[IP].frag == 0]
    assert first and {p[UDP].sport for p in first} == {REFLECTION_PORTS[vector]}
    assert len({p[UDP].dport for p in first}) > 0.5 * len(first)       # the victims' "client" ports
    payload = bytes(first[0][UDP].payload)
    if vector == "dns":
        assert first[0][IP].flags.MF and any(p[IP].frag > 0 for p in packets)   # ~3.4 KB, fragmented
        assert payload[2] & 0x80                                                # a response
    elif vector == "ntp":
        assert {p[IP].len for p in packets} == {468} and payload[3] == 42      # monlist
    elif vector == "ssdp":
        assert payload.startswith(b"HTTP/1.1 200 OK\r\n")
    elif vector == "memcached":
        assert b"STAT pid" in payload
    elif vector == "cldap":
        assert payload[0] == 0x30 and b"supportedControl" in b"".join(bytes(p[IP].payload) for p in packets)
    elif vector == "chargen":
        assert payload[:10] == b'!"#$%&\'()*'


def test_icmp_flood(lab):
    _, packets = run_vector(lab, "icmp")
    assert {p[ICMP].type for p in packets} == {8}
    assert len({p[ICMP].id for p in packets}) > 0.9 * len(packets)


def test_fragment_flood(lab):
    _, packets = run_vector(lab, "frag")
    assert all(p[IP].flags.MF or p[IP].frag > 0 for p in packets)
    assert any(p[IP].frag > 0 for p in packets) and any(p[IP].frag == 0 for p in packets)


def test_carpet_spreads_over_the_prefix(lab):
    gamma = [s for s in lab.servers if s.tenant == "gamma"]
    _, packets = run_vector(lab, "carpet", target="203.0.113.0/24", servers=gamma)
    destinations = {p[IP].dst for p in packets}
    assert len(destinations) > 50
    assert all(ipaddress.ip_address(d) in ipaddress.ip_network("203.0.113.0/24") for d in destinations)


def test_multi_sends_several_vectors_at_once(lab):
    _, packets = run_vector(lab, "multi", vectors=("syn", "udp", "icmp"))
    assert TCP in packets[0] or UDP in packets[0] or ICMP in packets[0]
    kinds = {"tcp" if TCP in p else "udp" if UDP in p else "icmp" for p in packets}
    assert kinds == {"tcp", "udp", "icmp"}


@pytest.mark.parametrize("vector", ["syn", "udp", "icmp", "dns"])
def test_ipv6_vectors(lab, vector):
    _, packets = run_vector(lab, vector, target=lab.game_server.ipv6)
    assert all(p[IPv6].dst == lab.game_server.ipv6 for p in packets)
    assert all(ipaddress.ip_address(p[IPv6].src) in SPOOF_V6 for p in packets)
    assert len(sources(packets)) > 0.9 * len(packets)


# Alone (tests/netns/conftest.py): the pacer's achieved rate (skipped <= 5 %) and the captured rate within 2 %.
@pytest.mark.alone
def test_reported_rate_matches_the_capture_and_the_request(lab):
    pps, duration = 20_000, 2.0
    spec = AttackSpec("udp", lab.game_server.ipv4, pps=pps, duration=duration, dport=28960, size=200)
    summary, (capture,) = attack_and_capture(lab, spec, [lab.game_server])
    assert summary["transmitted"] == capture.matched       # what the generator says arrived, arrived
    assert capture.dropped == 0
    # The pacer holds the requested rate: it sends exactly rate x duration unless it fell behind.
    assert summary["submitted"] + summary["skipped"] == int(pps * duration)
    assert summary["skipped"] <= 0.05 * pps * duration
    assert sum(summary["per_second"]) <= summary["transmitted"]
    captured_pps = capture.matched / summary["elapsed_s"]
    assert captured_pps == pytest.approx(summary["achieved_pps"], rel=0.02)


def test_attack_cli_errors_are_clear(lab):
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[2]))
    base = [sys.executable, "-m", "appliance.cli", "attack"]
    bad_target = subprocess.run([*base, "syn", "--target", "10.1.2.3", "--lab", lab.name],
                                capture_output=True, text=True, env=env, timeout=60)
    assert bad_target.returncode == 2 and "not inside a lab tenant prefix" in bad_target.stderr
    no_lab = subprocess.run([*base, "syn", "--target", "198.51.100.10", "--lab", "nosuchlab"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert no_lab.returncode == 1 and "is not up" in no_lab.stderr


# Alone (tests/netns/conftest.py): every legitimate request answered within its timeout during the floods.
@pytest.mark.alone
def test_playing_a_scenario_runs_traffic_and_timed_attacks(lab):
    scenario = parse_scenario({
        "scenario": {"name": "mini", "duration_s": 3},
        "legit": {"game_pps": 100, "http_rps": 1, "dns_qps": 1},
        "attacks": [{"vector": "syn", "target": "game", "start_s": 0.5, "duration_s": 1, "pps": 2000},
                    {"vector": "udp", "target": "s4", "start_s": 0.5, "duration_s": 1, "pps": 500,
                     "dport": 28960}]})
    game, web = lab.game_server, lab.server("s4")
    captures = [Capture(s.namespace, lab.HOST_IF, f"ip and src net {SPOOF_V4}", keep=0).start()
                for s in (game, web)]
    try:
        result = play(scenario, lab).wait(timeout=60)
    finally:
        for capture in captures:
            capture.stop()
    syn, udp = result["attacks"]
    assert (syn["vectors"], syn["transmitted"]) == (["syn"], 2000)
    assert (udp["vectors"], udp["transmitted"]) == (["udp"], 500)
    assert [c.matched for c in captures] == [2000, 500]
    for service in ("http", "game", "dns"):
        assert result["traffic"]["services"][service]["success_rate"] == 1.0
