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
    except ConfigError as exc:
        problems = [*exc.problems, *_notify_problems(args.config)]
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


def _notify_problems(path: str) -> list[str]:
    """The [notify] section's problems when the rest of the file was refused too, so that one
    pass of fixes is enough; nothing when the file cannot be read as TOML at all."""
    from appliance.service import parse_notify  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415
    from tenants.io import parse_toml_document, read_text  # noqa: PLC0415

    try:
        notify = parse_toml_document(read_text(path), path).get("notify")
    except (ConfigError, OSError):
        return []
    if not isinstance(notify, dict) or not notify:
        return []  # a [notify] that is not a table is among the file's problems already
    try:
        parse_notify(notify)
    except ConfigError as exc:
        return exc.problems
    return []
