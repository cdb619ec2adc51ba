"""Markdown, JSON and PNG outputs of `seawall bench compare` (pure: no kernel, no bcc)."""

from __future__ import annotations

import json
import pathlib

SYSTEM_LABELS = {"seawall": "Seawall (XDP bridge)", "nftables_ingress": "nftables, netdev ingress",
                 "nftables_bridge": "nftables on a Linux bridge", "xdp_filter": "xdp-filter (UDP sport 123 only)",
                 "xdp_drop_floor": "return XDP_DROP (floor)", "linux_bridge": "Linux bridge",
                 "linux_bridge_nftables": "Linux bridge + nftables set"}


def _fig(cell: dict | None) -> str:
    if not cell:
        return "n/a"
    return f"{cell['ns_per_packet']:,.0f} ({cell['min_ns']:,.0f}-{cell['max_ns']:,.0f}) · {cell['mpps_per_cpu']:.2f}"


def render_markdown(result: dict) -> str:
    sizes = result["sizes"]
    lines = ["# Seawall compared: nftables, the Linux bridge, xdp-filter", "",
             f"Run {result['started']} of {result['host'].get('source', 'unknown')} on kernel "
             f"{result['host']['kernel']}, {result['host']['cpus']} vCPUs. "
             f"**{result['host']['note']}**; figures are medians of {sizes['runs']} bursts of "
             f"{sizes['packets']:,} frames with min-max.", "",
             "Method: generator → veth → DUT → veth → sink in three namespaces. The live-frames generator is "
             "pinned to vCPU 0; for drop and forwarding the DUT's receive work runs in threaded NAPI pinned to "
             "vCPU 1, and a DUT's cost is that kthread's CPU time per packet it received (`/proc/<pid>/schedstat`); "
             "latency runs with NAPI in softirq (see its section). "
             "`kernel.bpf_stats_enabled` off. Cells: ns/packet (min-max) · Mpps per CPU-second.", ""]
    if "drop" in result:
        lines += ["## Drop: attack packets per CPU-second", "",
                  "Same filter everywhere: tenant prefixes (one /29 each), deny UDP from 198.19.255.0/24 "
                  "source port 123, SYN rate limit 1,000/s on the attacked server. xdp-filter can only say "
                  "'drop UDP source port 123' (no prefixes, no rate limit).", "",
                  "| prefixes | system | NTP reflection | SYN flood |", "|---:|---|---|---|"]
        for count, row in result["drop"].items():
            for system, cells in row.items():
                lines.append(f"| {int(count):,} | {SYSTEM_LABELS.get(system, system)} | "
                             f"{_fig(cells.get('ntp_reflection'))} | {_fig(cells.get('syn_flood'))} |")
        lines.append("")
    head = result.get("headline", {})
    if head:
        lines += ["## Ratios (Seawall ÷ other, packets per CPU-second; > 1: Seawall does more)", "",
                  "| figure | value |", "|---|---|"]
        for key in ("drop_vs_nftables", "drop_vs_nftables_bridge", "drop_vs_xdp_filter", "syn_drop_vs_nftables",
                    "forward_vs_linux_bridge", "latency_added_us_p50", "latency_added_us_p99"):
            lines.append(f"| {key} | {json.dumps(head.get(key))} |")
        lines.append("")
    if "forward" in result:
        lines += ["## Forwarding: legitimate TCP packets per CPU-second", "",
                  "| system | ns/packet (min-max) · Mpps/CPU | delivered to the sink |", "|---|---|---|"]
        for system, cell in result["forward"].items():
            lines.append(f"| {SYSTEM_LABELS.get(system, system)} | {_fig(cell)} | "
                         f"{cell['delivered']:,} of {cell['packets']:,} |")
        lines.append("")
    if "multiqueue" in result:
        mq = result["multiqueue"]
        lines += ["## Multi-queue: Seawall forwarding on one and on two vCPUs", "", mq.get("method", ""), "",
                  "| cores | vCPU | ns/packet | Mpps per core | packets |", "|---:|---:|---:|---:|---:|"]
        for label, key in (("1", "one_core"), (str(mq["queues"]), "all_cores")):
            for cpu, cell in mq[key]["cores"].items():
                lines.append(f"| {label} | {cpu} | {cell['ns_per_packet']} | {cell['mpps_per_core']} | "
                             f"{cell['packets']:,} |")
            lines.append(f"| {label} | total | | **{mq[key]['total_mpps']}** | |")
        lines += ["", f"Scaling from one to {mq['queues']} cores: **{mq['scaling']}×**.", ""]
    if "latency" in result:
        lines += ["## Latency added (UDP echo, µs)", "", result.get("latency_method", ""), "",
                  "| load | path | p50 [min, max] | p99 [min, max] | samples | lost |", "|---|---|---:|---:|---:|---:|"]
        for load, paths in result["latency"].items():
            for path in ("direct", "through_seawall"):
                p = paths[path]
                lines.append(f"| {load} | {path} | {_us(p, 'p50')} | {_us(p, 'p99')} | {p['samples']} | {p['lost']} |")
            lines.append(f"| {load} | **added** | **{_us(paths, 'added_p50')}** | **{_us(paths, 'added_p99')}** | | |")
        flood = result["latency"].get("flood", {}).get("flood_pps_received")
        if flood:
            lines.append(f"\nFlood: NTP reflection, {flood:,} packets/s received by the DUT and dropped by Seawall.")
        lines.append("")
    if "scale" in result:
        lines += ["## Per-packet cost vs scale (BPF_PROG_TEST_RUN, ns/packet)", "",
                  "| tenants | prefixes | rules | XDP_DROP floor | pass | drop (rule) |", "|---:|---:|---:|---:|---:|---:|"]
        for p in result["scale"]:
            lines.append(f"| {p['tenants']:,} | {p['prefixes']:,} | {p['rules']:,} | {p['minimal_ns']} | "
                         f"{p['pass_ns']} | {p['drop_ns']} |")
        lines.append("")
    if "control_plane" in result:
        lines += ["## Control plane: one policy tick", "",
                  "| destinations | tenants | tick CPU ms (median) | peak RSS MiB |", "|---:|---:|---:|---:|"]
        for dests, r in result["control_plane"].items():
            if "skipped" in r:
                lines.append(f"| {int(dests):,} | | {r['skipped']} | |")
                continue
            tenants = f"{r['tenants']:,}" if "tenants" in r else ""
            lines.append(f"| {int(dests):,} | {tenants} | {_first(r, 'cpu_ms_median', 'tick_cpu_ms_median')} | "
                         f"{_rss_mib(r)} |")
        lines.append("")
    lines += ["## Detection vs FastNetMon", "", result.get("detection_reason", ""), ""]
    method = result.get("detection_method")
    if method:
        settings = method.get("settings", {})
        lines += [f"FastNetMon {method.get('fastnetmon_version', '?')} (Debian): threshold_pps "
                  f"{settings.get('threshold_pps', '?'):,}, TCP/UDP/ICMP pps {settings.get('threshold_tcp_udp_icmp_pps', '?'):,}, "
                  f"average_calculation_time {settings.get('average_calculation_time_s', '?')} s. Seawall: default "
                  f"policy, tick {settings.get('seawall_tick_ms', '?')} ms. Lab vectors at "
                  f"{settings.get('vector_pps', 0):,} pps for {settings.get('vector_s', '?')} s, each on its own server.", "",
                  "The reference flood: UDP 5,000 pps of 512 bytes on the game port of the game server, next to "
                  "~800 pps of real game traffic.", "",
                  "| flood | Seawall (s after onset) | FastNetMon (s after onset) | achieved pps | FastNetMon's report |",
                  "|---|---:|---:|---:|---|"]
        for vector, cell in result.get("detection", {}).items():
            lines.append(f"| {vector} | {_seconds(cell.get('seawall_s'))} | {_seconds(cell.get('fastnetmon_s'))} | "
                         f"{cell.get('achieved_pps') or 0:,.0f} | {cell.get('fastnetmon_report') or ''} |")
        lines.append("")
    carried = result.get("carried_over")
    if carried:
        lines += ["Figures kept from earlier runs: " + "; ".join(
            f"{part} from {c.get('started')} of {c.get('source')}" for part, c in carried.items()), ""]
    return "\n".join(lines)


