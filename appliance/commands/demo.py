"""`seawall demo [--scenario NAME|PATH] [--duration S]`: a scenario on the built-in lab, with a live view."""

from __future__ import annotations

import pathlib
import sys

from securewatch.settings import split_listen


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run a scenario (default: the reference one) on the built-in lab "
                                           "with a live view")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds; bounds the run (default: the whole scenario, then SecureWatch until Ctrl-C)")
    p.add_argument("--lab", default="sw", help="lab name (default: sw)")
    p.add_argument("--scenario", default=None,
                   help="a scenario name (a file of appliance/scenarios/: reference, saturation, ...) or the path "
                        "of a scenario TOML (default: reference)")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="the appliance's configuration, log and state (default: /var/lib/seawall/demo)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="SecureWatch's address (default: 127.0.0.1:8080; port 0 picks a free one); not with --fleet, "
                        "whose central server takes a free port")
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
    if args.listen is not None:
        if args.fleet:
            print("seawall demo: --listen: not with --fleet (its central server takes a free port)", file=sys.stderr)
            return 2
        try:
            split_listen(args.listen)
        except ValueError as exc:
            print(f"seawall demo: --listen: {exc}", file=sys.stderr)
            return 2
    if args.state_dir is not None and not pathlib.Path(args.state_dir).is_absolute():
        print(f"seawall demo: --state-dir: {args.state_dir!r} is not an absolute path", file=sys.stderr)
        return 2
    places = {"state_dir": pathlib.Path(args.state_dir)} if args.state_dir else {}
    if args.fleet:
        from appliance.fleet_demo import run_fleet_demo  # noqa: PLC0415

        return run_fleet_demo(args.duration, scenario_path=args.scenario, **places)
    from appliance.demo import run_demo  # noqa: PLC0415 - loads bcc: only once the arguments are good

    if args.listen is not None:
        places["listen"] = args.listen
    return run_demo(args.lab, args.duration, scenario_path=args.scenario, **places)
