"""Switching the dataplane's stateful heuristics on and off as incidents open and close.

The engine's ATTACK_* events say which vectors flood which destinations; `VECTOR_CLASSES`
(beside the vectors, in `policy.classify`) says which traffic classes each vector floods,
and so which heuristics (SYN challenge, per-class budgets under attack) the dataplane applies
to that destination while the incident is open.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Protocol

import structlog

from dataplane.api import IPAddress, Range
from dataplane.constants import TrafficClass
from policy.classify import VECTOR_CLASSES, Vector
from policy.events import Event, EventType

log = structlog.get_logger("policy")


class MarksAttacks(Protocol):
    """The one dataplane call the switch makes (`Dataplane.set_under_attack`)."""

    def set_under_attack(self, tenant_idx: int, dst: IPAddress | None, classes: Iterable[TrafficClass],
                         syn_ports: Range | None = None) -> None: ...


class HeuristicsSwitch:
    """Turns the dataplane's stateful heuristics on for a destination while an incident is open.

    It listens to the engine's ATTACK_* events: START and UPDATE mark each
    destination (or the whole tenant, for carpet bombing) under attack in the
    classes its vectors flood; END clears the marks of that incident. `indices`
    maps tenant ids to their dataplane index (the caller replaces it on reloads).
    """

    def __init__(self, dataplane: MarksAttacks, indices: Mapping[str, int]) -> None:
        self.dataplane = dataplane
        self.indices = indices
        self._marks: dict[str, set[tuple[int, str | None]]] = {}

    def on_event(self, event: Event) -> None:
        if event.type not in (EventType.ATTACK_START, EventType.ATTACK_UPDATE, EventType.ATTACK_END):
            return
        incident = event.incident_id or ""
        if event.type == EventType.ATTACK_END:
            for tenant_idx, dst in self._marks.pop(incident, set()):
                self._mark(tenant_idx, dst, ())
            return
        tenant_idx = self.indices.get(event.tenant or "")
        if tenant_idx is None:
            return
        classes = sorted({c for v in event.vectors for c in VECTOR_CLASSES.get(v, ())})
        if not classes:
            return
        targets: list[str | None] = [None] if Vector.CARPET_BOMBING in event.vectors else list(event.destinations)
        syn_ports = self._syn_ports(event)
        for dst in targets:
            self._mark(tenant_idx, dst, classes, syn_ports)
            self._marks.setdefault(incident, set()).add((tenant_idx, dst))

    @staticmethod
    def _syn_ports(event: Event) -> Range | None:
        """The destination ports of the incident's SYN rules (the SYN challenge covers only those)."""
        ports = [r["dport"] for r in (event.details or {}).get("rules", [])
                 if r.get("class") == "tcp_syn" and r.get("dport")]
        if not ports:
            return None
        return Range(min(p[0] for p in ports), max(p[1] for p in ports))

    def _mark(self, tenant_idx: int, dst: str | None, classes, syn_ports: Range | None = None) -> None:
        try:
            address = None if dst is None else ipaddress.ip_address(dst)
        except ValueError:
            return
        self.dataplane.set_under_attack(tenant_idx, address, classes, syn_ports)
        log.info("heuristics.mark", tenant_idx=tenant_idx, dst=dst, classes=[c.name.lower() for c in classes],
                 syn_ports=None if syn_ports is None else f"{syn_ports.lo}-{syn_ports.hi}")
