"""ns per packet of the XDP program, measured with BPF_PROG_TEST_RUN against a minimal XDP_DROP program.

Loaded like a large hosting edge: 10,000 tenants, 20,000 prefixes (half IPv4
in the benchmarking range 198.18.0.0/15, half IPv6 in 2001:db8::/32) and 1,000
dynamic rules. Paths measured, interleaved run by run so that machine noise
hits all of them alike:

- minimal: `return XDP_DROP`, the floor (includes BPF_PROG_TEST_RUN's own loop);
- pass: a TCP ACK to a tenant server with no rules: looked up, checked, counted, bridged;
- drop: a UDP flood packet to a server with a rule matching proto, port and length: dropped by the rule;
- unprotected: a packet to no tenant: looked up and bridged;
- xdp_filter: xdp-tools' xdp-filter on the drop frame, with a rule that drops its port;
- bare_bridge: a program that only checks the Ethernet header and redirects, on the pass frame.

The ratios to the minimal program depend on the CPU's fixed call cost; the ratios to
xdp-filter and to the bare bridge (`appliance/bench/peers.py`) are the ones that hold across
CPUs.

ns per packet is this thread's CPU time over the BPF_PROG_TEST_RUN call divided by the
repeats, to a tenth of a ns: the kernel's own figure is whole ns, truncated, a step of 14% on
a 7 ns bare bridge (19 / 7 read 2.71 where the CPU time says 2.6). Like the kernel's timer,
CPU time leaves out the time the thread waited for a CPU; at 1,000,000 repeats the call's own
set-up is below 0.01 ns a packet.

With `stages`, the program is rebuilt with -DSW_PROFILE_STOP=n for each stage
marker, and the cost of each stage is printed as the difference.
"""

from __future__ import annotations

import ipaddress
import statistics
import time
from collections.abc import Callable

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from appliance.bench import peers
from dataplane import bpfsys, constants
from dataplane.api import Range, Rule
from dataplane.dataplane import BPF_DIR, Dataplane
from tenants import TenantSet
from tenants.compile import assign_indices, compile_tenant_set

STAGES = {1: "configuration read", 2: "parse", 3: "address cache", 4: "policy (lists, filters, rules)",
          5: "counters"}
GAME_PORT = 28960
FLOOD_PAYLOAD = 512  # bytes of UDP payload: IP length 540
PATHS = ("minimal", "pass", "drop", "unprotected", "xdp_filter", "bare_bridge")


def build_tenants(count: int) -> TenantSet:
    v4 = ipaddress.ip_network("198.18.0.0/15").subnets(new_prefix=29)
    tables = [{"id": f"t{i}", "name": f"Tenant {i}",
               "prefixes": [str(next(v4)), f"2001:db8:{i >> 8:x}:{i & 255:x}::/64"]} for i in range(count)]
    return TenantSet.from_dicts(tables)


def loaded_dataplane(tenants: int, rules: int, profile_stop: int | None = None) -> tuple[Dataplane, TenantSet]:
    original = constants.cflags
    if profile_stop:
        constants.cflags = lambda: [*original(), f"-DSW_PROFILE_STOP={profile_stop}"]
    try:
        dp = Dataplane()
    finally:
        constants.cflags = original
    ts = build_tenants(tenants)
    indices = assign_indices([t.id for t in ts], {})
    dp.apply_tenants(compile_tenant_set(ts, indices))
    for i, tenant in enumerate(list(ts)[:rules]):
        dp.add_rule(Rule(tenant_idx=indices[tenant.id], dst=tenant.prefixes[0].network_address + 1, proto=17,
                         dport=Range(GAME_PORT, GAME_PORT), length=Range(540, 540), comment=f"bench {i}"))
    return dp, ts


