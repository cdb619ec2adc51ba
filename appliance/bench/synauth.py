"""ns per packet of SYN authentication (issue 19, dataplane/bpf/synauth.h), BPF_PROG_TEST_RUN, next to
the pass and drop paths of `seawall bench dataplane` on the same loaded program.

BPF_PROG_TEST_RUN does not restore the frame between repetitions, and the SYN and ACK budgets would
turn a million repetitions into their over-budget paths. The benchmark therefore builds the program
with the SYN-ACK budgets, the per-source limit at 10^9 a second (-D through dataplane.constants) and
SW_SYNAUTH_BENCH (the answering program takes its own SYN-ACK for the SYN again), and measures:

- syn_main: an unknown source's SYN to a destination under SYN attack through the inbound program,
  to its tail call (the answering program is taken out of sw_progs, so the frame stays a SYN);
- syn_answer: the answering program alone writing the cookie SYN-ACK (gen helper, rewrite, checksums);
- ack_forged: a pure ACK with a wrong cookie through the inbound program (checked, then bridged);
- ack_valid: a valid cookie ACK through the inbound program (check, validation), one repetition per
  source (a validated source's next ACK takes another path), median over many sources;
- syn_validated: a validated source's SYN (its own bucket, past the shared limits, bridged);
- splice_in / splice_out: a data segment of a spliced connection through the inbound program
  (flow found, ack += delta, checksum updated, tail call, redirect) and the outbound one (seq -= delta);
  each repetition shifts the number again, which costs the same;
- pass_spliced: the pass path once anything was spliced (the gate open: one sw_splice_dests lookup
  per TCP packet to a tenant address), next to `pass` with the gate closed;
- syn_main_spliced: syn_main at a destination with live splices (the gate open, the destination
  splice active: a flow lookup for every TCP packet to it). Every other path runs with the gate
  closed, as on an appliance that has not spliced yet.
"""

from __future__ import annotations

import ctypes
import ipaddress
import statistics
from collections.abc import Callable

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from appliance.bench.dataplane import build_tenants, frames
from dataplane import bpfsys, constants
from dataplane.constants import TrafficClass
from dataplane.dataplane import BPF_DIR, Dataplane
from tenants.compile import assign_indices, compile_tenant_set

UNLIMITED_PPS = 10**9            # budgets out of the way of a million repetitions, per second
VALID_ACK_SOURCES = 2000         # sources for the one-shot valid-ACK measurement


def _bench_dataplane(tenants: int) -> tuple[Dataplane, object, dict]:
    saved = {name: getattr(constants, name) for name in ("SYNACK_RATE_PPS", "SYNACK_GLOBAL_PPS", "SYN_SOURCE_PPS",
                                                        "SYN_SOURCE_BURST")}
    original = constants.cflags
    try:
        for name in saved:
            setattr(constants, name, UNLIMITED_PPS)
        constants.cflags = lambda: [*original(), "-DSW_SYNAUTH_BENCH=1"]
        dp = Dataplane()
    finally:
        constants.cflags = original
        for name, value in saved.items():
            setattr(constants, name, value)
    ts = build_tenants(tenants)
    indices = assign_indices([t.id for t in ts], {})
    dp.apply_tenants(compile_tenant_set(ts, indices))
    return dp, ts, indices


def _eth():
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _syn(src: str, dst: str, sport: int = 40000) -> bytes:
    # MSS only: the SYN-ACK written back has the same length, so every repetition is identical.
    return bytes(_eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=443, flags="S", seq=1000,
                                                     options=[("MSS", 1460)]))


def _ack(src: str, dst: str, ack_no: int, sport: int = 40000) -> bytes:
    return bytes(_eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=443, flags="A", seq=1001, ack=ack_no))


def _segment(src: str, dst: str, sport: int, dport: int, seq: int, ack_no: int, flags: str = "PA",
             payload: bytes = b"") -> bytes:
    return bytes(_eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack_no) /
                 Raw(payload))


SPLICE_PAYLOAD = b"x" * 100      # bytes of each spliced data segment measured


