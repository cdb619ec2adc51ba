"""`seawall fleet enroll|revoke|list`: the sites of a fleet, on the central server's store.

    seawall fleet enroll SITE [--config central.toml]   # prints the site's token once (last line)
    seawall fleet revoke SITE [--config central.toml]   # refused from its next request on
    seawall fleet list [--json] [--config central.toml]

Only the token's SHA-256 is stored; put the token in the appliance's `[fleet] token_file`. A
revoked site is enrolled again with a new token. Every change is in the audit log as actor `cli`.
"""

from __future__ import annotations

import json
import time

from appliance.commands.token import _Refused, _run, open_store
from appliance.config import DEFAULT_CONFIG_PATH


def register(subparsers) -> None:
    p = subparsers.add_parser("fleet", help="enroll, revoke and list the sites of a fleet (central server)")
    sub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    enroll = sub.add_parser("enroll", help="enroll a site and print its one-time token (last line)")
    enroll.add_argument("site", help="the site's name, as in its [fleet] site")
    revoke = sub.add_parser("revoke", help="revoke a site's token")
    revoke.add_argument("site")
    listing = sub.add_parser("list", help="list the sites and their last contact")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    for parser, func in ((enroll, enroll_site), (revoke, revoke_site), (listing, list_sites)):
        parser.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="the central server's TOML file")
        parser.set_defaults(func=func)


def enroll_site(args) -> int:
    return _run("fleet enroll", _enroll, args)


def _enroll(args) -> int:
    from securewatch import auth, fleet_store  # noqa: PLC0415

    problem = fleet_store.site_problem(args.site)
    if problem is not None:
        raise _Refused(f"site: {problem}")
    token = auth.new_token()
    with open_store(args.config) as (_config, store):
        try:
            store.run(fleet_store.enroll, args.site, auth.token_hash(token), "cli", time.time())
        except ValueError as exc:
            raise _Refused(str(exc)) from None
    print(f"site {args.site} enrolled; its token is shown only once (put it in the appliance's [fleet] token_file):")
    print(token)
    return 0


def revoke_site(args) -> int:
    return _run("fleet revoke", _revoke, args)


def _revoke(args) -> int:
    from securewatch import fleet_store  # noqa: PLC0415

    with open_store(args.config) as (_config, store):
        if not store.run(fleet_store.revoke, args.site, "cli", time.time()):
            raise _Refused(f"site: no enrolled site {args.site!r} (see `seawall fleet list`)")
    print(f"site {args.site} revoked; its token is refused from now on")
    return 0


def list_sites(args) -> int:
    return _run("fleet list", _list, args)


def _list(args) -> int:
    from securewatch import fleet_config, fleet_store  # noqa: PLC0415

    with open_store(args.config) as (_config, store):
        central = store.run(fleet_config.central_versions)
        reported = store.run(fleet_config.site_versions)
        rows = [fleet_config.with_versions(s.health(time.time(), central["tenants"]), central, reported.get(s.site, {}))
                for s in store.run(fleet_store.sites)]
    for row in rows:
        row.pop("status", None)
        # The templates' and the NOC receivers' versions the site runs (the tenant set's: running_version).
        row["templates_version"] = row["versions"]["templates"]["running"]
        row["notify_version"] = row["versions"]["notify"]["running"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("site", "state", "contact_age_s", "running_version", "templates_version", "notify_version",
               "lagging", "backlog", "clock_skew_s")
    table = [columns] + [tuple("-" if row[c] is None else str(row[c]) for c in columns) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0