def frames(ts: TenantSet, rules: int) -> dict[str, bytes]:
    tenants = list(ts)
    ruled = tenants[rules // 2].prefixes[0].network_address + 1          # has a rule
    clean = tenants[-1].prefixes[0].network_address + 1                  # no rule
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    return {
        # A pure ACK in mid-connection: the usual packet, its numbers those of a real one (not 0).
        "pass": bytes(eth / IP(src="192.0.2.10", dst=str(clean), ttl=60)
                      / TCP(sport=40000, dport=443, flags="A", seq=0x1C2D3E4F, ack=0x5A6B7C8D)),
        "drop": bytes(eth / IP(src="198.19.7.7", dst=str(ruled), ttl=60) / UDP(sport=5555, dport=GAME_PORT)
                      / (b"\x00" * FLOOD_PAYLOAD)),
        "unprotected": bytes(eth / IP(src="192.0.2.10", dst="203.0.113.200") / TCP(sport=40000, dport=443, flags="A")),
    }


def _timed(run: Callable[[], object], repeat: int) -> float:
    """ns per repeat of `run` (one BPF_PROG_TEST_RUN call), from this thread's CPU time."""
    start = time.thread_time_ns()
    run()
    return (time.thread_time_ns() - start) / repeat


def run(tenants: int = 10_000, rules: int = 1_000, repeat: int = 1_000_000, runs: int = 5,
        stages: bool = False, progress: Callable[[str], None] = lambda _m: None) -> dict:
    from bcc import BPF  # noqa: PLC0415

    progress(f"loading {tenants} tenants, {2 * tenants} prefixes, {rules} rules")
    dp, ts = loaded_dataplane(tenants, rules)
    minimal = BPF(src_file=str(BPF_DIR / "minimal.c").encode())
    minimal_fd = minimal.load_func(b"xdp_minimal", BPF.XDP).fd
    pkts = frames(ts, rules)
    verdicts = {name: bpfsys.XDP_ACTION_NAMES[dp.test_run(frame)[0]] for name, frame in pkts.items()}
    samples: dict[str, list[float]] = {name: [] for name in PATHS}
    progress("loading xdp-tools' xdp-filter (drop rule on the flood's port) and the bare bridge")
    with peers.xdp_filter_dropping_udp_port(GAME_PORT) as xdp_filter_fd, peers.bare_bridge() as bare_fd:
        verdicts["xdp_filter"] = bpfsys.XDP_ACTION_NAMES[bpfsys.prog_test_run(xdp_filter_fd, pkts["drop"])[0]]
        verdicts["bare_bridge"] = bpfsys.XDP_ACTION_NAMES[bpfsys.prog_test_run(bare_fd, pkts["pass"])[0]]
        for r in range(runs):
            progress(f"run {r + 1}/{runs}: {repeat} repeats per path")
            samples["minimal"].append(_timed(lambda: bpfsys.prog_test_run(minimal_fd, pkts["pass"], repeat), repeat))
            for name, frame in pkts.items():
                samples[name].append(_timed(lambda f=frame: dp.test_run(f, repeat=repeat), repeat))
            samples["xdp_filter"].append(_timed(lambda: bpfsys.prog_test_run(xdp_filter_fd, pkts["drop"], repeat),
                                                repeat))
            samples["bare_bridge"].append(_timed(lambda: bpfsys.prog_test_run(bare_fd, pkts["pass"], repeat), repeat))
    dp.close()
    minimal.cleanup()
    med = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    result = {
        "tenants": tenants, "prefixes": 2 * tenants, "rules": rules, "repeat": repeat, "runs": runs,
        **{f"{name}_ns": med[name] for name in PATHS},
        "pass_ratio": round(med["pass"] / med["minimal"], 2), "drop_ratio": round(med["drop"] / med["minimal"], 2),
        "unprotected_ratio": round(med["unprotected"] / med["minimal"], 2),
        "drop_vs_xdp_filter": round(med["xdp_filter"] / med["drop"], 2),
        "pass_vs_bare_bridge": round(med["pass"] / med["bare_bridge"], 2),
        "min_max_ns": {name: [round(min(v), 1), round(max(v), 1)] for name, v in samples.items()},
        "verdicts": verdicts,
    }
    if stages:
        result["stages"] = stage_costs(tenants, rules, repeat, progress)
    return result


def stage_costs(tenants: int, rules: int, repeat: int, progress: Callable[[str], None]) -> dict:
    """Cumulative ns at each stage marker, pass and drop path, one rebuild per marker."""
    out = {}
    for stop, label in STAGES.items():
        progress(f"stage {stop}: {label}")
        dp, ts = loaded_dataplane(tenants, rules, profile_stop=stop)
        pkts = frames(ts, rules)
        out[label] = {path: round(statistics.median(_timed(lambda d=dp, f=pkts[path]: d.test_run(f, repeat=repeat),
                                                           repeat) for _ in range(3)), 1)
                      for path in ("pass", "drop")}
        dp.close()
    return out


def render(result: dict) -> str:
    lines = [
        f"Seawall dataplane, BPF_PROG_TEST_RUN, {result['repeat']:,} repeats x {result['runs']} runs (median; "
        "ns from the thread's CPU time)",
        f"loaded: {result['tenants']:,} tenants, {result['prefixes']:,} prefixes, {result['rules']:,} rules",
        "",
        f"{'path':<13} {'ns/packet':>10} {'x minimal':>10} {'min-max ns':>12}  verdict",
    ]
    for name in ("minimal", "pass", "drop", "unprotected"):
        ns = result[f"{name}_ns"]
        ratio = "1.00" if name == "minimal" else f"{result[f'{name}_ratio']:.2f}"
        lo, hi = result["min_max_ns"][name]
        verdict = result["verdicts"].get(name, "DROP")
        lines.append(f"{name:<13} {ns:>10.1f} {ratio:>10} {f'{lo:.1f}-{hi:.1f}':>12}  {verdict}")
    lines.append("(x minimal depends on the CPU's fixed cost of calling a BPF program; the ratios below do not)")
    lines += ["", f"{'yardstick':<13} {'ns/packet':>10} {'':>10} {'min-max ns':>12}  verdict"]
    for name, label in (("xdp_filter", "xdp-filter"), ("bare_bridge", "bare bridge")):
        lo, hi = result["min_max_ns"][name]
        lines.append(f"{label:<13} {result[f'{name}_ns']:>10.1f} {'':>10} {f'{lo:.1f}-{hi:.1f}':>12}  "
                     f"{result['verdicts'][name]}")
    lines += ["",
              f"drop_vs_xdp_filter  {result['drop_vs_xdp_filter']:.2f}  (xdp-filter's drop ns / Seawall's; "
              "above 1: Seawall drops cheaper)",
              f"pass_vs_bare_bridge {result['pass_vs_bare_bridge']:.2f}  (Seawall's pass ns / a bare bridge's)"]
    if "stages" in result:
        lines += ["", "cumulative ns at each stage marker (pass / drop):"]
        for label, v in result["stages"].items():
            lines.append(f"  {label:<32} {v['pass']:>5.1f} / {v['drop']:>5.1f}")
    return "\n".join(lines)
