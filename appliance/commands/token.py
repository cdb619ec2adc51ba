"""`seawall token create|list|revoke`: SecureWatch API tokens, in the store named by [securewatch] database.

    seawall token create --role ROLE [--tenant ID] [--access read|write] [--label TEXT] [--expires DAYS|DATE]
    seawall token list [--json]
    seawall token revoke ID

`create` prints the new token as the last line of output; only its SHA-256 is stored, so it
cannot be shown again. `--expires` takes a number of days from now or an ISO 8601 date (UTC).
A revoked token stays listed (state `revoked`) for the audit trail. Deleting a tenant revokes
its tokens. Every change is written to the audit log as actor `cli`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from appliance.config import DEFAULT_CONFIG_PATH


def register(subparsers) -> None:
    p = subparsers.add_parser("token", help="manage SecureWatch API tokens")
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create an API token (printed once, as the last line)")
    create.add_argument("--role", required=True, choices=("admin", "noc", "tenant"))
    create.add_argument("--tenant", help="the tenant id (role tenant only)")
    create.add_argument("--access", default="read", choices=("read", "write"), help="for role tenant")
    create.add_argument("--label", default="", help="what the token is for (shown in the audit log)")
    create.add_argument("--expires", metavar="DAYS|DATE",
                        help="expire after DAYS days, or at an ISO 8601 date/time (UTC); default: never")
    create.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    create.set_defaults(func=create_token)
    listing = sub.add_parser("list", help="list the API tokens and their state")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    listing.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    listing.set_defaults(func=list_tokens)
    revoke = sub.add_parser("revoke", help="revoke an API token by its id (see `seawall token list`)")
    revoke.add_argument("id", help="the token's id")
    revoke.add_argument("--config", default=DEFAULT_CONFIG_PATH, help="appliance TOML file")
    revoke.set_defaults(func=revoke_token)


class _Refused(Exception):
    """A problem to print (prefixed with the command) and exit 2 for."""


@contextlib.contextmanager
def open_store(config_path: str) -> Iterator[Any]:
    """The SecureWatch store of a config file, for one CLI command; its errors become `_Refused`."""
    from appliance.config import load_config  # noqa: PLC0415
    from securewatch.store import Store, StoreError  # noqa: PLC0415
    from tenants import ConfigError  # noqa: PLC0415

    try:
        config = load_config(config_path)
        store = Store.open_sync(config.securewatch.database)
    except (ConfigError, StoreError) as exc:
        raise _Refused(str(exc)) from None
    try:
        yield config, store
    except StoreError as exc:
        raise _Refused(str(exc)) from None
    finally:
        store.close()


def _run(command: str, fn, args) -> int:
    try:
        return fn(args)
    except _Refused as exc:
        print(f"seawall {command}: {exc}", file=sys.stderr)
        return 2


def create_token(args) -> int:
    return _run("token create", _create, args)


def _create(args) -> int:
    from securewatch import auth, credentials  # noqa: PLC0415

    access = credentials.effective_access(args.role, args.access)
    label = args.label or credentials.default_label(args.role, args.tenant)
    problems = auth.validate_role(args.role, args.tenant, access) + credentials.label_problems(label)
    expires_at = None
    try:
        expires_at = credentials.parse_expires(args.expires, time.time())
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise _Refused("; ".join(problems))
    token = auth.new_token()
    with open_store(args.config) as (config, store):
        if args.tenant and args.tenant not in store.tenant_set() and args.tenant not in config.tenants:
            raise _Refused(f"tenant: no tenant {args.tenant!r}")
        token_id = store.add_token(auth.token_hash(token), label, args.role, args.tenant, access, expires_at)
        store.audit("cli", "token.create", target=str(token_id), tenant=args.tenant,
                    details={"role": args.role, "access": access, "label": label, "expires_at": expires_at})
    until = f", expires {credentials.when_text(expires_at)} UTC" if expires_at else ""
    print(f"token {token_id} ({label}{until}) created; it is shown only once:")
    print(token)
    return 0


def list_tokens(args) -> int:
    return _run("token list", _list, args)


def _list(args) -> int:
    from securewatch import credentials  # noqa: PLC0415

    with open_store(args.config) as (_config, store):
        now = time.time()
        rows = [credentials.token_row(t, now) for t in store.tokens()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(credentials.table(rows, credentials.TOKEN_COLUMNS, credentials.TOKEN_TIMES))
    return 0


def revoke_token(args) -> int:
    return _run("token revoke", _revoke, args)


def _revoke(args) -> int:
    from securewatch import credentials  # noqa: PLC0415

    text = args.id
    token_id = credentials.parse_token_id(text)
    if token_id is None:
        raise _Refused(f"id: {text!r} is not a token id (a whole number, see `seawall token list`)")
    with open_store(args.config) as (_config, store):
        if not store.revoke_token(token_id):
            raise _Refused(f"id: no token {text}")
        token = store.token(token_id)
        store.audit("cli", "token.revoke", target=text, tenant=token.tenant, details={"label": token.label})
    print(f"token {text} ({token.label}) revoked")
    return 0
