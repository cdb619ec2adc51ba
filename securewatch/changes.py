"""What a change changed, field by field, for the audit log (and the audit page that shows it).

    field_diff({"mode": "monitor", "policy": {"sensitivity": 1.0}},
               {"mode": "mitigate", "policy": {"sensitivity": 3.0}})
      -> {"mode": {"old": "monitor", "new": "mitigate"},
          "policy.sensitivity": {"old": 1.0, "new": 3.0}}

Nested tables become dotted field names; lists (prefixes, ACL entries, contacts) are compared
whole. A field that appears or disappears has None on the other side, so a created tenant's
row lists every field it was created with and a deleted one's every field it had.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tenants import Tenant, TenantSet


def _flat(table: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (table or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def field_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{field: {"old": ..., "new": ...}} for every field that differs, in field order."""
    before, after = _flat(old), _flat(new)
    return {name: {"old": before.get(name), "new": after.get(name)}
            for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)}


def tenant_table(tenant: Tenant | None) -> dict[str, Any] | None:
    """A tenant's whole table, policy keys at their defaults included: a key set back to its
    default shows as old -> default, not as a field that vanished."""
    if tenant is None:
        return None
    return {**tenant.to_dict(), "policy": tenant.policy.to_dict()}


def tenant_set_diff(before: TenantSet, after: TenantSet, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{tenant id: field_diff} for the tenants `ids` between two sets."""
    return {tid: field_diff(tenant_table(before.get(tid)), tenant_table(after.get(tid))) for tid in ids}
