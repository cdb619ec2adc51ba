"""The escalation ladder: when to announce FlowSpec and RTBH, when to withdraw. Pure: no I/O.

local XDP drop (always) -> FlowSpec upstream -> RTBH, per incident:

- FlowSpec (automatic): while the incident is active, its tenant is in mitigate mode with
  `escalate_flowspec`, and inbound traffic reaches `flowspec_at` x `uplink_bps`: one route per
  rule the engine installed for the incident (`routes.flowspec_for_rule`).
- RTBH (automatic): only for a tenant with `escalate_rtbh`, only when the link is still at or
  above `flowspec_at` `hold_down_s / 4` seconds after the incident's first FlowSpec route was
  announced: a host route per attacked destination.
- Manual: an operator announces either kind for an open incident (RTBH still only for a tenant
  that agreed), or withdraws all of an incident's routes; after a manual withdraw the automatic
  ladder leaves that incident alone.
- Withdraw: `hold_down_s` after the incident stops being active (a reopened incident keeps them).
- Monitor-mode tenants never escalate; nothing outside a tenant's prefixes is announced; never
  more than `max_announcements` routes: one that would exceed it is refused and reported.
- Restart: a previous process's routes are taken over (`restore`) only where the current tenants
  and peers still allow them; the others are dropped, each with the reason.

`Ladder` returns `Change`s (announce / withdraw / refuse); the caller drives the speaker with
them, logs them and publishes them as events.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dataplane.api import Rule
from tenants import Tenant

from .config import BgpSettings, EscalationSettings
from .routes import (
    FLOWSPEC,
    KINDS,
    RTBH,
    Refused,
    Route,
    blackhole_for,
    flowspec_for_rule,
    inside,
    route_from_dict,
)

AUTO = "auto"
MANUAL = "manual"
ANNOUNCE = "announce"
WITHDRAW = "withdraw"
REFUSE = "refuse"


@dataclasses.dataclass(frozen=True, slots=True)
class IncidentView:
    """What the ladder needs of one of the engine's open incidents."""

    id: str
    tenant: str
    active: bool                       # attack going on (not ended, not in the engine's hold-down)
    destinations: tuple[str, ...]      # attacked addresses
    rules: tuple[Rule, ...]            # the rules the engine installed for it


@dataclasses.dataclass(frozen=True, slots=True)
class Announcement:
    kind: str                          # flowspec | rtbh
    route: Route
    incident: str
    tenant: str
    since: float                       # seconds since the epoch
    reason: str                        # auto | manual

    @property
    def key(self) -> str:
        return self.route.key

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "match": self.route.to_dict(), "incident": self.incident,
                "tenant": self.tenant, "since": self.since, "reason": self.reason}


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    action: str                        # announce | withdraw | refuse
    announcement: Announcement
    why: str                           # for the log and the event
    actor: str | None = None           # who asked (manual), None for the ladder itself


@dataclasses.dataclass(frozen=True, slots=True)
class Restored:
    """What `Ladder.restore` made of a previous process's announcements."""

    taken: list[Announcement]                    # to announce again
    dropped: list[tuple[Announcement, str]]      # not to announce, each with the reason


@dataclasses.dataclass(slots=True)
class _Track:
    """The ladder's memory of one incident."""

    tenant: str
    flowspec_since: float | None = None    # monotonic seconds of its first FlowSpec route
    ended_at: float | None = None          # monotonic seconds it was first seen not active
    operator_withdrew: bool = False


