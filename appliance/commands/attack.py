"""`seawall attack VECTOR --target IP|PREFIX ...`: send an attack through the lab's appliance.

Frames are built with scapy, then sent by the live-frames XDP fast path from
inside `<lab>-up`, paced to --pps (where the kernel refuses live-frames runs, they are
written into a veth pair whose XDP program sends them on; the summary's "method" says
which). The botnet vectors (http-flood, conn-flood,
slowloris, tls-flood, and flash-crowd, which is no attack) are real connections
instead, from --bots addresses in `<lab>-att`, paced to --rate (appliance/lab/botnet.py).
Per-second progress and a final summary go to stdout; with --json every line is a
JSON object and the last one is the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from appliance.lab.attack import MULTI_DEFAULT, VECTORS, AttackSpec
from appliance.lab.botnet import BOTNET_VECTORS, DEFAULT_BOTS, DEFAULT_RATES, UNITS
from appliance.signals import restore_signals, stop_on_signals


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attack", help="send an attack through the lab (live-frames XDP generator)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vector", choices=VECTORS, help="attack vector")
    parser.add_argument("--target", required=True, help="address or prefix (carpet) inside a lab tenant prefix")
    parser.add_argument("--pps", type=int, default=10_000, help="packets per second in total; 0 = maximum")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--dport", type=int, help="destination port (default: the vector's, random for UDP)")
    parser.add_argument("--sport", type=int, help="source port (default: random, or the reflector's port)")
    parser.add_argument("--size", type=int, help="IP datagram bytes (default: the vector's realistic size)")
    parser.add_argument("--spoof", help="CIDR of spoofed sources (default 198.18.0.0/15), or 'off'")
    parser.add_argument("--vectors", default=",".join(MULTI_DEFAULT), help="multi: comma-separated vectors")
    parser.add_argument("--pulse", help="pulse wave ON,OFF in seconds (e.g. 2,2): full rate, then silence, repeated")
    parser.add_argument("--ramp", type=float, help="seconds to rise linearly from 0 to --pps, then hold")
    parser.add_argument("--bots", type=int, help=f"botnet: source addresses (default {DEFAULT_BOTS:,}; "
                        "flash-crowd: distinct clients)")
    parser.add_argument("--rate", type=float, help="botnet: per second in total: requests (http-flood), new "
                        "connections (conn-flood, slowloris), handshakes (tls-flood), new clients (flash-crowd); "
                        "default " + ", ".join(f"{v} {r:g}" for v, r in DEFAULT_RATES.items()))
    parser.add_argument("--sources", help="botnet: CIDR inside 198.18.0.0/15 the bots' addresses come from "
                        "(default 198.18.0.0/16; flash-crowd 198.19.0.0/16)")
    parser.add_argument("--lab", default="sw", help="lab name (default sw)")
    parser.add_argument("--json", action="store_true", help="JSON lines; the last line is the summary")
    parser.set_defaults(func=run)


def _stop_on_signals() -> tuple[threading.Event, dict]:
    """An event SIGINT and SIGTERM set (the generators stop at their next second and still report),
    and the handlers they replaced, for `restore_signals`."""
    stop = threading.Event()
    return stop, stop_on_signals(stop)


def run(args: argparse.Namespace) -> int:
    from appliance.lab import LabError, logs_to_stderr  # noqa: PLC0415
    from appliance.lab.generator import run_in_lab  # noqa: PLC0415 - bcc loads only when attacking

    logs_to_stderr()

    try:
        pulse = tuple(float(v) for v in args.pulse.split(",")) if args.pulse else None
    except ValueError:
        print(f"seawall attack: --pulse must be ON,OFF in seconds, got {args.pulse!r}", file=sys.stderr)
        return 2
    spec = AttackSpec(vector=args.vector, target=args.target, pps=args.pps, duration=args.duration,
                      dport=args.dport, sport=args.sport, size=args.size, spoof=args.spoof,
                      vectors=tuple(v.strip() for v in args.vectors.split(",") if v.strip()),
                      pulse=pulse, ramp=args.ramp, bots=args.bots, rate=args.rate, sources=args.sources)
    if args.vector in BOTNET_VECTORS:
        return _botnet(args, spec)
    stop, previous = _stop_on_signals()

    def progress(report) -> None:
        if args.json:
            print(json.dumps(report.to_dict()), flush=True)
        else:
            print(f"[{report.second:4d}s] {report.transmitted:>10,} frames/s"
                  + (f" (requested {report.requested_pps:,})" if report.requested_pps else ""), flush=True)

    try:
        result = run_in_lab(args.lab, spec, on_second=progress, stop_event=stop)
    except ValueError as exc:
        print(f"seawall attack: {exc}", file=sys.stderr)
        return 2
    except (LabError, OSError) as exc:
        print(f"seawall attack: {exc}", file=sys.stderr)
        return 1
    finally:
        restore_signals(previous)
    if args.json:
        print(json.dumps(result.to_dict()), flush=True)
    else:
        requested = f"{result.requested_pps:,} pps requested" if result.requested_pps else "maximum rate"
        print(f"{'+'.join(result.vectors)} -> {spec.target}: {result.transmitted:,} frames in "
              f"{result.elapsed_s:.2f}s = {result.achieved_pps:,.0f} pps ({requested}); "
              f"submitted {result.submitted:,}, not transmitted {result.xmit_errors:,}, skipped {result.skipped:,}")
    return 0


def _botnet(args: argparse.Namespace, spec: AttackSpec) -> int:
    from appliance.lab import LabError  # noqa: PLC0415
    from appliance.lab.botnet import run_in_lab  # noqa: PLC0415

    try:
        spec.validate()
        plan = spec.botnet_plan()
    except ValueError as exc:
        print(f"seawall attack: {exc}", file=sys.stderr)
        return 2
    unit = UNITS[plan.mode]
    stop, previous = _stop_on_signals()

    def progress(record: dict) -> None:
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            print(f"[{record['second']:4d}s] {unit} {record.get(unit, 0):>7,}  attempted {record.get('attempted', 0):>6,}"
                  f"  failed {record.get('connect_failed', 0):>6,}  open {record['open']:>6,}"
                  f"  skipped {record.get('skipped', 0):>6,}", flush=True)

    try:
        result = run_in_lab(args.lab, plan, progress, stop)
    except (LabError, OSError) as exc:
        print(f"seawall attack: {exc}", file=sys.stderr)
        return 1
    finally:
        restore_signals(previous)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"{plan.mode} -> {plan.target}:{plan.dport} from {result['bots']:,} bots ({result['sources']}): "
              f"{result.get(unit, 0):,} {unit} in {result['elapsed_s']:.2f}s = {result['achieved_rate']:,.1f}/s "
              f"(requested {result['requested_rate']:,.0f}/s); handshakes {result.get('connected', 0):,} of "
              f"{result.get('attempted', 0):,} attempted, skipped {result.get('skipped', 0):,}", flush=True)
    return 0
