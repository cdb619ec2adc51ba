"""`seawall status [--json]`: interfaces, attach mode, per-tenant traffic of the running appliance.

`forwarding` (true/false) and `forwarding_state` say whether the bridge forwards now, as the
running appliance last checked with the kernel (both NICs up, the program attached to each):
health checks and orchestration wait for `"forwarding": true`, not for the status to exist.
"""

from __future__ import annotations

import json
import os
import sys
import time

from appliance.config import DEFAULT_CONFIG_PATH

STALE_AFTER_S = 5.0  # seconds without a status update before the control plane counts as down


def register(subparsers) -> None:
    p = subparsers.add_parser("status", help="show the interfaces, attach mode and per-tenant traffic")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=status)


def status(args) -> int:
    from appliance.service import appliance_paths, pinned_links, read_status  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    try:
        state_dir, bpffs = appliance_paths(args.config)
    except ConfigError as exc:
        print(f"seawall status: {exc}", file=sys.stderr)
        return 2
    report = read_status(state_dir)
    links = [p.name.removeprefix("link_") for p in pinned_links(bpffs)]
    age = None if report is None else time.time() - report.get("updated", 0)
    running = report is not None and age < STALE_AFTER_S and _alive(report.get("pid"))
    summary = {"control_plane": "running" if running else "down", "status_age_s": None if age is None else round(age, 1),
               "dataplane_attached_to": links, **(report or {"interfaces": [], "tenants": {}})}
    if not running:  # a stale report's word on forwarding is not news
        summary["forwarding"] = False
        summary["forwarding_state"] = "unknown: the control plane is down" + (
            " (the pinned bridge keeps forwarding without it)" if links else "")
    else:
        summary.setdefault("forwarding", False)
        summary.setdefault("forwarding_state", "unknown")
    if args.json:
        print(json.dumps(summary, default=str))
        return 0 if running or links else 1
    _print_human(summary)
    return 0 if running or links else 1


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _print_human(s: dict) -> None:
    cp = s["control_plane"]
    print(f"control plane: {cp}" + ("" if cp == "running" else
                                     f" (last status {s['status_age_s']} s ago)" if s["status_age_s"] else ""))
    forwarding = s.get("forwarding", False)
    print(f"forwarding:    {'yes' if forwarding else 'no'}"
          + ("" if forwarding else f" ({s.get('forwarding_state', 'unknown')})"))
    if s["dataplane_attached_to"]:
        print(f"dataplane:     attached to {', '.join(s['dataplane_attached_to'])} (pinned, forwards without the control plane)")
    else:
        print("dataplane:     not attached")
    for itf in s.get("interfaces", []):
        print(f"  {itf['role']:<9} {itf['name']:<16} ifindex {itf['ifindex']:<5} XDP {itf['mode']}")
    tenants = s.get("tenants", {})
    if tenants:
        print(f"\n{'tenant':<16} {'mode':<9} {'passed pps':>11} {'dropped pps':>12} {'passed pkts':>13} {'dropped pkts':>13}")
        for tid, t in tenants.items():
            print(f"{tid:<16} {t['mode']:<9} {t['passed_pps']:>11.0f} {t['dropped_pps']:>12.0f} "
                  f"{t['passed_packets']:>13} {t['dropped_packets']:>13}")
        budgets = {tid: t["class_budgets"] for tid, t in tenants.items() if t.get("class_budgets")}
        if budgets:
            print("\nper-destination class budgets, packets/s (source: policy, baseline, or none while warming up)")
            for tid, b in budgets.items():
                print(f"{tid:<16} " + "  ".join(f"{cls} {v['pps']} ({v['source'].split()[0]})" for cls, v in b.items()))
    pol = s.get("policy") or {}
    if pol:
        print(f"\nincidents open: {pol.get('open_incidents', 0)}   rules installed: {pol.get('rules_installed', 0)}")
    if s.get("securewatch"):
        print(f"SecureWatch:   {s['securewatch']}")