def _us(cell: dict, key: str) -> str:
    """`key`_us with its min-max over rounds when the run recorded them (runs before rounds did not)."""
    spread = cell.get(f"{key}_min_max_us")
    return f"{cell[f'{key}_us']} [{spread[0]}, {spread[1]}]" if spread else str(cell[f"{key}_us"])


def _seconds(value: float | None) -> str:
    return "not detected in 15 s" if value is None else f"{value:.2f}"


def _first(r: dict, *keys: str) -> object:
    for key in keys:
        if key in r:
            return r[key]
    return "?"


def _rss_mib(r: dict) -> object:
    for key in ("peak_rss_mib", "rss_peak_mib"):
        if key in r:
            return r[key]
    for key in ("peak_rss_kib", "rss_peak_kib"):
        if key in r:
            return round(r[key] / 1024, 1)
    return "?"


def plot(result: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    if "drop" in result:
        counts = list(result["drop"])
        systems = [s for s in SYSTEM_LABELS if any(s in result["drop"][c] for c in counts)
                   and s not in ("linux_bridge", "linux_bridge_nftables")]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        width = 0.8 / len(counts)
        for i, count in enumerate(counts):
            values, errors_low, errors_high = [], [], []
            for system in systems:
                cell = (result["drop"][count].get(system) or {}).get("ntp_reflection")
                mpps = cell["mpps_per_cpu"] if cell else 0.0
                values.append(mpps)
                errors_low.append(mpps - 1e3 / cell["max_ns"] if cell else 0.0)    # slowest burst
                errors_high.append(1e3 / cell["min_ns"] - mpps if cell else 0.0)   # fastest burst
            positions = [j + i * width for j in range(len(systems))]
            ax.bar(positions, values, width, yerr=[errors_low, errors_high], capsize=3,
                   label=f"{int(count):,} prefixes")
        ax.set_xticks([j + width * (len(counts) - 1) / 2 for j in range(len(systems))])
        ax.set_xticklabels([SYSTEM_LABELS[s].replace(" (", "\n(").replace(", ", ",\n") for s in systems], fontsize=8)
        ax.set_ylabel("NTP reflection dropped, Mpps per CPU")
        ax.set_title("Drop: attack packets per CPU-second (higher is better)")
        ax.legend()
        fig.tight_layout()
        written.append(out_dir / "drop.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if "scale" in result:
        fig, ax = plt.subplots(figsize=(7, 4))
        tenants = [p["prefixes"] for p in result["scale"]]
        for key, label in (("minimal_ns", "XDP_DROP floor"), ("pass_ns", "pass (lookup, count, bridge)"),
                           ("drop_ns", "drop (rule)")):
            ax.plot(tenants, [p[key] for p in result["scale"]], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("tenant prefixes (half IPv4, half IPv6; up to 10,000 tenants)")
        ax.set_ylabel("ns per packet (BPF_PROG_TEST_RUN)")
        ax.set_title("Per-packet cost vs scale")
        ax.legend()
        fig.tight_layout()
        written.append(out_dir / "scale.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if "latency" in result:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels, p50, p99 = [], [], []
        for load, paths in result["latency"].items():
            for path in ("direct", "through_seawall"):
                labels.append(f"{load}\n{path}")
                p50.append(paths[path]["p50_us"])
                p99.append(paths[path]["p99_us"])
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel("UDP echo RTT, µs")
        ax.set_title("Latency: direct link vs through Seawall")
        ax.legend()
        fig.tight_layout()
        written.append(out_dir / "latency.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write(result: dict, out_dir: pathlib.Path) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "compare.json", out_dir / "compare.md"]
    files[0].write_text(json.dumps(result, indent=1, default=str) + "\n")
    files[1].write_text(render_markdown(result))
    files += plot(result, out_dir)
    result["outputs"] = [str(f) for f in files]
    return files
