"""`seawall bench compare`: Seawall side by side with nftables, the Linux bridge and xdp-filter.

Every figure is CPU time of the device under test per packet, measured on the
bench of `compare_lab` (threaded NAPI kthread's CPU time over the packets it
handled), a median over `runs` bursts with min and max. Rates are packets per
CPU-second (1e9 / ns per packet); a ratio above 1 means Seawall does more with
the same CPU. The filter is the same everywhere: tenant prefixes as the
protected destinations, a deny rule (UDP from 198.19.255.0/24 source port 123:
an NTP reflection) and a SYN rate limit on the attacked server.

Parts: drop, forward, latency, scale (BPF_PROG_TEST_RUN), control plane
(policy tick), detection (onset to detection, Seawall vs FastNetMon: compare_detection).
A run of some parts keeps the other parts' figures from the compare.json already in `out_dir`.
Figures, never pass/fail on speed. The machine is shared: say so next to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import structlog
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from appliance.bench import echo
from appliance.bench.compare_lab import (
    DIRECT_SERVER,
    DUT_CPU,
    GENERATOR_CPU,
    THROUGH_SERVER,
    BenchError,
    CompareLab,
    doing,
    sh,
)
from appliance.lab import netlink
from appliance.lab.livegen import FrameEdits
from appliance.lab.nsenter import run_in_netns

log = structlog.get_logger()

DENY_SOURCE = "198.19.255.0/24"   # the reflectors of the deny rule
DENY_SPORT = 123                  # NTP
SYN_RATE_PPS = 1000               # packets/s admitted by the SYN rate limit
TENANT_SPACE = ipaddress.ip_network("198.18.0.0/15")
TENANT_PREFIXLEN = 29             # one /29 per tenant: 16,384 fit in TENANT_SPACE
LEGIT_SOURCE = "203.0.113.10"
ECHO_PORT = 7007
ECHO_TENANT_PREFIX = f"{THROUGH_SERVER}/32"
NTP_PAYLOAD = 440                 # bytes: a monlist response entry block (IP length 468)
SYN_SOURCES_MASK = 0xFFFF         # randomized low source bits: 198.19.0.0/16
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
ECHO_STARTUP_S = 30.0             # seconds for the echo client's interpreter to start, on a busy machine
DETECTION_METHOD = ("Seconds from a flood's onset to Seawall's incident and to FastNetMon's ban callback, both "
                    "watching the same flood: Seawall with every tenant in monitor mode (it forwards everything), "
                    "FastNetMon mirroring the customer switch's uplink behind it (the generator's XDP frames meet "
                    "no packet tap before that). null: not detected within 15 s. FastNetMon flags a host "
                    "whose packets/s pass a fixed per-host threshold, so a flood below it goes unseen whatever "
                    "its shape; Seawall compares each server's traffic with what it learned of that server. See "
                    "appliance/bench/compare_detection.py for the thresholds and why.")
DETECTION_REASON = ("not measured: FastNetMon (Debian `fastnetmon`) is not installed on this machine and the "
                    "time box of this run went to the dataplane figures")


@dataclasses.dataclass(frozen=True, slots=True)
class Sizes:
    """Counts of one comparison run."""

    packets: int = 2_000_000        # frames sent per burst (the DUT handles what it can)
    runs: int = 5                   # bursts per figure: median, min, max
    prefixes: tuple[int, ...] = (1, 10_000)
    latency_samples: int = 3000
    flood_pps: int = 1_000_000
    scale_points: tuple[int, ...] = (10, 100, 1000, 10_000, 100_000)
    scale_repeat: int = 200_000
    control_points: tuple[int, ...] = (1000, 10_000, 100_000, 1_000_000)
    control_ticks: int = 10


QUICK = Sizes(packets=100_000, runs=3, prefixes=(1, 1000), latency_samples=300, flood_pps=100_000,
              scale_points=(10, 1000), scale_repeat=10_000, control_points=(1000,), control_ticks=3)


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    """ns per packet over several bursts."""

    samples: tuple[float, ...]
    packets: int                    # packets the DUT handled over all bursts
    delivered: int                  # of those, packets that reached the sink

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict:
        return {"ns_per_packet": round(self.median_ns, 1), "min_ns": round(min(self.samples), 1),
                "max_ns": round(max(self.samples), 1), "mpps_per_cpu": round(1e3 / self.median_ns, 3),
                "packets": self.packets, "delivered": self.delivered, "runs": len(self.samples)}


# -- traffic ------------------------------------------------------------------------------------

def tenant_prefixes(count: int) -> list[ipaddress.IPv4Network]:
    if not 1 <= count <= 2 ** (TENANT_PREFIXLEN - TENANT_SPACE.prefixlen):
        raise ValueError(f"prefixes: 1..{2 ** (TENANT_PREFIXLEN - TENANT_SPACE.prefixlen)}, got {count}")
    base = int(TENANT_SPACE.network_address)
    size = 2 ** (32 - TENANT_PREFIXLEN)
    return [ipaddress.ip_network(f"{ipaddress.IPv4Address(base + i * size)}/{TENANT_PREFIXLEN}") for i in range(count)]


def target_of(prefixes: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Address:
    """The attacked server: in the last prefix, so a lookup walks a full table."""
    return prefixes[-1].network_address + 1


def ntp_flood(target: ipaddress.IPv4Address) -> tuple[bytes, FrameEdits]:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src="198.19.255.1", dst=str(target), ttl=57) / UDP(sport=DENY_SPORT, dport=40000)
                  / (b"\xd7" * NTP_PAYLOAD))
    return frame, FrameEdits(src_off=26, src_mask=0xFF, ip_csum_off=24, l4_csum_off=40, l4_pseudo=True,
                             l4_udp=True, ipid_off=18, dport_off=36, dport_range=(1024, 64512))


def syn_flood(target: ipaddress.IPv4Address) -> tuple[bytes, FrameEdits]:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src="198.19.0.1", dst=str(target), ttl=57) / TCP(sport=40000, dport=443, flags="S",
                                                                         window=64240))
    return frame, FrameEdits(src_off=26, src_mask=SYN_SOURCES_MASK, ip_csum_off=24, l4_csum_off=50,
                             l4_pseudo=True, ipid_off=18, sport_off=34, sport_range=(1024, 64512), seq_off=38)


def legit_ack(target: ipaddress.IPv4Address) -> tuple[bytes, FrameEdits]:
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src=LEGIT_SOURCE, dst=str(target), ttl=60) / TCP(sport=40000, dport=443, flags="A")
                  / (b"\x17" * 64))
    return frame, FrameEdits()


# -- the devices under test ---------------------------------------------------------------------

def nft_rules(target: ipaddress.IPv4Address) -> str:
    return (f"        ip daddr @tenants ip saddr {DENY_SOURCE} udp sport {DENY_SPORT} drop\n"
            f"        ip daddr {target} tcp flags & (syn | ack) == syn limit rate over {SYN_RATE_PPS}/second drop\n")


def nft_set(prefixes: list[ipaddress.IPv4Network]) -> str:
    return ("    set tenants { type ipv4_addr; flags interval; elements = { "
            + ", ".join(str(p) for p in prefixes) + " } }\n")


@contextlib.contextmanager
def nft_ingress(lab: CompareLab, prefixes: list[ipaddress.IPv4Network]) -> Iterator[None]:
    table = f"{lab.tag}in"
    script = (f"table netdev {table} {{\n{nft_set(prefixes)}"
              f"    chain ingress {{ type filter hook ingress device \"{lab.dut_in}\" priority -500; policy accept;\n"
              f"{nft_rules(target_of(prefixes))}    }}\n}}\n")
    _nft_load(lab, script)
    try:
        yield
    finally:
        sh(["nft", "delete", "table", "netdev", table], check=False, netns=lab.dut_ns)


@contextlib.contextmanager
def linux_bridge(lab: CompareLab) -> Iterator[None]:
    bridge = f"{lab.tag}br"
    with doing(f"bridge {bridge} in {lab.dut_ns}"), netlink.iproute(lab.dut_ns) as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
    try:
        with doing(f"bridge {bridge} in {lab.dut_ns}"), netlink.iproute(lab.dut_ns) as ipr:
            for port in (lab.dut_in, lab.dut_out):
                ipr.link("set", index=netlink.index(ipr, port), master=netlink.index(ipr, bridge))
            netlink.set_up(ipr, bridge)
        yield
    finally:
        with doing(f"delete bridge {bridge} in {lab.dut_ns}"), netlink.iproute(lab.dut_ns) as ipr:
            netlink.delete_link(ipr, bridge)


@contextlib.contextmanager
def nft_bridge(lab: CompareLab, prefixes: list[ipaddress.IPv4Network]) -> Iterator[None]:
    table = f"{lab.tag}br"
    script = (f"table bridge {table} {{\n{nft_set(prefixes)}"
              "    chain prerouting { type filter hook prerouting priority -300; policy accept;\n"
              f"{nft_rules(target_of(prefixes))}    }}\n}}\n")
    with linux_bridge(lab):
        _nft_load(lab, script)
        try:
            yield
        finally:
            sh(["nft", "delete", "table", "bridge", table], check=False, netns=lab.dut_ns)


def _nft_load(lab: CompareLab, script: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as handle:
        handle.write(script)
    try:
        sh(["nft", "-f", handle.name], netns=lab.dut_ns)
    finally:
        os.unlink(handle.name)


@contextlib.contextmanager
def xdp_filter(lab: CompareLab) -> Iterator[None]:
    """xdp-filter (xdp-tools), static part only: it can express 'drop UDP source port 123', no
    source prefix with it, no destination prefixes, no rate limit."""
    if shutil.which("xdp-filter") is None:
        raise BenchError("xdp-filter is not installed (Debian package xdp-tools)")
    # nsenter, not `ip netns exec`: the latter remounts /sys and hides /sys/fs/bpf, where
    # xdp-filter pins its maps (and removes them at unload). libxdp pins its dispatcher under
    # LIBXDP_BPFFS: a bpffs of this run's own, since it leaves its directory behind on the machine's
    # /sys/fs/bpf (`xdp`) after the unload.
    with tempfile.TemporaryDirectory(prefix="sw-bench-libxdp-") as bpffs:
        sh(["mount", "-t", "bpf", "bpf", bpffs])
        enter = ["nsenter", f"--net=/run/netns/{lab.dut_ns}", "--", "env", f"LIBXDP_BPFFS={bpffs}"]
        try:
            sh([*enter, "xdp-filter", "load", lab.dut_in, "--mode", "native", "--features", "udp,ipv4"])
            try:
                sh([*enter, "xdp-filter", "port", str(DENY_SPORT), "--mode", "src", "--proto", "udp"])
                yield
            finally:
                sh([*enter, "xdp-filter", "unload", lab.dut_in], check=False)
        finally:
            sh(["umount", bpffs], check=False)


@contextlib.contextmanager
def seawall(lab: CompareLab, prefixes: list[ipaddress.IPv4Network], echo_tenant: bool = False) -> Iterator:
    """The real Dataplane bridging the DUT's two veths, with the tenant set and rules compiled as in production."""
    from dataplane.api import Rule  # noqa: PLC0415
    from dataplane.constants import RuleAction  # noqa: PLC0415
    from dataplane.dataplane import Dataplane  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415
    from tenants.compile import assign_indices, compile_tenant_set  # noqa: PLC0415

    deny = [{"src": DENY_SOURCE, "proto": "udp", "sport": DENY_SPORT}]
    tables = [{"id": f"t{i}", "name": f"Tenant {i}", "prefixes": [str(p)], "deny": deny}
              for i, p in enumerate(prefixes)]
    if echo_tenant:
        tables.append({"id": "echo", "name": "Echo server", "prefixes": [ECHO_TENANT_PREFIX]})
    tenant_set = TenantSet.from_dicts(tables)
    indices = assign_indices([t.id for t in tenant_set], {})
    dp = Dataplane()
    try:
        dp.apply_tenants(compile_tenant_set(tenant_set, indices))
        target = target_of(prefixes)
        dp.add_rule(Rule(tenant_idx=indices[f"t{len(prefixes) - 1}"], dst=target, action=RuleAction.RATE_LIMIT,
                         proto=6, tcp_flags=(0x12, 0x02), rate_pps=SYN_RATE_PPS, comment="syn rate limit"))
        run_in_netns(lab.dut_ns, dp.attach, lab.dut_in, lab.dut_out, "native")
        try:
            yield dp
        finally:
            dp.detach()
    finally:
        dp.close()


