"""Cumulative dataplane counters → per-second rates, per destination and per tenant.

The dataplane's destination counters live in an LRU map: rows appear when an
address first receives traffic and disappear when it is evicted, and the row
order means nothing. Rates are therefore computed by address. Each address gets a
stable *slot* (an index into every per-destination array of the engine: previous
counters, baselines) that survives short absences, so a server whose row was
evicted for a minute keeps its baseline.

Rules for a delta over one tick (variable length `dt`, seconds):
- the first read primes the tracker and yields no rates (`valid` is False):
  cumulative values from before the engine started are not traffic of this tick;
- an address that was absent at the previous read is new in the map, so its whole
  counter arrived during this tick (delta = current value);
- a counter smaller than before was reset (map re-created, row re-inserted), so the
  delta is the current value.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import operator

import numpy as np
import structlog

from dataplane.api import DestinationCounters, IPAddress, TenantCounters
from dataplane.constants import MAX_TENANTS, NO_TENANT, Direction, TrafficClass

log = structlog.get_logger("policy")

N_CLASSES = len(TrafficClass)
INBOUND = int(Direction.INBOUND)
OUTBOUND = int(Direction.OUTBOUND)


@dataclasses.dataclass(slots=True)
class DestinationRates:
    """Rates of the addresses present in this tick's counters (N rows)."""

    now: float
    dt: float                   # seconds since the previous read
    addresses: list[IPAddress]
    slots: np.ndarray           # (N,) int64, stable slot of each address
    tenant_idx: np.ndarray      # (N,) int64, NO_TENANT where no tenant owns it
    pps: np.ndarray             # (N, C) float64, inbound packets/s per class (passed + dropped)
    byte_rate: np.ndarray       # (N, C) float64, inbound bytes/s per class
    dropped_pps: np.ndarray     # (N,) float64
    valid: np.ndarray           # (N,) bool, False on the priming read

    def __len__(self) -> int:
        return len(self.addresses)


@dataclasses.dataclass(slots=True)
class TenantRates:
    """Rates per tenant slot (dense arrays of MAX_TENANTS rows)."""

    now: float
    dt: float
    present: np.ndarray         # (T,) bool, the tenant had counters this tick
    valid: np.ndarray           # (T,) bool, present and not priming
    pps: np.ndarray             # (T, C) inbound packets/s per class
    byte_rate: np.ndarray       # (T, C) inbound bytes/s per class
    out_pps: np.ndarray         # (T, C) outbound packets/s per class
    out_byte_rate: np.ndarray   # (T, C)
    passed_pps: np.ndarray      # (T,) inbound
    dropped_pps: np.ndarray     # (T,) inbound


