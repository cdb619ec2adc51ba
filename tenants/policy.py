"""Per-tenant protection policy: the `[tenants.policy]` table of the config.

Every key has a default that protects a tenant against every known vector
without tuning; operators only change what they must.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dataplane.constants import RATE_PPS_MAX
from tenants.errors import ConfigError

# RATE_PPS_MAX (packets/s) bounds the per-class rates, which the dataplane holds as __u32, and the
# detection floors too: far above any line rate (100GbE: 148.8 Mpps), so that no number in a
# policy can silently turn detection off.

REFLECTION_MODES = ("auto", "always", "off")
# SYN authentication during SYN floods (dataplane/bpf/synauth.h, docs/design/syn-cookies.md): the
# bridge answers unknown sources' SYNs with cookies; a valid cookie ACK then either opens the
# connection to the server on the client's behalf ("splice", no error, one extra LAN round trip) or
# is reset so that the client's retry passes ("reset": the application's first connect() fails).
SYN_AUTH_MODES = ("splice", "reset", "off")
# The old boolean key, kept as an alias of syn_auth: true -> "splice", false -> "off".
SYN_AUTH_ALIAS = "syn_protection"
SENSITIVITY_RANGE = (0.1, 10.0)   # threshold divisor: lenient .. strict
# Longest rendering of a refused value in a message: a 400-digit number is not worth echoing.
SHOWN_VALUE_CHARS = 40


def shown(value: object) -> str:
    """repr(value), shortened when long, for error messages."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** SHOWN_VALUE_CHARS:
        return f"a {len(str(abs(value)))}-digit number"  # str() of an int this long is still within Python's limit
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[:SHOWN_VALUE_CHARS] + "..."


@dataclasses.dataclass(frozen=True, slots=True)
class TenantPolicy:
    # Detection: a destination's class rate is anomalous above
    # max(min_pps, baseline threshold / sensitivity).
    sensitivity: float = 1.0          # 0.1 (lenient) .. 10 (strict); threshold divisor
    min_pps: int = 1000               # packets/s per destination and class below which nothing is an attack
    # A tenant's aggregate is judged against its own learned baseline (see policy.detect); this
    # floor is only the safety net below which nothing is an attack, for tenants whose baseline
    # is a few packets a second (20 kpps before issue 20, which let a carpet hide under it).
    min_tenant_pps: int = 500         # packets/s over the whole tenant (carpet bombing safety floor)
    auto_mitigation: bool = True      # install rules by itself (otherwise: incidents only)
    # Always-on heuristics in the XDP program.
    invalid_filters: bool = True      # drop packets no stack sends (flags, land, port 0, lengths)
    syn_auth: str = "splice"          # SYN cookies during SYN floods, then: splice | reset | off
    reflection_filter: str = "auto"   # auto: while under attack; always; off
    syn_rate_pps: int = 0             # per destination token bucket; 0 = derived from the baseline
    udp_rate_pps: int = 0
    icmp_rate_pps: int = 0
    fragment_rate_pps: int = 0
    # Upstream escalation (escalation/, only with a [bgp] section): FlowSpec for this tenant's
    # attacks; a blackhole (RTBH) drops everything to the address, so only a tenant that agreed gets one.
    escalate_flowspec: bool = True
    escalate_rtbh: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TenantPolicy:
        """Parse a `[tenants.policy]` table; one ConfigError (a ValueError) lists every key at fault,
        each problem starting with "policy.<key>: "."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        problems: list[str] = []
        data = dict(data)
        if SYN_AUTH_ALIAS in data:
            alias = data.pop(SYN_AUTH_ALIAS)
            if not isinstance(alias, bool):
                problems.append(f"policy.{SYN_AUTH_ALIAS}: expected true or false, got {shown(alias)}")
            elif "syn_auth" not in data:
                data["syn_auth"] = "splice" if alias else "off"
            elif data["syn_auth"] in SYN_AUTH_MODES and (data["syn_auth"] != "off") != alias:
                problems.append(f"policy.{SYN_AUTH_ALIAS}: {str(alias).lower()} contradicts policy.syn_auth = "
                                f"{data['syn_auth']!r} (syn_protection is the old name of syn_auth: set one)")
        for key, raw in data.items():
            if key not in known:
                problems.append(f"policy.{key}: unknown key (known: {', '.join(sorted(known))})")
                continue
            problem = _check(key, known[key].default, raw)
            if problem is not None:
                problems.append(f"policy.{key}: {problem}")
                continue
            values[key] = float(raw) if isinstance(known[key].default, float) else raw
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def syn_protection(self) -> bool:
        """The old boolean view of syn_auth: cookies of either completion are on."""
        return self.syn_auth != "off"


def merge_policy(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """Policy table `base` with the keys of `own` on top: a tenant's own keys over what it inherits
    (a template's values, its current policy). `own`'s old `syn_protection` sets syn_auth, so it
    replaces the syn_auth of `base`; only a syn_auth in `own` itself can contradict it."""
    if SYN_AUTH_ALIAS in own and "syn_auth" not in own:
        base = {key: value for key, value in base.items() if key != "syn_auth"}
    return {**base, **own}


def _check(key: str, default: object, raw: object) -> str | None:
    """Why `raw` is not a valid value for the key whose default is `default`, or None."""
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            return f"expected true or false, got {shown(raw)}"
    elif isinstance(default, int):
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            return f"expected a non-negative integer, got {shown(raw)}"
        if raw > RATE_PPS_MAX:
            return (f"must be at most {RATE_PPS_MAX} packets/s (the dataplane holds 32-bit rates), "
                    f"got {shown(raw)}")
    elif isinstance(default, float):
        low, high = SENSITIVITY_RANGE
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return f"expected a number between {low} and {high:g}, got {shown(raw)}"
        try:
            number = float(raw)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number) or not low <= number <= high:
            return f"must be between {low} and {high:g}, got {shown(number if math.isfinite(number) else raw)}"
    elif key == "reflection_filter" and raw not in REFLECTION_MODES:
        return f"must be one of {', '.join(REFLECTION_MODES)}, got {shown(raw)}"
    elif key == "syn_auth" and raw not in SYN_AUTH_MODES:
        return f"must be one of {', '.join(SYN_AUTH_MODES)}, got {shown(raw)}"
    return None
