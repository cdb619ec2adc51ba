"""Per-prefix aggregates of tenants with several prefixes (issue 20, item 1).

"A tenant's aggregate (and a prefix's, for tenants with several) is an attack when it departs
from its own learned baseline." A tenant whose busy prefix carries 40 kpps of players hides a
15 kpps carpet over its quiet office prefix in its aggregate: the sum stays within the tenant's
own margin. Each prefix of such a tenant therefore keeps its own baseline (the tenant's floors
and time constants), is judged against it as the tenant is, and a carpet found there names the
prefix. Tenants with one prefix need nothing here: their aggregate is the prefix's.

The prefix of a destination is looked up once per slot (slots are stable while the address is
tracked), on the maps' 16-byte keys with numpy (masked key = network key), only for addresses of
tenants with several prefixes; everything per tick is numpy over the rows. Prefix baselines are
saved with the others (`state` / `restore`, keyed by tenant index and prefix), so a restart does
not begin a new warm-up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping

import numpy as np

from dataplane.constants import MAX_TENANTS, TrafficClass
from dataplane.keys import address_keys
from policy.baseline import EwmaBaseline
from policy.detect import CarpetCandidate, TenantEntry, destination_threshold, group_carpets, rows_with_any
from policy.rates import DestinationRates

N_CLASSES = len(TrafficClass)
UNSET = -1                   # slot whose prefix was not looked up yet
NO_PREFIX = -2               # slot of an address outside every multi-prefix tenant
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _groups(values: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(index of the first, indices) of each distinct value of `values`."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    bounds = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), len(values)]
    return [(int(order[a]), order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclasses.dataclass(slots=True)
class PrefixDetection:
    pps: np.ndarray              # (P, C) inbound packets/s per prefix
    threshold: np.ndarray        # (P, C)
    anomalous: np.ndarray        # (P, C) bool
    cap: np.ndarray              # (P, C) (mean + k·sigma)·margin, for learning
    carpets: list[CarpetCandidate]


class PrefixAggregates:
    """Baselines, detection and learning for the prefixes of tenants with several."""

    def __init__(self, baseline_kw: dict) -> None:
        self._kw = baseline_kw
        self.networks: list[tuple[int, Network]] = []        # (tenant index, prefix), one per prefix row
        self.baseline = EwmaBaseline(0, **baseline_kw)
        self._tenant = np.zeros(0, np.int64)                  # (P,) tenant index of each prefix row
        self._multi = np.zeros(MAX_TENANTS + 1, bool)         # tenants with several prefixes
        # Per tenant with several prefixes: (prefix row, network key (2,), mask (2,)) on the maps' keys.
        self._by_tenant: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self._prefix_of_slot = np.full(0, UNSET, np.int64)

    def configure(self, entries: Mapping[int, TenantEntry]) -> None:
        """Prefix rows for the tenants' prefixes (tenants with several only); a (tenant, prefix) kept
        from before keeps its baseline."""
        old = {key: row for row, key in enumerate(self.networks)}
        networks = [(idx, net) for idx, entry in sorted(entries.items()) if len(entry.prefixes) > 1
                    for net in entry.prefixes]
        baseline = EwmaBaseline(len(networks), **self._kw)
        for row, key in enumerate(networks):
            was = old.get(key)
            if was is not None:
                baseline.mean[row], baseline.var[row] = self.baseline.mean[was], self.baseline.var[was]
                baseline.learned_s[row] = self.baseline.learned_s[was]
        self.networks, self.baseline = networks, baseline
        self._tenant = np.array([idx for idx, _ in networks], np.int64)
        self._multi = np.zeros(MAX_TENANTS + 1, bool)
        self._multi[self._tenant] = True
        self._by_tenant = {}
        for row, (idx, net) in enumerate(networks):
            mask = (b"\xff" * 12 + net.netmask.packed) if net.version == 4 else net.netmask.packed
            self._by_tenant.setdefault(idx, []).append(
                (row, address_keys([net.network_address])[0], np.frombuffer(mask, np.uint64).copy()))
        self._prefix_of_slot[:] = UNSET

    def state(self) -> dict[str, np.ndarray]:
        """The baselines as arrays for `np.savez`, each row keyed "tenant-index prefix"."""
        keys = np.array([f"{idx} {net}" for idx, net in self.networks], dtype=object).astype(str) \
            if self.networks else np.zeros(0, str)
        b = self.baseline
        return {"p_keys": keys, "p_mean": b.mean, "p_var": b.var, "p_learned": b.learned_s}

    def restore(self, keys: list[str], mean: np.ndarray, var: np.ndarray, learned: np.ndarray) -> int:
        """Load saved rows into the prefixes configured now (others are dropped); returns how many."""
        if mean.shape != (len(keys), N_CLASSES) or var.shape != mean.shape or learned.shape != mean.shape:
            raise ValueError("prefix baseline arrays do not match their keys")
        saved = {key: i for i, key in enumerate(keys)}
        loaded = 0
        for row, (idx, net) in enumerate(self.networks):
            i = saved.get(f"{idx} {net}")
            if i is not None:
                self.baseline.mean[row], self.baseline.var[row] = mean[i], var[i]
                self.baseline.learned_s[row] = learned[i]
                loaded += 1
        return loaded

    def forget(self, slots: np.ndarray) -> None:
        """Slots freed for other addresses: look their prefix up again."""
        slots = slots[slots < len(self._prefix_of_slot)]
        self._prefix_of_slot[slots] = UNSET

    def rows_of(self, dest: DestinationRates) -> np.ndarray:
        """(N,) prefix row of each destination row, len(networks) for none."""
        n_prefixes = len(self.networks)
        if not n_prefixes:
            return np.full(len(dest), 0, np.int64)
        top = int(dest.slots.max(initial=-1)) + 1
        if top > len(self._prefix_of_slot):
            grown = np.full(max(top, 2 * len(self._prefix_of_slot)), UNSET, np.int64)
            grown[:len(self._prefix_of_slot)] = self._prefix_of_slot
            self._prefix_of_slot = grown
        prefix = self._prefix_of_slot[dest.slots]
        new = np.flatnonzero(prefix == UNSET)
        if len(new):
            tenant = np.minimum(dest.tenant_idx[new], MAX_TENANTS)
            outside = ~self._multi[tenant]
            prefix[new[outside]] = NO_PREFIX
            inside = new[~outside]
            prefix[inside] = NO_PREFIX
            for first, members in _groups(dest.tenant_idx[inside]):
                rows = inside[members]
                keys = dest.keys[rows]
                for p, value, mask in self._by_tenant[int(dest.tenant_idx[inside[first]])]:
                    hit = ((keys & mask) == value).all(axis=1) & (prefix[rows] == NO_PREFIX)
                    prefix[rows[hit]] = p
            self._prefix_of_slot[dest.slots[new]] = prefix[new]
        return np.where(prefix < 0, n_prefixes, prefix)

    def detect(self, dest: DestinationRates, rows: np.ndarray, cap: np.ndarray, warm: np.ndarray,
               anomalous: np.ndarray, excess: np.ndarray, min_tenant_pps: np.ndarray, sensitivity: np.ndarray,
               min_destinations: int) -> PrefixDetection | None:
        """Each prefix's aggregate against its own baseline, and the carpets that shows (see
        `policy.detect`: the same thresholds and the same carpet test, per prefix). `rows` is
        `rows_of(dest)`; `cap`, `warm`, `anomalous`, `excess` are the destinations' detection arrays;
        `min_tenant_pps` and `sensitivity` the policy table's per-tenant arrays."""
        n_prefixes = len(self.networks)
        if not n_prefixes:
            return None
        valid = dest.valid & (rows < n_prefixes)
        pps = np.zeros((n_prefixes + 1, N_CLASSES))
        for c in range(N_CLASSES):
            pps[:, c] = np.bincount(rows, weights=np.where(valid, dest.pps[:, c], 0.0), minlength=n_prefixes + 1)
        pps = pps[:n_prefixes]
        b = self.baseline
        every = np.arange(n_prefixes)
        p_cap = b.baseline_threshold(every)
        threshold = destination_threshold(p_cap, b.learned_s, b.warm(every), b,
                                          min_tenant_pps[self._tenant][:, None],
                                          sensitivity[self._tenant][:, None])
        p_anomalous = (pps > threshold) & bool(dest.valid.any())
        p_excess = np.maximum(pps - b.mean, 0.0)
        carpets: list[CarpetCandidate] = []
        hot = rows_with_any(p_anomalous)
        if len(hot):
            found = group_carpets(dest, np.where(valid, rows, n_prefixes), n_prefixes, cap, warm, anomalous, excess,
                                  hot, p_anomalous, p_excess, pps, threshold, min_destinations)
            for cand in found:
                row = cand.tenant_idx
                carpets.append(dataclasses.replace(cand, tenant_idx=int(self._tenant[row]),
                                                   prefix=str(self.networks[row][1]), mean=b.mean[row].copy()))
        return PrefixDetection(pps=pps, threshold=threshold, anomalous=p_anomalous, cap=p_cap, carpets=carpets)

    def learn(self, found: PrefixDetection | None, dt: float, quiet_tenants: np.ndarray) -> None:
        """Learn the tick's prefix rates where they were normal; `quiet_tenants` (MAX_TENANTS + 1, C) bool
        is False for the classes of tenants under attack (the tenant's own learning mask)."""
        if found is None or not len(self.networks):
            return
        learn = ~found.anomalous & quiet_tenants[self._tenant]
        self.baseline.update(np.arange(len(self.networks)), found.pps, dt, learn, cap=found.cap)
