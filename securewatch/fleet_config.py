"""The configuration documents that flow down to a fleet's sites besides the tenant set (issue 17,
item 2): the policy templates and the NOC receivers (`[notify]`). Each is versioned; a site takes
the newest one it does not run, applies it all at once or not at all, and reports the version it
runs (and why it refused one), per document.

    tenants     the central tenant set less the tenants whose `sites` leave the site out; its
                version is the set's change counter (`store.TenantState.version`)
    templates   {"templates": {name: policy values}, "links": {tenant: name}} with the links of the
                site's tenants only; its version is a counter that moves whenever the document's
                digest changes (whoever changed it: the API, the admin pages, a CLI on the same
                database), so no writer of the template tables has to remember to count
    notify      the central `[notify]` table as stored by the NOC receivers page, less the receivers
                routed (`tenants`) only to tenants the site does not carry, the others' `tenants`
                narrowed to the site's; its version is that table's own
                (`notify_config_versions`), so a change that concerns none of a site's tenants
                still moves it there (the content sent is filtered all the same). 0: none stored,
                a site runs its own.

Version 0 of a document means "nothing central": a site then keeps what its config file gives.

What does not flow down, and why: a site's own settings never leave it nor are replaced from the
centre: its `[fleet]` token and CA, its interfaces, `[bgp]` peers, its local SecureWatch's users,
tokens and TLS key, and the receivers of its own config file's `[notify]` (a PoP's local syslog
or NMS, with their secrets): the site runs those next to the central receivers, and reports only
how many it has, never their contents. The central receivers' secrets (SMTP passwords, SNMP
communities, webhook URLs) do flow down, to an enrolled, unrevoked site only, over its
authenticated link, and a tenant's receivers only to the sites that carry that tenant: the site
sends the alerts, so it must hold them; it keeps them in a file
only root can read.

Stored (schema migration 11, `store.MIGRATIONS`):

    fleet_config_versions   kind -> (version, digest) of the documents versioned here (templates)
    fleet_site_versions     (site, kind) -> the version the site runs, and the reason it gave for
                            refusing a newer one (NULL: none)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KINDS = ("tenants", "templates", "notify")         # the documents a site runs, in the order it applies them
VERSIONED_HERE = ("templates",)                      # the documents whose version this module counts
ERROR_MAX = 300                                      # characters of a site's refusal kept

MIGRATION = [
    """CREATE TABLE IF NOT EXISTS fleet_config_versions (
        kind TEXT PRIMARY KEY, version BIGINT NOT NULL, digest TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS fleet_site_versions (
        site TEXT NOT NULL, kind TEXT NOT NULL, version BIGINT, error TEXT, PRIMARY KEY (site, kind))""",
]


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def templates_document(b: Any) -> dict[str, Any]:
    """The central templates and every tenant's link (all sites): what the version counts."""
    templates = {r[0]: json.loads(r[1]) for r in b.execute(
        "SELECT name, data FROM policy_templates ORDER BY name").fetchall()}
    links = {r[0]: r[1] for r in b.execute("SELECT tenant_id, template FROM tenant_templates ORDER BY tenant_id"
                                           ).fetchall()}
    return {"templates": templates, "links": links}


def counted_version(b: Any, kind: str, document: Any) -> int:
    """The version of `document`: the stored one while its digest is unchanged, else one more
    (moved with a compare on the digest, so two central processes count one change once). An
    empty document never stored is version 0."""
    digest = _digest(document)
    row = b.execute("SELECT version, digest FROM fleet_config_versions WHERE kind = ?", (kind,)).fetchone()
    if row is None:
        if not any(document.values()):
            return 0
        b.execute("INSERT INTO fleet_config_versions (kind, version, digest) VALUES (?, 1, ?) "
                  "ON CONFLICT (kind) DO NOTHING", (kind, digest))
    elif row[1] != digest:
        b.execute("UPDATE fleet_config_versions SET version = version + 1, digest = ? WHERE kind = ? AND digest <> ?",
                  (digest, kind, digest))
    return int(b.execute("SELECT version FROM fleet_config_versions WHERE kind = ?", (kind,)).fetchone()[0])


def notify_document(b: Any) -> tuple[int, dict[str, Any] | None]:
    """(version, the central `[notify]` table with its secrets); (0, None) when none is stored."""
    row = b.execute("SELECT version, data FROM notify_config_versions ORDER BY version DESC LIMIT 1").fetchone()
    return (int(row[0]), json.loads(row[1])) if row else (0, None)


def central_documents(b: Any) -> dict[str, tuple[int, Any]]:
    """{kind: (version, document)} of the documents versioned apart from the tenant set, as they
    are now (the templates' links for every tenant: `for_site` narrows them)."""
    templates = templates_document(b)
    return {"templates": (counted_version(b, "templates", templates), templates), "notify": notify_document(b)}


def for_site(kind: str, document: Any, site_tenants: frozenset[str]) -> Any:
    """What of `document` a site gets: the links of its own tenants only, and of the receivers the
    NOC's (no `tenants`) and those of its own tenants, each narrowed to them. The others' are none
    of its business, as their tenants are not: a customer's webhook secret or Slack URL must not
    reach a site that customer is kept off with `sites`."""
    if kind == "templates":
        return {"templates": document["templates"],
                "links": {t: n for t, n in document["links"].items() if t in site_tenants}}
    if kind == "notify":
        return notify_for_site(document, site_tenants)
    return document


def notify_for_site(document: dict[str, Any], site_tenants: frozenset[str]) -> dict[str, Any]:
    """The `[notify]` table less the receivers routed only to tenants the site does not carry;
    a receiver routed to some of its tenants keeps only those in its `tenants`."""
    out: dict[str, Any] = {}
    for key, entries in document.items():
        if not isinstance(entries, list):      # state_dir; every receiver kind is an array of tables
            out[key] = entries
            continue
        kept = []
        for entry in entries:
            routed = entry.get("tenants") if isinstance(entry, dict) else None
            if routed is None:
                kept.append(entry)             # the NOC's receiver: every event, every site
                continue
            # the stored table accepts one tenant as a bare string, as the config file does
            names = [routed] if isinstance(routed, str) else routed if isinstance(routed, list) else []
            carried = [t for t in names if t in site_tenants]
            if carried:
                kept.append({**entry, "tenants": carried})
        out[key] = kept
    return out


def record_site_versions(b: Any, site: str, running: dict[str, int | None], errors: dict[str, str]) -> None:
    """What a site says it runs of each document, and why it refused a newer one."""
    for kind in KINDS:
        if kind not in running and kind not in errors:
            continue
        error = errors.get(kind)
        b.execute("INSERT INTO fleet_site_versions (site, kind, version, error) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (site, kind) DO UPDATE SET version = excluded.version, error = excluded.error",
                  (site, kind, running.get(kind), None if error is None else error[:ERROR_MAX]))


def site_versions(b: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """{site: {kind: {"running": version | None, "error": str | None}}} as the sites last reported."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for site, kind, version, error in b.execute("SELECT site, kind, version, error FROM fleet_site_versions"
                                                ).fetchall():
        out.setdefault(site, {})[kind] = {"running": None if version is None else int(version), "error": error}
    return out


def versions_view(health: dict[str, Any], central: dict[str, int], reported: dict[str, dict[str, Any]]
                  ) -> dict[str, dict[str, Any]]:
    """Per document, what the site runs against what is central, and whether it lags: the fleet
    page's and API's `versions`. A document at central version 0 (nothing central) never lags."""
    out = {"tenants": {"running": health["running_version"], "central": central["tenants"],
                       "lagging": health["lagging"], "error": reported.get("tenants", {}).get("error")}}
    for kind in ("templates", "notify"):
        running = reported.get(kind, {}).get("running")
        out[kind] = {"running": running, "central": central[kind],
                     "lagging": health["state"] != "revoked" and central[kind] > 0 and running != central[kind],
                     "error": reported.get(kind, {}).get("error")}
    return out


def central_versions(b: Any) -> dict[str, int]:
    """The version of each document in force centrally (the tenant set's is the store's counter)."""
    tenants = int(b.execute("SELECT version FROM tenant_set_version WHERE id = 1").fetchone()[0])
    return {"tenants": tenants, **{kind: v for kind, (v, _) in central_documents(b).items()}}


def with_versions(health: dict[str, Any], central: dict[str, int], reported: dict[str, dict[str, Any]]
                  ) -> dict[str, Any]:
    """A site's health row (`fleet_store.Site.health`) with `versions` per document, and `lagging`
    when any document lags."""
    versions = versions_view(health, central, reported)
    return {**health, "versions": versions, "lagging": any(v["lagging"] for v in versions.values())}
