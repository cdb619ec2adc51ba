"""Policy templates: a named set of policy keys that tenants follow, and the one rule that
relates a follower's policy to its template. The config file (`[templates.NAME]` and a tenant's
`template = "NAME"`, see appliance.config) and SecureWatch (securewatch.policy_templates: the
API and the admin pages) both use these functions.

A follower's policy is the template's values (defaults for keys the template leaves out) with
the tenant's **overrides** on top; an override is a key whose value differs from what the
template gives. So a template change keeps every override, and a key set back to the
template's value follows the template again.
"""

from __future__ import annotations

from typing import Any

from tenants.errors import ConfigError
from tenants.model import TENANT_ID_PATTERN, TENANT_ID_RULE
from tenants.policy import SYN_AUTH_ALIAS, TenantPolicy, merge_policy, shown

# Template names follow the rule of tenant ids.
TEMPLATE_NAME, TEMPLATE_NAME_RULE = TENANT_ID_PATTERN, TENANT_ID_RULE
DEFAULTS = TenantPolicy().to_dict()


def name_problems(name: Any, where: str = "name") -> list[str]:
    if not isinstance(name, str) or not TEMPLATE_NAME.fullmatch(name):
        return [f"{where}: {shown(name)} is not a template name ({TEMPLATE_NAME_RULE})"]
    return []


def parse_values(policy: Any, where: str = "policy") -> dict[str, Any]:
    """A template's values: some keys of a tenant's policy table, checked as a tenant's `policy`
    table is (one ConfigError naming every key at fault, as "<where>.<key>: ...")."""
    if not isinstance(policy, dict):
        raise ConfigError([f"{where}: expected a table of policy keys"])
    try:
        parsed = TenantPolicy.from_dict(policy).to_dict()
    except ConfigError as exc:
        if where == "policy":
            raise
        raise ConfigError([p.replace("policy.", f"{where}.", 1) for p in exc.problems]) from None
    # The old `syn_protection` key is stored as what it means (syn_auth), as a tenant's policy is.
    keys = ("syn_auth" if key == SYN_AUTH_ALIAS else key for key in policy)
    return {key: parsed[key] for key in keys}


def given(template: dict[str, Any] | None) -> dict[str, Any]:
    """Every policy key as a follower of `template` gets it (the template's value, else the default)."""
    return {**DEFAULTS, **(template or {})}


def overrides_of(policy: dict[str, Any], template: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a tenant's full policy that differ from what the template gives."""
    base = given(template)
    return {key: value for key, value in policy.items() if base.get(key) != value}


def followed(template: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The full policy of a follower: the template's values with the tenant's overrides on top."""
    return merge_policy(given(template), overrides)


def resolve_tenant_tables(tables: Any, templates: Any) -> tuple[list[Any], dict[str, str], list[str]]:
    """The config file's `[[tenants]]` tables with each `template = "NAME"` resolved: the key is
    taken out and the tenant's `policy` becomes the template's values under its own keys (its
    overrides). Returns (tables, {tenant id: template}, problems); the tables are new objects."""
    problems: list[str] = []
    parsed: dict[str, dict[str, Any]] = {}
    if not isinstance(templates, dict):
        return tables, {}, ["templates: expected tables ([templates.NAME] with policy keys)"]
    for name, values in templates.items():
        problems += name_problems(name, f"templates.{name}")
        try:
            parsed[name] = parse_values(values, f"templates.{name}")
        except ConfigError as exc:
            problems += exc.problems
    if not isinstance(tables, list):
        return tables, {}, problems
    out, links = [], {}
    for index, table in enumerate(tables):
        if not isinstance(table, dict) or "template" not in table:
            out.append(table)
            continue
        table = dict(table)
        name = table.pop("template")
        where = f"tenants[{index}].template"
        if not isinstance(name, str):   # a list or a table is no name to look up (nor hashable)
            problems += name_problems(name, where)
        elif name not in parsed:
            known = ", ".join(sorted(parsed)) or "none defined"
            problems.append(f"{where}: no template {name!r} (templates: {known})")
        else:
            own = table.get("policy", {})
            if isinstance(own, dict):
                table["policy"] = followed(parsed[name], own)
            if isinstance(table.get("id"), str):
                links[table["id"]] = name
        out.append(table)
    return out, links, problems
