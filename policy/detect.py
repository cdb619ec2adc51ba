"""Anomaly detection per destination and class, and per tenant (carpet bombing).

Everything is vectorised over the N destinations of a tick and the tenant slots.
A (destination, class) is anomalous when its rate exceeds the threshold of its
baseline (see `policy.baseline`). A tenant class is anomalous when the tenant's
summed inbound rate exceeds its own threshold (floor: `min_tenant_pps`); when
that excess is *not* explained by anomalous destinations but spread over many
slightly elevated addresses, it is a carpet-bombing candidate: each address stays
below its own threshold while the prefix as a whole is flooded.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

import numpy as np

from dataplane.constants import MAX_TENANTS, TenantMode, TrafficClass
from dataplane.reader import rows_empty
from policy import native
from policy.baseline import PARTIAL_BASELINE_S, EwmaBaseline
from policy.onset import JUMP as ONSET_JUMP
from policy.onset import MAX_CANDIDATES as ONSET_MAX_CANDIDATES
from policy.onset import MIN_SHARE as ONSET_MIN_SHARE
from policy.rates import DestinationRates, TenantRates
from tenants.policy import TenantPolicy

N_CLASSES = len(TrafficClass)
ELEVATED_FLOOR_PPS = 10.0        # packets/s an address must receive to count as elevated in a carpet
CARPET_UNEXPLAINED_SHARE = 0.5   # share of the tenant's excess not explained by anomalous destinations


@dataclasses.dataclass(frozen=True, slots=True)
class TenantEntry:
    tenant_id: str
    mode: TenantMode
    policy: TenantPolicy
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()   # its own aggregates when several


def _shared(values: np.ndarray) -> float | None:
    return float(values[0]) if len(values) and values.min() == values.max() else None


class PolicyTable:
    """Per-tenant policy knobs as dense arrays; row MAX_TENANTS stands for NO_TENANT."""

    def __init__(self, tenants: dict[int, TenantEntry]) -> None:
        size = MAX_TENANTS + 1
        self.known = np.zeros(size, bool)
        self.min_pps = np.zeros(size)
        self.min_tenant_pps = np.zeros(size)
        self.sensitivity = np.ones(size)
        for idx, entry in tenants.items():
            if not 0 <= idx < MAX_TENANTS:
                raise ValueError(f"tenant {entry.tenant_id}: index {idx} out of range 0..{MAX_TENANTS - 1}")
            self.known[idx] = True
            self.min_pps[idx] = entry.policy.min_pps
            self.min_tenant_pps[idx] = entry.policy.min_tenant_pps
            self.sensitivity[idx] = entry.policy.sensitivity
        self.tenant_rows = np.flatnonzero(self.known[:MAX_TENANTS])   # tenant slots in use
        # The value every configured tenant shares (the usual case), or None: rows of known tenants
        # then need no per-row gather.
        self.uniform_min_pps = _shared(self.min_pps[self.tenant_rows])
        self.uniform_sensitivity = _shared(self.sensitivity[self.tenant_rows])

    @staticmethod
    def rows(tenant_idx: np.ndarray) -> np.ndarray:
        """Policy rows for tenant indices (NO_TENANT → the sentinel row). NO_TENANT is above every
        slot, so the clamp to the sentinel row maps it there too (one pass, not three, over a million
        rows)."""
        return np.minimum(tenant_idx, MAX_TENANTS)


@dataclasses.dataclass(slots=True)
class CarpetCandidate:
    tenant_idx: int
    classes: list[TrafficClass]
    tenant_pps: np.ndarray           # (C,) inbound packets/s
    tenant_threshold: np.ndarray     # (C,)
    tenant_excess: float             # packets/s above the tenant's baseline mean, anomalous classes
    elevated_rows: np.ndarray        # destination rows (this tick) elevated in those classes
    top_share: float                 # largest single destination's share of the excess
    prefix: str | None = None        # the tenant's prefix whose own aggregate showed it (policy.prefixes)
    mean: np.ndarray | None = None   # (C,) that prefix's baseline mean (None: the tenant's)


class RowValues:
    """Per-destination (N, C) values of a detection worked out when indexed, from the destination
    baselines as detection read them: `values[rows]` (an index, an index array or a slice),
    `values[rows, classes]` (numpy's pairs, or a class or classes of each row), `values[:]` the whole
    array. A tick needs the baseline cap and rate - mean at a few rows only (an incident's row, a
    carpet's members; a budget derivation reads them a block of rows at a time): as whole (N, C)
    arrays they held ~90 MiB at a million destinations.

    Valid until the baselines learn (`EwmaBaseline.version`): afterwards the state is no longer what
    detection saw, and indexing raises instead of answering with other numbers."""

    __slots__ = ("shape", "_of_rows", "_baseline", "_version")

    def __init__(self, shape: tuple[int, int], of_rows: Callable[[Any], np.ndarray], baseline: EwmaBaseline) -> None:
        self.shape = shape
        self._of_rows = of_rows
        self._baseline = baseline
        self._version = baseline.version

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._baseline.version != self._version:
            raise RuntimeError("detection's baseline values: the baselines have learned since detection "
                               "(read them before learning)")
        rows, classes = key if isinstance(key, tuple) else (key, slice(None))
        block = self._of_rows(rows)
        if isinstance(classes, slice) and classes == slice(None):
            return block
        if np.ndim(rows) == 0 or np.ndim(classes) == 0:
            return block[..., classes]
        return block[np.arange(len(block)), classes]      # (row, class) pairs


@dataclasses.dataclass(slots=True)
class Detection:
    threshold: np.ndarray            # (N, C) packets/s
    # (N, C) (mean + k·sigma)·margin, before policy floors and sensitivity (worked out when indexed)
    baseline_cap: RowValues
    anomalous: np.ndarray            # (N, C) bool
    # (N, C) packets/s rate - baseline mean, and `excess` its positive part (worked out when indexed).
    deviation: RowValues
    excess: RowValues
    anomalous_rows: np.ndarray       # rows with any anomalous class
    tenant_threshold: np.ndarray     # (T, C)
    tenant_anomalous: np.ndarray     # (T, C) bool
    tenant_excess: np.ndarray        # (T, C)
    carpets: list[CarpetCandidate]
    warm: np.ndarray | None = None                 # (N, C) bool, past the destination's warm-up
    # (R, C) the tenants' (mean + k·sigma)·margin, rows `PolicyTable.tenant_rows`, for learning.
    tenant_cap: np.ndarray | None = None
    pps: np.ndarray | None = None                  # (N, C) the rates detected on (for `ratio`)
    # (N, C) bool rate > max(baseline cap, 1): where learning winsorises (it works those caps out only)
    over_cap: np.ndarray | None = None
    # (rows, classes) that could be the sliver of a flood's onset (`policy.onset`), found in detection's pass:
    # valid, not anomalous, ONSET_JUMP times the baseline mean and ONSET_MIN_SHARE of the threshold; at most
    # ONSET_MAX_CANDIDATES, highest rate / threshold first (equal ratios: lower row, then class, first).
    onset_candidates: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    _ratio: np.ndarray | None = None

    @property
    def ratio(self) -> np.ndarray:
        """(N, C) rate / threshold (a threshold below 1 packet/s counts as 1); computed when first asked
        for (the tick itself never needs it)."""
        if self._ratio is None:
            if self.pps is None:
                raise ValueError("detection: ratio needs the rates it was computed from")
            ratio = np.maximum(self.threshold, 1.0)
            np.divide(self.pps, ratio, out=ratio)
            self._ratio = ratio
        return self._ratio


def rows_with_any(mask: np.ndarray) -> np.ndarray:
    """Ascending (K,) int64 rows of an (N, C) bool mask that have any element set.

    From the flat mask's set elements, which come in row order: a row is kept where it differs from the
    one before, in one pass over the K set elements (`np.unique` sorted them: 30 ms at 100,000 rows with
    a third of them set, 560 ms at a million; `.any(axis=1)` walks the short class axis slowly)."""
    rows = np.flatnonzero(mask) // mask.shape[1]
    if len(rows) < 2:
        return rows
    first = np.empty(len(rows), bool)
    first[0] = True
    np.not_equal(rows[1:], rows[:-1], out=first[1:])
    return rows[first]


def _per_row(values: np.ndarray) -> np.ndarray | float:
    """A per-row policy value as an (N, 1) column to broadcast over the classes, or as one float when
    every row has the same value (the common case: an (N, 1) operand makes numpy loop over 6-element
    rows, a scalar does not; the arithmetic is the same)."""
    shared = _shared(values)
    return values[:, None] if shared is None else shared


def destination_threshold(cap: np.ndarray, learned_s: np.ndarray, warm: np.ndarray, baseline: EwmaBaseline,
                          min_pps: np.ndarray | float, sensitivity: np.ndarray | float,
                          out: np.ndarray | None = None) -> np.ndarray:
    """(N, C) thresholds from the baseline caps, as `EwmaBaseline.threshold` computes them, written out:
    warm: max(min_pps, base); seen: max(min_pps, onset floor, base); new: max(min_pps, floor), where
    base = cap / sensitivity. `min_pps` and `sensitivity` per row ((N, 1)) or one float for all.
    Written into `out` when given (contiguous, the shape of `cap`)."""
    threshold = np.divide(cap, sensitivity, out=out)
    cold = ~warm
    if cold.any():
        np.maximum(threshold, baseline.onset_floor[None, :], out=threshold, where=cold)
        np.copyto(threshold, baseline.floor[None, :], where=cold & (learned_s < PARTIAL_BASELINE_S))
    np.maximum(threshold, min_pps, out=threshold)
    return threshold


def tenant_rows(rows: np.ndarray) -> np.ndarray | slice:
    """Tenant slots as a slice when they are consecutive (slots fill from 0): views, no gathers."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def detect(dest: DestinationRates, tenants: TenantRates, dest_baseline: EwmaBaseline,
           tenant_baseline: EwmaBaseline, policy: PolicyTable, *,
           carpet_min_destinations: int = 8) -> Detection:
    prow = PolicyTable.rows(dest.tenant_idx)
    owned = policy.known[prow]
    known = owned & dest.valid
    # Rows all of configured tenants that share one policy value: that value, with no gathers.
    everyone = owned.all()
    min_pps = policy.uniform_min_pps if everyone and policy.uniform_min_pps is not None \
        else _per_row(policy.min_pps[prow])
    sensitivity = policy.uniform_sensitivity if everyone and policy.uniform_sensitivity is not None \
        else _per_row(policy.sensitivity[prow])
    # One pass of policy/native.c over the rows: each baseline row read once by its slot, each output
    # element written once (numpy's dozen whole-array passes, gathers included, cost ~75 ms at a million).
    n = len(dest)
    # Sizes rounded as the reader rounds its block's (`rows_empty`): the next tick reuses these blocks.
    warm = rows_empty(n, (N_CLASSES,), bool)
    threshold = rows_empty(n, (N_CLASSES,))
    anomalous = rows_empty(n, (N_CLASSES,), bool)
    over_cap = rows_empty(n, (N_CLASSES,), bool)
    b = dest_baseline
    onset = native.detect_rows(
        dest.slots, b.mean, b.var, b.learned_s, dest.pps, k_sigma=b.k_sigma, margin=b.margin, warmup_s=b.warmup_s,
        partial_s=PARTIAL_BASELINE_S, floor=b.floor, onset_floor=b.onset_floor, min_pps=min_pps,
        sensitivity=sensitivity, warm=warm, threshold=threshold, anomalous=anomalous, over_cap=over_cap,
        known=None if known.all() else known, valid=None if dest.valid.all() else dest.valid,
        onset_jump_share=1.0 - 1.0 / ONSET_JUMP, onset_min_share=ONSET_MIN_SHARE, onset_keep=ONSET_MAX_CANDIDATES)
    cap, deviation, excess = baseline_values(dest, b)
    # Anomalies are rare: find them in the flat mask (`.any(axis=1)` walks the short class axis slowly).
    anomalous_rows = rows_with_any(anomalous)

    # Tenant arrays are dense over all slots; only the slots of configured tenants are computed.
    t_rows = tenant_rows(policy.tenant_rows)
    t_threshold = np.zeros((MAX_TENANTS, N_CLASSES))
    t_anomalous = np.zeros((MAX_TENANTS, N_CLASSES), bool)
    t_excess = np.zeros((MAX_TENANTS, N_CLASSES))
    # The destinations' threshold arithmetic (EwmaBaseline.threshold's, written out) on the tenants' rows.
    t_mean, t_learned = tenant_baseline.mean[t_rows], tenant_baseline.learned_s[t_rows]
    t_cap = np.sqrt(tenant_baseline.var[t_rows])
    t_cap *= tenant_baseline.k_sigma
    t_cap += t_mean
    t_cap *= tenant_baseline.margin
    t_threshold[t_rows] = destination_threshold(t_cap, t_learned, t_learned >= tenant_baseline.warmup_s,
                                                tenant_baseline, _per_row(policy.min_tenant_pps[t_rows]),
                                                _per_row(policy.sensitivity[t_rows]))
    t_anomalous[t_rows] = (tenants.pps[t_rows] > t_threshold[t_rows]) & tenants.valid[t_rows, None]
    t_excess[t_rows] = np.maximum(tenants.pps[t_rows] - t_mean, 0.0)

    carpets: list[CarpetCandidate] = []
    hot_tenants = rows_with_any(t_anomalous)
    if len(hot_tenants):
        carpets = group_carpets(dest, np.where(known, dest.tenant_idx, MAX_TENANTS), MAX_TENANTS, cap, warm,
                                anomalous, excess, hot_tenants, t_anomalous, t_excess, tenants.pps, t_threshold,
                                carpet_min_destinations)
    return Detection(threshold=threshold, baseline_cap=cap, anomalous=anomalous, deviation=deviation, excess=excess,
                     anomalous_rows=anomalous_rows, tenant_threshold=t_threshold,
                     tenant_anomalous=t_anomalous, tenant_excess=t_excess, carpets=carpets, warm=warm,
                     tenant_cap=t_cap, pps=dest.pps, over_cap=over_cap, onset_candidates=np.divmod(onset, N_CLASSES))


def baseline_values(dest: DestinationRates, baseline: EwmaBaseline) -> tuple[RowValues, RowValues, RowValues]:
    """The destinations' baseline cap, rate - mean and excess (its positive part) as `RowValues` over
    `baseline`'s rows `dest.slots`: the arithmetic of policy/native.c's detection (and learning), so the
    same bits (the cap is `EwmaBaseline.baseline_threshold`'s: sums and products in another order of
    their two operands)."""
    shape = (len(dest), N_CLASSES)

    def cap(rows: Any) -> np.ndarray:
        return baseline.baseline_threshold(dest.slots[rows])

    def deviation(rows: Any) -> np.ndarray:
        return dest.pps[rows] - baseline.mean[dest.slots[rows]]

    def excess(rows: Any) -> np.ndarray:
        return np.maximum(deviation(rows), 0.0)

    return RowValues(shape, cap, baseline), RowValues(shape, deviation, baseline), RowValues(shape, excess, baseline)


def group_carpets(dest: DestinationRates, tidx: np.ndarray, n_groups: int, cap: np.ndarray, warm: np.ndarray,
                  anomalous: np.ndarray, excess: np.ndarray, hot_tenants: np.ndarray, t_anomalous: np.ndarray,
                  t_excess: np.ndarray, t_pps: np.ndarray, t_threshold: np.ndarray,
                  min_destinations: int) -> list[CarpetCandidate]:
    """Carpet candidates among groups of destinations: the tenants (`tidx` the rows' tenant, n_groups
    MAX_TENANTS for none), or the prefixes of tenants with several (`policy.prefixes`). The group
    arrays (`t_*`) are indexed by group; `hot_tenants` are the groups with an anomalous class."""
    hot = np.zeros(n_groups + 1, bool)       # a lookup table: one gather instead of np.isin's sort
    hot[hot_tenants] = True
    in_hot = hot[tidx]
    rows = np.flatnonzero(in_hot)
    if not len(rows):
        return []
    sub_t = tidx[rows]
    normal_cap = np.where(warm[rows], cap[rows], 0.0)
    elevated = dest.pps[rows] > np.maximum(normal_cap, ELEVATED_FLOOR_PPS)   # (R, C)
    explained = np.zeros((n_groups + 1, N_CLASSES))
    for c in range(N_CLASSES):
        explained[:, c] = np.bincount(sub_t, weights=np.where(anomalous[rows, c], excess[rows, c], 0.0),
                                      minlength=n_groups + 1)
    out: list[CarpetCandidate] = []
    # Each hot group's rows as a slice of one stable sort by group (ascending rows within it): a mask
    # over every hot row per group made a tick with thousands of hot tenants quadratic (20,000
    # attacked destinations over 10,000 tenants: 2.4 s a tick).
    by_group = np.argsort(sub_t, kind="stable")
    bounds = np.searchsorted(sub_t[by_group], hot_tenants, side="left"), \
        np.searchsorted(sub_t[by_group], hot_tenants, side="right")
    for t, lo, hi in zip(hot_tenants.tolist(), *(b.tolist() for b in bounds), strict=True):
        classes = []
        members = by_group[lo:hi]
        for c in np.flatnonzero(t_anomalous[t]):
            unexplained = t_excess[t, c] - explained[t, c]
            n_elevated = int(np.count_nonzero(elevated[members, c]))
            if unexplained > CARPET_UNEXPLAINED_SHARE * t_excess[t, c] and n_elevated >= min_destinations:
                classes.append(TrafficClass(int(c)))
        if not classes:
            continue
        cls_idx = [int(c) for c in classes]
        member_rows = rows[members]
        elevated_any = elevated[members][:, cls_idx].any(axis=1)
        elevated_rows = member_rows[elevated_any]
        per_dest = excess[elevated_rows][:, cls_idx].sum(axis=1) if len(elevated_rows) else np.zeros(0)
        total = float(t_excess[t, cls_idx].sum())
        top_share = float(per_dest.max() / total) if len(per_dest) and total > 0 else 1.0
        out.append(CarpetCandidate(tenant_idx=int(t), classes=classes, tenant_pps=t_pps[t].copy(),
                                   tenant_threshold=t_threshold[t].copy(), tenant_excess=total,
                                   elevated_rows=elevated_rows, top_share=min(top_share, 1.0)))
    return out
