"""`seawall demo [--duration S]`: the reference scenario on the built-in lab, with a live view."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the reference scenario on the built-in lab with a live view")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds; bounds the run (default: the whole scenario, then SecureWatch until Ctrl-C)")
    p.add_argument("--lab", default="sw", help="lab name (default: sw)")
    p.add_argument("--scenario", default=None, help="scenario TOML (default: the reference scenario)")
    p.add_argument("--fleet", action="store_true",
                   help="two sites (two labs, two appliances) and one central SecureWatch (issue 17)")
    p.set_defaults(func=demo)


def demo(args) -> int:
    from appliance.demo import run_demo  # noqa: PLC0415

    if args.duration is not None and args.duration <= 0:
        print("seawall demo: --duration must be positive seconds")
        return 2
    if args.fleet:
        from appliance.fleet_demo import run_fleet_demo  # noqa: PLC0415

        return run_fleet_demo(args.duration, scenario_path=args.scenario)
    return run_demo(args.lab, args.duration, scenario_path=args.scenario)
