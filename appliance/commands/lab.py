"""`seawall lab up|down|status|traffic|config`: the network-namespace lab.

`up` builds the topology (idempotent); `--linux-bridge` joins the appliance's two
NICs with a Linux bridge instead of the XDP program (the comparison baseline).
`traffic` runs steady legitimate clients and prints per-second success and latency.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from appliance.lab.traffic import add_arguments  # noqa: PLC0415

    parser = subparsers.add_parser("lab", help="network-namespace lab: topology, legitimate traffic",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("--name", default="sw", help="lab name: namespaces <name>-*, NICs <name>-ext/-int")
        return sub

    up = action("up", "build the lab (idempotent)")
    up.add_argument("--linux-bridge", action="store_true",
                    help="join <name>-ext and <name>-int with a Linux bridge (no appliance)")
    up.set_defaults(func=run_up)
    action("down", "remove everything the lab created").set_defaults(func=run_down)
    status = action("status", "print what exists")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)
    traffic = action("traffic", "steady legitimate clients with per-second success rate and latency")
    add_arguments(traffic)
    traffic.set_defaults(func=run_traffic)
    action("config", "print the appliance config (TOML) for this lab").set_defaults(func=run_config)
    play = action("play", "play a scenario: legitimate traffic plus attacks on a timeline")
    play.add_argument("--scenario", help="scenario name (a file of appliance/scenarios/) or TOML path "
                                         "(default: reference)")
    play.add_argument("--json", action="store_true", help="JSON lines; the last line is the summary")
    play.set_defaults(func=run_play)


def _lab(args):
    from appliance.lab import Lab, logs_to_stderr  # noqa: PLC0415
    logs_to_stderr()
    return Lab(args.name)


def run_up(args) -> int:
    from appliance.lab import LabError  # noqa: PLC0415
    try:
        lab = _lab(args)
        lab.up(linux_bridge=args.linux_bridge)
    except ValueError as exc:
        print(f"seawall lab up: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"seawall lab up: {exc}", file=sys.stderr)
        return 1
    _print_status(lab.status())
    return 0


def run_down(args) -> int:
    from appliance.lab import LabError  # noqa: PLC0415
    try:
        _lab(args).down()
    except ValueError as exc:
        print(f"seawall lab down: {exc}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"seawall lab down: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(status) -> None:
    if not status.exists:
        print(f"lab {status.name}: not present")
        return
    mode = "linux bridge" if status.bridge else (
        "XDP attached" if any(status.xdp.values()) else "no bridge (nothing crosses until the appliance runs)")
    print(f"lab {status.name}: {mode}")
    print(f"  root links: {', '.join(status.links) or '-'}")
    print(f"  namespaces: {', '.join(status.namespaces) or '-'}")
    for server, pid in status.processes.items():
        print(f"  services {server}: {'pid ' + str(pid) if pid else 'NOT RUNNING'}")


def run_status(args) -> int:
    try:
        status = _lab(args).status()
    except ValueError as exc:
        print(f"seawall lab status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status.to_dict()))
    else:
        _print_status(status)
    return 0


def run_traffic(args) -> int:
    from appliance.lab.traffic import TrafficProfile, TrafficRun, format_second  # noqa: PLC0415
    try:
        lab = _lab(args)
        run = TrafficRun(lab, args.duration, TrafficProfile(args.game_pps, args.http_rps, args.dns_qps,
                                                            args.timeout, args.new_clients_per_s,
                                                            args.browse_rps))
    except ValueError as exc:
        print(f"seawall lab traffic: {exc}", file=sys.stderr)
        return 2
    if not lab.status().processes:
        print(f"seawall lab traffic: lab {lab.name} is not up (run `seawall lab up --name {lab.name}`)",
              file=sys.stderr)
        return 1
    run.on_record = lambda record: print(json.dumps(record) if args.json else format_second(record),
                                         flush=True)
    run.start()
    try:
        run.wait()
    except KeyboardInterrupt:
        run.stop()
    except RuntimeError as exc:
        print(f"seawall lab traffic: {exc}", file=sys.stderr)
        return 1
    return 0


def run_config(args) -> int:
    import tomli_w  # noqa: PLC0415

    from appliance.lab import lab_config  # noqa: PLC0415
    try:
        print(tomli_w.dumps(lab_config(args.name)), end="")
    except ValueError as exc:
        print(f"seawall lab config: {exc}", file=sys.stderr)
        return 2
    return 0


def run_play(args) -> int:
    from appliance.lab.scenario import REFERENCE, load_scenario, play  # noqa: PLC0415
    from appliance.lab.traffic import format_second  # noqa: PLC0415
    try:
        lab = _lab(args)
        scenario = load_scenario(args.scenario or REFERENCE)
        if scenario.upstream is not None:     # its floods need the upstream router and an appliance escalating
            raise ValueError(f"scenario {scenario.name!r} runs on the lab's upstream mode: "
                             f"`seawall demo --scenario {scenario.name}` plays it")
        run = play(scenario, lab)
    except ValueError as exc:
        print(f"seawall lab play: {exc}", file=sys.stderr)
        return 2
    run.traffic.on_record = lambda record: print(
        json.dumps(record) if args.json else format_second(record), flush=True)
    try:
        result = run.wait()
    except KeyboardInterrupt:
        run.stop()
        return 130
    except RuntimeError as exc:
        run.stop()
        print(f"seawall lab play: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"type": "summary", "scenario": scenario.name, **result}))
    else:
        for attack in result["attacks"]:
            if attack:
                print(f"attack {'+'.join(attack['vectors'])}: {attack['transmitted']:,} frames, "
                      f"{attack['achieved_pps']:,.0f} pps achieved of {attack['requested_pps']:,} requested")
    return 0