@contextlib.contextmanager
def xdp_floor(lab: CompareLab) -> Iterator[None]:
    """`return XDP_DROP` on the DUT's ingress: the floor of any XDP filter."""
    from bcc import BPF  # noqa: PLC0415

    bpf = BPF(src_file=str(pathlib.Path(__file__).resolve().parents[2] / "dataplane" / "bpf" / "minimal.c").encode())
    try:
        run_in_netns(lab.dut_ns, BPF.attach_xdp, lab.dut_in, bpf.load_func(b"xdp_minimal", BPF.XDP), 0)
        try:
            yield
        finally:
            run_in_netns(lab.dut_ns, BPF.remove_xdp, lab.dut_in, 0)
    finally:
        bpf.cleanup()


# -- measuring ----------------------------------------------------------------------------------

def measure(lab: CompareLab, frame: bytes, edits: FrameEdits, sizes: Sizes) -> Figure:
    """ns of DUT kthread CPU per packet the DUT received, over `sizes.runs` bursts."""
    assert lab.generator is not None
    samples: list[float] = []
    handled = delivered = 0
    lab.generator.send(frame, edits, min(sizes.packets, 20_000))   # warm caches and the address LRU
    lab.wait_drained(lab.dut_ns, lab.dut_in)
    for _ in range(sizes.runs):
        cpu0, rx0 = lab.kthread_cpu_ns(), lab.rx_packets(lab.dut_ns, lab.dut_in)
        sink0 = lab.rx_packets(lab.sink_ns, lab.sink_if)
        lab.generator.send(frame, edits, sizes.packets)
        rx1 = lab.wait_drained(lab.dut_ns, lab.dut_in)
        cpu1 = lab.kthread_cpu_ns()
        sink1 = lab.wait_drained(lab.sink_ns, lab.sink_if)
        if rx1 - rx0 <= 0:
            raise BenchError("the DUT received no packet from the generator")
        samples.append((cpu1 - cpu0) / (rx1 - rx0))
        handled += rx1 - rx0
        delivered += sink1 - sink0
    return Figure(tuple(samples), handled, delivered)


