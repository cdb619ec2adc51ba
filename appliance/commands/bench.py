"""`seawall bench dataplane|policy|securewatch|...`: figures and ratios, never pass/fail on speed."""

from __future__ import annotations

import json
import sys

from appliance.commands import bench_compare


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (print figures and ratios)")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    d = sub.add_parser("dataplane", help="ns per packet against a minimal XDP program, xdp-filter and a bare bridge (BPF_PROG_TEST_RUN)")
    d.add_argument("--tenants", type=int, default=10_000)
    d.add_argument("--rules", type=int, default=1_000)
    d.add_argument("--repeat", type=int, default=1_000_000, help="repeats per measurement (default 1,000,000)")
    d.add_argument("--runs", type=int, default=5, help="measurements per path; the median is reported")
    d.add_argument("--stages", action="store_true", help="also print the cost of each stage of the program")
    d.add_argument("--json", action="store_true", help="one JSON object as the last line")
    d.set_defaults(func=bench_dataplane)
    sa = sub.add_parser("synauth", help="ns per packet of SYN authentication (cookies) next to pass and drop")
    sa.add_argument("--tenants", type=int, default=10_000)
    sa.add_argument("--repeat", type=int, default=1_000_000, help="repeats per measurement (default 1,000,000)")
    sa.add_argument("--runs", type=int, default=5, help="measurements per path; the median is reported")
    sa.add_argument("--json", action="store_true", help="one JSON object as the last line")
    sa.set_defaults(func=bench_synauth)
    cmp = sub.add_parser("compare", help="side by side with nftables, the Linux bridge and xdp-filter")
    bench_compare.add_arguments(cmp)
    cmp.set_defaults(func=bench_compare.main)
    mit = sub.add_parser("mitigation", help="in-dataplane time from a flood's first packet to its first drop")
    mit.add_argument("--vectors", default="syn,udp,icmp", help="comma-separated: syn, udp, icmp, frag")
    mit.add_argument("--pps", type=int, default=50_000, help="flood rate, packets/s")
    mit.add_argument("--budget", type=int, default=5_000, help="the tenant's class budget, packets/s")
    mit.add_argument("--runs", type=int, default=3)
    mit.add_argument("--json", action="store_true")
    mit.set_defaults(func=bench_mitigation)
    pol = sub.add_parser("policy", help="CPU time and memory of one policy tick at scale")
    pol.add_argument("--destinations", type=int, default=100_000)
    pol.add_argument("--tenants", type=int, default=10_000)
    pol.add_argument("--ticks", type=int, default=20)
    pol.add_argument("--scale", nargs="?", const="default", metavar="D:T,...",
                     help="sweep sizes, each in its own process (destinations:tenants pairs; "
                          "without a value 1000:1000,10000:10000,100000:10000,1000000:10000); prints a table")
    pol.add_argument("--real", action="store_true",
                     help="root only: on a real, unattached Dataplane whose maps hold the destinations "
                          "(the kernel's batch reads included)")
    pol.add_argument("--prefixes", action="store_true",
                     help="every tenant owns a v4 and a v6 prefix holding its addresses (per-prefix aggregates)")
    pol.add_argument("--attacked", type=int, default=20, metavar="N",
                     help="destinations that start receiving a 50 kpps SYN flood each halfway through the timed "
                          "ticks, each its own incident (default 20; thousands show the tick under a wide attack)")
    pol.add_argument("--warmup-ticks", type=int, default=10, help="untimed ticks first (--real)")
    pol.add_argument("--live", action="store_true",
                     help="with --real: the engine's own tick loop for --seconds, a tick every --tick-ms, the "
                          "counters advancing each second: does the engine keep its tick at this size (ticks "
                          "overrun, spacing of tick starts)")
    pol.add_argument("--tick-ms", type=int, default=1000, help="the tick interval for --live, as [appliance] tick_ms")
    pol.add_argument("--loop-latency", action="store_true",
                     help="SecureWatch API latency and notifier delay while ticks run (--sizes), ticking on "
                          "the event loop vs in the engine's worker thread")
    pol.add_argument("--sizes", default="100000,1000000", metavar="D,...",
                     help="destination counts for --loop-latency (default 100000,1000000)")
    pol.add_argument("--seconds", type=float, default=15.0,
                     help="seconds per mode (--loop-latency), seconds of ticking (--real --live)")
    pol.add_argument("--json", action="store_true")
    pol.set_defaults(func=bench_policy)
    esc = sub.add_parser("escalation", help="time from a flood's first packet to its FlowSpec route at a BGP peer "
                                                 "and to the flood gone from the upstream link")
    esc.add_argument("--runs", type=int, default=3, help="floods, one per server of tenant alpha; the median is reported")
    esc.add_argument("--pps", type=int, default=20_000, help="flood rate, packets/s (NTP replies, ~470 bytes)")
    esc.add_argument("--json", action="store_true")
    esc.set_defaults(func=bench_escalation)
    sw = sub.add_parser("securewatch", help="tenant GET and policy PUT latency of SecureWatch at scale")
    sw.add_argument("--tenants", type=int, default=10_000)
    sw.add_argument("--clients", type=int, default=20, help="concurrent HTTP clients (default 20)")
    sw.add_argument("--requests", type=int, default=2_000, help="requests in all (default 2,000)")
    sw.add_argument("--put-every", type=int, default=20, metavar="N",
                    help="every Nth request a policy PUT, the rest tenant GETs; 0: reads only (default 20)")
    sw.add_argument("--time-limit", type=float, default=300.0, metavar="S",
                    help="stop starting requests after S seconds and report what completed (default 300)")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=bench_securewatch)
    fl = sub.add_parser("fleet", help="central SecureWatch: ingest rate, CPU and memory, tick-to-central delay, "
                                      "backfill rate")
    fl.add_argument("--sites", type=int, default=20, help="simulated sites sending at once (default 20)")
    fl.add_argument("--tenants", type=int, default=10_000, help="tenants per site (default 10,000)")
    fl.add_argument("--seconds", type=int, default=30, help="seconds of backlog each site sends (default 30)")
    fl.add_argument("--live-s", type=int, default=10, help="seconds of the tick-to-central measurement")
    fl.add_argument("--outage-s", type=int, default=3600, help="seconds of outage backfilled (default 3600)")
    fl.add_argument("--backfill-tenants", type=int, default=1_000, help="tenants of the backfilling site")
    fl.add_argument("--database", help="the central database (an empty postgresql://...; default: temporary SQLite)")
    fl.add_argument("--postgres", action="store_true",
                    help="start a throwaway PostgreSQL cluster for the central database (root)")
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=bench_fleet)


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def _refused(command: str, problem: object) -> int:
    """Bad arguments (or a run the benchmark refuses): the reason on stderr, exit status 2."""
    print(f"{command}: {problem}", file=sys.stderr)
    return 2