def run(tenants: int = 10_000, repeat: int = 1_000_000, runs: int = 5,
        progress: Callable[[str], None] = lambda _m: None) -> dict:
    from bcc import BPF  # noqa: PLC0415

    from dataplane import testing  # noqa: PLC0415

    progress(f"loading {tenants} tenants with SW_SYNAUTH_BENCH")
    dp, ts, indices = _bench_dataplane(tenants)
    minimal = BPF(src_file=str(BPF_DIR / "minimal.c").encode())
    minimal_fd = minimal.load_func(b"xdp_minimal", BPF.XDP).fd
    tenant = list(ts)[-1]
    target = str(tenant.prefixes[0].network_address + 2)
    dp.set_under_attack(indices[tenant.id], ipaddress.ip_address(target), [TrafficClass.TCP_SYN])
    pkts = frames(ts, 0)
    answer_fd = dp.program.synauth.fd
    progs = dp.program.bpf[b"sw_progs"]
    slot = ctypes.c_int(2 * len(constants.Direction))

    # A validated source and a cookie that does not match.
    action, out = testing.run_frame(dp, _syn("192.0.2.77", target))
    cookie = Ether(out)[TCP].seq
    testing.run_frame(dp, _ack("192.0.2.77", target, cookie + 1))
    checks = {"syn_answer": bpfsys.XDP_ACTION_NAMES[action],
              "syn_validated": bpfsys.XDP_ACTION_NAMES[dp.test_run(_syn("192.0.2.77", target, 40001))[0]],
              "ack_forged": bpfsys.XDP_ACTION_NAMES[dp.test_run(_ack("192.0.2.78", target, cookie ^ 0x5A5A))[0]]}
    # A spliced connection (the cookie ACK becomes the SYN, the server's SYN-ACK the window update).
    client, cport = "192.0.2.88", 40100
    _, out = testing.run_frame(dp, _syn(client, target, cport))
    splice_cookie = Ether(out)[TCP].seq
    checks["splice_syn"] = bpfsys.XDP_ACTION_NAMES[testing.run_frame(dp, _ack(client, target, splice_cookie + 1,
                                                                              cport))[0]]
    synack = _segment(target, client, 443, cport, 5000, 1001, flags="SA")
    checks["splice_open"] = bpfsys.XDP_ACTION_NAMES[testing.run_frame(dp, synack, constants.Direction.OUTBOUND)[0]]
    splice_in = _segment(client, target, cport, 443, 1001, splice_cookie + 1, payload=SPLICE_PAYLOAD)
    splice_out = _segment(target, client, 443, cport, 5001, 1101, payload=SPLICE_PAYLOAD)
    checks["splice_in"] = bpfsys.XDP_ACTION_NAMES[dp.test_run(splice_in)[0]]
    checks["splice_out"] = bpfsys.XDP_ACTION_NAMES[dp.test_run(splice_out, constants.Direction.OUTBOUND)[0]]
    gate = testing.table(dp, "sw_splice_gate")
    samples: dict[str, list[int]] = {name: [] for name in ("minimal", "pass", "drop", "syn_main", "syn_answer",
                                                           "ack_forged", "syn_validated", "splice_in", "splice_out",
                                                           "pass_spliced", "syn_main_spliced")}
    for r in range(runs):
        progress(f"run {r + 1}/{runs}: {repeat} repeats per path")
        samples["minimal"].append(bpfsys.prog_test_run(minimal_fd, pkts["pass"], repeat)[1])
        gate[ctypes.c_int(0)] = gate.Leaf(0)       # as before any splice
        samples["pass"].append(dp.test_run(pkts["pass"], repeat=repeat)[1])
        gate[ctypes.c_int(0)] = gate.Leaf(1)
        samples["pass_spliced"].append(dp.test_run(pkts["pass"], repeat=repeat)[1])
        samples["splice_in"].append(dp.test_run(splice_in, repeat=repeat)[1])
        samples["splice_out"].append(dp.test_run(splice_out, constants.Direction.OUTBOUND, repeat=repeat)[1])
        del progs[slot]
        try:
            samples["syn_main_spliced"].append(dp.test_run(_syn("198.18.1.4", target), repeat=repeat)[1])
        finally:
            progs[slot] = ctypes.c_int(answer_fd)
        gate[ctypes.c_int(0)] = gate.Leaf(0)
        samples["drop"].append(dp.test_run(pkts["drop"], repeat=repeat)[1])
        samples["syn_answer"].append(bpfsys.prog_test_run(answer_fd, _syn("198.18.1.1", target), repeat)[1])
        samples["ack_forged"].append(dp.test_run(_ack("198.18.1.2", target, cookie ^ 0x5A5A), repeat=repeat)[1])
        samples["syn_validated"].append(dp.test_run(_syn("192.0.2.77", target, 40002), repeat=repeat)[1])
        del progs[slot]                    # the tail call fails: the SYN stays a SYN, dropped
        try:
            samples["syn_main"].append(dp.test_run(_syn("198.18.1.3", target), repeat=repeat)[1])
        finally:
            progs[slot] = ctypes.c_int(answer_fd)
    progress(f"valid cookie ACKs: {VALID_ACK_SOURCES} sources, one repetition each")
    one_shot: list[int] = []
    one_shot_minimal: list[int] = []
    del progs[slot]
    try:
        base = int(ipaddress.ip_address("198.19.0.1"))
        for i in range(VALID_ACK_SOURCES):
            src = str(ipaddress.ip_address(base + i))
            progs[slot] = ctypes.c_int(answer_fd)
            _, out = testing.run_frame(dp, _syn(src, target))
            del progs[slot]
            one_shot.append(dp.test_run(_ack(src, target, Ether(out)[TCP].seq + 1), repeat=1)[1])
            one_shot_minimal.append(bpfsys.prog_test_run(minimal_fd, pkts["pass"], 1)[1])
    finally:
        progs[slot] = ctypes.c_int(answer_fd)
    stats = [sum(testing.table(dp, "sw_synauth_stats")[ctypes.c_int(int(s))]) for s in constants.SynAuthStat]
    dp.close()
    minimal.cleanup()
    med = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "tenants": tenants, "repeat": repeat, "runs": runs,
        **{f"{name}_ns": value for name, value in med.items()},
        "syn_total_ns": med["syn_main"] + med["syn_answer"],
        "ack_valid_ns": statistics.median(one_shot), "ack_valid_minimal_ns": statistics.median(one_shot_minimal),
        "min_max_ns": {name: [min(v), max(v)] for name, v in samples.items()},
        "verdicts": checks,
        "counters": {s.name.lower(): int(v) for s, v in zip(constants.SynAuthStat, stats, strict=True)},
    }