def run_drop(lab: CompareLab, sizes: Sizes, progress: Callable[[str], None]) -> dict:
    out: dict[str, dict] = {}
    for count in sizes.prefixes:
        prefixes = tenant_prefixes(count)
        target = target_of(prefixes)
        vectors = {"ntp_reflection": ntp_flood(target), "syn_flood": syn_flood(target)}
        systems: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
            "seawall": lambda p=prefixes: seawall(lab, p),
            "nftables_ingress": lambda p=prefixes: nft_ingress(lab, p),
            "nftables_bridge": lambda p=prefixes: nft_bridge(lab, p),
            "xdp_filter": lambda: xdp_filter(lab),
        }
        if count == sizes.prefixes[0]:
            systems["xdp_drop_floor"] = lambda: xdp_floor(lab)
        row: dict[str, dict] = {}
        for system, make in systems.items():
            row[system] = {}
            with make():
                for vector, (frame, edits) in vectors.items():
                    if system == "xdp_filter" and vector == "syn_flood":
                        row[system][vector] = None  # xdp-filter has no rate limit
                        continue
                    progress(f"drop: {system}, {count:,} prefixes, {vector}")
                    row[system][vector] = measure(lab, frame, edits, sizes).as_dict()
        out[str(count)] = row
    return out


def run_forward(lab: CompareLab, sizes: Sizes, progress: Callable[[str], None]) -> dict:
    prefixes = tenant_prefixes(sizes.prefixes[-1])
    frame, edits = legit_ack(target_of(prefixes))
    out = {}
    for system, make in (("seawall", lambda: seawall(lab, prefixes)), ("linux_bridge", lambda: linux_bridge(lab)),
                         ("linux_bridge_nftables", lambda: nft_bridge(lab, prefixes))):
        progress(f"forward: {system}")
        with make():
            out[system] = measure(lab, frame, edits, sizes).as_dict()
    return out


