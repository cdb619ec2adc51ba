"""The OpenAPI 3 document of /api/v1. A test walks the app's routes and checks that
every route is documented here and every documented operation exists."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_NOT_FOUND = {"description": "no such object, or not visible to the caller",
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _op(summary: str, *, params: tuple[str, ...] = (), query: tuple[tuple[str, str], ...] = (),
        body: str | None = None, ok: str = "200", content: str = "application/json",
        errors: tuple[str, ...] = ("401", "403")) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params] + [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": desc}
        for name, desc in query]}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": body}}}}
    op["responses"] = {ok: {"description": "success", "content": {content: {}}}}
    for code in errors:
        op["responses"][code] = _NOT_FOUND if code == "404" else _ERROR
    return op


def openapi_document() -> dict[str, Any]:
    tid = ("tenant_id",)
    iid = ("incident_id",)
    user = ("name",)
    paths: dict[str, dict[str, Any]] = {
        "/api/v1/openapi.json": {"get": _op("This document", errors=())},
        "/api/v1/me": {"get": _op("The caller's identity and role", errors=("401",))},
        "/api/v1/status": {"get": _op("Appliance status: interfaces, attach mode, per-tenant counters and rates "
                                      "(503 in central mode)", errors=("401", "503"))},
        "/api/v1/apply": {"post": _op("Apply the stored tenant set to the appliance (admin; 503 in central mode)",
                                      errors=("401", "403", "422", "503"))},
        "/api/v1/tenants": {
            "get": _op("Tenants visible to the caller"),
            "post": _op("Create a tenant (admin)", body="#/components/schemas/Tenant", ok="201",
                        errors=("400", "401", "403", "409", "422")),
        },
        "/api/v1/tenants/{tenant_id}": {
            "get": _op("One tenant and its version (also the ETag)", params=tid, errors=("401", "404")),
            "put": _op("Replace a tenant (admin; If-Match: 409 when its version moved)", params=tid,
                       body="#/components/schemas/Tenant", errors=("400", "401", "403", "404", "409", "422")),
            "delete": _op("Delete a tenant (admin; If-Match: 409 when its version moved): revokes its API tokens, "
                          "disables its users and ends their sessions (listed in the answer); re-creating the id "
                          "brings none of them back", params=tid, errors=("400", "401", "403", "404", "409")),
        },
        "/api/v1/tenants/{tenant_id}/rollback": {
            "post": _op("Put a tenant back as it was at a version ({\"version\": N}; admin), stored as a new version; "
                        "a deleted tenant comes back", params=tid, errors=("400", "401", "403", "404", "422"))},
        "/api/v1/tenants/{tenant_id}/versions": {
            "get": _op("Version history of a tenant", params=tid, errors=("401", "404"))},
        "/api/v1/tenants/{tenant_id}/policy": {
            "get": _op("A tenant's policy: mode, policy table, allow and deny lists, prefixes, and the tenant's "
                       "version (also the ETag)", params=tid, errors=("401", "404")),
            "put": _op("Change a tenant's policy (admin, or the tenant with write access; prefixes: admin only; "
                       "If-Match: 409 when the tenant's version moved)",
                       params=tid, body="#/components/schemas/Policy",
                       errors=("400", "401", "403", "404", "409", "422")),
        },
        "/api/v1/tenants/{tenant_id}/traffic": {
            "get": _op("Traffic series: passed and dropped per second (last hour) or per minute (90 days); "
                       "on a fleet's central server summed over the sites",
                       params=tid, query=(("seconds", "how far back, seconds (default 300)"),
                                          ("resolution", "second | minute (default: by span)"),
                                          ("site", "a fleet site's traffic only (central server)")),
                       errors=("400", "401", "404"))},
        "/api/v1/tenants/{tenant_id}/blocked-sources": {
            "get": _op("The tenant's dynamic block list (application-layer floods): each source with the reason "
                       "and expiry, newest first, and the total", params=tid, errors=("401", "404", "503"))},
        "/api/v1/tenants/{tenant_id}/reports/{period}": {
            "get": _op("A tenant's report for a period (YYYY-MM or YYYY-MM-DD..YYYY-MM-DD); pdf: 503 without "
                       "[securewatch.reports] pdf_renderer",
                       params=(*tid, "period"), query=(("format", "json | csv | html | pdf"),
                                                       ("download", "json, html: as an attachment"),
                                                       ("site", "a fleet site's part only (central server; "
                                                                "default: every site summed)")),
                       errors=("400", "401", "404", "503"))},
        "/api/v1/reports/branding": {
            "get": _op("The reports' branding: operator_name, logo (data: URI), primary_colour, accent_colour "
                       "(admin, noc)"),
            "put": _op("Change the reports' branding (admin): any of operator_name, logo (data:image/png;base64,... "
                       "or data:image/jpeg;base64,...; null removes it), primary_colour, accent_colour (#rrggbb)",
                       errors=("400", "401", "403", "422")),
            "delete": _op("Forget the branding saved here: back to the config file's (admin)")},
        "/api/v1/reports/mailings": {
            "get": _op("Scheduled report mail, one row per tenant and month with its state (pending, sent, failed, "
                       "cancelled), attempts and last error; a tenant sees its own",
                       query=(("limit", "at most this many (default 200)"),), errors=("400", "401"))},
        "/api/v1/reports/mailings/{tenant_id}/{period}/retry": {
            "post": _op("Send a failed or cancelled report mail again, now (admin)", params=(*tid, "period"),
                        errors=("400", "401", "403", "404", "409"))},
        "/api/v1/incidents": {
            "get": _op("Incidents visible to the caller", query=(
                ("tenant", "tenant id"), ("state", "active | ended"), ("vector", "attack vector"),
                ("since", "seconds since the epoch or ISO 8601"), ("limit", "at most this many (default 200)"),
                ("site", "a fleet site's incidents only (central server)")),
                errors=("400", "401"))},
        "/api/v1/incidents/{incident_id}": {
            "get": _op("An incident with its events, timeline, notes, PCAP files and the incidents of other "
                       "fleet sites linked to it (same tenant, overlapping, a shared destination)", params=iid,
                       errors=("401", "404"))},
        "/api/v1/incidents/{incident_id}/acknowledge": {
            "post": _op("Acknowledge an incident (admin, noc, tenant write)", params=iid,
                        errors=("401", "403", "404"))},
        "/api/v1/incidents/{incident_id}/notes": {
            "post": _op("Annotate an incident (admin, noc, tenant write); \"internal\": true (admin, noc) "
                        "keeps the note from the tenant", params=iid,
                        body="#/components/schemas/Note", ok="201", errors=("400", "401", "403", "404"))},
        "/api/v1/incidents/{incident_id}/pcap/{kind}": {
            "get": _op("Download an incident's PCAP evidence (kind: dropped | passed); a site's incident (SITE:ID) "
                       "serves the file its agent uploaded", params=(*iid, "kind"),
                       content="application/vnd.tcpdump.pcap", errors=("401", "404"))},
        "/api/v1/incidents/{incident_id}/escalate": {
            "post": _op("Announce a FlowSpec rule or an RTBH host route upstream for an open incident (admin, noc); "
                        "RTBH only for a tenant with escalate_rtbh", params=iid,
                        body="#/components/schemas/Escalate", ok="201", errors=("400", "401", "403", "404", "409")),
            "delete": _op("Withdraw every route announced for the incident (admin, noc)", params=iid,
                          errors=("401", "403", "404", "409"))},
        "/api/v1/bgp": {"get": _op("BGP sessions and announcements upstream (admin, noc); a tenant sees its own "
                                   "announcements", errors=("401", "404", "503"))},
        "/api/v1/audit": {"get": _op("Audit log (admin, noc), newest first, one page at a time: `next` is the URL "
                                     "of the following page (null on the last)", query=(
            ("tenant", "tenant id"), ("actor", "who did it"), ("action", "actions starting with this"),
            ("limit", "entries per page, 1 to 1000 (default 200)"),
            ("before", "only entries older than this id (the previous page's next_before)")),
                                     errors=("400", "401", "403"))},
        "/api/v1/users": {
            "get": _op("Users: name, role, tenant, access, state (admin)"),
            "post": _op("Add a user (admin)", body="#/components/schemas/UserNew", ok="201",
                        errors=("400", "401", "403", "409", "422")),
        },
        "/api/v1/users/{name}": {
            "patch": _op("Change a user's role, tenant or access and end its sessions (admin; not the last enabled "
                         "admin's role)", params=user, body="#/components/schemas/UserScope",
                         errors=("400", "401", "403", "404", "409", "422")),
            "delete": _op("Delete a user and end its sessions (admin; not the last enabled admin)", params=user,
                          errors=("401", "403", "404", "409"))},
        "/api/v1/users/{name}/disable": {
            "post": _op("Disable a user and end its sessions (admin; not the last enabled admin)", params=user,
                        errors=("401", "403", "404", "409"))},
        "/api/v1/users/{name}/enable": {
            "post": _op("Enable a user again (admin; its tenant must exist)", params=user,
                        errors=("401", "403", "404", "409"))},
        "/api/v1/users/{name}/password": {
            "put": _op("Set a user's password and end its sessions (admin)", params=user,
                       body="#/components/schemas/Password", errors=("400", "401", "403", "404", "422"))},
        "/api/v1/tokens": {
            "get": _op("API tokens with their state: active, revoked, expired, no tenant (admin)"),
            "post": _op("Create an API token (admin); the token is in the answer once, only its SHA-256 is kept",
                        body="#/components/schemas/TokenNew", ok="201", errors=("400", "401", "403", "422")),
        },
        "/api/v1/tokens/{token_id}": {
            "delete": _op("Revoke an API token (admin)", params=("token_id",), errors=("401", "403", "404"))},
        "/api/v1/templates": {"get": _op("Policy templates with their followers (admin, noc: all; a tenant: the one "
                                          "its tenant follows)")},
        "/api/v1/templates/{name}": {
            "get": _op("One policy template and its followers", params=("name",), errors=("401", "404")),
            "put": _op("Create or replace a policy template ({\"policy\": {...}}; admin): every tenant that follows it "
                       "gets the new values, keeping its overrides", params=("name",),
                       errors=("400", "401", "403", "422")),
            "delete": _op("Delete a policy template (admin; 409 while a tenant follows it)", params=("name",),
                          errors=("401", "403", "404", "409"))},
        "/api/v1/tenants/{tenant_id}/template": {
            "get": _op("The template a tenant follows, its overrides and the keys it inherits", params=tid,
                       errors=("401", "404")),
            "put": _op("Make a tenant follow a template ({\"template\": name, \"overrides\": {...}}) or none "
                       "({\"template\": null}; admin)", params=tid, errors=("400", "401", "403", "404", "422"))},
        "/api/v1/notifiers": {"get": _op("Each NOC receiver's health and backlog (admin, noc)",
                                         errors=("401", "403", "503"))},
        "/api/v1/notify": {
            "get": _op("The NOC receivers' [notify] table, every secret shown as \"********\" (admin, noc)",
                       errors=("401", "403")),
            "put": _op("Replace the [notify] table (admin): validated, applied to the running notifiers, stored as "
                       "a new version; a secret given as \"********\" keeps the receiver's current value",
                       body="#/components/schemas/Notify", errors=("400", "401", "403", "422", "502")),
        },
        "/metrics": {"get": _op("Prometheus metrics, scoped to the caller's tenants (text exposition format)",
                                content="text/plain", errors=("401", "503"))},
    }
    # The live console (live.py and servers.py, issue 16).
    paths.update({
        "/api/v1/console/tenants": {"get": _op(
            "One page of the caller's tenants with current traffic and active incidents, searched and sorted on "
            "the server", query=(("q", "id, name or an address inside the tenant's prefixes"),
                                 ("sort", "traffic (default), drops or name"), ("page", "1, 2, ..."),
                                 ("per_page", "1 to 500, default 50")), errors=("400", "401"))},
        "/api/v1/tenants/{tenant_id}/series": {"get": _op(
            "A tenant's passed and dropped packets/s and bits/s, columnar (time, passed_pps, ...)", params=tid,
            query=(("range", "5m (seconds), 1h or 24h (minute averages), 30d (hour averages)"),),
            errors=("400", "401", "404"))},
        "/api/v1/tenants/{tenant_id}/live": {"get": _op(
            "Server-sent events, one `tick` a second: the tenant's new seconds, the listed tenants' current rates, "
            "the active incidents", params=tid,
            query=(("ids", "tenants of the table, comma-separated (at most 200)"),
                   ("after", "newest second already shown (seconds since the epoch)"),
                   ("events", "end after this many events (default: until the client goes)")),
            content="text/event-stream", errors=("400", "401", "404"))},
        "/api/v1/tenants/{tenant_id}/servers": {"get": _op(
            "The tenant's servers (destination addresses) seen in the last 24 h, busiest first, with their load "
            "(busiest class over its threshold)", params=tid, errors=("401", "404"))},
        "/api/v1/tenants/{tenant_id}/servers/{address}": {"get": _op(
            "One server: packets/s by class with the learned baseline (mean, k·σ) and the threshold in force, "
            "how far from triggering, its incidents", params=(*tid, "address"),
            query=(("range", "5m, 1h (seconds where stored), 24h, 7d (minute averages)"),),
            errors=("400", "401", "404"))},
        "/api/v1/incidents/{incident_id}/talkers": {"get": _op(
            "Attack anatomy from the incident's sampled packets (dropped and passed): top sources and /24 or "
            "/48, top ports, protocol and TCP-flag mix, packet sizes", params=iid, errors=("401", "404"))},
        "/api/v1/tenants/{tenant_id}/talkers": {"get": _op(
            "A tenant's attack anatomy over its most recent incidents (at most 20) of the last `days`", params=tid,
            query=(("days", "1 to 366, default 30"),), errors=("400", "401", "404"))},
    })
    # The fleet (fleet.py, issue 17): the site-facing pair takes a site's token, not a user's.
    site_only = ("401", "403", "422")
    paths.update({
        "/api/v1/fleet/site/sync": {"post": _op(
            "A site reports the configuration versions it runs (tenant set, templates, NOC receivers), why it "
            "refused one, and its backlog; the answer has the newest versions and each document the site "
            "does not run yet, for that site (site token)",
            errors=site_only)},
        "/api/v1/fleet/site/ingest": {"post": _op(
            "A site's queued batches (per-second tenant rows, destination rows, incident events), in order; "
            "stored once per (site, queue, seq), acknowledged by seq (site token)", errors=site_only)},
        "/api/v1/fleet/site/evidence": {"post": _op(
            "A site's incident PCAP file (the raw file as the body, at most 8 MiB), sent after the batch that "
            "carried the incident; stored once per (site, incident, kind, sha256) (site token)",
            query=(("site", "the token's site"), ("incident", "the appliance's incident id"),
                   ("kind", "dropped | passed"), ("sha256", "the file's SHA-256, 64 lowercase hex digits")),
            errors=("401", "403", "404", "413", "422"))},
        "/api/v1/fleet/site/announcements": {"post": _op(
            "A site's BGP announcements and withdrawals for its incidents (time, action, kind, route, peers' "
            "state), sent after the batch that carried the incident; each stored once (site token)",
            errors=site_only)},
        "/api/v1/fleet/sites": {"get": _op(
            "The fleet's sites: state, last contact, clock skew, versions in force per document, lagging, backlog, current "
            "traffic (admin, noc)", query=(("site", "one site only"),), errors=("400", "401", "403"))},
        "/api/v1/fleet/traffic": {"get": _op(
            "Per-site, per-tenant seconds, or minute or hour rollups (admin, noc)", query=(
                ("site", "one site only"), ("tenant", "one tenant only"),
                ("resolution", "second (default), minute or hour (the rollups: means, maxima, samples)"),
                ("seconds", "how far back: up to 3600 (second), 604800 (minute), 34560000 (hour); default 300")),
            errors=("400", "401", "403"))},
        "/api/v1/fleet/incidents": {"get": _op(
            "Incidents that came from sites, newest first (admin, noc)", query=(("site", "one site only"),),
            errors=("400", "401", "403"))},
        "/api/v1/fleet/tenants/{tenant_id}/traffic": {"get": _op(
            "A tenant's seconds summed over the sites (series) and each site's (sites)", params=tid, query=(
                ("site", "one site only"), ("seconds", "1 to 3600, default 300")), errors=("400", "401", "404"))},
        "/api/v1/fleet/tenants/{tenant_id}/destinations": {"get": _op(
            "A tenant's per-destination series merged over the sites: seconds up to an hour (pps summed per "
            "address and second), the sites' minute rollups beyond (`resolution` says which)",
            params=tid, query=(("site", "one site only"), ("range", "5m, 1h, 24h or 7d"),
                               ("seconds", "1 to 604800 (7 days), default 300; instead of range")),
            errors=("400", "401", "404"))},
    })
    return {
        "openapi": "3.0.3",
        "info": {"title": "Seawall SecureWatch API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "session": {"type": "apiKey", "in": "cookie", "name": "sw_session"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"}, "problems": {"type": "array", "items": {"type": "string"}}}},
                "Tenant": {"type": "object", "required": ["id", "prefixes"], "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "prefixes": {"type": "array", "items": {"type": "string"}},
                    "mode": {"type": "string", "enum": ["monitor", "mitigate"]},
                    "allow": {"type": "array", "items": {"type": "object"}},
                    "deny": {"type": "array", "items": {"type": "object"}},
                    "policy": {"type": "object"}, "contacts": {"type": "array", "items": {"type": "string"}},
                    "sites": {"type": "array", "items": {"type": "string"},
                              "description": "fleet sites that run this tenant; absent or empty: every site"}}},
                "Policy": {"type": "object", "description": (
                    "A partial update: keys not sent keep their value, and `policy` is merged key by key into "
                    "the current policy (send a key with its default value to reset it)"), "properties": {
                    "mode": {"type": "string"}, "policy": {"type": "object"},
                    "allow": {"type": "array", "items": {"type": "object"}},
                    "deny": {"type": "array", "items": {"type": "object"}},
                    "prefixes": {"type": "array", "items": {"type": "string"}}}},
                "Notify": {"type": "object", "description": "the [notify] table of the appliance config as JSON",
                           "properties": {kind: {"type": "array", "items": {"type": "object"}}
                                          for kind in ("syslog", "snmp", "email", "webhook")}
                           | {"state_dir": {"type": "string"}}},
                "Escalate": {"type": "object", "required": ["kind"], "properties": {
                    "kind": {"type": "string", "enum": ["flowspec", "rtbh"]}}},
                "Note": {"type": "object", "required": ["text"], "properties": {
                    "text": {"type": "string"},
                    "internal": {"type": "boolean", "description": "admin, noc: never shown to the tenant"}}},
                "UserNew": {"type": "object", "required": ["name", "password", "role"], "properties": {
                    "name": {"type": "string"}, "password": {"type": "string", "minLength": 8},
                    "role": {"type": "string", "enum": ["admin", "noc", "tenant"]},
                    "tenant": {"type": "string", "description": "role tenant only"},
                    "access": {"type": "string", "enum": ["read", "write"], "description": "role tenant only"}}},
                "UserScope": {"type": "object", "properties": {
                    "role": {"type": "string", "enum": ["admin", "noc", "tenant"]},
                    "tenant": {"type": "string", "description": "role tenant only"},
                    "access": {"type": "string", "enum": ["read", "write"], "description": "role tenant only"}}},
                "Password": {"type": "object", "required": ["password"], "properties": {
                    "password": {"type": "string", "minLength": 8}}},
                "TokenNew": {"type": "object", "required": ["role"], "properties": {
                    "role": {"type": "string", "enum": ["admin", "noc", "tenant"]},
                    "tenant": {"type": "string", "description": "role tenant only"},
                    "access": {"type": "string", "enum": ["read", "write"], "description": "role tenant only"},
                    "label": {"type": "string", "maxLength": 100},
                    "expires": {"description": "days from now (a number) or an ISO 8601 date; absent: never",
                                "oneOf": [{"type": "number"}, {"type": "string"}]}}},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    }
