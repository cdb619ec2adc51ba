"""Upstream escalation in SecureWatch (issue 14): what the API and the incident page share.

The appliance decides and announces (escalation/, through `ApplianceHooks.escalate` and
`withdraw_escalation`); here: who may see and ask (admin and noc announce and withdraw, a tenant
sees its own announcements), the request's check, and the audit entry naming who asked.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from escalation.routes import KINDS, Refused

from .context import APPLIANCE, ApiError, appliance_or_503, audit, check_csrf, principal_of, visible_incident
from .store import Incident


def bgp_of(request: web.Request) -> dict[str, Any]:
    """The appliance's BGP escalation status; 404 when it has no [bgp] section."""
    appliance = appliance_or_503(request)
    bgp = appliance.bgp_status() if hasattr(appliance, "bgp_status") else None
    if bgp is None:
        raise ApiError(404, "BGP escalation is not configured on this appliance (no [bgp] section)")
    return bgp


def scoped_bgp(bgp: dict[str, Any], principal: Any) -> dict[str, Any]:
    """Everything for the admin and noc roles; a tenant sees its own announcements only."""
    if principal.sees_all:
        return bgp
    return {"announcements": [a for a in bgp.get("announcements") or [] if principal.can_read(a["tenant"])]}


def incident_announcements(request: web.Request, incident_id: str) -> list[dict[str, Any]] | None:
    """What is announced for one incident (None: no appliance here, or no [bgp]); the caller may
    read the incident (its announcements are its tenant's)."""
    appliance = request.app[APPLIANCE]
    bgp = appliance.bgp_status() if appliance is not None and hasattr(appliance, "bgp_status") else None
    if bgp is None:
        return None
    return [a for a in bgp.get("announcements") or [] if a["incident"] == incident_id]


def bgp_sessions(request: web.Request) -> dict[str, Any] | None:
    """The BGP sessions and the speaker's state for the incident page (None: no [bgp]); admin and
    noc only: a tenant is not shown the provider's routers."""
    appliance = request.app[APPLIANCE]
    bgp = appliance.bgp_status() if appliance is not None and hasattr(appliance, "bgp_status") else None
    if bgp is None or not principal_of(request).sees_all:
        return None
    return {"peers": bgp.get("peers") or [], "speaker": bgp.get("speaker") or {}}


async def escalation_target(request: web.Request, *, form: bool) -> tuple[Incident, Any]:
    """The incident (404 unless the caller may read it) and, for a page, its posted form (CSRF
    checked); 403 unless admin or noc; 404 when the appliance has no [bgp]."""
    incident = await visible_incident(request, request.match_info["incident_id"])
    posted = await check_csrf(request) if form else None
    if not principal_of(request).sees_all:
        raise ApiError(403, "only the admin and noc roles announce or withdraw routes upstream")
    bgp_of(request)
    return incident, posted


async def escalate(request: web.Request, incident: Incident, kind: Any) -> list[dict[str, Any]]:
    """Ask the appliance to announce `kind` for the incident; 400 bad kind, 409 refused or not open."""
    if kind not in KINDS:
        problem = f"kind: must be one of {', '.join(KINDS)}, got {kind!r}"
        raise ApiError(400, problem, [problem])
    appliance = appliance_or_503(request)
    try:
        changes = appliance.escalate(incident.id, kind, principal_of(request).name)
    except LookupError:
        raise ApiError(409, f"incident {incident.id!r} is not open: only an open incident is escalated") from None
    except Refused as exc:
        raise ApiError(409, str(exc), [str(exc)]) from None
    await audit(request, "incident.escalate", target=incident.id, tenant=incident.tenant,
                details={"kind": kind, "changes": [{"action": c["action"], "match": c["match"], "why": c["why"]}
                                                   for c in changes]})
    refused = [c["why"] for c in changes if c["action"] == "refuse"]
    if refused and not any(c["action"] == "announce" for c in changes):
        raise ApiError(409, f"refused: {refused[0]}", refused, changes=changes)
    return changes


async def withdraw(request: web.Request, incident: Incident) -> list[dict[str, Any]]:
    """Withdraw every route of the incident; 409 when nothing is announced for it."""
    appliance = appliance_or_503(request)
    try:
        changes = appliance.withdraw_escalation(incident.id, principal_of(request).name)
    except Refused as exc:
        raise ApiError(409, str(exc), [str(exc)]) from None
    await audit(request, "incident.withdraw", target=incident.id, tenant=incident.tenant,
                details={"changes": [{"kind": c["kind"], "match": c["match"]} for c in changes]})
    return changes
