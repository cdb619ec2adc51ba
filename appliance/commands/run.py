"""`seawall run --config FILE`: the appliance process (bridge, policy engine, SecureWatch).

Exit status: 2 when the configuration is refused (every problem printed, nothing
attached), 1 when the kernel or the machine refuses (compile, attach, a NIC that would
drop what the bridge forwards), 0 after a clean stop.
"""

from __future__ import annotations

import asyncio
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run the appliance: bridge the two NICs and protect the tenants")
    p.add_argument("--config", required=True, help="appliance TOML file")
    p.add_argument("--attach-mode", choices=("auto", "native", "generic"), default="auto",
                   help="XDP attach mode; auto tries native and falls back to generic (default: auto)")
    p.add_argument("--detach-on-exit", action="store_true",
                   help="remove the dataplane when stopping (default: leave the bridge forwarding)")
    p.add_argument("--sample-every", type=int, default=64, metavar="N",
                   help="copy one packet in N per CPU to the policy engine (default: 64)")
    p.set_defaults(func=run)


def run(args) -> int:
    from appliance.config import load_config  # noqa: PLC0415
    from appliance.logging_setup import configure_logging  # noqa: PLC0415
    from appliance.service import Appliance, validate_for_run  # noqa: PLC0415
    from dataplane import DataplaneError  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    try:
        config = load_config(args.config)
    except ConfigError as exc:  # load_config checks [notify] too: every problem of the file at once
        problems = [*exc.problems, *_missing_nics(args.config)]
        print(f"seawall run: {ConfigError(problems, source=exc.source)}", file=sys.stderr)
        return 2
    try:
        validate_for_run(config)
    except ConfigError as exc:
        print(f"seawall run: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.appliance.log_format)
    appliance = Appliance(config, config_path=args.config, attach_mode=args.attach_mode,
                          detach_on_exit=args.detach_on_exit, sample_every=args.sample_every)
    try:
        return asyncio.run(appliance.run())
    except ConfigError as exc:
        print(f"seawall run: {exc}", file=sys.stderr)
        return 2
    except (DataplaneError, OSError) as exc:
        print(f"seawall run: {exc}", file=sys.stderr)
        return 1


def _missing_nics(path: str) -> list[str]:
    """The NICs named in [appliance] that do not exist, when the rest of the file was refused, so
    that one pass of fixes is enough (validate_for_run says the same once the file loads)."""
    import socket  # noqa: PLC0415

    from tenants import ConfigError  # noqa: PLC0415
    from tenants.io import parse_toml_document, read_text  # noqa: PLC0415

    try:
        section = parse_toml_document(read_text(path), path).get("appliance")
    except (ConfigError, OSError):
        return []
    problems = []
    for role in ("external", "internal"):
        name = section.get(role) if isinstance(section, dict) else None
        if not isinstance(name, str) or not name:
            continue   # a missing or mistyped name is among the file's problems already
        try:
            socket.if_nametoindex(name)
        except OSError:
            problems.append(f"[appliance] {role}: interface {name!r} does not exist")
    return problems
