"""Counter decoding without bcc: layouts, the address memo, and the reads of the counter maps.

What the kernel counts reaches Python as raw uint64 words: the address cache mapped into
this process, batch reads of the spill and tenant stats maps (`dataplane.bpfsys`, plain
syscalls). This module knows where each counter sits in those words (the layouts, taken from
the compiled program's ctypes types when there is one) and turns them into the arrays of
`dataplane.api`. It never imports bcc, so the unit tier and the synthetic policy benchmark
decode with the same code as the appliance.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import time
from collections.abc import Callable

import numpy as np
import structlog

from dataplane import bpfsys, native
from dataplane.api import (
    COUNTER_CLASSES,
    COUNTER_WORDS,
    CounterRows,
    DataplaneError,
    DestinationCounters,
    TenantCounterArrays,
)
from dataplane.constants import (
    ADDRESS_CACHE_BITS,
    BUDGET_CLASSES,
    MAX_TENANTS,
    NO_TENANT,
    RULES_PER_TARGET,
    DropReason,
    TrafficClass,
)
from dataplane.keys import MIN_CAPACITY, RowIndex, unique_keys
from dataplane.spill import SpillStore, StoreMaps

log = structlog.get_logger("seawall.dataplane")

UNPROTECTED = MAX_TENANTS  # stats row of traffic to no tenant
OVERFLOW_LOG_S = 60.0      # seconds between two warnings that the spill store is full
LISTED_SAMPLE = 32         # keys of a listed map between two looked up to align it with its previous list
COPY_CHUNK_SLOTS = 1024    # cache slots copied a chunk at a time: the ~200 KiB of their lines the copy reads stay in L2


@dataclasses.dataclass(frozen=True, slots=True)
class AddressCounterLayout:
    """Where things are in the per-address maps' values, in 64-bit words (from the compiled
    program's types: `address_layout()`; or `ADDRESS_LAYOUT` where no program is compiled)."""

    entry_words: int          # struct sw_addr_entry, one cache slot of one CPU
    counters_at: int          # its struct sw_addr_counters
    addr_at: int              # its addr (two words)
    head_at: int              # the word holding its tenant_idx and generation
    tenant_shift: int         # bits: where tenant_idx sits in that word (0 or 32)
    generation_shift: int     # bits: where generation sits in it (generation 0: an empty slot)
    spilled_words: int        # struct sw_addr_spilled, one spill-map value of one CPU
    spilled_tenant_at: int    # the word holding its tenant_idx (low 32 bits)
    counter_words: int        # struct sw_addr_counters
    packets_at: int           # within struct sw_addr_counters: packets[classes]
    bytes_at: int             # bytes[classes]
    dropped_at: int           # dropped_packets


@dataclasses.dataclass(frozen=True, slots=True)
class TenantStatsLayout:
    """struct sw_direction_stats in 64-bit words (struct sw_tenant_stats is two of them, one per
    direction; from the compiled program's types, or filled in by hand by the benchmark)."""

    dir_words: int
    dropped_packets_at: int
    dropped_bytes_at: int
    class_packets_at: int     # class_packets[classes]
    class_bytes_at: int       # class_bytes[classes]
    reason_packets_at: int    # reason_packets[reasons]


def decode_tenant_counters(words: np.ndarray, layout: TenantStatsLayout) -> TenantCounterArrays:
    """Tenant counters from the stats map's (rows, 2, dir_words) uint64 sum over CPUs (views)."""
    n_cls, n_rsn = len(TrafficClass), len(DropReason)
    cp, cb, rp = layout.class_packets_at, layout.class_bytes_at, layout.reason_packets_at
    return TenantCounterArrays(
        present=words.reshape(len(words), -1).any(axis=1),
        dropped_packets=words[:, :, layout.dropped_packets_at],
        dropped_bytes=words[:, :, layout.dropped_bytes_at],
        class_packets=words[:, :, cp:cp + n_cls],
        class_bytes=words[:, :, cb:cb + n_cls],
        reason_packets=words[:, :, rp:rp + n_rsn])