# -- multi-queue --------------------------------------------------------------------------------

MULTIQUEUE_METHOD = ("The forwarding part's traffic (TCP ACKs to a tenant server, {prefixes:,} tenant prefixes loaded, "
                     "bridged by Seawall) on veths with {queues} receive and transmit queues, the DUT's receive work "
                     "in one threaded-NAPI kthread per queue, kthread i pinned to vCPU i. A veth picks the receive "
                     "queue of an XDP frame by the sending CPU (smp_processor_id() modulo the queues), so 'one core' "
                     "is one generator (vCPU 0: every frame on one queue) and 'two cores' one generator per vCPU, "
                     "each filling its own queue, as RSS spreads flows on a NIC. Per core: packets the program "
                     "counted on that vCPU (its per-CPU tenant counters) over the CPU time of the kthread pinned "
                     "there. The generators share the same two vCPUs, so total packets/s is the per-core rate "
                     "times the cores (CPU time, not wall time); scaling = total with two cores / with one.")


def packets_per_cpu(dp, tenant_idx: int) -> list[int]:
    """Inbound packets the program counted for one tenant, per CPU (its per-CPU tenant counters)."""
    from dataplane import testing  # noqa: PLC0415
    from dataplane.constants import Direction  # noqa: PLC0415

    table = testing.table(dp, "sw_tenant_stats")
    return [int(sum(leaf.dir[Direction.INBOUND].class_packets)) for leaf in table[table.Key(tenant_idx)]]


