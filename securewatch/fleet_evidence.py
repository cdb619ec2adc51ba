"""A site's incident evidence at the central server (issue 17, item 3): the PCAP files.

    POST /api/v1/fleet/site/evidence?site=S&incident=ID&kind=dropped|passed&sha256=HEX
         body: the PCAP file (application/vnd.tcpdump.pcap), at most EVIDENCE_MAX_BYTES
         -> {"stored": bool, "duplicate": bool}

The same per-site token as the ingest: a site writes evidence of its own incidents only (403 for
another site's name), of incidents already ingested (404: the agent sends evidence after the
batch that carried the incident). A retry of a file already stored (the same site, incident, kind
and sha256) is taken and not stored again.

Stored in a table of the central database (`fleet_evidence`), not in a directory: the central
server may have no state directory at all (central mode), may run on PostgreSQL with more than
one process in front, and the file goes with the incident's other rows in one place. It is
bounded per file (EVIDENCE_MAX_BYTES, the appliance's own PCAP cap, `policy.config.pcap_max_bytes`)
and per incident (its two kinds), and kept `fleet_evidence_retention_days` after receipt
(`fleet_evidence_store.apply_retention`). `GET /api/v1/incidents/{SITE:ID}/pcap/{kind}` serves it with the
access rules of a local capture (`api.api_pcap`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import structlog
from aiohttp import web

from .context import STORE, ApiError, read_json
from .fleet import _own_site, _strict_loads, _time, authenticated_site
from .fleet_evidence_store import EVIDENCE_KINDS, EVIDENCE_MAX_BYTES, store_announcements, store_evidence

log = structlog.get_logger(__name__)

EVIDENCE_PATH = "/api/v1/fleet/site/evidence"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

ANNOUNCEMENTS_PATH = "/api/v1/fleet/site/announcements"
MAX_ANNOUNCEMENTS = 1000               # announcements per request (the agent sends at most 500)
ACTIONS = ("announce", "withdraw", "refuse")   # escalation.ladder's changes
ROUTE_KINDS = ("flowspec", "rtbh")


def add_routes(app: web.Application) -> None:
    app.router.add_post(EVIDENCE_PATH, site_evidence)
    app.router.add_post(ANNOUNCEMENTS_PATH, site_announcements)


async def site_evidence(request: web.Request) -> web.Response:
    site = await authenticated_site(request)
    q = request.query
    claimed = q.get("site")
    if claimed != site:
        raise ApiError(403, f"site: this token belongs to site {site!r}; it cannot write the evidence of {claimed!r}")
    local_id, kind, sha256 = q.get("incident", ""), q.get("kind", ""), q.get("sha256", "")
    if not local_id or len(local_id) > 200 or ":" in local_id:
        raise ApiError(422, f"incident: expected the appliance's incident id, got {local_id!r}"[:200])
    if kind not in EVIDENCE_KINDS:
        raise ApiError(422, f"kind: expected one of {', '.join(EVIDENCE_KINDS)}, got {kind!r}"[:200])
    if not _SHA256.match(sha256):
        raise ApiError(422, "sha256: expected 64 lowercase hex digits (the file's SHA-256)")
    if request.content_length is not None and request.content_length > EVIDENCE_MAX_BYTES:
        raise ApiError(413, f"evidence: {request.content_length} bytes is over the limit of "
                            f"{EVIDENCE_MAX_BYTES} bytes per PCAP file")
    # Read by hand (past the app's client_max_size, which is for JSON), never more than the cap.
    data = await request.content.read(EVIDENCE_MAX_BYTES + 1)
    if len(data) > EVIDENCE_MAX_BYTES:
        raise ApiError(413, f"evidence: over the limit of {EVIDENCE_MAX_BYTES} bytes per PCAP file")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ApiError(422, "sha256: does not match the body (the upload was cut or altered)")
    incident_id = f"{site}:{local_id}"
    outcome = await request.app[STORE].run(store_evidence, incident_id, kind, site, sha256, data)
    if outcome == "unknown":
        raise ApiError(404, f"incident: no incident {incident_id!r} (its batch was not ingested)")
    log.info("fleet.evidence_received", site=site, incident=incident_id, kind=kind, bytes=len(data),
             duplicate=outcome == "duplicate")
    return web.json_response({"stored": outcome == "stored", "duplicate": outcome == "duplicate"})


def _bad_announcement(a: Any) -> str | None:
    """What is wrong with one announcement, as "field: problem" (None: nothing)."""
    if not isinstance(a, dict):
        return "expected an object"
    for field in ("incident_id", "tenant"):
        if not isinstance(a.get(field), str) or not a[field] or ":" in a[field]:
            return f"{field}: expected the appliance's id (a string without ':')"
    if not _time(a.get("at")):
        return f"at: expected a time in seconds, got {a.get('at')!r}"
    if a.get("action") not in ACTIONS:
        return f"action: expected one of {', '.join(ACTIONS)}, got {a.get('action')!r}"
    if a.get("kind") not in ROUTE_KINDS:
        return f"kind: expected one of {', '.join(ROUTE_KINDS)}, got {a.get('kind')!r}"
    if not isinstance(a.get("match"), dict) or not isinstance(a["match"].get("destination"), str):
        return "match: expected an object with a destination"
    peers = a.get("peers", [])
    if not (isinstance(peers, list) and all(isinstance(p, dict) and isinstance(p.get("address"), str)
                                            and isinstance(p.get("state"), str) for p in peers)):
        return "peers: expected an array of {address, state}"
    for field in ("reason", "actor", "why"):
        if a.get(field) is not None and not isinstance(a[field], str):
            return f"{field}: expected a string"
    return None


async def site_announcements(request: web.Request) -> web.Response:
    """A site's BGP announcements and withdrawals (issue 17, item 3), each of one of its incidents."""
    site = await authenticated_site(request)
    body = _own_site(await read_json(request, _strict_loads), site)
    items = body.get("announcements")
    if not isinstance(items, list) or len(items) > MAX_ANNOUNCEMENTS:
        raise ApiError(422, f"announcements: expected an array of at most {MAX_ANNOUNCEMENTS}")
    for i, a in enumerate(items):
        problem = _bad_announcement(a)
        if problem:
            raise ApiError(422, f"announcements[{i}].{problem}"[:200])
    stored, skipped = await request.app[STORE].run(store_announcements, site, items)
    log.info("fleet.announcements_received", site=site, stored=stored, skipped=skipped)
    return web.json_response({"stored": stored, "skipped": skipped})
