"""`seawall detach`: remove the dataplane from the NICs (the only way it goes away on its own)."""

from __future__ import annotations

import sys

from appliance.config import DEFAULT_CONFIG_PATH


def register(subparsers) -> None:
    p = subparsers.add_parser("detach", help="remove the XDP bridge from both NICs (traffic stops crossing)")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    p.add_argument("--purge", action="store_true", help="also delete pinned maps (counters, rules, tenants)")
    p.set_defaults(func=detach)


def detach(args) -> int:
    from appliance.service import appliance_paths, pinned_links  # noqa: PLC0415
    from dataplane.dataplane import purge, remove_pinned_link  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    try:
        _, bpffs = appliance_paths(args.config)
    except ConfigError as exc:
        print(f"seawall detach: {exc}", file=sys.stderr)
        return 2
    if args.purge:
        removed = purge(str(bpffs))
        print(f"removed {len(removed)} pinned objects under {bpffs}")
        return 0
    links = pinned_links(bpffs)
    for link in links:
        remove_pinned_link(str(link))
        print(f"detached {link.name.removeprefix('link_')}")
    if not links:
        print(f"nothing attached under {bpffs}")
    return 0
