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
- an address absent from the previous read but present in the one before continues from its
  counters there when none is below them (an address can miss one read, see below), else counts
  whole;
- a counter smaller than before came out low or was reset. The reader takes the spill map before
  the address cache, and counts only move from a cache slot to the spill map: a slot evicted in
  between is missing from that read. Its address reads low once (or is absent, when it was never
  spilled before), and its counts are back at the next read. So a row with a counter below its
  previous value counts 0 for that counter and keeps max(current, previous) as the next read's
  previous; only when it is still below at that read was it reset (its entries left the LRU), and
  it counts on from there. Counting a low read's whole value as one tick's traffic instead would
  report the address's history as a flood.

Tenant rates are computed here and nowhere else: the engine publishes each tick's
`TenantTraffic` (the read's cumulative counters with these rates), and the appliance's
status file, its per-second series and SecureWatch read that publication.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import structlog

from dataplane.api import COUNTER_WORDS, DestinationCounters, IPAddress, TenantCounterArrays, TenantCounters
from dataplane.constants import MAX_TENANTS, NO_TENANT, Direction, TrafficClass
from dataplane.keys import AddressView, RowIndex, address_keys, unique_keys
from dataplane.reader import rows_empty
from policy import native

log = structlog.get_logger("policy")

N_CLASSES = len(TrafficClass)
_DEST_WORDS = COUNTER_WORDS      # a destination's packets[C], bytes[C], dropped packets
# A tenant direction's class packets[C], class bytes[C], dropped packets, dropped bytes.
_TENANT_WORDS = 2 * N_CLASSES + 2
_T_DROPPED_PACKETS, _T_DROPPED_BYTES = 2 * N_CLASSES, 2 * N_CLASSES + 1
# Slot numbers and read row numbers in the tracker's per-slot tables: below the number of addresses
# tracked, which memory bounds far below 2**31 (a million addresses take ~1 GiB of engine state).
_INDEX = np.int32
# Rows of a read taken at a time (`CounterRows.fill`): 1.4 MiB of counters, still in the CPU's caches when
# the rates read them, where the whole read at a million destinations was ~90 MiB held beside the previous
# read's.
RATE_BLOCK_ROWS = 16_384
_NEVER_READ = -(1 << 62)          # a slot's `read_of` before any read wrote it, or after it was freed
INBOUND = int(Direction.INBOUND)
OUTBOUND = int(Direction.OUTBOUND)


@dataclasses.dataclass(slots=True)
class DestinationRates:
    """Rates of the addresses present in this tick's counters (N rows)."""

    now: float
    dt: float                   # seconds since the previous read
    keys: np.ndarray            # (N, 2) uint64, the addresses' map keys (see dataplane.keys)
    slots: np.ndarray           # (N,) int32 (int64 from a reader without ids), stable slot of each address
    tenant_idx: np.ndarray      # (N,) int64, NO_TENANT where no tenant owns it
    pps: np.ndarray             # (N, C) float64, inbound packets/s per class (passed + dropped)
    valid: np.ndarray           # (N,) bool, False on the priming read
    # The byte and drop rates are read for a few rows (incidents) only: they are computed from the
    # counter deltas, (N, bytes[C] + dropped) uint32 (uint64 when one exceeds 32 bits) kept meanwhile,
    # when first asked for (`byte_rate`, `dropped_pps`).
    _deltas: np.ndarray | None = None
    _byte_rate: np.ndarray | None = None
    _dropped_pps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def byte_rate(self) -> np.ndarray:
        """(N, C) float64, inbound bytes/s per class."""
        if self._byte_rate is None:
            self._byte_rate = self._rate(0, N_CLASSES)
        return self._byte_rate

    @property
    def dropped_pps(self) -> np.ndarray:
        """(N,) float64, inbound packets/s dropped."""
        if self._dropped_pps is None:
            self._dropped_pps = self._rate(N_CLASSES, N_CLASSES + 1).reshape(len(self))
        return self._dropped_pps

    def byte_rate_of(self, row: int) -> np.ndarray:
        """(C,) `byte_rate[row]`, without computing the other rows."""
        if self._byte_rate is not None or self._deltas is None:
            return self.byte_rate[row]
        return self._deltas[row, :N_CLASSES] * (1.0 / self.dt)

    def dropped_pps_of(self, row: int) -> float:
        """`dropped_pps[row]`, without computing the other rows."""
        if self._dropped_pps is not None or self._deltas is None:
            return float(self.dropped_pps[row])
        return float(self._deltas[row, N_CLASSES] * (1.0 / self.dt))

    def _rate(self, lo: int, hi: int) -> np.ndarray:
        if self._deltas is None:
            return np.zeros((len(self), hi - lo))
        out = np.empty((len(self), hi - lo))
        # float64(delta) * (1 / dt), as numpy converts the integer operand for the float loop.
        np.multiply(self._deltas[:, lo:hi], 1.0 / self.dt, out=out)
        if self._byte_rate is not None or self._dropped_pps is not None:
            self._deltas = None       # both computed now (this is the second): the deltas can go
        return out

    @property
    def addresses(self) -> AddressView:
        """The rows' addresses, built as ipaddress objects only where indexed."""
        return AddressView(self.keys)


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
    unprotected_passed_pps: float = 0.0   # inbound packets/s passed to no tenant (the UNPROTECTED row)
    # What only the status and its series read (not detection) is computed when first asked for,
    # outside the tick, from the tick's counter deltas ((rows, 2, words) uint64 of the rows up to
    # the last present one): `passed_bps`, `dropped_bps`, `out_passed_pps`.
    _deltas: np.ndarray | None = None
    _passed_bps: np.ndarray | None = None
    _out_passed_pps: np.ndarray | None = None

    def _per_s(self, direction: int, word: int) -> np.ndarray:
        """(T,) one counter word's rate."""
        out = np.zeros(len(self.present))
        if self._deltas is not None and self.dt > 0:
            np.multiply(self._deltas[:, direction, word], 1.0 / self.dt, out=out[:len(self._deltas)])
        return out

    @property
    def dropped_byte_rate(self) -> np.ndarray:
        """(T,) inbound bytes/s dropped."""
        return self._per_s(INBOUND, _T_DROPPED_BYTES)

    @property
    def out_dropped_pps(self) -> np.ndarray:
        """(T,) outbound packets/s dropped."""
        return self._per_s(OUTBOUND, _T_DROPPED_PACKETS)

    @property
    def passed_bps(self) -> np.ndarray:
        """(T,) inbound bits/s passed: every byte minus the dropped ones, floored at 0."""
        if self._passed_bps is None:
            self._passed_bps = 8.0 * np.maximum(self.byte_rate.sum(axis=1) - self.dropped_byte_rate, 0.0)
        return self._passed_bps

    @property
    def dropped_bps(self) -> np.ndarray:
        """(T,) inbound bits/s dropped."""
        return 8.0 * self.dropped_byte_rate

    @property
    def out_passed_pps(self) -> np.ndarray:
        """(T,) outbound packets/s passed: every packet minus the dropped ones, floored at 0."""
        if self._out_passed_pps is None:
            self._out_passed_pps = np.maximum(self.out_pps.sum(axis=1) - self.out_dropped_pps, 0.0)
        return self._out_passed_pps


@dataclasses.dataclass(frozen=True, slots=True)
class TenantTraffic:
    """What the engine publishes each tick about its tenants: the read and the rates made of it.

    `counters` is that tick's read (cumulative since each row was created: the status's
    totals), `rates` its rates (`RateTracker.update_tenants`: the one definition of a tenant's
    passed and dropped packets and bits per second). `wall` is the read's time, seconds since
    the epoch.
    """

    wall: float
    counters: TenantCounterArrays
    rates: TenantRates


def _keys_of(addresses: np.ndarray | Sequence[IPAddress]) -> np.ndarray:
    if isinstance(addresses, np.ndarray):
        return addresses.reshape(-1, 2).astype(np.uint64, copy=False)
    if isinstance(addresses, AddressView):
        return addresses.keys
    return address_keys(addresses)


class SlotTable:
    """Stable slot numbers for addresses (by their map keys), with reuse after long absence.

    Every read maps all its keys to slots at once through a numpy hash (`RowIndex` over the slots' keys);
    only addresses not seen before take new slots, in bulk. No ipaddress objects.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.index = RowIndex(capacity)                    # key -> slot (a row of keys)
        self.keys = np.zeros((capacity, 2), np.uint64)    # key of each slot in use
        self.last_seen = np.zeros(capacity, np.float64)
        self.in_use = np.zeros(capacity, bool)
        self._free = np.arange(capacity - 1, -1, -1, dtype=_INDEX)   # a stack: the end is taken first
        # The slot each of the reader's address ids had at the last read (see DestinationCounters.ids):
        # the steady state maps a read to slots by this array alone, checking each key.
        self._slot_of_reader_id = np.full(0, -1, _INDEX)

    @property
    def capacity(self) -> int:
        return len(self.in_use)

    @property
    def address_of(self) -> AddressView:
        """The address of each slot (meaningful where `in_use`)."""
        return AddressView(self.keys)

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2
        self.keys = np.concatenate([self.keys, np.zeros((new - old, 2), np.uint64)])
        self.last_seen = np.concatenate([self.last_seen, np.zeros(new - old)])
        self.in_use = np.concatenate([self.in_use, np.zeros(new - old, bool)])
        self._free = np.concatenate([np.arange(new - 1, old - 1, -1, dtype=_INDEX), self._free])

    def lookup(self, addresses: np.ndarray | Sequence[IPAddress],
               reader_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Slots of (N, 2) keys or of addresses (assigning new ones) and a mask of newly assigned slots
        (an address twice in one call gets one slot, new at its first row). `reader_ids`: the
        reader's numbers for the rows (`DestinationCounters.ids`), if it gives any."""
        keys = _keys_of(addresses)
        unknown = None
        if reader_ids is not None and len(reader_ids):
            slots, unknown = self._by_reader_id(keys, reader_ids)
            slots[unknown] = self.index.get(keys[unknown], self.keys)
        else:
            slots = self.index.get(keys, self.keys)
        new_mask = np.zeros(len(keys), bool)
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            first, inverse = unique_keys(keys[missing])
            while len(self._free) < len(first):
                self._grow()
            taken = self._free[::-1][:len(first)].copy()
            self._free = self._free[:len(self._free) - len(first)]
            new_keys = keys[missing[first]]
            self.keys[taken] = new_keys
            self.index.add(new_keys, taken, self.keys)
            self.in_use[taken] = True
            slots[missing] = taken[inverse]
            new_mask[missing[first]] = True
        if unknown is not None:
            # The other rows' ids already map to their slots (that is how they were found).
            self._slot_of_reader_id[reader_ids[unknown]] = slots[unknown]
        return slots, new_mask

    def _by_reader_id(self, keys: np.ndarray, reader_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots remembered for the reader's ids whose slot still holds the same key, -1 elsewhere; and
        the rows of -1. A reader that reset reuses ids, and an expired slot may hold another address
        now: every row is checked (in C, one pass: `native.slots_by_id`)."""
        top = int(reader_ids.max()) + 1
        if top > len(self._slot_of_reader_id):
            grown = np.full(max(top, 2 * len(self._slot_of_reader_id)), -1, _INDEX)
            grown[:len(self._slot_of_reader_id)] = self._slot_of_reader_id
            self._slot_of_reader_id = grown
        return native.slots_by_id(reader_ids, self._slot_of_reader_id, self.keys, self.in_use, keys)

    def expire(self, now: float, forget_after_s: float) -> np.ndarray:
        """Free slots not seen for `forget_after_s` seconds; returns the freed slots."""
        stale = np.flatnonzero(self.in_use & (now - self.last_seen > forget_after_s))
        if len(stale):
            self.in_use[stale] = False
            self.keys[stale] = 0
            self._free = np.concatenate([self._free, stale.astype(_INDEX)])
            used = np.flatnonzero(self.in_use)
            self.index.rebuild(used, self.keys)
        return stale

    def slot_of(self, addr: IPAddress) -> int | None:
        slot = int(self.slots_of([addr])[0])
        return None if slot < 0 else slot

    def slots_of(self, addresses: Sequence[IPAddress]) -> np.ndarray:
        """(N,) slots of `addresses` in one lookup, -1 for those without one (a lookup each costs ~40 µs)."""
        return self.index.get(address_keys(addresses), self.keys)


class RateTracker:
    """Turns successive counter reads into rates; owns the destination slot table."""

    def __init__(self, forget_after_s: float = 6 * 3600.0) -> None:
        self.slots = SlotTable()
        self.forget_after_s = forget_after_s
        cap = self.slots.capacity
        # Each slot's counters as the next read's previous values, the number of the read that wrote them
        # and whether they are kept values (a read that came out low: see the module docstring), updated in
        # place as a read's rows go by (policy/native.c `sw_slot_rates`): no read is ever held whole. And
        # the row each slot had in the last read (-1: absent), which the engine reads (`rows_by_slot`).
        self._prev = np.zeros((cap, _DEST_WORDS), np.uint64)
        self._read_of = np.full(cap, _NEVER_READ, np.int64)
        self._kept = np.zeros(cap, bool)
        self._reads = 0                      # reads done: the next one's number
        self._prev_slots = np.zeros(0, np.int64)
        self._prev_row_of_slot = np.full(cap, -1, _INDEX)
        self._block = np.zeros((0, _DEST_WORDS), np.uint64)     # a block of a read's rows, reused
        self._dest_now: float | None = None
        self._next_expiry = 0.0
        t = MAX_TENANTS
        self._t_prev = np.zeros((t, 2, _TENANT_WORDS), np.uint64)   # class packets[C], bytes[C], dropped
        self._t_present = np.zeros(t, bool)
        self._u_prev = np.zeros((2, _TENANT_WORDS), np.uint64)      # the UNPROTECTED row's
        self._u_present = False
        self._tenant_now: float | None = None
        self.last_destination_rates: DestinationRates | None = None
        self.ignored_tenant_indices = 0      # tenant counter rows skipped for an index out of range
        self.last_tenant_rates: TenantRates | None = None

    def assign_slots(self, addresses) -> np.ndarray:
        """Slots of these addresses (ipaddress objects or (N, 2) uint64 keys), assigning new ones
        where needed, with the tracker's per-slot arrays grown to match (restoring saved state)."""
        slots, _ = self.slots.lookup(addresses)
        self._ensure_capacity()
        return slots

    def _ensure_capacity(self) -> None:
        cap = self.slots.capacity
        old = len(self._prev_row_of_slot)
        if cap == old:
            return
        pad = cap - old
        self._prev_row_of_slot = np.concatenate([self._prev_row_of_slot, np.full(pad, -1, _INDEX)])
        # Zeros past the old rows: their pages are touched only as slots are taken.
        prev = np.zeros((cap, _DEST_WORDS), np.uint64)
        prev[:old] = self._prev
        self._prev = prev
        self._read_of = np.concatenate([self._read_of, np.full(pad, _NEVER_READ, np.int64)])
        self._kept = np.concatenate([self._kept, np.zeros(pad, bool)])

    def rows_by_slot(self) -> np.ndarray:
        """(capacity,) each slot's row in the last destination read, -1 for slots absent from it: the
        tracker's own table, read-only (the engine needs it every tick; building it again is a fill and
        a scatter of 8 MB at a million destinations). The next read rewrites it in place."""
        view = self._prev_row_of_slot.view()
        view.flags.writeable = False
        return view

    def update_destinations(self, now: float, counters: DestinationCounters) -> tuple[DestinationRates, np.ndarray]:
        """Rates for this read, and the slots freed by expiry (their baselines must be reset)."""
        n = len(counters.keys)
        if len(counters.rows) != n:
            raise ValueError(f"destination counters: {n} addresses but {len(counters.rows)} counter rows")
        if counters.tenant_idx.shape != (n,):
            raise ValueError(f"destination counters: {n} addresses but tenant_idx has shape "
                             f"{counters.tenant_idx.shape}")
        if counters.ids is not None and counters.ids.shape != (n,):
            raise ValueError(f"destination counters: {n} addresses but ids has shape {counters.ids.shape}")
        slots, _new = self.slots.lookup(counters.keys, counters.ids)
        self._ensure_capacity()
        priming = self._dest_now is None
        dt = 0.0 if priming else now - self._dest_now
        if not priming and dt <= 0:
            raise ValueError(f"rates: time went backwards or stood still (dt={dt:.6f} s)")
        if priming:
            # Slots restored from saved state count as seen now, not at time zero.
            self.slots.last_seen[self.slots.in_use] = now
            pps, rest = np.zeros((n, N_CLASSES)), None
        else:
            # The byte and drop counts of one tick fit 32 bits (4 GB to one address and class in a tick)
            # but for the rarest floods: kept as uint32, or uint64 from the row where one does not fit
            # (the rates made of them are the same values).
            pps = rows_empty(n, (N_CLASSES,))
            rest = rows_empty(n, (_DEST_WORDS - N_CLASSES,), np.uint32)
        # The read's rows a block at a time (the reader makes them from its maps as asked: a million
        # addresses' rows are ~90 MiB never held whole), each slot's state updated as its row goes by.
        read = self._reads
        if len(self._block) < min(n, RATE_BLOCK_ROWS):
            self._block = np.empty((min(max(n, 1024), RATE_BLOCK_ROWS), _DEST_WORDS), np.uint64)
        for lo in range(0, n, RATE_BLOCK_ROWS):
            hi = min(n, lo + RATE_BLOCK_ROWS)
            block = self._block[:hi - lo]
            counters.rows.fill(lo, hi, block)
            done = lo
            while done < hi:
                done += native.slot_rates(block[done - lo:], slots[done:hi], self._prev, self._read_of, self._kept,
                                          read, N_CLASSES, dt, None if priming else pps[done:hi],
                                          None if priming else rest[done:hi])
                if done < hi:
                    rest = rest.astype(np.uint64)      # a delta past 32 bits: this row on, and the rows before
        self._reads = read + 1
        self._prev_row_of_slot[self._prev_slots] = -1
        self._prev_row_of_slot[slots] = np.arange(n)
        self._prev_slots = slots
        self.slots.last_seen[slots] = now
        self._dest_now = now
        freed = np.zeros(0, np.int64)
        if now >= self._next_expiry:
            freed = self.slots.expire(now, self.forget_after_s)
            self._read_of[freed] = _NEVER_READ     # a new address in a freed slot starts afresh
            self._next_expiry = now + 60.0  # seconds between expiry scans
        rates = DestinationRates(
            now=now, dt=dt, keys=counters.keys, slots=slots,
            tenant_idx=np.asarray(counters.tenant_idx).astype(np.int64), pps=pps, valid=np.full(n, not priming),
            _deltas=rest)
        self.last_destination_rates = rates
        return rates, freed

    def _tenant_arrays(self, counters: Mapping[int, TenantCounters]) -> TenantCounterArrays:
        """Per-tenant objects (tests, older readers) as arrays; rows with an index out of range are skipped."""
        t = MAX_TENANTS
        # Index MAX_TENANTS is the dataplane's "no tenant" row (unprotected traffic): not a tenant, kept as
        # the last row (its passed rate is `TenantRates.unprotected_passed_pps`).
        bad = [idx for idx in counters if not 0 <= idx <= t]
        if bad:
            # A tick must not fail for every tenant because of one bad row: skip it, say so.
            self.ignored_tenant_indices += len(bad)
            log.warning("rates.bad_tenant_index", indices=bad[:8], count=len(bad), valid=f"0..{t - 1}")
        return TenantCounterArrays.from_mapping({idx: c for idx, c in counters.items() if 0 <= idx <= t}, t + 1)

    def update_tenants(self, now: float, counters: TenantCounterArrays | Mapping[int, TenantCounters]) -> TenantRates:
        """Rates of every tenant row from one read (`Dataplane.read_tenant_counter_arrays`, or per-tenant objects).

        The one definition of a tenant's rates (the status, its series and SecureWatch show these):
        passed = every packet (or byte) of the direction minus the dropped ones, floored at 0."""
        t = MAX_TENANTS
        if not isinstance(counters, TenantCounterArrays):
            counters = self._tenant_arrays(counters)
        priming = self._tenant_now is None
        dt = 0.0 if priming else now - self._tenant_now
        if not priming and dt <= 0:
            raise ValueError(f"rates: time went backwards or stood still (dt={dt:.6f} s)")
        rows = min(len(counters), t)     # the row past the tenants (unprotected traffic) is not a tenant
        present = np.zeros(t, bool)
        present[:rows] = counters.present[:rows]
        # Rows past the last present one have no counters: their rates stay zero and their previous
        # values stay as they are, so only the rows up to it are computed (tenant slots fill from 0).
        hi = int(np.flatnonzero(present)[-1]) + 1 if present.any() else 0
        current = _tenant_words(counters, slice(0, hi))
        # Each output's rows up to `hi` straight from the uint64 deltas (rows past it stay zero).
        outputs = np.zeros((4, t, N_CLASSES))      # inbound pps, bytes/s, outbound pps, bytes/s
        dropped_pps = np.zeros(t)                   # inbound
        per_s = 0.0 if priming else 1.0 / dt
        delta = None
        if not priming and hi:
            delta = _tenant_deltas(current, self._t_prev[:hi], self._t_present[:hi], present[:hi])
            for out, direction, lo in ((0, INBOUND, 0), (1, INBOUND, N_CLASSES), (2, OUTBOUND, 0),
                                       (3, OUTBOUND, N_CLASSES)):
                np.multiply(delta[:, direction, lo:lo + N_CLASSES], per_s, out=outputs[out, :hi])
            np.multiply(delta[:, INBOUND, _T_DROPPED_PACKETS], per_s, out=dropped_pps[:hi])
        if present[:hi].all():
            self._t_prev[:hi] = current
        else:
            np.copyto(self._t_prev[:hi], current, where=present[:hi, None, None])
        self._t_present = present
        unprotected_pps = self._unprotected_passed_pps(counters, per_s)
        self._tenant_now = now
        pps = outputs[0]
        passed_pps = np.zeros(t)
        np.maximum(pps[:hi].sum(axis=1) - dropped_pps[:hi], 0.0, out=passed_pps[:hi])
        rates = TenantRates(
            now=now, dt=dt, present=present, valid=present & (not priming), pps=pps, byte_rate=outputs[1],
            out_pps=outputs[2], out_byte_rate=outputs[3],
            # Passed = every packet minus the dropped ones (the program counts no passed packets).
            passed_pps=passed_pps, dropped_pps=dropped_pps, unprotected_passed_pps=unprotected_pps, _deltas=delta)
        self.last_tenant_rates = rates
        return rates

    def _unprotected_passed_pps(self, counters: TenantCounterArrays, per_s: float) -> float:
        """Inbound packets/s passed to no tenant (the row past the tenants), by the tenant rows' rules."""
        row = MAX_TENANTS
        present = len(counters) > row and bool(counters.present[row])
        if not present:
            self._u_present = False
            return 0.0
        current = _tenant_words(counters, slice(row, row + 1))
        out = 0.0
        if per_s:
            delta = _tenant_deltas(current, self._u_prev[None], np.array([self._u_present]), np.array([True]))[0]
            out = max(float(delta[INBOUND, :N_CLASSES].sum()) - float(delta[INBOUND, _T_DROPPED_PACKETS]), 0.0) * per_s
        self._u_prev[:] = current[0]
        self._u_present = True
        return out


def _tenant_words(counters: TenantCounterArrays, rows: slice) -> np.ndarray:
    """(R, 2, _TENANT_WORDS) uint64 of the read's `rows`."""
    n = len(range(*rows.indices(len(counters))))
    current = np.empty((n, 2, _TENANT_WORDS), np.uint64)
    current[:, :, :N_CLASSES] = counters.class_packets[rows]
    current[:, :, N_CLASSES:2 * N_CLASSES] = counters.class_bytes[rows]
    current[:, :, _T_DROPPED_PACKETS] = counters.dropped_packets[rows]
    current[:, :, _T_DROPPED_BYTES] = counters.dropped_bytes[rows]
    return current


def _tenant_deltas(current: np.ndarray, prev: np.ndarray, was_present: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Counts of one tick per tenant row (uint64, the shape of `current`). A reset counter wrapped
    below zero (above the current value, see update_destinations), and a row absent at the
    previous read counts whole: the current value; an absent row has no rate."""
    delta = np.subtract(current, prev)
    wrapped = np.flatnonzero(np.greater(delta, current))
    if len(wrapped):
        delta.reshape(-1)[wrapped] = current.reshape(-1)[wrapped]
    fresh = np.flatnonzero(~was_present)
    delta[fresh] = current[fresh]
    delta[~present] = 0
    return delta


def owned(tenant_idx: np.ndarray) -> np.ndarray:
    """Rows whose address belongs to a tenant."""
    return tenant_idx != NO_TENANT