def render(result: dict) -> str:
    lines = [
        f"Seawall SYN authentication, BPF_PROG_TEST_RUN, {result['repeat']:,} repeats x {result['runs']} runs "
        f"(median), {result['tenants']:,} tenants",
        "",
        f"{'path':<48} {'ns/packet':>10}",
    ]
    rows = [("minimal (XDP_DROP floor)", "minimal_ns"), ("pass (ACK to a tenant, no attack)", "pass_ns"),
            ("drop (rule)", "drop_ns"),
            ("SYN, unknown source: inbound program", "syn_main_ns"),
            ("SYN, unknown source: cookie SYN-ACK written", "syn_answer_ns"),
            ("SYN, unknown source: total", "syn_total_ns"),
            ("ACK with a forged cookie (checked, bridged)", "ack_forged_ns"),
            ("ACK with a valid cookie (1 repeat; median)", "ack_valid_ns"),
            ("  minimal at 1 repeat, for comparison", "ack_valid_minimal_ns"),
            ("SYN of a validated source (bridged)", "syn_validated_ns"),
            ("splice: client segment (ack += delta)", "splice_in_ns"),
            ("splice: server segment (seq -= delta)", "splice_out_ns"),
            ("pass once anything was spliced (gate open)", "pass_spliced_ns"),
            ("SYN, unknown source, splice-active dst: inbound", "syn_main_spliced_ns")]
    for label, key in rows:
        lines.append(f"{label:<48} {result[key]:>10}")
    return "\n".join(lines)