def _show(text: str, result: object, as_json: bool) -> int:
    """The figures for a reader, then (with --json) the result as one JSON object on the last line."""
    print(text)
    if as_json:
        print(json.dumps(result, default=str))
    return 0


def _key_values(result: dict) -> str:
    return "\n".join(f"{key:<32} {value}" for key, value in result.items())


def bench_dataplane(args) -> int:
    from appliance.bench import dataplane  # noqa: PLC0415

    if args.tenants < 1 or not 0 <= args.rules <= min(args.tenants, 4096) or args.repeat < 1 or args.runs < 1:
        return _refused("seawall bench dataplane",
                        "need tenants >= 1, 0 <= rules <= min(tenants, 4096), repeat and runs >= 1")
    result = dataplane.run(args.tenants, args.rules, args.repeat, args.runs, args.stages, _progress)
    return _show(dataplane.render(result), result, args.json)


def bench_synauth(args) -> int:
    from appliance.bench import synauth  # noqa: PLC0415

    if args.tenants < 1 or args.repeat < 1 or args.runs < 1:
        return _refused("seawall bench synauth", "need tenants, repeat and runs >= 1")
    result = synauth.run(args.tenants, args.repeat, args.runs, _progress)
    return _show(synauth.render(result), result, args.json)


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for part in text.split(","):
        dest, sep, tenants = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            sizes.append((int(dest.replace("_", "")), int(tenants.replace("_", ""))))
        except ValueError:
            raise ValueError(f"--scale: {part.strip()!r} is not DESTINATIONS:TENANTS") from None
    return tuple(sizes)


def bench_policy(args) -> int:
    from appliance.bench.policy import DEFAULT_SWEEP, render_sweep, run_benchmark, run_sweep  # noqa: PLC0415

    if args.live and not args.real:
        return _refused("seawall bench policy", "--live runs on real maps: add --real (root)")
    if args.real:
        return _bench_policy_real(args)
    if args.loop_latency:
        return _bench_loop_latency(args)
    if args.scale is not None:
        try:
            sizes = DEFAULT_SWEEP if args.scale == "default" else _parse_sizes(args.scale)
            results = run_sweep(sizes, ticks=args.ticks, progress=_progress)
        except ValueError as exc:
            return _refused("seawall bench policy", exc)
        return _show(render_sweep(results), {"sweep": results}, args.json)
    _progress(f"{args.destinations:,} destinations, {args.tenants:,} tenants, {args.ticks} ticks")
    try:
        result = run_benchmark(destinations=args.destinations, tenants=args.tenants, ticks=args.ticks,
                               prefixes=args.prefixes, attacked=args.attacked)
    except ValueError as exc:
        return _refused("seawall bench policy", exc)
    return _show(_key_values(result), result, args.json)