def measure_spread(lab: CompareLab, dp, tenant_idx: int, frame: bytes, edits: FrameEdits, sizes: Sizes,
                   senders: int) -> dict:
    """ns of DUT CPU per packet on each vCPU, with `senders` generators (one per vCPU) sending at once."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    generators = lab.generators[:senders]
    per_sender = max(1, sizes.packets // senders)
    with ThreadPoolExecutor(max_workers=senders) as pool:
        def burst(count: int) -> None:
            for f in [pool.submit(g.send, frame, edits, count) for g in generators]:
                f.result()
            lab.wait_drained(lab.dut_ns, lab.dut_in)
        burst(min(per_sender, 20_000))   # warm caches and the address cache slots of every CPU
        samples: dict[int, list[float]] = {cpu: [] for cpu in lab.dut_kthreads}
        packets: dict[int, int] = dict.fromkeys(lab.dut_kthreads, 0)
        for _ in range(sizes.runs):
            cpu0, pk0 = lab.kthread_cpu_ns_by_cpu(), packets_per_cpu(dp, tenant_idx)
            burst(per_sender)
            cpu1, pk1 = lab.kthread_cpu_ns_by_cpu(), packets_per_cpu(dp, tenant_idx)
            for cpu in lab.dut_kthreads:
                handled = pk1[cpu] - pk0[cpu]
                packets[cpu] += handled
                if handled > 0:
                    samples[cpu].append((cpu1[cpu] - cpu0[cpu]) / handled)
    cores = {}
    for cpu, values in samples.items():
        if values:
            ns = statistics.median(values)
            cores[str(cpu)] = {"ns_per_packet": round(ns, 1), "mpps_per_core": round(1e3 / ns, 3),
                               "packets": packets[cpu], "runs": len(values)}
    if not cores:
        raise BenchError("the DUT's program counted no packet on any vCPU")
    return {"cores": cores, "total_mpps": round(sum(c["mpps_per_core"] for c in cores.values()), 3)}


def run_multiqueue(sizes: Sizes, progress: Callable[[str], None], queues: int = 2) -> dict:
    """Seawall forwarding with its receive work on one, then on `queues`, vCPUs (see MULTIQUEUE_METHOD)."""
    from tenants.compile import assign_indices  # noqa: PLC0415

    prefixes = tenant_prefixes(sizes.prefixes[-1])
    frame, edits = legit_ack(target_of(prefixes))
    tenant_idx = assign_indices([f"t{i}" for i in range(len(prefixes))], {})[f"t{len(prefixes) - 1}"]
    lab = CompareLab(queues=queues)
    try:
        progress(f"multi-queue: lab with {queues} queues per veth")
        lab.up()
        with seawall(lab, prefixes) as dp:
            progress("multi-queue: one core")
            one = measure_spread(lab, dp, tenant_idx, frame, edits, sizes, senders=1)
            progress(f"multi-queue: {queues} cores")
            spread = measure_spread(lab, dp, tenant_idx, frame, edits, sizes, senders=queues)
    finally:
        lab.down()
    return {"queues": queues, "prefixes": len(prefixes), "one_core": one, "all_cores": spread,
            "scaling": round(spread["total_mpps"] / one["total_mpps"], 2),
            "method": MULTIQUEUE_METHOD.format(prefixes=len(prefixes), queues=queues)}


# -- latency ------------------------------------------------------------------------------------

ECHO_CPU = DUT_CPU                # vCPU of both echo endpoints: away from the generator's
LATENCY_PATHS = {"direct": DIRECT_SERVER, "through_seawall": THROUGH_SERVER}
LATENCY_METHOD = ("UDP echo (64-byte payload), sequential, from a client in the generator namespace to a server in "
                  "the sink namespace, either over the direct veth or through the DUT's veths with Seawall "
                  "bridging them (mitigate mode, the tenant set of the forwarding part loaded). Client and server "
                  "are their own processes, both pinned to vCPU {cpu}; the generator (the flood) is pinned to vCPU "
                  "{gen_cpu}. NAPI runs in softirq, as after a NIC's interrupt (the drop and forwarding parts "
                  "use threaded NAPI to read the DUT's CPU time; its kthread wake-ups would add 10-25 us per "
                  "echo that belong to the bench). The paths alternate in {rounds} rounds of {per_round} echoes "
                  "each; figures are medians over the rounds (min-max), and 'added' is through minus direct "
                  "within each round. The flood: NTP reflection, paced at {flood:,} packets/s, dropped by Seawall.")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _median_min_max(values: list[float]) -> tuple[float, list[float]]:
    return round(statistics.median(values), 1), [round(min(values), 1), round(max(values), 1)]


def latency_figures(rounds: dict[str, list[dict]]) -> dict:
    """Per path: p50 and p99 as medians over rounds (min-max); added: through minus direct, per round."""
    out: dict = {}
    per_round: dict[str, dict[str, list[float]]] = {}
    for path, samples in rounds.items():
        if any(not r["rtts_us"] for r in samples):
            raise BenchError(f"latency: every echo of a round on the {path} path was lost")
        per_round[path] = {q: [percentile(r["rtts_us"], int(q[1:])) for r in samples] for q in ("p50", "p99")}
        figures: dict = {}
        for q, values in per_round[path].items():
            figures[f"{q}_us"], figures[f"{q}_min_max_us"] = _median_min_max(values)
        out[path] = {**figures, "samples": sum(len(r["rtts_us"]) for r in samples),
                     "lost": sum(r["lost"] for r in samples)}
    for q in ("p50", "p99"):
        added = [t - d for t, d in zip(per_round["through_seawall"][q], per_round["direct"][q], strict=True)]
        out[f"added_{q}_us"], out[f"added_{q}_min_max_us"] = _median_min_max(added)
    out["rounds"] = len(rounds["direct"])
    return out


def _echo_rounds(lab: CompareLab, sizes: Sizes) -> dict[str, list[dict]]:
    rounds = max(1, sizes.runs)
    per_round = max(1, sizes.latency_samples // rounds)
    argv = ["ip", "netns", "exec", lab.gen_ns, sys.executable, "-m", "appliance.bench.echo", "ping", str(ECHO_PORT),
            str(ECHO_CPU), str(per_round), str(rounds), *(f"{path}={address}" for path, address in LATENCY_PATHS.items())]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=ECHO_STARTUP_S + echo.READY_TIMEOUT_S * len(LATENCY_PATHS)
                          + rounds * per_round * len(LATENCY_PATHS) * echo.LOST_AFTER_S)
    if proc.returncode != 0:
        raise BenchError(f"echo client: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_latency(lab: CompareLab, sizes: Sizes, progress: Callable[[str], None]) -> dict:
    prefixes = tenant_prefixes(sizes.prefixes[-1])
    rounds = max(1, sizes.runs)
    out: dict[str, dict] = {}
    lab.sink_drop(False)
    server = subprocess.Popen(["ip", "netns", "exec", lab.sink_ns, sys.executable, "-m", "appliance.bench.echo",
                               "serve", str(ECHO_PORT), str(ECHO_CPU)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT)
    try:
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise BenchError("the echo server did not start")
        with lab.softirq_napi(), seawall(lab, prefixes, echo_tenant=True):
            for load in ("light", "flood"):
                progress(f"latency: {load}, {rounds} rounds of direct and through Seawall, "
                         f"{sizes.latency_samples} echoes each")
                if load == "light":
                    out[load] = latency_figures(_echo_rounds(lab, sizes))
                    continue
                assert lab.generator is not None
                frame, edits = ntp_flood(target_of(prefixes))
                rx0, t0 = lab.rx_packets(lab.dut_ns, lab.dut_in), time.monotonic()
                stop = lab.generator.start_paced(frame, edits, sizes.flood_pps)
                try:
                    out[load] = latency_figures(_echo_rounds(lab, sizes))
                finally:
                    stop.set()
                    lab.generator.finish_paced()
                rate = (lab.rx_packets(lab.dut_ns, lab.dut_in) - rx0) / (time.monotonic() - t0)
                out[load]["flood_pps_received"] = round(rate)
    finally:
        server.terminate()
        server.wait(5)
        lab.sink_drop(True)
    return out


def latency_method(sizes: Sizes) -> str:
    rounds = max(1, sizes.runs)
    return LATENCY_METHOD.format(cpu=ECHO_CPU, gen_cpu=GENERATOR_CPU, rounds=rounds,
                                 per_round=max(1, sizes.latency_samples // rounds), flood=sizes.flood_pps)


# -- scale (BPF_PROG_TEST_RUN) ------------------------------------------------------------------

SCALE_MAX_TENANTS = 10_000   # tenants at the largest points; more prefixes go to each tenant


def scale_tables(prefixes: int) -> tuple[list[dict], list[ipaddress.IPv4Address]]:
    """Tenant tables holding `prefixes` prefixes, half IPv4 (in 198.18.0.0/15), half IPv6, and each
    tenant's first IPv4 host. The dataplane holds 16,384 tenants and 65,536 prefixes per family."""
    if not 2 <= prefixes <= 2 * 65_536:
        raise ValueError(f"scale point {prefixes}: 2..131072 prefixes")
    per_family = prefixes // 2
    tenants = min(per_family, SCALE_MAX_TENANTS)
    v4len = 32 if per_family > 16_384 else TENANT_PREFIXLEN
    base, step = int(TENANT_SPACE.network_address), 2 ** (32 - v4len)
    tables, hosts = [], []
    for t in range(tenants):
        own = range(t * per_family // tenants, (t + 1) * per_family // tenants)
        tables.append({"id": f"t{t}", "name": f"T{t}",
                       "prefixes": [f"{ipaddress.IPv4Address(base + i * step)}/{v4len}" for i in own]
                       + [f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64" for i in own]})
        hosts.append(ipaddress.IPv4Address(base + own[0] * step + (0 if v4len == 32 else 1)))
    return tables, hosts


def run_scale(sizes: Sizes, progress: Callable[[str], None]) -> list[dict]:
    """ns per packet of the pass and drop paths with 10..100,000 prefixes (up to 10,000 tenants) and up to
    1,000 rules, against `return XDP_DROP`; BPF_PROG_TEST_RUN, so no NAPI or veth cost."""
    from bcc import BPF  # noqa: PLC0415

    from dataplane import bpfsys  # noqa: PLC0415
    from dataplane.api import Range, Rule  # noqa: PLC0415
    from dataplane.dataplane import BPF_DIR, Dataplane  # noqa: PLC0415
    from tenants import TenantSet  # noqa: PLC0415
    from tenants.compile import assign_indices, compile_tenant_set  # noqa: PLC0415

    minimal = BPF(src_file=str(BPF_DIR / "minimal.c").encode())
    minimal_fd = minimal.load_func(b"xdp_minimal", BPF.XDP).fd
    out = []
    try:
        for count in sizes.scale_points:
            progress(f"scale: {count:,} prefixes (BPF_PROG_TEST_RUN)")
            tables, hosts = scale_tables(count)
            t0 = time.monotonic()
            tenant_set = TenantSet.from_dicts(tables)
            indices = assign_indices([t.id for t in tenant_set], {})
            dp = Dataplane()
            try:
                dp.apply_tenants(compile_tenant_set(tenant_set, indices))
                rules = min(len(hosts), 1000)
                for i in range(rules):
                    dp.add_rule(Rule(tenant_idx=indices[f"t{i}"], dst=hosts[i], proto=17, sport=Range(123, 123)))
                load_s = time.monotonic() - t0
                eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                drop = bytes(eth / IP(src="198.19.255.7", dst=str(hosts[rules // 2])) / UDP(sport=123, dport=4000)
                             / (b"\xd7" * NTP_PAYLOAD))
                passing = bytes(eth / IP(src=LEGIT_SOURCE, dst=str(hosts[-1])) / TCP(sport=40000, dport=443,
                                                                                      flags="A"))
                samples: dict[str, list[int]] = {"minimal": [], "pass": [], "drop": []}
                for _ in range(sizes.runs):
                    samples["minimal"].append(bpfsys.prog_test_run(minimal_fd, passing, sizes.scale_repeat)[1])
                    samples["pass"].append(dp.test_run(passing, repeat=sizes.scale_repeat)[1])
                    samples["drop"].append(dp.test_run(drop, repeat=sizes.scale_repeat)[1])
                verdicts = {"pass": bpfsys.XDP_ACTION_NAMES[dp.test_run(passing)[0]],
                            "drop": bpfsys.XDP_ACTION_NAMES[dp.test_run(drop)[0]]}
            finally:
                dp.close()
            out.append({"tenants": len(tables), "prefixes": count, "rules": rules, "load_s": round(load_s, 2),
                        **{f"{k}_ns": statistics.median(v) for k, v in samples.items()},
                        "min_max_ns": {k: [min(v), max(v)] for k, v in samples.items()}, "verdicts": verdicts})
    finally:
        minimal.cleanup()
    return out


# -- control plane ------------------------------------------------------------------------------

CONTROL_MAX_TENANTS = 10_000   # the issue's scale: 10,000 tenants once there are enough destinations


def run_control(sizes: Sizes, progress: Callable[[str], None]) -> dict:
    """Policy tick CPU and peak memory per size (appliance.bench.policy.run_sweep: one process per size,
    so that each peak RSS is that size's own); tenants are a tenth of the destinations, at most
    10,000."""
    from appliance.bench.policy import run_sweep  # noqa: PLC0415 (numpy-heavy; only this part needs it)

    points = tuple((d, min(CONTROL_MAX_TENANTS, max(1, d // 10))) for d in sizes.control_points)
    results = run_sweep(points, ticks=sizes.control_ticks, progress=progress)
    return {str(r["destinations"]): r for r in results}


def source_revision() -> str:
    """The commit measured: SEAWALL_BENCH_REVISION (a run from an exported tree), else git, '+dirty' when the
    dataplane has uncommitted changes."""
    if os.environ.get("SEAWALL_BENCH_REVISION"):
        return os.environ["SEAWALL_BENCH_REVISION"]
    repo = pathlib.Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "dataplane", "tenants"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


# -- the whole run ------------------------------------------------------------------------------

def headline(result: dict) -> dict:
    def ratio(a: dict | None, b: dict | None) -> float | None:
        return round(b["ns_per_packet"] / a["ns_per_packet"], 2) if a and b else None

    drop = result.get("drop", {})
    by_prefixes = {}
    for count, row in drop.items():
        sw = row["seawall"]
        by_prefixes[count] = {
            vector: {other: ratio(sw[vector], row[other].get(vector))
                     for other in ("nftables_ingress", "nftables_bridge", "xdp_filter")}
            for vector in ("ntp_reflection", "syn_flood")}
    fwd = result.get("forward", {})
    latency = result.get("latency", {})
    return {
        "drop_vs_nftables": {c: v["ntp_reflection"]["nftables_ingress"] for c, v in by_prefixes.items()},
        "drop_vs_nftables_bridge": {c: v["ntp_reflection"]["nftables_bridge"] for c, v in by_prefixes.items()},
        "drop_vs_xdp_filter": {c: v["ntp_reflection"]["xdp_filter"] for c, v in by_prefixes.items()},
        "syn_drop_vs_nftables": {c: v["syn_flood"]["nftables_ingress"] for c, v in by_prefixes.items()},
        "forward_vs_linux_bridge": ratio(fwd.get("seawall"), fwd.get("linux_bridge")),
        "latency_added_us_p50": {k: v["added_p50_us"] for k, v in latency.items()},
        "latency_added_us_p99": {k: v["added_p99_us"] for k, v in latency.items()},
        "detection": result.get("detection"),
    }


# part -> the keys of compare.json it writes
PART_KEYS = {"drop": ("drop",), "forward": ("forward",), "latency": ("latency", "latency_method"),
             "multiqueue": ("multiqueue",), "scale": ("scale",), "control": ("control_plane",),
             "detection": ("detection", "detection_method", "detection_reason")}


def carry_over(result: dict, out_dir: pathlib.Path, parts: tuple[str, ...]) -> None:
    """Keep the figures of the parts not run now from the compare.json in `out_dir`, naming their run."""
    previous_path = out_dir / "compare.json"
    if not previous_path.exists():
        return
    try:
        previous = json.loads(previous_path.read_text())
    except ValueError as exc:
        raise BenchError(f"{previous_path}: not JSON ({exc}); move it away to start afresh") from None
    carried = dict(previous.get("carried_over", {}))
    for part, keys in PART_KEYS.items():
        if part in parts or not any(k in previous for k in keys):
            carried.pop(part, None)
            continue
        if part == "detection" and previous.get("detection_method") is None:
            continue   # only the placeholder of a run without FastNetMon
        for key in keys:
            if key in previous:
                result[key] = previous[key]
        carried[part] = carried.get(part, {"started": previous.get("started"), "sizes": previous.get("sizes"),
                                           "source": previous.get("host", {}).get("source")})
    result["carried_over"] = carried


def run(sizes: Sizes, out_dir: pathlib.Path, progress: Callable[[str], None],
        parts: tuple[str, ...] = ("drop", "forward", "latency", "scale", "control")) -> dict:
    from appliance.bench import compare_report  # noqa: PLC0415

    started = time.time()
    result: dict = {"sizes": dataclasses.asdict(sizes), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "host": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                             "note": "shared 2-vCPU VM: other engineers ran tests during the run",
                             "source": source_revision()},
                    "detection": {v: {"seawall_s": None, "fastnetmon_s": None} for v in ("syn_flood", "udp_flood",
                                                                                      "ntp_reflection")},
                    "detection_reason": DETECTION_REASON}
    carry_over(result, out_dir, parts)   # before any partial write replaces compare.json
    if any(p in parts for p in ("drop", "forward", "latency")):
        lab = CompareLab()
        try:
            lab.up()
            for part, function in (("drop", run_drop), ("forward", run_forward), ("latency", run_latency)):
                if part in parts:
                    result[part] = function(lab, sizes, progress)
                    if part == "latency":
                        result["latency_method"] = latency_method(sizes)
                    compare_report.write(result, out_dir)   # partial results survive a later failure
        finally:
            lab.down()
    if "multiqueue" in parts:
        result["multiqueue"] = run_multiqueue(sizes, progress)
        compare_report.write(result, out_dir)
    if "scale" in parts:
        result["scale"] = run_scale(sizes, progress)
        compare_report.write(result, out_dir)
    if "control" in parts:
        result["control_plane"] = run_control(sizes, progress)
    if "detection" in parts:
        from appliance.bench.compare_detection import run_detection  # noqa: PLC0415

        measured = run_detection(progress)
        result["detection"] = measured.pop("vectors")
        result["detection_method"] = measured
        result["detection_reason"] = DETECTION_METHOD
    result["elapsed_s"] = round(time.time() - started, 1)
    result["headline"] = headline(result)
    compare_report.write(result, out_dir)
    return result
