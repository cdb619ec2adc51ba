"""`seawall demo [--scenario NAME|PATH] [--duration S]`: a scenario on the built-in lab, with a live view."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run a scenario (default: the reference one) on the built-in lab "
                                           "with a live view")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds; bounds the run (default: the whole scenario, then SecureWatch until Ctrl-C)")
    p.add_argument("--lab", default="sw", help="lab name (default: sw)")
    p.add_argument("--scenario", default=None,
                   help="a scenario name (a file of appliance/scenarios/: reference, saturation, ...) or the path "
                        "of a scenario TOML (default: reference)")
    p.add_argument("--fleet", action="store_true",
                   help="two sites (two labs, two appliances) and one central SecureWatch (issue 17)")
    p.set_defaults(func=demo)


def demo(args) -> int:
    from appliance.lab.scenario import load_scenario  # noqa: PLC0415

    if args.duration is not None and args.duration <= 0:
        print("seawall demo: --duration must be positive seconds", file=sys.stderr)
        return 2
    if args.scenario is not None:
        try:
            load_scenario(args.scenario)      # refused here, before the lab is built
        except (ValueError, OSError) as exc:
            print(f"seawall demo: --scenario: {exc}", file=sys.stderr)
            return 2
    if args.fleet:
        from appliance.fleet_demo import run_fleet_demo  # noqa: PLC0415

        return run_fleet_demo(args.duration, scenario_path=args.scenario)
    from appliance.demo import run_demo  # noqa: PLC0415 - loads bcc: only once the arguments are good

    return run_demo(args.lab, args.duration, scenario_path=args.scenario)
