"""The spill store as the policy engine reads it: mapped into this process, read in place, its idle
slots freed for the addresses that spill next.

The XDP program moves the counters of an address that loses its cache slot into the store
(`sw_addr_store` in dataplane/bpf/seawall.c): one slot per address, found through
`sw_addr_store_index` (address -> slot), claimed from the slots user space freed
(`sw_addr_store_free`, a queue) or else from those never used (`sw_addr_store_next` counts the slots
handed out). A read sees every slot below that count in place, in slot order, which stays the same
from read to read (`AddressMemo.listed_ids` then matches nearly every key to its id without hashing),
the free ones skipped.

Slots are only ever claimed by the kernel; freeing them is this module's work. Once the claimed slots
reach PRESSURE of the store, every RECLAIM_READS reads a check finds the slots whose counts did not move
since the previous check (idle for at least RECLAIM_READS reads) and whose address holds no cache slot;
they are retired RETIRE_MAX a read, each in three steps a read apart: its address leaves the index (a
spill of the address from then on claims a new slot); the next read still reads it, with whatever a
program that found it just before added; the read after zeroes it and queues it as free. A retired address's counts thus drop out of the reads, as an address the
kernel's LRU map evicted did before the store existed (the rate tracker settles a counter that went
down, see `policy.rates`); it is idle, so no rate changes.
"""

from __future__ import annotations

import dataclasses
import mmap

import numpy as np

from dataplane import bpfsys, native
from dataplane.api import DataplaneError
from dataplane.keys import KeyIndex

PRESSURE = 0.75          # fraction of the store's slots claimed from which idle slots are freed
RECLAIM_READS = 30       # reads between two checks for idle slots (a read a second: 30 s)
RETIRE_MAX = 1 << 14     # idle slots retired a read: freeing each costs a bpf() call (~2 µs), so a read
                         # spends ~35 ms on it at most; a check's idle slots past it wait for the next reads
STORE_KEY_WORDS = 2      # each slot's address, 16 bytes, after its struct sw_addr_spilled
NEVER = np.uint64(2**64 - 1)   # an activity sum no slot reaches: a freed slot's, so that it is not idle at the next check


@dataclasses.dataclass(frozen=True, slots=True)
class StoreMaps:
    """The store's four maps, as fds and sizes (`dataplane.loader.Program.store_maps`)."""

    store_fd: int
    slot_bytes: int          # struct sw_addr_stored
    slots: int               # SW_MAX_ADDRESSES
    index_fd: int
    next_fd: int
    free_fd: int


