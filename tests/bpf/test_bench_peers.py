"""The yardsticks of `seawall bench dataplane`: xdp-tools' xdp-filter and the bare bridge.

A ratio is only as good as what it divides by: xdp-filter must really drop the flood by its
port rule (and pass other ports), the bare bridge must really bridge, and loading them must
leave nothing behind (no namespace, nothing in bpffs).
"""

from __future__ import annotations

import os
import subprocess

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from appliance.bench import dataplane as bench_dataplane
from appliance.bench import peers
from dataplane import bpfsys

FLOOD_PORT = 28960


def udp_frame(dport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="198.19.7.7", dst="198.51.100.10") / UDP(sport=5555, dport=dport) / (b"\x00" * 64))


# Only what xdp-filter's set-up could leave: the tier runs on several workers, whose own
# namespaces and pins come and go meanwhile.
def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip().startswith("sw-bench-xdpfilter")}


def bpffs_entries() -> set[str]:
    return {os.path.join(root, name) for root, dirs, files in os.walk("/sys/fs/bpf") for name in dirs + files
            if "xdp" in name}


def test_xdp_filter_drops_its_port_and_passes_others_and_leaves_nothing_behind():
    namespaces, pinned = netns_names(), bpffs_entries()
    with peers.xdp_filter_dropping_udp_port(FLOOD_PORT) as fd:
        assert bpfsys.prog_test_run(fd, udp_frame(FLOOD_PORT))[0] == bpfsys.XDP_DROP
        assert bpfsys.prog_test_run(fd, udp_frame(FLOOD_PORT + 1))[0] == bpfsys.XDP_PASS
    assert netns_names() == namespaces
    assert bpffs_entries() == pinned


def test_bare_bridge_redirects_every_frame():
    with peers.bare_bridge() as fd:
        for port in (53, FLOOD_PORT):
            assert bpfsys.prog_test_run(fd, udp_frame(port))[0] == bpfsys.XDP_REDIRECT


def test_bench_reports_the_cpu_independent_ratios():
    result = bench_dataplane.run(tenants=20, rules=5, repeat=1_000, runs=1)
    assert result["verdicts"]["xdp_filter"] == "DROP"
    assert result["verdicts"]["drop"] == "DROP"
    assert result["verdicts"]["bare_bridge"] == result["verdicts"]["pass"] == "REDIRECT"
    assert result["drop_vs_xdp_filter"] == round(result["xdp_filter_ns"] / result["drop_ns"], 2)
    assert result["pass_vs_bare_bridge"] == round(result["pass_ns"] / result["bare_bridge_ns"], 2)
    text = bench_dataplane.render(result)
    assert "drop_vs_xdp_filter" in text and "pass_vs_bare_bridge" in text
