"""Per-destination class budgets derived from the baselines (policy `*_rate_pps = 0`).

The XDP program keeps a token bucket per destination address and traffic class
(SYN, UDP, ICMP, fragments) and drops what exceeds the tenant's budget from the
first packet, with no control-plane round trip (`dataplane/bpf/seawall.c`,
`sw_over_budget`). A policy value above 0 is the operator's budget and always
wins. A 0 means "derived from the baseline", by this module:

Model
-----
Once a tenant's baselines are warm, the budget of a tenant and class is::

    max(policy.min_pps, safety · max(normal peak of each destination of the tenant))

(a warm destination's normal peak is never below its detection threshold, itself never
below `min_pps`, so in practice the floor is safety · min_pps: 2,000 packets/s by default)

where a destination's normal peak in the class is the higher of
- its baseline-derived detection threshold (``max(min_pps, (mean + k·sigma)·margin
  / sensitivity)``, see `policy.baseline`) and its baseline cap ``(mean + k·sigma)·margin``
  (so a high sensitivity, which lowers the detection threshold below the cap, never
  tightens a budget that drops packets unconditionally), for destinations whose
  baseline in that class is warm, and
- the highest rate it received in a second that was not anomalous since the previous
  derivation, for destinations still warming up (a new server's traffic is not known
  to its baseline yet, and must not meet a budget made from its neighbours).

`safety` (2 by default) is headroom on top of a threshold that already carries the
baseline's own margin: the budget is a ceiling against floods that grow faster than
detection, not a detector. Because one budget applies to every destination of the
tenant, it follows the busiest one: a tenant with one busy server and many quiet ones
gets a budget the quiet ones never reach (the control-plane rules still protect them).

A class gets a derived budget only when the tenant's own baseline and at least one of
its destinations' baselines are past warm-up in that class; until then it has none
(0, as before). Derivation runs every `interval_s` seconds (30 s by default, and at the
engine's first tick, so budgets come back at once after a restart with saved baselines);
a new value is pushed to the dataplane only when it differs from the one in force by
more than `hysteresis` (25 %), or when a budget appears or goes. Attack seconds never
move budgets: baselines do not learn them and anomalous seconds are not peaks.

A full tenant-set apply writes every policy leaf anew from the configuration (0 for
derived budgets): `reapply` pushes the derived values again right after it. Tenants in
monitor mode get their budgets too: the dataplane counts what would be dropped (reason
HEURISTIC) and passes it, as it does for their other drops.

The dataplane splits a budget evenly over its CPUs (each admits rate / CPUs, with a
100 ms burst): traffic of one destination that RSS steers to a single CPU meets only
that share, which the safety factor covers on machines with few CPUs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np
import structlog

from dataplane.constants import BUDGET_CLASSES, BUDGET_FIELDS, MAX_TENANTS, NO_TENANT, TrafficClass
from tenants.policy import TenantPolicy

log = structlog.get_logger("policy")

# Classes with a per-destination budget in the dataplane, and their policy keys: BUDGET_CLASSES and
# BUDGET_FIELDS of dataplane.constants (re-exported here).
_COLS = np.array([int(c) for c in BUDGET_CLASSES])
DERIVE_BLOCK_ROWS = 65_536    # destination rows a derivation looks at a time (~3 MiB of temporaries each)

# Pushes {class: packets/s} (0 = no budget) for one tenant index into the dataplane.
BudgetPush = Callable[[int, dict[TrafficClass, int]], object]


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetConfig:
    interval_s: float = 30.0     # seconds between derivations
    safety: float = 2.0          # factor on the busiest destination's normal peak
    hysteresis: float = 0.25     # relative change before a derived budget is pushed again

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"budget interval_s: must be positive seconds, got {self.interval_s}")
        if not self.safety >= 1.0:
            raise ValueError(f"budget safety: must be at least 1 (a budget below the normal peak), got {self.safety}")
        if not 0 <= self.hysteresis < 1:
            raise ValueError(f"budget hysteresis: must be within 0..1, got {self.hysteresis}")


def derive_budgets(*, tenant_idx: np.ndarray, threshold: np.ndarray, baseline_cap: np.ndarray,
                   warm: np.ndarray, tenant_warm: np.ndarray, cold_peak: np.ndarray,
                   policies: Mapping[int, TenantPolicy], safety: float) -> dict[int, dict[TrafficClass, int]]:
    """Derived budgets per tenant index, for the classes whose policy value is 0.

    Destination rows (N of them): `tenant_idx` (N,), `threshold` and `baseline_cap` (N, C) packets/s
    (a destination's normal peak is the higher of the two), `warm` (N, C) past warm-up. Per
    tenant slot (MAX_TENANTS rows): `tenant_warm` (T, C) the tenant's own baseline is
    warm, `cold_peak` (T, C) the highest non-anomalous rate of a warming-up destination
    since the last derivation. A class that cannot be derived yet is 0 (no budget).
    Classes the policy sets explicitly are left out: the configured value is in force.

    The rows go DERIVE_BLOCK_ROWS at a time (the peaks are maxima and the counts sums: the same
    whatever the blocks): whole-array normal peaks, gathers and masks held ~170 MiB at a million
    destinations, every `interval_s`, and the heap keeps such a high-water mark.
    """
    n_cls = threshold.shape[1] if threshold.ndim == 2 else len(TrafficClass)
    peak = np.zeros((MAX_TENANTS, n_cls))
    n_warm = np.zeros((MAX_TENANTS, n_cls), np.int64)
    for lo in range(0, len(tenant_idx), DERIVE_BLOCK_ROWS):
        block = slice(lo, lo + DERIVE_BLOCK_ROWS)
        t = tenant_idx[block]
        rows = np.flatnonzero((t != NO_TENANT) & (t < MAX_TENANTS))
        if not len(rows):
            continue
        t = t[rows].astype(np.int64)
        w = warm[block][rows]
        normal_peak = np.maximum(threshold[block][rows], baseline_cap[block][rows])
        np.maximum.at(peak, t, np.where(w, normal_peak, 0.0))
        np.add.at(n_warm, t, w.astype(np.int64))
    out: dict[int, dict[TrafficClass, int]] = {}
    for idx, policy in policies.items():
        budgets: dict[TrafficClass, int] = {}
        for cls, field in BUDGET_FIELDS.items():
            if getattr(policy, field):
                continue          # the operator's value wins
            c = int(cls)
            if not (tenant_warm[idx, c] and n_warm[idx, c] > 0):
                budgets[cls] = 0
                continue
            highest = max(float(peak[idx, c]), float(cold_peak[idx, c]))
            budgets[cls] = int(math.ceil(max(float(policy.min_pps), safety * highest)))
        if budgets:
            out[idx] = budgets
    return out


def needs_push(current: int, derived: int, hysteresis: float) -> bool:
    """Whether a derived budget differs enough from the one in force to be pushed."""
    if (current == 0) != (derived == 0):
        return True
    return abs(derived - current) > hysteresis * current


class BudgetDeriver:
    """Derives the tenants' class budgets at a modest cadence and keeps the dataplane's in step.

    `push` is the dataplane's `set_class_budgets` (None: derive and report only, for a
    dataplane without per-destination budgets).
    """

    def __init__(self, push: BudgetPush | None, config: BudgetConfig | None = None) -> None:
        self.push = push
        self.config = config or BudgetConfig()
        self.derived: dict[int, dict[TrafficClass, int]] = {}    # last derivation, what status shows
        self.in_force: dict[int, dict[TrafficClass, int]] = {}   # what the dataplane holds (derived classes)
        self._cold_peak = np.zeros((MAX_TENANTS, len(BUDGET_CLASSES)))   # packets/s, budget classes
        self._next_at: float | None = None

    def observe(self, now: float, *, tenant_idx: np.ndarray, pps: np.ndarray, valid: np.ndarray,
                anomalous: np.ndarray, threshold: np.ndarray, baseline_cap: np.ndarray,
                warm: Callable[[np.ndarray], np.ndarray], tenant_warm: Callable[[], np.ndarray],
                policies: Mapping[int, TenantPolicy], min_pps_floor: float | None = None) -> None:
        """One engine tick: remember warming-up destinations' peaks; derive and push when due.

        Destination rows as in `derive_budgets`, plus `pps` (N, C) this tick, `valid` (N,) and
        `anomalous` (N, C); `warm(rows)` gives the warm mask of those rows (indices or a slice) and
        `tenant_warm()` the (T, C) mask of the tenants' baselines, asked for only when needed.
        `min_pps_floor` is the lowest `min_pps` of `policies` (0 without any) when the caller
        keeps it (the engine does, per tenant set: a walk over 10,000 policies costs a millisecond).
        """
        # A derivable budget is never below safety · min_pps (see the module docstring), so only a
        # warming-up destination above its tenant's min_pps can lift one. Warming-up elements are few once
        # the box has run a while: found first in the flat warm mask, a byte an element (comparing every
        # rate, eight bytes, with the floor first cost ~11 ms a tick at a million destinations; the mask's
        # budget columns taken apart are a strided copy that flatnonzero copies again), and only their
        # rows' rates are looked at. A block of rows at a time: while the box warms up every element is cold, and the
        # temporaries of a million rows at once would raise the heap's high-water mark for good.
        floor = min((p.min_pps for p in policies.values()), default=0) if min_pps_floor is None else min_pps_floor
        n_cls = pps.shape[1]
        budget_class = np.zeros(n_cls, bool)
        budget_class[_COLS] = True
        for lo in range(0, len(pps), DERIVE_BLOCK_ROWS):
            block = slice(lo, lo + DERIVE_BLOCK_ROWS)
            cold_elements = np.flatnonzero(~warm(block))
            rows = cold_elements[budget_class[cold_elements % n_cls]] // n_cls   # ascending, once per cold class
            if not len(rows):
                continue
            rows = lo + rows[np.concatenate([[True], rows[1:] != rows[:-1]])]
            cold_pps = pps[rows][:, _COLS]
            lifts = (cold_pps > floor).any(axis=1)
            rows, cold_pps = rows[lifts], cold_pps[lifts]
            t = tenant_idx[rows]
            cold = (~warm(rows)[:, _COLS] & ~anomalous[rows][:, _COLS] & valid[rows, None]
                    & ((t != NO_TENANT) & (t < MAX_TENANTS))[:, None])
            hot = cold.any(axis=1)
            if hot.any():
                np.maximum.at(self._cold_peak, t[hot].astype(np.int64),
                              np.where(cold[hot], cold_pps[hot], 0.0))
        if self._next_at is not None and now < self._next_at:
            return
        self._next_at = now + self.config.interval_s
        cold_peak = np.zeros((MAX_TENANTS, pps.shape[1]))
        cold_peak[:, _COLS] = self._cold_peak
        derived = derive_budgets(tenant_idx=tenant_idx, threshold=threshold, baseline_cap=baseline_cap,
                                 warm=warm(slice(None)),
                                 tenant_warm=tenant_warm(), cold_peak=cold_peak, policies=policies,
                                 safety=self.config.safety)
        self._cold_peak[:] = 0.0
        self.derived = derived
        for idx, budgets in derived.items():
            in_force = self.in_force.get(idx, {})
            changed = {c: v for c, v in budgets.items() if needs_push(in_force.get(c, 0), v, self.config.hysteresis)}
            if changed:
                self._push(idx, changed, "derived")

    def reapply(self, policies: Mapping[int, TenantPolicy]) -> None:
        """After a tenant-set apply (which wrote the configured policy, 0 for derived budgets):
        push the derived budgets in force again, except where the policy now sets a value."""
        self.derived = {i: b for i, b in self.derived.items() if i in policies}
        previous, self.in_force = self.in_force, {}
        for idx, budgets in previous.items():
            policy = policies.get(idx)
            if policy is None:
                continue
            keep = {c: v for c, v in budgets.items() if v and not getattr(policy, BUDGET_FIELDS[c])}
            if keep:
                self._push(idx, keep, "reapplied")

    def effective(self, idx: int, policy: TenantPolicy) -> dict[str, dict[str, int | str]]:
        """Per class, the budget in force for one tenant and where it comes from."""
        out: dict[str, dict[str, int | str]] = {}
        for cls, field in BUDGET_FIELDS.items():
            explicit = int(getattr(policy, field))
            if explicit:
                out[cls.name.lower()] = {"pps": explicit, "source": "policy"}
            else:
                pps = self.in_force.get(idx, {}).get(cls, 0)
                out[cls.name.lower()] = {"pps": pps, "source": "baseline" if pps else "none (warming up)"}
        return out

    def _push(self, idx: int, budgets: dict[TrafficClass, int], why: str) -> None:
        before = self.in_force.get(idx, {})
        if self.push is not None:
            try:
                self.push(idx, dict(budgets))
            except Exception as exc:   # the dataplane's own error type: retried at the next derivation
                log.error("budget.push_failed", tenant_idx=idx, error=str(exc))
                return
        self.in_force.setdefault(idx, {}).update(budgets)
        log.info("budget.derived", tenant_idx=idx, why=why, pushed=self.push is not None,
                 budgets={c.name.lower(): v for c, v in budgets.items()},
                 before={c.name.lower(): before.get(c, 0) for c in budgets})


__all__ = ["BUDGET_CLASSES", "BUDGET_FIELDS", "BudgetConfig", "BudgetDeriver", "derive_budgets", "needs_push"]