class SpillStore:
    """The mapped spill store. `rows()` gives the handed-out slots' keys and counters in place for a
    read, and which of them are free;
    `spilled_words`, `tenant_at` and `counter_words`: struct sw_addr_spilled's size, the word of its
    tenant_idx (low half) and claimed flag (high half), and the words of its leading struct
    sw_addr_counters, from `dataplane.reader.AddressCounterLayout`."""

    def __init__(self, maps: StoreMaps, *, spilled_words: int, tenant_at: int, counter_words: int) -> None:
        self.maps = maps
        self.row_words = spilled_words + STORE_KEY_WORDS
        self._key = slice(spilled_words, spilled_words + STORE_KEY_WORDS)
        if maps.slot_bytes != 8 * self.row_words:
            raise DataplaneError(f"unexpected spill store layout: slots of {maps.slot_bytes} bytes, "
                                 f"expected {8 * self.row_words}")
        self._claimed_at = tenant_at
        # Words whose sum says whether a slot's address was active since the last check: its counters
        # (struct sw_addr_counters leads the slot), summed over a slice of the rows (a gather of some
        # columns took twice as long: ~80 ms at a million slots).
        self._counter_words = counter_words
        size = maps.slots * maps.slot_bytes
        self._mmap = mmap.mmap(maps.store_fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
        self._words: np.ndarray | None = np.frombuffer(self._mmap, np.uint64, count=size // 8).reshape(
            maps.slots, self.row_words)
        self.reads = 0
        self._retiring: list[tuple[int, np.ndarray]] = []    # (read that took them out of the index, slots)
        self._activity: np.ndarray | None = None            # each slot's activity sum at the last check
        self._backlog = np.zeros(0, np.int64)               # idle slots of the last check not retired yet
        self._checked_at = 0
        self.freed = 0                                      # slots freed since this process started
        self.in_use = 0                                     # claimed slots at the last read
        self.handed = 0                                     # slots handed out at the last read
        self._claimed = np.zeros(0, bool)                   # which slots below the handed-out count, then
        self.tenants = np.zeros(0, np.uint32)               # and the tenant_idx of each (`rows()`)

    def close(self) -> None:
        self._words = None
        try:
            self._mmap.close()
        except BufferError:    # a caller still holds a view: the mapping goes with it
            pass

    @property
    def retiring(self) -> np.ndarray:
        """Slots taken out of the index and not freed yet (tests)."""
        return np.concatenate([slots for _, slots in self._retiring]) if self._retiring else np.zeros(0, np.int64)

    @property
    def retiring_count(self) -> int:
        """How many slots `retiring` holds (the status: no copy)."""
        return sum(len(slots) for _, slots in self._retiring)

    def slot_state(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of store slots: their (k, 2) uint64 addresses, whether each is claimed, whether each is all
        zeros (a freed slot); copies."""
        words = self._words
        if words is None:
            raise DataplaneError("the spill store is closed")
        rows = words[np.asarray(slots, np.int64)]
        return rows[:, self._key].copy(), (rows[:, self._claimed_at] >> np.uint64(32)) != 0, ~rows.any(axis=1)

    def handed_out(self) -> int:
        """Slots the kernel has handed out so far (those at and above it were never used)."""
        raw = bpfsys.map_lookup(self.maps.next_fd, b"\0\0\0\0", 8)
        return min(int.from_bytes(raw or b"\0" * 8, "little"), self.maps.slots)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The slots handed out so far, in place: (S, 2) uint64 addresses and (S, 1, spilled words)
        counters, views of the mapped store, and the rows among them that are free (zeros, to skip);
        each slot's tenant_idx is left in `tenants` (S,) uint32. Tenants and claimed flags come out of
        one pass over the store (`native.store_columns`: they share a word). Frees first what earlier
        reads retired."""
        words = self._words
        if words is None:
            raise DataplaneError("the spill store is closed")
        self.reads += 1
        self._free_retired()
        n = self.handed = self.handed_out()
        self.tenants, self._claimed, self.in_use = native.store_columns(words[:n], self._claimed_at)
        free = np.flatnonzero(~self._claimed) if self.in_use < n else np.zeros(0, np.int64)
        used = words[:n]
        return used[:, self._key], used[:, :self._key.start].reshape(n, 1, self._key.start), free

    def wants_idle_check(self) -> bool:
        """Whether the read `rows()` just made should retire idle slots: the store is under pressure, and
        the last check is RECLAIM_READS reads old or found more idle slots than a read retires."""
        return self.in_use >= PRESSURE * self.maps.slots and (
            self.reads - self._checked_at >= RECLAIM_READS or len(self._backlog) > 0)

    def retire_idle(self, cached: np.ndarray) -> None:
        """Take up to RETIRE_MAX idle slots' addresses out of the index (the first step of freeing them).
        A slot is idle when its counters did not move between two checks RECLAIM_READS reads apart nor
        since, and its address holds no slot in `cached`, (K, 2) distinct addresses of the address cache:
        an address the cache counts is busy, and its counts would drop while it is."""
        words = self._words
        assert words is not None
        claimed = self._claimed
        n = len(claimed)
        if self.reads - self._checked_at >= RECLAIM_READS:
            activity = words[:n, :self._counter_words].sum(axis=1, dtype=np.uint64)
            previous, self._activity, self._checked_at = self._activity, activity, self.reads
            self._backlog = np.zeros(0, np.int64)
            if previous is None:
                return
            common = min(len(previous), n)
            idle = claimed[:common] & (activity[:common] == previous[:common])
            for _, slots in self._retiring:       # retired already, not freed yet
                idle[slots[slots < common]] = False
            self._backlog = np.flatnonzero(idle)
        chunk, self._backlog = self._backlog[:RETIRE_MAX], self._backlog[RETIRE_MAX:]
        # Still idle since the check (the same counts as then), still claimed, and not cached.
        snapshot = self._activity
        assert snapshot is not None
        chunk = chunk[chunk < n]
        chunk = chunk[claimed[chunk] & (words[chunk, :self._counter_words].sum(axis=1, dtype=np.uint64)
                                        == snapshot[chunk])]
        if len(chunk) and len(cached):
            index = KeyIndex(len(cached))
            index.add(np.ascontiguousarray(cached, np.uint64), np.zeros(len(cached), np.int64))
            chunk = chunk[index.get(np.ascontiguousarray(words[chunk, self._key])) < 0]
        if not len(chunk):
            return
        # One call for them all. An address whose index entry points at another slot (one claimed again
        # after a restart lost this process's retirements) loses that entry too: the other slot is still
        # read, and the address's next eviction claims a new one (the reader adds both rows up).
        keys = np.ascontiguousarray(words[chunk, self._key]).view(np.uint8).reshape(len(chunk), 16)
        bpfsys.map_delete_batch(self.maps.index_fd, keys)
        self._retiring.append((self.reads, chunk))

    def _free_retired(self) -> None:
        """Zero and queue as free the slots retired two reads ago or more (third step): the read
        after their retirement read them with their last counts."""
        words = self._words
        assert words is not None
        while self._retiring and self._retiring[0][0] <= self.reads - 2:
            _, slots = self._retiring.pop(0)
            words[slots] = 0
            if self._activity is not None:
                self._activity[slots[slots < len(self._activity)]] = NEVER   # a new address there is not idle
            for slot in slots.tolist():
                bpfsys.queue_push(self.maps.free_fd, int(slot).to_bytes(4, "little"))
            self.freed += len(slots)


__all__ = ["PRESSURE", "RECLAIM_READS", "RETIRE_MAX", "SpillStore", "StoreMaps"]
