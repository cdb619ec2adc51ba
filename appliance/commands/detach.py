"""`seawall detach`: remove the dataplane from the NICs (the only way it goes away on its own)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("detach", help="remove the XDP bridge from both NICs (traffic stops crossing)")
    p.add_argument("--config", default="/etc/seawall/seawall.toml", help="appliance TOML file")
    p.add_argument("--purge", action="store_true", help="also delete pinned maps (counters, rules, tenants)")
    p.set_defaults(func=detach)


def detach(args) -> int:
    import tomllib  # noqa: PLC0415

    from appliance.service import appliance_paths  # noqa: PLC0415
    from dataplane.dataplane import purge, remove_pinned_link  # noqa: PLC0415

    try:
        _, bpffs = appliance_paths(args.config)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"seawall detach: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.purge:
        removed = purge(str(bpffs))
        print(f"removed {len(removed)} pinned objects under {bpffs}")
        return 0
    links = sorted(bpffs.glob("link_*")) if bpffs.exists() else []
    for link in links:
        remove_pinned_link(str(link))
        print(f"detached {link.name.removeprefix('link_')}")
    if not links:
        print(f"nothing attached under {bpffs}")
    return 0