def _delta(current: np.ndarray, previous: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Per-element counter delta with reset handling (uint64 in, float64 out)."""
    current = current.astype(np.uint64, copy=False)
    previous = previous.astype(np.uint64, copy=False)
    grew = current >= previous
    delta = np.where(grew, current - np.where(grew, previous, 0), current)
    if fresh.ndim and fresh.any():
        shape = (-1,) + (1,) * (current.ndim - 1)
        delta = np.where(fresh.reshape(shape), current, delta)
    return delta.astype(np.float64)


_V4 = ipaddress.IPv4Address
_V6_TAG = 1 << 128   # keeps IPv6 keys apart from IPv4 keys


def address_key(addr: IPAddress) -> int:
    """A cheap dict key for an address.

    Hashing ipaddress objects costs ~0.4 µs each (40 ms for 100,000 rows per tick);
    their integer value (`_ip`, the attribute behind `int(addr)`, read directly
    because `int()` goes through two Python-level calls) costs a tenth of that.
    """
    return addr._ip if type(addr) is _V4 else addr._ip | _V6_TAG


class SlotTable:
    """Stable slot numbers for addresses, with reuse after long absence.

    Two indexes lead to a slot: the address's integer key, and the identity of the
    address object last seen for it. The dataplane's reader hands out the same
    object for an address on every read (it interns them), so a read is looked up
    by `id()` alone, without touching each object; only objects not seen before
    (new addresses, or a reader that builds new objects) take the key path. An id
    stays valid because `address_of[slot]` holds that very object, so Python cannot
    reuse the id for another object while it is indexed.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.index: dict[int, int] = {}             # address_key -> slot
        self._by_id: dict[int, int] = {}            # id(address_of[slot]) -> slot
        self.address_of: list[IPAddress | None] = [None] * capacity
        self.last_seen = np.zeros(capacity, np.float64)
        self.in_use = np.zeros(capacity, bool)
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    @property
    def capacity(self) -> int:
        return len(self.address_of)

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2
        self.address_of.extend([None] * (new - old))
        self.last_seen = np.concatenate([self.last_seen, np.zeros(new - old)])
        self.in_use = np.concatenate([self.in_use, np.zeros(new - old, bool)])
        self._free.extend(range(new - 1, old - 1, -1))

    def lookup(self, addresses: list[IPAddress]) -> tuple[np.ndarray, np.ndarray]:
        """Slots of `addresses` (assigning new ones) and a mask of newly assigned slots."""
        slots = np.fromiter(map(self._by_id.get, map(id, addresses), itertools.repeat(-1)), np.int64,
                            len(addresses))
        missing = np.flatnonzero(slots < 0)
        new_mask = np.zeros(len(addresses), bool)
        for i in missing.tolist():
            addr = addresses[i]
            key = address_key(addr)
            slot = self.index.get(key)
            if slot is None:
                if not self._free:
                    self._grow()
                slot = self._free.pop()
                self.index[key] = slot
                self.in_use[slot] = True
                new_mask[i] = True
            elif self.address_of[slot] is addr:   # the same object twice in one read: keep the first slot
                slots[i] = slot
                continue
            else:                                 # an equal object replaces the one indexed by identity
                self._by_id.pop(id(self.address_of[slot]), None)
            self.address_of[slot] = addr
            self._by_id[id(addr)] = slot
            slots[i] = slot
        return slots, new_mask

    def expire(self, now: float, forget_after_s: float) -> np.ndarray:
        """Free slots not seen for `forget_after_s` seconds; returns the freed slots."""
        stale = np.flatnonzero(self.in_use & (now - self.last_seen > forget_after_s))
        for slot in stale.tolist():
            addr = self.address_of[slot]
            if addr is not None:
                self.index.pop(address_key(addr), None)
                self._by_id.pop(id(addr), None)
            self.address_of[slot] = None
            self.in_use[slot] = False
            self._free.append(slot)
        return stale

    def slot_of(self, addr: IPAddress) -> int | None:
        return self.index.get(address_key(addr))


class RateTracker:
    """Turns successive counter reads into rates; owns the destination slot table."""

    def __init__(self, forget_after_s: float = 6 * 3600.0) -> None:
        self.slots = SlotTable()
        self.forget_after_s = forget_after_s
        cap = self.slots.capacity
        self._prev_packets = np.zeros((cap, N_CLASSES), np.uint64)
        self._prev_bytes = np.zeros((cap, N_CLASSES), np.uint64)
        self._prev_dropped = np.zeros(cap, np.uint64)
        self._present = np.zeros(cap, bool)
        self._dest_now: float | None = None
        self._next_expiry = 0.0
        t = MAX_TENANTS
        self._t_prev = {name: np.zeros(shape, np.uint64) for name, shape in (
            ("class_packets", (t, 2, N_CLASSES)), ("class_bytes", (t, 2, N_CLASSES)),
            ("passed_packets", (t, 2)), ("dropped_packets", (t, 2)))}
        self._t_present = np.zeros(t, bool)
        self._tenant_now: float | None = None
        self.last_destination_rates: DestinationRates | None = None
        self.ignored_tenant_indices = 0      # tenant counter rows skipped for an index out of range
        self.last_tenant_rates: TenantRates | None = None

    def _ensure_capacity(self) -> None:
        cap = self.slots.capacity
        old = len(self._present)
        if cap == old:
            return
        pad = cap - old
        self._prev_packets = np.vstack([self._prev_packets, np.zeros((pad, N_CLASSES), np.uint64)])
        self._prev_bytes = np.vstack([self._prev_bytes, np.zeros((pad, N_CLASSES), np.uint64)])
        self._prev_dropped = np.concatenate([self._prev_dropped, np.zeros(pad, np.uint64)])
        self._present = np.concatenate([self._present, np.zeros(pad, bool)])

    def update_destinations(self, now: float, counters: DestinationCounters) -> tuple[DestinationRates, np.ndarray]:
        """Rates for this read, and the slots freed by expiry (their baselines must be reset)."""
        n = len(counters.addresses)
        packets = np.asarray(counters.packets, np.uint64).reshape(n, N_CLASSES)
        nbytes = np.asarray(counters.bytes, np.uint64).reshape(n, N_CLASSES)
        dropped = np.asarray(counters.dropped_packets, np.uint64).reshape(n)
        if counters.tenant_idx.shape != (n,):
            raise ValueError(f"destination counters: {n} addresses but tenant_idx has shape "
                             f"{counters.tenant_idx.shape}")
        slots, _new = self.slots.lookup(counters.addresses)
        self._ensure_capacity()
        priming = self._dest_now is None
        dt = 0.0 if priming else now - self._dest_now
        if not priming and dt <= 0:
            raise ValueError(f"rates: time went backwards or stood still (dt={dt:.6f} s)")
        fresh = ~self._present[slots]
        if priming:
            # Slots restored from saved state count as seen now, not at time zero.
            self.slots.last_seen[self.slots.in_use] = now
            pps = np.zeros((n, N_CLASSES))
            bps = np.zeros((n, N_CLASSES))
            dps = np.zeros(n)
        else:
            pps = _delta(packets, self._prev_packets[slots], fresh) / dt
            bps = _delta(nbytes, self._prev_bytes[slots], fresh) / dt
            dps = _delta(dropped, self._prev_dropped[slots], fresh) / dt
        self._prev_packets[slots] = packets
        self._prev_bytes[slots] = nbytes
        self._prev_dropped[slots] = dropped
        self._present[:] = False
        self._present[slots] = True
        self.slots.last_seen[slots] = now
        self._dest_now = now
        freed = np.zeros(0, np.int64)
        if now >= self._next_expiry:
            freed = self.slots.expire(now, self.forget_after_s)
            self._next_expiry = now + 60.0  # seconds between expiry scans
        rates = DestinationRates(
            now=now, dt=dt, addresses=list(counters.addresses), slots=slots,
            tenant_idx=np.asarray(counters.tenant_idx).astype(np.int64), pps=pps, byte_rate=bps,
            dropped_pps=dps, valid=np.full(n, not priming))
        self.last_destination_rates = rates
        return rates, freed

    def update_tenants(self, now: float, counters: dict[int, TenantCounters]) -> TenantRates:
        t = MAX_TENANTS
        priming = self._tenant_now is None
        dt = 0.0 if priming else now - self._tenant_now
        if not priming and dt <= 0:
            raise ValueError(f"rates: time went backwards or stood still (dt={dt:.6f} s)")
        keys = np.fromiter(counters.keys(), np.int64, len(counters))
        values = list(counters.values())
        # Index MAX_TENANTS is the dataplane's "no tenant" row (unprotected traffic): not a tenant.
        usable = (keys >= 0) & (keys < t)
        if not usable.all():
            bad = keys[~usable & (keys != t)].tolist()
            if bad:
                # A tick must not fail for every tenant because of one bad row: skip it, say so.
                self.ignored_tenant_indices += len(bad)
                log.warning("rates.bad_tenant_index", indices=bad[:8], count=len(bad), valid=f"0..{t - 1}")
            keep = np.flatnonzero(usable)
            keys = keys[keep]
            values = [values[i] for i in keep.tolist()]
        idx = keys
        # One array per field for all tenants at once (np.array over the list is the fast path).
        current = {name: np.array(list(map(operator.attrgetter(name), values)), np.uint64).reshape(shape)
                   for name, shape in (("class_packets", (-1, 2, N_CLASSES)), ("class_bytes", (-1, 2, N_CLASSES)),
                                       ("passed_packets", (-1, 2)), ("dropped_packets", (-1, 2)))}
        fresh = ~self._t_present[idx]
        deltas = {}
        for name, cur in current.items():
            if priming:
                deltas[name] = np.zeros(cur.shape)
            else:
                deltas[name] = _delta(cur, self._t_prev[name][idx], fresh) / dt
            self._t_prev[name][idx] = cur
        present = np.zeros(t, bool)
        present[idx] = True
        self._t_present = present
        self._tenant_now = now

        def dense(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
            out = np.zeros(shape)
            out[idx] = values
            return out

        cp, cb = deltas["class_packets"], deltas["class_bytes"]
        rates = TenantRates(
            now=now, dt=dt, present=present, valid=present & (not priming),
            pps=dense(cp[:, INBOUND], (t, N_CLASSES)), byte_rate=dense(cb[:, INBOUND], (t, N_CLASSES)),
            out_pps=dense(cp[:, OUTBOUND], (t, N_CLASSES)), out_byte_rate=dense(cb[:, OUTBOUND], (t, N_CLASSES)),
            passed_pps=dense(deltas["passed_packets"][:, INBOUND], (t,)),
            dropped_pps=dense(deltas["dropped_packets"][:, INBOUND], (t,)))
        self.last_tenant_rates = rates
        return rates


def owned(tenant_idx: np.ndarray) -> np.ndarray:
    """Rows whose address belongs to a tenant."""
    return tenant_idx != NO_TENANT
