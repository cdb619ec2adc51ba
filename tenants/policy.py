"""Per-tenant protection policy: the `[tenants.policy]` table of the config.

Every key has a default that protects a tenant against every known vector
without tuning; operators only change what they must.
"""

from __future__ import annotations

import dataclasses
from typing import Any

REFLECTION_MODES = ("auto", "always", "off")


@dataclasses.dataclass(frozen=True, slots=True)
class TenantPolicy:
    # Detection: a destination's class rate is anomalous above
    # max(min_pps, baseline threshold / sensitivity).
    sensitivity: float = 1.0          # 0.1 (lenient) .. 10 (strict); threshold divisor
    min_pps: int = 1000               # packets/s per destination and class below which nothing is an attack
    min_tenant_pps: int = 20000       # packets/s over the whole tenant (carpet bombing floor)
    auto_mitigation: bool = True      # install rules by itself (otherwise: incidents only)
    # Always-on heuristics in the XDP program.
    invalid_filters: bool = True      # drop packets no stack sends (flags, land, port 0, lengths)
    syn_protection: bool = True       # validated-source admission during SYN floods
    reflection_filter: str = "auto"   # auto: while under attack; always; off
    syn_rate_pps: int = 0             # per destination token bucket; 0 = derived from the baseline
    udp_rate_pps: int = 0
    icmp_rate_pps: int = 0
    fragment_rate_pps: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TenantPolicy:
        """Parse a `[tenants.policy]` table; ValueError names the key at fault."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in data.items():
            if key not in known:
                raise ValueError(f"policy.{key}: unknown key (known: {', '.join(sorted(known))})")
            default = known[key].default
            if isinstance(default, bool):
                if not isinstance(raw, bool):
                    raise ValueError(f"policy.{key}: expected true or false, got {raw!r}")
            elif isinstance(default, int):
                if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                    raise ValueError(f"policy.{key}: expected a non-negative integer, got {raw!r}")
            elif isinstance(default, float):
                if isinstance(raw, bool) or not isinstance(raw, int | float):
                    raise ValueError(f"policy.{key}: expected a number, got {raw!r}")
                raw = float(raw)
            values[key] = raw
        policy = cls(**values)
        if not 0.1 <= policy.sensitivity <= 10:
            raise ValueError(f"policy.sensitivity: must be between 0.1 and 10, got {policy.sensitivity}")
        if policy.reflection_filter not in REFLECTION_MODES:
            raise ValueError(f"policy.reflection_filter: must be one of {', '.join(REFLECTION_MODES)}")
        return policy

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
