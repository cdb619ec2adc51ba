"""`seawall user add|list|disable|enable|delete|passwd`: SecureWatch users, in the store named by
[securewatch] database.

    seawall user add NAME --role ROLE [--tenant ID] [--access read|write]
    seawall user list [--json]
    seawall user disable NAME      disable and end its sessions
    seawall user enable NAME       enable again (its tenant must exist)
    seawall user delete NAME       delete and end its sessions
    seawall user passwd NAME       set the password and end its sessions

A password comes from stdin when it is not a terminal (one line), else from a prompt asked
twice. Deleting a tenant disables its users. Every change is written to the audit log as
actor `cli`.
"""

from __future__ import annotations

import getpass
import json
import sys
import time

from appliance.commands.token import _Refused, _run, open_store
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
    listing = sub.add_parser("list", help="list the users and their state")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    listing.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    listing.set_defaults(func=list_users)
    for action, func, text in (("disable", disable_user, "disable a user and end its sessions"),
                               ("enable", enable_user, "enable a disabled user (its tenant must exist)"),
                               ("delete", delete_user, "delete a user and end its sessions"),
                               ("passwd", change_password,
                                "set a user's password (from stdin, or prompted) and end its sessions")):
        one = sub.add_parser(action, help=text)
        one.add_argument("name")
        one.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
        one.set_defaults(func=func)


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _new_password_hash() -> str:
    from securewatch import auth  # noqa: PLC0415

    try:
        return auth.hash_password(_read_password())
    except ValueError as exc:
        raise _Refused(str(exc)) from None


def add_user(args) -> int:
    return _run("user add", _add, args)


def _add(args) -> int:
    from securewatch import auth, credentials  # noqa: PLC0415
    from securewatch.store import User  # noqa: PLC0415

    tenant = args.tenant
    access = credentials.effective_access(args.role, args.access)
    problems = credentials.user_name_problems(args.name) + auth.validate_role(args.role, tenant, access)
    if problems:
        raise _Refused("; ".join(problems))
    with open_store(args.config) as (config, store):
        password_hash = _new_password_hash()
        if tenant and tenant not in store.tenant_set() and tenant not in config.tenants:
            raise _Refused(f"tenant: no tenant {tenant!r} (in the store or the config file)")
        try:
            store.add_user(User(args.name, password_hash, args.role, tenant, access, time.time()))
        except ValueError as exc:
            raise _Refused(str(exc)) from None
        store.audit("cli", "user.add", target=args.name, tenant=tenant, details={"role": args.role, "access": access})
    print(f"user {args.name} added (role {args.role}{f', tenant {tenant} {access}' if tenant else ''})")
    return 0


def list_users(args) -> int:
    return _run("user list", _list, args)


def _list(args) -> int:
    from securewatch import credentials  # noqa: PLC0415

    with open_store(args.config) as (_config, store):
        rows = [credentials.user_row(u) for u in store.users()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(credentials.table(rows, credentials.USER_COLUMNS, credentials.USER_TIMES))
    return 0


def _existing(store, name: str):
    user = store.user(name)
    if user is None:
        raise _Refused(f"name: no user {name!r}")
    return user


def disable_user(args) -> int:
    def work(args) -> int:
        with open_store(args.config) as (_config, store):
            user = _existing(store, args.name)
            store.set_user_disabled(user.name, True)
            store.audit("cli", "user.disable", target=user.name, tenant=user.tenant)
        print(f"user {args.name} disabled; its sessions ended")
        return 0
    return _run("user disable", work, args)


def enable_user(args) -> int:
    def work(args) -> int:
        with open_store(args.config) as (config, store):
            user = _existing(store, args.name)
            # The same rule as `user add`: the tenant exists in the store or the config file.
            if user.tenant is not None and user.tenant not in store.tenant_set() and user.tenant not in config.tenants:
                raise _Refused(f"tenant: no tenant {user.tenant!r}: re-create it before enabling its users")
            store.set_user_disabled(user.name, False)
            store.audit("cli", "user.enable", target=user.name, tenant=user.tenant)
        print(f"user {args.name} enabled")
        return 0
    return _run("user enable", work, args)


def delete_user(args) -> int:
    def work(args) -> int:
        with open_store(args.config) as (_config, store):
            user = _existing(store, args.name)
            store.delete_user(user.name)
            store.audit("cli", "user.delete", target=user.name, tenant=user.tenant)
        print(f"user {args.name} deleted; its sessions ended")
        return 0
    return _run("user delete", work, args)


def change_password(args) -> int:
    def work(args) -> int:
        with open_store(args.config) as (_config, store):
            user = _existing(store, args.name)
            store.change_password(user.name, _new_password_hash())
            store.audit("cli", "user.password", target=user.name, tenant=user.tenant)
        print(f"password of {args.name} changed; its sessions ended")
        return 0
    return _run("user passwd", work, args)