class Ladder:
    def __init__(self, bgp: BgpSettings, settings: EscalationSettings) -> None:
        self.bgp = bgp
        self.settings = settings
        self.announcements: dict[str, Announcement] = {}
        self.refused = 0                          # announcements refused (cap, outside prefixes), total
        self._tracks: dict[str, _Track] = {}
        self._refused_keys: set[tuple[str, str]] = set()   # (incident, key) reported once each

    # -- questions ------------------------------------------------------------

    def congested(self, inbound_bps: float | None) -> bool:
        s = self.settings
        return s.uplink_bps is not None and inbound_bps is not None and inbound_bps >= s.flowspec_at * s.uplink_bps

    def of_incident(self, incident_id: str) -> list[Announcement]:
        return [a for a in self.announcements.values() if a.incident == incident_id]

    def peers_for(self, kind: str) -> list[str]:
        return [p.address for p in self.bgp.peers if p.takes(kind)]

    # -- the automatic ladder ---------------------------------------------------

    def tick(self, now: float, inbound_bps: float | None, incidents: Sequence[IncidentView],
             tenants: Mapping[str, Tenant], wall: float | None = None) -> list[Change]:
        """One step: `now` monotonic seconds, `inbound_bps` the external link's inbound bits/s."""
        wall = time.time() if wall is None else wall
        changes: list[Change] = []
        congested = self.congested(inbound_bps)
        seen = set()
        for inc in incidents:
            seen.add(inc.id)
            track = self._tracks.get(inc.id)
            if not inc.active:
                if track is not None and track.ended_at is None:
                    track.ended_at = now
                continue
            if track is not None:
                track.ended_at = None          # reopened within the hold-down: keep its routes
            tenant = tenants.get(inc.tenant)
            if tenant is None or tenant.mode == "monitor" or not congested:
                continue
            track = self._tracks.setdefault(inc.id, _Track(inc.tenant))
            if track.operator_withdrew:
                continue
            if tenant.policy.escalate_flowspec:
                changes += self._announce_flowspec(inc, tenant, AUTO, now, wall, None)
            if (tenant.policy.escalate_rtbh and track.flowspec_since is not None
                    and now - track.flowspec_since >= self.settings.rtbh_after_s):
                changes += self._announce_rtbh(inc, tenant, AUTO, wall, None)
        for incident_id, track in list(self._tracks.items()):
            if incident_id not in seen and track.ended_at is None:
                track.ended_at = now           # closed by the engine: gone from its open incidents
            if track.ended_at is not None and now - track.ended_at >= self.settings.hold_down_s:
                changes += self._withdraw_incident(incident_id, f"hold-down of {self.settings.hold_down_s:g} s "
                                                                f"after the attack ended", None)
                del self._tracks[incident_id]
        return changes

    # -- operators ----------------------------------------------------------------

    def escalate(self, inc: IncidentView, tenant: Tenant, kind: str, actor: str, now: float,
                 wall: float | None = None) -> list[Change]:
        """An operator's announcement; Refused (with the reason) when it cannot be made at all."""
        wall = time.time() if wall is None else wall
        if kind not in KINDS:
            raise Refused(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        why = _tenant_refuses(tenant, kind) or self._no_peer_for(kind)
        if why is not None:
            raise Refused(why)
        track = self._tracks.setdefault(inc.id, _Track(inc.tenant))
        track.operator_withdrew = False
        if kind == FLOWSPEC:
            if not inc.rules:
                raise Refused("the incident has no signature yet: nothing to announce as FlowSpec")
            changes = self._announce_flowspec(inc, tenant, MANUAL, now, wall, actor)
        else:
            if not inc.destinations:
                raise Refused("the incident has no single attacked address to blackhole")
            changes = self._announce_rtbh(inc, tenant, MANUAL, wall, actor)
        if not inc.active and track.ended_at is None:
            track.ended_at = now               # an ended incident's routes still leave after the hold-down
        return changes

    def withdraw(self, incident_id: str, actor: str) -> list[Change]:
        """An operator withdraws every route of the incident; the ladder leaves it alone after."""
        track = self._tracks.get(incident_id)
        if track is not None:
            track.operator_withdrew = True
        return self._withdraw_incident(incident_id, "withdrawn by an operator", actor)

    def restore(self, saved: Sequence[dict[str, Any]], now: float, tenants: Mapping[str, Tenant]) -> Restored:
        """The announcements of a previous process (`Announcement.to_dict()` forms), taken over as
        they were: each is kept `hold_down_s` from now, or for as long as an open incident of this
        process asks for the same route (it then becomes that incident's). Only those the current
        `tenants` and peers still allow are taken (`_unrestorable`): the configuration may have
        changed while no process ran, and a route announced again stays up for the hold-down."""
        taken, dropped = [], []
        for item in saved:
            ann = Announcement(item["kind"], route_from_dict(item["kind"], item["match"]), item["incident"],
                               item["tenant"], float(item["since"]), item["reason"])
            if ann.key in self.announcements:
                continue                       # this process announced it already
            why = self._unrestorable(ann, tenants)
            if why is not None:
                dropped.append((ann, why))
                continue
            self.announcements[ann.key] = ann
            track = self._tracks.setdefault(ann.incident, _Track(ann.tenant, ended_at=now))
            if ann.kind == FLOWSPEC:
                track.flowspec_since = now
            taken.append(ann)
        return Restored(taken, dropped)

    def reconfigure(self, bgp: BgpSettings, settings: EscalationSettings) -> list[Change]:
        """New [bgp] and [escalation] settings (a reload): what is announced stays, except routes of a
        kind no peer takes any more and, when `max_announcements` shrank, the newest beyond it."""
        self.bgp, self.settings = bgp, settings
        changes = []
        for ann in list(self.announcements.values()):
            if not self.peers_for(ann.kind):
                del self.announcements[ann.key]
                changes.append(Change(WITHDRAW, ann, f"no BGP peer takes {ann.kind} announcements after the reload"))
        excess = len(self.announcements) - settings.max_announcements
        if excess > 0:
            newest = sorted(self.announcements.values(), key=lambda a: a.since, reverse=True)[:excess]
            for ann in newest:
                del self.announcements[ann.key]
                changes.append(Change(WITHDRAW, ann, f"max_announcements lowered to {settings.max_announcements} "
                                                     f"by the reload"))
        return changes

    def withdraw_all(self, why: str) -> list[Change]:
        changes = [Change(WITHDRAW, a, why) for a in self.announcements.values()]
        self.announcements.clear()
        self._tracks.clear()
        return changes

    # -- internals --------------------------------------------------------------------

    def _no_peer_for(self, kind: str) -> str | None:
        return None if self.peers_for(kind) else f"no BGP peer takes {kind} announcements ([[bgp.peers]] {kind} = false)"

    def _unrestorable(self, ann: Announcement, tenants: Mapping[str, Tenant]) -> str | None:
        """Why a previous process's announcement may not be made now (None: it may): its tenant is
        gone, or no longer agrees to its kind, or the route left the tenant's prefixes, or no peer
        takes its kind, or the cap is reached. The same rules as when it was made: the ladder's own
        FlowSpec route needs the tenant's `escalate_flowspec`, an operator's does not (the operator
        asked for it, and a restart is no reason to take it down)."""
        tenant = tenants.get(ann.tenant)
        if tenant is None:
            return f"tenant {ann.tenant!r} is not configured any more"
        why = _tenant_refuses(tenant, ann.kind)
        if why is not None:
            return why
        if ann.kind == FLOWSPEC and ann.reason == "auto" and not tenant.policy.escalate_flowspec:
            return f"tenant {tenant.id!r} has not agreed to FlowSpec (policy escalate_flowspec = false)"
        if not inside(tenant.prefixes, ann.route.destination):
            return f"{ann.route.destination} is not inside the tenant's prefixes"
        if len(self.announcements) >= self.settings.max_announcements:
            return f"max_announcements ({self.settings.max_announcements}) reached"
        return self._no_peer_for(ann.kind)

    def _add(self, inc: IncidentView, route: Route, reason: str, wall: float, actor: str | None) -> Change | None:
        held = self.announcements.get(route.key)
        if held is not None:
            owner = self._tracks.get(held.incident)
            if held.incident != inc.id and (owner is None or owner.ended_at is not None):
                # An ended (or a previous process's) incident's route that this open incident
                # needs too: it stays announced and follows this incident's life from now on.
                self.announcements[route.key] = dataclasses.replace(held, incident=inc.id, tenant=inc.tenant)
            return None
        ann = Announcement(route.kind, route, inc.id, inc.tenant, wall, reason)
        if len(self.announcements) >= self.settings.max_announcements:
            return self._refuse(inc.id, ann, f"max_announcements ({self.settings.max_announcements}) reached", actor)
        self.announcements[route.key] = ann
        return Change(ANNOUNCE, ann, f"{reason}: {route.kind} for incident {inc.id}", actor)

    def _refuse(self, incident_id: str, ann: Announcement, why: str, actor: str | None) -> Change | None:
        if (incident_id, ann.key) in self._refused_keys and actor is None:
            return None                        # reported once; the ladder asks again every tick
        self._refused_keys.add((incident_id, ann.key))
        self.refused += 1
        return Change(REFUSE, ann, why, actor)

    def _announce_flowspec(self, inc: IncidentView, tenant: Tenant, reason: str, now: float, wall: float,
                           actor: str | None) -> list[Change]:
        if not self.peers_for(FLOWSPEC):
            return []
        changes = []
        for rule in inc.rules:
            try:
                routes = flowspec_for_rule(rule, tenant.prefixes)
            except Refused as exc:
                placeholder = Announcement(FLOWSPEC, _unroutable_rule(rule), inc.id, inc.tenant, wall, reason)
                change = self._refuse(inc.id, placeholder, str(exc), actor)
                changes += [change] if change else []
                continue
            for route in routes:
                change = self._add(inc, route, reason, wall, actor)
                changes += [change] if change else []
        if any(c.action == ANNOUNCE for c in changes) or self.of_incident(inc.id):
            track = self._tracks.setdefault(inc.id, _Track(inc.tenant))
            if track.flowspec_since is None and any(a.kind == FLOWSPEC for a in self.of_incident(inc.id)):
                track.flowspec_since = now
        return changes

    def _announce_rtbh(self, inc: IncidentView, tenant: Tenant, reason: str, wall: float,
                       actor: str | None) -> list[Change]:
        if not self.peers_for(RTBH):
            return []
        changes = []
        for address in inc.destinations:
            try:
                route = blackhole_for(address, tenant.prefixes)
            except (Refused, ValueError) as exc:
                placeholder = Announcement(RTBH, _Unroutable(address), inc.id, inc.tenant, wall, reason)
                change = self._refuse(inc.id, placeholder, str(exc), actor)
                changes += [change] if change else []
                continue
            change = self._add(inc, route, reason, wall, actor)
            changes += [change] if change else []
        return changes

    def _withdraw_incident(self, incident_id: str, why: str, actor: str | None) -> list[Change]:
        changes = []
        for ann in self.of_incident(incident_id):
            del self.announcements[ann.key]
            changes.append(Change(WITHDRAW, ann, why, actor))
        self._refused_keys = {k for k in self._refused_keys if k[0] != incident_id}
        return changes


def _tenant_refuses(tenant: Tenant, kind: str) -> str | None:
    """Why `tenant` allows no announcement of `kind`, not even an operator's (None: it allows one)."""
    if tenant.mode == "monitor":
        return f"tenant {tenant.id!r} is in monitor mode: monitor tenants never escalate"
    if kind == RTBH and not tenant.policy.escalate_rtbh:
        return f"tenant {tenant.id!r} has not agreed to blackholing (policy escalate_rtbh = false)"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Unroutable:
    """Stands for a route that was refused before it could be built (shown in the refusal only)."""

    text: str
    kind: str = "refused"

    @property
    def key(self) -> str:
        return f"refused {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"destination": self.text}


def _unroutable_rule(rule: Rule) -> _Unroutable:
    return _Unroutable(str(rule.dst) if rule.dst is not None else "tenant-wide rule")