class AddressMemo:
    """Small integer ids for 16-byte map keys, so that a read can merge rows by address with numpy.

    Ids are dense (0, 1, ...) and stable across reads until the memo forgets everything past
    `limit` addresses (the map's churn). Keys are looked up in a numpy hash (`RowIndex` over the
    ids' keys), and a
    cache slot that still holds the address it held at the previous read keeps its id without
    a lookup at all: an address keeps its slot for as long as it is cached.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._index = RowIndex()                             # key -> id (a row of _keys)
        self._keys = np.zeros((MIN_CAPACITY, 2), np.uint64)   # key of each id
        self._count = 0
        self._slot_keys = np.zeros((0, 2), np.uint64)
        self._slot_ids = np.zeros(0, np.int64)
        # The ids of the spill map's keys at the previous read, in the order the kernel listed them (their
        # keys are the ids' own: `_keys`, no copy of the listing kept).
        self._listed_ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self._count

    def slot_ids(self, keys: np.ndarray, used: np.ndarray) -> np.ndarray:
        """Ids of the cache's (slots, 2) keys where `used`, -1 elsewhere; call before `ids()`."""
        if self._count > self.limit:
            self._clear()
        out = np.full(len(keys), -1, np.int64)
        if self._slot_keys.shape == keys.shape:
            kept = used & (keys[:, 0] == self._slot_keys[:, 0]) & (keys[:, 1] == self._slot_keys[:, 1])
            kept &= self._slot_ids >= 0
            out[kept] = self._slot_ids[kept]
            todo = used & ~kept
        else:
            todo = used
        rows = np.flatnonzero(todo)
        out[rows] = self.ids(keys[rows], clear=False)
        self._slot_keys = keys.copy()
        self._slot_ids = out
        return out

    def _clear(self) -> None:
        self._index.clear()
        self._count = 0
        self._slot_keys = np.zeros((0, 2), np.uint64)
        self._slot_ids = np.zeros(0, np.int64)
        self._listed_ids = np.zeros(0, np.int64)

    def listed_ids(self, keys: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids of `others` and of `keys`, a hash map's (N, 2) keys in the order its batch read lists them
        (the spill map), as `ids(concatenate([others, keys]))` gives them, bit for bit.

        A hash map lists its keys bucket by bucket, so from one read to the next the list keeps its
        order, shifted by the keys added and removed before each point. Instead of hashing every key
        (a million keys cost ~70 ms a read, mostly cache misses in the index), every LISTED_SAMPLE-th
        key is looked up, gives the shift at that point, and the keys between two samples are checked
        against the previous list at the shifts on either side; only keys that match neither, and new
        keys, are looked up in the index. A key matched this way is the same key as in the previous
        list, so it has the id it had there: the result is the lookup's, whatever the kernel's order.
        Call after `slot_ids` (which clears the memo when it is full), before `ids`.
        """
        # One copy (in C, with the match by position): the keys may be the mapped store's, which the kernel
        # keeps writing. A key where the previous list had it (the spill store lists its slots in place:
        # nearly all) takes the id it had there.
        others = np.ascontiguousarray(others, np.uint64).reshape(-1, 2)
        prev_ids = self._listed_ids
        keys, out, unmatched = native.listed_match(keys if keys.ndim == 2 else keys.reshape(-1, 2), prev_ids,
                                                   self._keys[:self._count])
        n, n_prev = len(keys), len(prev_ids)
        if n >= 2 * LISTED_SAMPLE and n_prev and unmatched > n // 16:
            # Where each known id sat in the previous list (-1: not listed then).
            at_prev = np.full(self._count, -1, np.int64)
            at_prev[prev_ids] = np.arange(n_prev)
            sample = np.arange(0, n, LISTED_SAMPLE)
            found = self._index.get(keys[sample], self._keys)
            shift = np.where(found >= 0, at_prev.take(np.maximum(found, 0)) - sample, 0)
            shift[(found < 0) | (at_prev.take(np.maximum(found, 0)) < 0)] = 0
            for first, side in ((True, shift), (False, np.append(shift[1:], shift[-1]))):   # the shift before, after
                # Every key is still to do at the first side: its arrays are the keys' own, no gathers.
                todo = np.arange(n) if first else np.flatnonzero(out < 0)
                where = todo + (np.repeat(side, LISTED_SAMPLE)[:n] if first else side.take(todo // LISTED_SAMPLE))
                inside = (where >= 0) & (where < n_prev)
                if first and inside.all():
                    mine = keys
                else:
                    todo, where = todo[inside], where[inside]
                    mine = keys[todo]
                theirs_ids = prev_ids.take(where)
                theirs = self.keys(theirs_ids)
                same = (theirs[:, 0] == mine[:, 0]) & (theirs[:, 1] == mine[:, 1])
                out[todo[same]] = theirs_ids[same]
        left = np.flatnonzero(out < 0)
        looked = self.ids(np.concatenate([others, keys[left]]), clear=False)
        out[left] = looked[len(others):]
        self._listed_ids = out.copy()
        return looked[:len(others)], out

    def ids(self, keys: np.ndarray, clear: bool = True) -> np.ndarray:
        """(N,) int64 ids of (N, 2) uint64 keys; ids are valid until a call that clears."""
        if clear and self._count > self.limit:
            self._clear()
        keys = np.ascontiguousarray(keys, np.uint64).reshape(-1, 2)
        ids = self._index.get(keys, self._keys)
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            # The same new address twice in one call; new ids in the order the keys came (the spill
            # store's slots get ascending ids, and the read moves their rows nearly in sequence).
            first, inverse = unique_keys(keys[missing])
            new_keys = keys[missing[first]]
            new_ids = np.arange(self._count, self._count + len(first), dtype=np.int64)
            if self._count + len(first) > len(self._keys):
                # A quarter more, not twice: the table holds up to `limit` keys (the ids of the map's churn
                # until the memo forgets them), and doubling left up to half of it unused (16 MiB a million).
                grown = np.zeros((max(len(self._keys) + len(self._keys) // 4, self._count + len(first)), 2), np.uint64)
                grown[:self._count] = self._keys[:self._count]
                self._keys = grown
            self._keys[self._count:self._count + len(first)] = new_keys
            self._index.add(new_keys, new_ids, self._keys)
            self._count += len(first)
            ids[missing] = new_ids[inverse]
        return ids

    def id_of(self, key: np.ndarray) -> int:
        """The id of one (1, 2) key, -1 when it has none (nothing is added)."""
        return int(self._index.get(key, self._keys)[0])

    def keys(self, ids: np.ndarray) -> np.ndarray:
        """(N, 2) uint64 keys of ids."""
        return _row_view(self._keys).take(ids).view(np.uint64).reshape(len(ids), 2)


def decode_destination_counters(cache: np.ndarray, spill_keys: np.ndarray, spill: np.ndarray,
                                layout: AddressCounterLayout, memo: AddressMemo,
                                spill_holes: np.ndarray | None = None,
                                spill_tenants: np.ndarray | None = None) -> DestinationCounters:
    """Destination counters from the two maps' batch reads.

    `cache`: (slots, CPUs, entry_words) uint64, the direct-mapped cache of each CPU;
    `spill_keys`: (S, 2) uint64 addresses and `spill`: (S, copies, spilled_words) the
    counters of evicted slots (the kernel's spill store and overflow map are shared by the CPUs:
    one copy); `spill_holes`: rows of them that hold no address (free store slots), given for the
    spill store (its rows of the unspecified address :: are skipped too); `spill_tenants`: the tenant_idx
    of each row of the kernel's one shared copy when the caller read them already (`SpillStore.rows`).
    An address hashes to the same slot on every CPU,
    so a slot whose live copies all hold one address sums in place (the common case);
    slots whose CPUs hold different addresses, and spilled counters, are added by
    address id. Rows come out ordered by the memo's id, which is stable from read to
    read, so consecutive reads list the addresses they share in the same order. The counters
    are made from `spill` in place when asked for (`CounterRows`): before `spill` changes (the
    reader's next read).
    """
    raw = cache
    n_cpus = raw.shape[1]
    c0, cw = layout.counters_at, counter_width(layout)
    # The cache is tens of MB and every strided pass over it touches each slot's cache lines:
    # few passes, no (slots, CPUs, words) temporaries.
    # Address and head words of every copy, copied out in one pass.
    a, h = layout.addr_at, layout.head_at
    key_head = _leading_words(raw, max(a + 2, h + 1))
    head = key_head[:, :, h]  # tenant_idx and generation
    filled = _word32(head, layout.generation_shift) != 0
    live = filled & (_word32(head, layout.tenant_shift) != NO_TENANT)
    any_live = live.any(axis=1)
    rep = key_head[:, n_cpus - 1, a:a + 2]        # the address of each slot's first live copy
    for cpu in range(n_cpus - 2, -1, -1):
        rep = np.where(live[:, cpu, None], key_head[:, cpu, a:a + 2], rep)
    agree = any_live.copy()
    for cpu in range(n_cpus):
        agree &= ((key_head[:, cpu, a] == rep[:, 0]) & (key_head[:, cpu, a + 1] == rep[:, 1])) | ~live[:, cpu]
    agree_rows = np.flatnonzero(agree)
    # Sum the copies of agreeing slots: copies never filled (generation 0) hold zeros; copies of an
    # address without a tenant were counted but are not reported, so those few are taken out.
    if 2 * len(agree_rows) < len(raw):
        agree_counters = sum_over_cpus(raw[agree_rows, :, c0:c0 + cw])   # a sparse cache: its rows only
    else:
        summed = sum_over_cpus(raw[:, :, c0:c0 + cw])
        agree_counters = _row_view(summed).take(agree_rows).view(np.uint64).reshape(len(agree_rows), cw)
    unreported = filled & ~live
    taken_out = np.flatnonzero(agree & unreported.any(axis=1))
    for row, slot in zip(np.searchsorted(agree_rows, taken_out).tolist(), taken_out.tolist(), strict=True):
        for cpu in np.flatnonzero(unreported[slot]):
            agree_counters[row] -= raw[slot, cpu, c0:c0 + cw]
    tenant_of_rep = head[:, n_cpus - 1]
    for cpu in range(n_cpus - 2, -1, -1):
        tenant_of_rep = np.where(live[:, cpu], head[:, cpu], tenant_of_rep)
    agree_tenants = _word32(tenant_of_rep[agree_rows], layout.tenant_shift).astype(np.uint32)

    conflict = live & ~agree[:, None]
    conflict_rows = raw[conflict]
    if len(spill_keys):
        if spill.shape[1] == 1 and spill.strides[-1] == 8:
            # The kernel's one shared copy: each row's leading counter words moved straight from the
            # mapped store (or the read's buffer: a million spilled addresses are ~100 MB of counters;
            # a copy and a gather of them first cost ~270 ms a read at 1,000,000 destinations).
            spill_counters = _leading_rows(spill.reshape(len(spill), -1), cw)
        else:
            spill_counters = _row_view(sum_over_cpus(spill[:, :, :cw]))
        # The tenant of the last CPU that spilled it; a CPU that never did holds zeros, so only rows
        # whose CPUs' tenant words differ need a look at which CPUs spilled. The kernel's one shared
        # copy has nothing to compare: one pass (the comparison and `.any(axis=1)` over a million rows
        # of one copy cost ~8 ms a read).
        if spill.shape[1] == 1:
            if spill_tenants is None:
                spill_tenants = spill[:, 0, layout.spilled_tenant_at] & 0xFFFFFFFF
            elif len(spill_tenants) != len(spill):
                raise ValueError(f"spill tenants: {len(spill_tenants)} for {len(spill)} spilled rows")
            differ = np.zeros(0, np.int64)
        elif spill_tenants is not None:
            raise ValueError("spill tenants: given for the kernel's one shared copy only")
        else:
            tenant_words = spill[:, :, layout.spilled_tenant_at] & 0xFFFFFFFF
            spill_tenants = tenant_words[:, 0].copy()
            differ = np.flatnonzero((tenant_words != tenant_words[:, :1]).any(axis=1))
        if len(differ):
            spilled = spill[differ, :, :layout.counter_words].any(axis=2)
            spill_tenants[differ] = np.where(spilled, tenant_words[differ], NO_TENANT).min(axis=1)
    else:
        spill_counters = _row_view(np.zeros((0, cw), np.uint64))
        spill_tenants = np.zeros(0, np.uint64)
    agree_ids = memo.slot_ids(rep, agree)[agree_rows]
    conflict_ids, spill_ids = memo.listed_ids(spill_keys, conflict_rows[:, a:a + 2])
    if spill_holes is not None:
        if len(spill_holes):
            spill_ids[spill_holes] = -1
        # A slot given back by a CPU that lost the race to claim one for the same address may be read
        # claimed but with its address already cleared: the unspecified address ::, which is never a
        # destination (RFC 4291, 2.5.2). It is no address's row either.
        unspecified = memo.id_of(np.zeros((1, 2), np.uint64))
        if unspecified >= 0:
            spill_ids[spill_ids == unspecified] = -1
    ids, tenant, rows = _merge_by_address(
        len(memo), (agree_ids, agree_counters, agree_tenants),
        (conflict_ids, conflict_rows[:, c0:c0 + cw], _word32(conflict_rows[:, h], layout.tenant_shift)),
        (spill_ids, spill_counters, spill_tenants), layout)
    return DestinationCounters(keys=memo.keys(ids), tenant_idx=tenant, ids=ids, rows=rows)


def counter_width(layout: AddressCounterLayout) -> int:
    """Words of struct sw_addr_counters that a read carries (packets, bytes, dropped; not the outbound ones)."""
    return max(max(layout.packets_at, layout.bytes_at) + len(TrafficClass), layout.dropped_at + 1)


def cache_copy_layout(layout: AddressCounterLayout) -> AddressCounterLayout:
    """The layout of `copy_cache`'s copy: each slot's address and head words, then its carried counters."""
    if layout.addr_at != 0 or layout.head_at >= layout.counters_at:
        raise DataplaneError("struct sw_addr_entry: the address and head words must lead the slot")
    head = max(layout.addr_at + 2, layout.head_at + 1)
    return dataclasses.replace(layout, entry_words=head + counter_width(layout), counters_at=head)


def copy_cache(src: np.ndarray, layout: AddressCounterLayout, out: np.ndarray | None = None,
               between: Callable[[], None] | None = None) -> np.ndarray:
    """A copy of the words of the address cache that a read decodes, laid out as `cache_copy_layout`:
    (..., slots, entry words) uint64 `src`, the cache in the kernel's order, to (..., slots, copy words);
    `out`: a buffer of that shape to reuse. The whole 384-byte slots were three times the memory (48 MiB
    on 2 CPU ids) and every cache line of a slot was read; the decode reads these words only.

    The cache is live while it is copied, and a slot's words go in two steps (address and head, then
    the counters): a slot evicted between them (its counters spilled, another address written in)
    would pair the old address with the new one's counters. So the address is compared again after
    the counters' step, and a slot whose address changed is copied as never filled (zeros): its old
    address's counts are in the spill map by then, read at the next read (this one misses them or reads
    them low, as for any slot evicted during a read: the rate tracker settles both, see
    `policy.rates.RateTracker`), the new address's from the next read on.

    The slots go COPY_CHUNK_SLOTS at a time, the three steps for each chunk, so that the counters' step
    and the comparison find the chunk's cache lines still in the CPU's cache: three passes over the whole
    cache fetched every line from memory again (measured on 2 x 65,536 slots with the CPU's caches cold:
    ~15 ms a copy in passes, ~9 ms in chunks).
    `between` runs between the first two steps of every chunk (tests: the kernel's writes of an eviction)."""
    copied = cache_copy_layout(layout)
    head, cw, c0 = copied.counters_at, counter_width(layout), layout.counters_at
    shape = (*src.shape[:-1], copied.entry_words)
    if out is None or out.shape != shape or out.dtype != np.uint64:
        out = np.empty(shape, np.uint64)
    # Each slot's run of words moved as one element (a void view): numpy's word-by-word strided copy is
    # several times slower.
    head_run, counters_run = np.dtype((np.void, 8 * head)), np.dtype((np.void, 8 * cw))
    for region in np.ndindex(src.shape[:-2]):
        src_slots, out_slots = src[region], out[region]
        for lo in range(0, len(src_slots), COPY_CHUNK_SLOTS):
            s, o = src_slots[lo:lo + COPY_CHUNK_SLOTS], out_slots[lo:lo + COPY_CHUNK_SLOTS]
            np.copyto(o[:, :head].view(head_run), s[:, :head].view(head_run))
            if between is not None:
                between()
            np.copyto(o[:, head:head + cw].view(counters_run), s[:, c0:c0 + cw].view(counters_run))
            moved = s[:, 0] != o[:, 0]
            moved |= s[:, 1] != o[:, 1]
            if moved.any():
                o[moved] = 0
    return out


def _ms_since(start: float) -> float:
    """CPU milliseconds of this thread since `start` (a `time.thread_time()`)."""
    return round((time.thread_time() - start) * 1000.0, 3)


def sum_over_cpus(per_cpu: np.ndarray) -> np.ndarray:
    """Sum over axis 1 (the CPUs) by adding the CPUs' slices: ~3x faster than `.sum(axis=1)`,
    which walks the short CPU axis innermost."""
    out = per_cpu[:, 0].copy() if per_cpu.shape[1] < 2 else per_cpu[:, 0] + per_cpu[:, 1]
    for cpu in range(2, per_cpu.shape[1]):
        out += per_cpu[:, cpu]
    return out


def _word32(words: np.ndarray, shift: int) -> np.ndarray:
    """The 32-bit field at bit `shift` (0 or 32) of uint64 words."""
    return words & 0xFFFFFFFF if shift == 0 else words >> np.uint64(shift)


def _leading_words(raw: np.ndarray, n: int) -> np.ndarray:
    """A contiguous copy of the first `n` words of each entry of a (slots, CPUs, words) uint64 array,
    moved as one n-word element each: 3-4x faster than numpy's word-by-word strided copy."""
    moved = np.ascontiguousarray(raw[:, :, :n].view(np.dtype((np.void, 8 * n))))
    return moved.view(np.uint64).reshape(raw.shape[0], raw.shape[1], n)


def _row_view(rows: np.ndarray) -> np.ndarray:
    """A (N, W) uint64 array as N void elements of W words (contiguous; copied if it is not)."""
    rows = np.ascontiguousarray(rows, np.uint64)
    return rows.view(np.dtype((np.void, rows.shape[1] * 8))).reshape(len(rows))


def _leading_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """The first `n` words of each row of a C-contiguous (N, W) uint64 array as N void elements of
    `n` words, in place (a strided view: no copy)."""
    padded = np.dtype({"names": ["r"], "formats": [np.dtype((np.void, 8 * n))], "offsets": [0],
                       "itemsize": rows.shape[1] * 8})
    return rows.view(padded).reshape(len(rows))["r"]


def rows_empty(n: int, tail: tuple[int, ...] = (), dtype: type | np.dtype = np.float64) -> np.ndarray:
    """`np.empty((n, *tail), dtype)` as the first n rows of a block whose row count is rounded up to a
    multiple of the largest power of two at most n / 32 (at most ~3 % more rows).

    A per-address array of every tick has about the size of the last tick's, a few rows more or less.
    Made exactly, one a few rows larger than the freed block it could reuse does not fit there, and
    the heap (which keeps freed blocks: `policy.heap`) grows and fragments tick after tick (measured at
    a million destinations: ~400 MiB of free heap held resident between ticks). Rounded, consecutive
    ticks ask for the same sizes and reuse the same blocks."""
    quantum = 1 << max((n // 32).bit_length() - 1, 0)
    rows = -(-n // quantum) * quantum
    return np.empty((rows, *tail), dtype)[:n]


def _merge_by_address(n_ids: int, cached: tuple[np.ndarray, np.ndarray, np.ndarray],
                      conflicts: tuple[np.ndarray, np.ndarray, np.ndarray],
                      spilled: tuple[np.ndarray, np.ndarray, np.ndarray],
                      layout: AddressCounterLayout) -> tuple[np.ndarray, np.ndarray, CounterRows]:
    """One row per address id, in ascending id order, from (ids, counters, tenant) parts: the ids, the
    tenants and the counter rows, made a block at a time when asked for (`CounterRows`).

    Ascending ids keep consecutive reads in one order, so the engine's per-address state
    (slots assigned in the same order) is walked nearly in sequence, not at random.
    `cached` (agreeing cache slots) holds each address at most once; `spilled` (the spill store
    and its overflow map) too but for rare repeats (an address the store holds twice for a read or
    two, a slot being freed while a new one counts it, or in both the store and the overflow map:
    added up, with the tenant of its last row), and its rows of id -1 are skipped; `conflicts`
    (cache slots whose CPUs hold different addresses: rare) may repeat one. Counters add up; the
    tenant comes from the cache where the address is cached (a spilled copy keeps the tenant it had
    when it left). `n_ids` bounds the ids.
    The spilled counters are (S,) void rows of the counters' width (`_leading_rows`, `_row_view`): the
    mapped store's rows in place, which the rows are made from when asked for (a million addresses'
    merged rows were ~100 MiB held beside the previous read's while the rates were worked out).
    """
    c_ids, c_counters, c_tenants = conflicts
    s_ids, s_rows, s_tenants = spilled
    # In C (dataplane/native.c): an index pass, then where each row comes from; the rows themselves are
    # moved when asked for, straight from the mapped store for the spilled ones.
    ids, row_of = native.merge_index(n_ids, cached[0], c_ids, s_ids)
    n = len(ids)
    tenants = np.full(n, NO_TENANT, np.uint32)
    spill_src, cache_src, repeats = native.merge_sources(n, row_of, (s_ids, s_tenants), (cached[0], cached[2]),
                                                         tenants)
    # What adds on top of a row's spilled and cached rows (rare): spilled rows that repeat an id, and
    # conflicting cache slots. By row, for a block's rows to find theirs.
    extra_rows, extra_spilled, extra_counters = np.zeros(0, np.int64), np.zeros(0, np.int64), None
    if repeats:
        listed = np.flatnonzero(np.asarray(s_ids) >= 0)
        listed_rows = row_of[np.asarray(s_ids)[listed]]
        again = spill_src[listed_rows] != listed
        extra_rows, extra_spilled = listed_rows[again], listed[again]
    c_rows = np.zeros(0, np.int64)
    if len(c_ids):
        c_rows = row_of[c_ids]
        tenants[c_rows] = np.where(tenants[c_rows] == NO_TENANT, c_tenants, tenants[c_rows])
        extra_counters = np.ascontiguousarray(c_counters, np.uint64)
    width = cached[1].shape[1]
    n_cls = COUNTER_CLASSES
    pk, by, dr = layout.packets_at, layout.bytes_at, layout.dropped_at
    in_order = (pk, by, dr, width) == (0, n_cls, 2 * n_cls, COUNTER_WORDS)

    def fill(lo: int, hi: int, out: np.ndarray) -> None:
        merged = out if in_order else np.empty((hi - lo, width), np.uint64)
        native.merge_fill(lo, hi, merged, spill_src, s_rows, cache_src, cached[1])
        if len(extra_rows):
            mine = (extra_rows >= lo) & (extra_rows < hi)
            if mine.any():
                again_rows = np.ascontiguousarray(s_rows[extra_spilled[mine]]).view(np.uint64).reshape(-1, width)
                np.add.at(merged, extra_rows[mine] - lo, again_rows)
        if len(c_rows):
            mine = (c_rows >= lo) & (c_rows < hi)
            if mine.any():
                np.add.at(merged, c_rows[mine] - lo, extra_counters[mine])
        if not in_order:
            out[:, :n_cls] = merged[:, pk:pk + n_cls]
            out[:, n_cls:2 * n_cls] = merged[:, by:by + n_cls]
            out[:, 2 * n_cls] = merged[:, dr]

    return ids, tenants, CounterRows(n, fill)


def address_layout(entry: type[ctypes.Structure], spilled: type[ctypes.Structure]) -> AddressCounterLayout:
    """The layout of struct sw_addr_entry and sw_addr_spilled from their ctypes types (bcc's
    `Leaf` of sw_addr_cache and the per-CPU value type of sw_addr_spill)."""
    counters = type(entry().counters)  # struct sw_addr_counters, as bcc describes it
    tenant, generation = entry.tenant_idx.offset, entry.generation.offset
    if tenant // 8 != generation // 8 or entry.addr.offset % 8 or tenant % 4 or generation % 4:
        raise DataplaneError("struct sw_addr_entry: addr must be word-aligned, and tenant_idx and generation "
                             "must share one word")
    if spilled.tenant_idx.offset % 8 or spilled.claimed.offset != spilled.tenant_idx.offset + 4:
        raise DataplaneError("struct sw_addr_spilled: tenant_idx must open a word whose high half is claimed "
                             "(dataplane.spill reads both)")
    return AddressCounterLayout(
        entry_words=ctypes.sizeof(entry) // 8, counters_at=entry.counters.offset // 8,
        addr_at=entry.addr.offset // 8, head_at=tenant // 8,
        tenant_shift=8 * (tenant % 8), generation_shift=8 * (generation % 8),
        spilled_words=ctypes.sizeof(spilled) // 8, spilled_tenant_at=spilled.tenant_idx.offset // 8,
        counter_words=ctypes.sizeof(counters) // 8, packets_at=counters.packets.offset // 8,
        bytes_at=counters.bytes.offset // 8, dropped_at=counters.dropped_packets.offset // 8)


def tenant_stats_layout(stats: type[ctypes.Structure]) -> TenantStatsLayout:
    """The layout of struct sw_direction_stats from the ctypes type of struct sw_tenant_stats."""
    direction = stats._fields_[0][1]._type_   # dir[SW_DIRS]: an array of struct sw_direction_stats
    return TenantStatsLayout(
        dir_words=ctypes.sizeof(direction) // 8, dropped_packets_at=direction.dropped_packets.offset // 8,
        dropped_bytes_at=direction.dropped_bytes.offset // 8, class_packets_at=direction.class_packets.offset // 8,
        class_bytes_at=direction.class_bytes.offset // 8, reason_packets_at=direction.reason_packets.offset // 8)


def _static_address_layout() -> AddressCounterLayout:
    """struct sw_addr_entry / sw_addr_spilled of dataplane/bpf/seawall.h with this build's constants, in
    64-bit words, for callers without a compiled program (the synthetic policy benchmark). The bpf tier
    pins it to `address_layout()` of the loaded program (tests/bpf/test_bench_layout.py)."""
    n_cls, n_budgets = len(TrafficClass), len(BUDGET_CLASSES)
    counter_words = 2 * n_cls + 3          # packets[], bytes[], dropped, outbound packets and bytes
    # addr (2), tenant_idx + generation (1), is_v6 + attack_classes (1), policy flags and pad +
    # budget_tokens[] (4 bytes each, padded to a word), budget_ns[] (a word each), rule_count +
    # rule_ids[] (u32 each, padded to a word), rule briefs: rule_lo[] and rule_hi[] (a word each),
    # rule_flags[] (a byte each, padded to a word)
    counters_at = 2 + 1 + 1 + (4 + 4 * n_budgets + 7) // 8 + n_budgets + (1 + RULES_PER_TARGET + 1) // 2 \
        + 2 * RULES_PER_TARGET + (RULES_PER_TARGET + 7) // 8
    return AddressCounterLayout(entry_words=counters_at + counter_words, counters_at=counters_at,
                                addr_at=0, head_at=2, tenant_shift=0, generation_shift=32,
                                spilled_words=counter_words + 1, spilled_tenant_at=counter_words,
                                counter_words=counter_words, packets_at=0, bytes_at=n_cls,
                                dropped_at=2 * n_cls)


ADDRESS_LAYOUT = _static_address_layout()
# struct sw_direction_stats: dropped_packets, dropped_bytes, class_packets[], class_bytes[], reason_packets[]
TENANT_LAYOUT = TenantStatsLayout(
    dir_words=2 + 2 * len(TrafficClass) + len(DropReason), dropped_packets_at=0, dropped_bytes_at=1,
    class_packets_at=2, class_bytes_at=2 + len(TrafficClass), reason_packets_at=2 + 2 * len(TrafficClass))
CACHE_SLOTS = 1 << ADDRESS_CACHE_BITS   # address cache slots per CPU region


@dataclasses.dataclass(frozen=True, slots=True)
class MapRef:
    """A map as the reader reads it: its fd and geometry (value_bytes: of every CPU together for a
    per-CPU map, as the kernel's batch reads copy them out)."""

    fd: int
    key_bytes: int
    value_bytes: int
    max_entries: int


def read_all(ref: MapRef, buffers: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Every element of a map: (keys, values, count) as uint8 arrays of count rows (views of `buffers`,
    when given: see `bpfsys.map_lookup_batch`)."""
    return bpfsys.map_lookup_batch(ref.fd, ref.key_bytes, ref.value_bytes, ref.max_entries, buffers=buffers)


class CounterReader:
    """Reads and decodes the counter maps: tenant stats (sw_tenant_stats), and the per-address
    maps (the address cache sw_addr_cache, mapped read-only into this process; the spill store
    sw_addr_store, mapped too (`dataplane.spill`); its overflow map sw_addr_spill). Built by
    `dataplane.Dataplane` from the loaded program's maps and layouts."""

    def __init__(self, *, stats: MapRef, cache: MapRef, spill: MapRef, store: StoreMaps, ncpus: int,
                 address: AddressCounterLayout, tenant: TenantStatsLayout, memo_limit: int,
                 cache_bits: int = ADDRESS_CACHE_BITS) -> None:
        self.stats, self.cache, self.spill = stats, cache, spill
        self.cache_bits = cache_bits       # log2 of the address cache's slots per CPU region
        self.ncpus = ncpus
        self.address_layout = address
        self.tenant_layout = tenant
        # Tenant stats rows worth reading: every row until a tenant set is applied (after a restart,
        # the counters of the set in force are in the pinned map), then those of the set.
        self.tenant_rows = MAX_TENANTS
        self._address_memo = AddressMemo(memo_limit)
        self._last_rows: CounterRows | None = None     # the last read's counter rows, made when asked for
        self._spill_buffers: tuple[np.ndarray, np.ndarray] | None = None   # the overflow map's batch reads, reused
        self._spill_holes = np.zeros(0, np.int64)      # rows of the last read's store slots that are free
        # and the tenant_idx of each of its store rows (None when the overflow map adds rows: the decode reads them)
        self._spill_tenants: np.ndarray | None = np.zeros(0, np.uint32)
        self.overflow_entries = 0                      # entries in the overflow map at the last read
        self._overflow_logged = -OVERFLOW_LOG_S        # time.monotonic() of the last warning about them
        self.store = SpillStore(store, spilled_words=address.spilled_words, tenant_at=address.spilled_tenant_at,
                                counter_words=address.counter_words)
        # CPU milliseconds (of the reading thread) of the last read's parts: "spill_map", the spill store's
        # rows in place and the overflow map's batch read; the cache copy (`address_maps`); "store_reclaim"
        # when the read looked for idle store slots; the decode (`read_destination_counters`).
        # `seawall bench policy --real` reports them.
        self.last_read_cpu_ms: dict[str, float] = {}
        self._map_address_cache()

    def _map_address_cache(self) -> None:
        """Map the address cache into this process (read-only): a tick reads its counters in
        memory, not through a bpf() copy. Regions are CPU ids, each 2**cache_bits slots."""
        entry_bytes, entries, bits = self.cache.value_bytes, self.cache.max_entries, self.cache_bits
        self.cache_regions = entries >> bits
        if entry_bytes % 8 or not self.cache_regions or self.cache_regions << bits != entries:
            raise DataplaneError(f"unexpected address cache layout: {entries} entries of {entry_bytes} bytes")
        size = entries * entry_bytes
        self._cache_mmap = mmap.mmap(self.cache.fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.MAP_SHARED,
                                     mmap.PROT_READ)
        self._cache_words: np.ndarray | None = np.frombuffer(self._cache_mmap, np.uint64, count=size // 8).reshape(
            self.cache_regions, 1 << bits, entry_bytes // 8)
        self._cache_copy: np.ndarray | None = None          # copy_cache's buffer, reused read after read
        self._cache_copy_layout = cache_copy_layout(self.address_layout)

    def close(self) -> None:
        if self._last_rows is not None:
            self._last_rows.release()
            self._last_rows = None
        self._cache_words = None
        self._cache_copy = None
        self._spill_buffers = None
        self.store.close()
        try:
            self._cache_mmap.close()
        except BufferError:   # a caller still holds a view: the mapping goes with it
            pass

    def read_tenant_counter_arrays(self) -> TenantCounterArrays:
        """Cumulative counters of every tenant row (and the UNPROTECTED row) as arrays: the rows of
        the tenant set in force and the UNPROTECTED row read in two batch calls, summed over CPUs,
        then views of that sum (no per-tenant objects; rows no tenant of the set uses are zero)."""
        layout = self.tenant_layout
        # Only the rows of the tenants in force and the UNPROTECTED row: a set of 10,000 tenants
        # leaves 6,000 rows that no tenant uses, and copying them out cost ~3 ms a tick.
        summed = np.zeros((self.stats.max_entries, 2, layout.dir_words), np.uint64)
        for start, count in ((0, self.tenant_rows), (UNPROTECTED, 1)):
            values = bpfsys.array_lookup_range(self.stats.fd, self.stats.value_bytes, start, count)
            words = values.view(np.uint64).reshape(len(values), self.ncpus, 2, layout.dir_words)
            summed[start:start + len(values)] = sum_over_cpus(words)
        return decode_tenant_counters(summed, layout)

    def read_destination_counters(self) -> DestinationCounters:
        """Inbound counters per customer-side address: the address cache slots of every CPU
        plus the spill store and its overflow map, merged by address (a copy of the mapped cache's
        counted words, the store's claimed slots in place, a batch read of the overflow map; see
        `decode_destination_counters`)."""
        # The last read's rows are made from the maps as they were then: not after this read moves on.
        if self._last_rows is not None:
            self._last_rows.release()
            self._last_rows = None
        maps = self.address_maps()
        start = time.thread_time()
        counters = decode_destination_counters(*maps, self._address_memo, spill_holes=self._spill_holes,
                                               spill_tenants=self._spill_tenants)
        self.last_read_cpu_ms["decode"] = _ms_since(start)
        self._last_rows = counters.rows
        return counters

    def address_maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, AddressCounterLayout]:
        """The per-address maps as `decode_destination_counters` takes them: a copy of the address
        cache's counted words as (slots, CPU regions, copy words) uint64 (`copy_cache`: the counters
        keep moving while a tick decodes them), the spilled addresses' (S, 2) keys and their (S, 1,
        spilled words) values (one copy: the store and the overflow map are shared by the CPUs): the
        store's claimed slots in slot order (views of the mapped store when none is free), then the
        overflow map's entries. The cache copy and the overflow rows are buffers that the next call
        writes again; the store's rows keep moving (a slot's counters only grow until it is freed, two
        reads after it was last read)."""
        # The spill store and the overflow map first: counts only ever move from a cache slot to them,
        # so a slot evicted between the reads is missed for this read (its counts show up in the
        # next), never counted twice as it would be the other way round.
        if self._spill_buffers is None:
            rows = self.spill.max_entries + 1
            self._spill_buffers = (np.empty((rows, self.spill.key_bytes), np.uint8),
                                   np.empty((rows, self.spill.value_bytes), np.uint8))
        start = time.thread_time()
        store_keys, store_values, self._spill_holes = self.store.rows()
        self._spill_tenants = self.store.tenants
        okeys, ovalues, ocount = read_all(self.spill, self._spill_buffers)
        if self._cache_words is None:
            raise DataplaneError("the counter reader is closed")
        spill_ms, start = _ms_since(start), time.thread_time()
        self._cache_copy = copy_cache(self._cache_words, self.address_layout, self._cache_copy)
        self.last_read_cpu_ms = {"spill_map": spill_ms, "cache_copy": _ms_since(start)}
        if self.store.wants_idle_check():
            start = time.thread_time()
            self.store.retire_idle(_cached_keys(self._cache_copy, self._cache_copy_layout))
            self.last_read_cpu_ms["store_reclaim"] = _ms_since(start)
        self.overflow_entries = int(ocount)
        if ocount:
            self._warn_overflow()
            # The overflow map holds spills only while every store slot is taken: rare, so a copy.
            spill_keys = np.concatenate([store_keys, okeys.view(np.uint64).reshape(ocount, 2)])
            spill = np.concatenate([store_values, ovalues.view(np.uint64).reshape(
                ocount, 1, self.address_layout.spilled_words)])
            self._spill_tenants = None     # the decode reads them from the copy
        else:
            spill_keys, spill = store_keys, store_values
        return self._cache_copy.transpose(1, 0, 2), spill_keys, spill, self._cache_copy_layout


    def spill_store_status(self) -> dict[str, int]:
        """The spill store's occupancy at the last read, for the status file and /metrics: its slots
        (`[appliance] max_addresses`), those claimed, handed out (ever used), freed since this process
        started and being freed, and the overflow map's entries and size."""
        store = self.store
        return {"slots": store.maps.slots, "in_use": store.in_use, "handed_out": store.handed,
                "freed": store.freed, "retiring": store.retiring_count, "overflow_entries": self.overflow_entries,
                "overflow_capacity": self.spill.max_entries}

    def _warn_overflow(self) -> None:
        """Say, at most once every OVERFLOW_LOG_S, that spills go to the overflow map: every store slot was
        taken, and past the overflow map's size the LRU drops addresses' counts."""
        now = time.monotonic()
        if now - self._overflow_logged < OVERFLOW_LOG_S:
            return
        self._overflow_logged = now
        log.warning("dataplane.spill_store_full", slots=self.store.maps.slots, in_use=self.store.in_use,
                    overflow_entries=self.overflow_entries, overflow_capacity=self.spill.max_entries,
                    hint="more customer addresses count at once than [appliance] max_addresses: raise it")


def _cached_keys(copy: np.ndarray, layout: AddressCounterLayout) -> np.ndarray:
    """(K, 2) distinct addresses of the filled slots of a cache copy ((regions, slots, copy words),
    `copy_cache`). An address hashes to the same slot in every CPU region, so it repeats only there."""
    a = layout.addr_at
    filled = _word32(copy[:, :, layout.head_at], layout.generation_shift) != 0
    parts = []
    for region in range(copy.shape[0]):
        keep = filled[region].copy()
        for earlier in range(region):
            keep &= ~(filled[earlier] & (copy[earlier, :, a] == copy[region, :, a])
                      & (copy[earlier, :, a + 1] == copy[region, :, a + 1]))
        parts.append(copy[region, keep, a:a + 2])
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.uint64)


__all__ = ["ADDRESS_LAYOUT", "CACHE_SLOTS", "TENANT_LAYOUT", "UNPROTECTED", "AddressCounterLayout", "AddressMemo",
           "CounterReader", "MapRef", "TenantStatsLayout", "address_layout", "cache_copy_layout", "copy_cache",
           "counter_width", "decode_destination_counters",
           "decode_tenant_counters", "read_all", "rows_empty", "sum_over_cpus", "tenant_stats_layout"]
