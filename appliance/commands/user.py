"""`seawall user add NAME --role ROLE [--tenant ID] [--access read|write] --config FILE`.

The password comes from stdin when it is not a terminal (one line), else from a
prompt asked twice. The user goes into the store named by [securewatch] database.
"""

from __future__ import annotations

import getpass
import sys
import time

from appliance.config import DEFAULT_CONFIG_PATH


def register(subparsers) -> None:
    p = subparsers.add_parser("user", help="manage SecureWatch users")
    sub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user (password from stdin, or prompted)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("admin", "noc", "tenant"))
    add.add_argument("--tenant", help="the tenant id (role tenant only)")
    add.add_argument("--access", default="read", choices=("read", "write"), help="for role tenant")
    add.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    add.set_defaults(func=add_user)


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def add_user(args) -> int:
    from appliance.config import load_config  # noqa: PLC0415
    from securewatch import auth  # noqa: PLC0415
    from securewatch.store import Store, StoreError, User  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    tenant = args.tenant
    access = args.access if args.role == "tenant" else "write"
    problems = auth.validate_role(args.role, tenant, access)
    if problems:
        print("seawall user add: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        password = _read_password()
        password_hash = auth.hash_password(password)
        with Store.open_sync(config.securewatch.database) as store:
            if tenant and tenant not in store.tenant_set() and tenant not in config.tenants:
                print(f"seawall user add: tenant: no tenant {tenant!r} (in the store or the config file)",
                      file=sys.stderr)
                return 2
            store.add_user(User(args.name, password_hash, args.role, tenant, access, time.time()))
            store.audit("cli", "user.add", target=args.name, tenant=tenant,
                        details={"role": args.role, "access": access})
    except (ConfigError, ValueError, StoreError) as exc:
        print(f"seawall user add: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.name} added (role {args.role}{f', tenant {tenant} {access}' if tenant else ''})")
    return 0