def _bench_loop_latency(args) -> int:
    from appliance.bench import loop_latency  # noqa: PLC0415

    try:
        sizes = tuple(int(v) for v in args.sizes.split(","))
        result = loop_latency.run(sizes=sizes, tenants=args.tenants, seconds=args.seconds, progress=_progress)
    except ValueError as exc:   # a size that is not a number, or one the synthetic dataplane refuses
        return _refused("seawall bench policy --loop-latency", exc)
    return _show(loop_latency.render(result), result, args.json)


def _bench_policy_real(args) -> int:
    from appliance.bench import policy_real  # noqa: PLC0415

    if args.scale is not None:
        return _refused("seawall bench policy",
                        "--real measures one size (--destinations, --tenants), not a --scale sweep")
    try:
        if args.live:
            if args.prefixes:
                return _refused("seawall bench policy --real --live", "--prefixes is for the timed ticks only")
            result = policy_real.run_live(destinations=args.destinations, tenants=args.tenants,
                                          seconds=args.seconds, tick_ms=args.tick_ms, progress=_progress)
        else:
            result = policy_real.run(destinations=args.destinations, tenants=args.tenants, ticks=args.ticks,
                                     warmup_ticks=args.warmup_ticks, prefixes=args.prefixes, progress=_progress)
    except (PermissionError, ValueError) as exc:
        return _refused("seawall bench policy --real", exc)
    return _show(_key_values(result), result, args.json)


def bench_mitigation(args) -> int:
    from appliance.bench import mitigation  # noqa: PLC0415

    vectors = tuple(v for v in args.vectors.split(",") if v)
    unknown = [v for v in vectors if v not in mitigation.BUDGETS]
    if unknown or args.pps < 1 or args.budget < 1 or args.runs < 1:
        return _refused("seawall bench mitigation",
                        f"vectors from {', '.join(mitigation.BUDGETS)}; pps, budget, runs >= 1")
    result = mitigation.run(vectors, args.pps, args.budget, args.runs, _progress)
    lines = [f"flood {result['flood_pps']:,} pps against a {result['budget_pps']:,} pps per-destination budget"]
    for vector, r in result["vectors"].items():
        per_run = ", ".join(str(f["first_drop_ms"]) for f in r["runs"])
        lines.append(f"  {vector:<5} first drop after {r['first_drop_ms_median']} ms (median; runs: {per_run})")
    return _show("\n".join(lines), result, args.json)


def bench_escalation(args) -> int:
    from appliance.bench import escalation  # noqa: PLC0415

    if args.runs < 1 or args.pps < 1:
        return _refused("seawall bench escalation", "--runs and --pps must be >= 1")
    result = escalation.run(args.runs, args.pps, _progress)
    per_run = ", ".join(f"{r['route_s']}" for r in result["runs"])
    gone = ", ".join(f"{r['gone_s']}" for r in result["runs"])
    return _show(f"flood {result['pps']:,} pps over a {result['uplink_bps'] / 1e6:g} Mbit/s uplink: FlowSpec route "
                 f"at the peer {result['route_s_median']} s after the first packet (median; runs: {per_run} s); "
                 f"flood gone from the uplink after {result['gone_s_median']} s (median; runs: {gone} s)",
                 result, args.json)


def bench_securewatch(args) -> int:
    from appliance.bench import securewatch  # noqa: PLC0415

    try:
        result = securewatch.run(tenants=args.tenants, clients=args.clients, requests=args.requests,
                                 put_every=args.put_every, time_limit_s=args.time_limit, progress=_progress)
    except (ValueError, RuntimeError) as exc:
        return _refused("seawall bench securewatch", exc)
    return _show(securewatch.render(result), result, args.json)


def bench_fleet(args) -> int:
    from appliance.bench import fleet  # noqa: PLC0415

    try:
        result = fleet.run(sites=args.sites, tenants=args.tenants, seconds=args.seconds, live_s=args.live_s,
                           outage_s=args.outage_s, backfill_tenants=args.backfill_tenants, database=args.database,
                           postgres=args.postgres, progress=_progress)
    except (ValueError, RuntimeError) as exc:
        return _refused("seawall bench fleet", exc)
    return _show(fleet.render(result), result, args.json)
