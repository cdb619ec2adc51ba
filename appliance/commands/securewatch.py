"""`seawall securewatch --config FILE`: SecureWatch alone (central server mode, no dataplane)."""

from __future__ import annotations

import asyncio
import sys

from appliance.config import DEFAULT_CONFIG_PATH


def register(subparsers) -> None:
    p = subparsers.add_parser("securewatch", help="run SecureWatch alone (central server, no dataplane)")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    p.set_defaults(func=run)


def run(args) -> int:
    from appliance.config import load_config  # noqa: PLC0415
    from appliance.logging_setup import configure_logging  # noqa: PLC0415
    from securewatch.server import serve_central  # noqa: PLC0415
    from securewatch.store import StoreError  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    try:
        config = load_config(args.config)
        mailer = _mailer(config.notify, config.securewatch.reports)
    except ConfigError as exc:  # every problem of the file at once, never a traceback
        print(f"seawall securewatch: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.appliance.log_format)
    try:
        asyncio.run(serve_central(config.securewatch, mailer=mailer))
    except StoreError as exc:
        print(f"seawall securewatch: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"seawall securewatch: cannot listen on {config.securewatch.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _mailer(notify: dict, reports):
    """Monthly report mail goes through the first [[notify.email]] receiver's server, if any."""
    if not notify:
        return None
    from securewatch.mailer import report_mailer  # noqa: PLC0415
    from securewatch.notify import parse_notify_config  # noqa: PLC0415

    return report_mailer(parse_notify_config(notify), reports)
