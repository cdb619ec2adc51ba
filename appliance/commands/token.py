"""`seawall token create --role ROLE [--tenant ID] [--access read|write] --config FILE`.

Prints the new API token as the last line of output; only its SHA-256 is stored,
so it cannot be shown again.
"""

from __future__ import annotations

import sys

from appliance.config import DEFAULT_CONFIG_PATH


def register(subparsers) -> None:
    p = subparsers.add_parser("token", help="manage SecureWatch API tokens")
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create an API token (printed once, as the last line)")
    create.add_argument("--role", required=True, choices=("admin", "noc", "tenant"))
    create.add_argument("--tenant", help="the tenant id (role tenant only)")
    create.add_argument("--access", default="read", choices=("read", "write"), help="for role tenant")
    create.add_argument("--label", default="", help="what the token is for (shown in the audit log)")
    create.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    create.set_defaults(func=create_token)


def create_token(args) -> int:
    from appliance.config import load_config  # noqa: PLC0415
    from securewatch import auth  # noqa: PLC0415
    from securewatch.store import Store, StoreError  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    access = args.access if args.role == "tenant" else "write"
    problems = auth.validate_role(args.role, args.tenant, access)
    if problems:
        print("seawall token create: " + "; ".join(problems), file=sys.stderr)
        return 2
    token = auth.new_token()
    label = args.label or f"{args.role}{':' + args.tenant if args.tenant else ''}"
    try:
        config = load_config(args.config)
        with Store.open_sync(config.securewatch.database) as store:
            if args.tenant and args.tenant not in store.tenant_set() and args.tenant not in config.tenants:
                print(f"seawall token create: tenant: no tenant {args.tenant!r}", file=sys.stderr)
                return 2
            token_id = store.add_token(auth.token_hash(token), label, args.role, args.tenant, access)
            store.audit("cli", "token.create", target=str(token_id), tenant=args.tenant,
                        details={"role": args.role, "access": access, "label": label})
    except (ConfigError, StoreError) as exc:
        print(f"seawall token create: {exc}", file=sys.stderr)
        return 2
    print(f"token {token_id} ({label}) created; it is shown only once:")
    print(token)
    return 0
