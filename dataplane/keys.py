"""Addresses as the dataplane's maps key them, and a numpy hash index over such keys.

A key is the 16-byte address in network byte order, IPv4 stored IPv4-mapped
(::ffff:a.b.c.d), exactly as in the maps. In numpy a key is two uint64 words (the
map's bytes read natively), so N keys are an (N, 2) uint64 array. Code that handles
every destination each tick (the counter reader, the policy engine's slot table)
works on these arrays; ipaddress objects are built only for the few addresses that
are reported (`AddressView`), because building or hashing 100,000 of them costs
tens of milliseconds a tick.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"   # the first 12 bytes of an IPv4-mapped IPv6 address


def key_bytes(address: IPAddress) -> bytes:
    """The 16 bytes of an address's map key."""
    return V4_MAPPED_PREFIX + address.packed if address.version == 4 else address.packed


def address_from_key_bytes(raw: bytes) -> IPAddress:
    if raw[:12] == V4_MAPPED_PREFIX:
        return ipaddress.IPv4Address(raw[12:16])
    return ipaddress.IPv6Address(raw)


def address_keys(addresses: Iterable[IPAddress]) -> np.ndarray:
    """(N, 2) uint64 keys of `addresses` (for tests, saved state and other small sets)."""
    raw = b"".join(key_bytes(a) for a in addresses)
    return np.frombuffer(raw, np.uint64).reshape(-1, 2).copy()


def address_of_key(key: np.ndarray) -> IPAddress:
    """The address of one (2,) uint64 key."""
    return address_from_key_bytes(np.ascontiguousarray(key, np.uint64).tobytes())


class AddressView(Sequence):
    """The addresses of an (N, 2) key array, each built only when asked for.

    Indexing returns an ipaddress object (a new, equal one on each access); iteration
    builds them all, which is for tests and small sets, not for every destination of
    a tick. Compares equal to any sequence of the same addresses.
    """

    __slots__ = ("keys",)

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, np.uint64)
        if keys.ndim != 2 or keys.shape[1] != 2:
            raise ValueError(f"address keys must have shape (N, 2), got {keys.shape}")
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> IPAddress: ...
    @overload
    def __getitem__(self, index: slice) -> AddressView: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return AddressView(self.keys[index])
        return address_of_key(self.keys[index])

    def __iter__(self) -> Iterator[IPAddress]:
        raw = np.ascontiguousarray(self.keys).tobytes()
        return (address_from_key_bytes(raw[i:i + 16]) for i in range(0, len(raw), 16))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AddressView):
            return self.keys.shape == other.keys.shape and bool((self.keys == other.keys).all())
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]   # mutable contents, like a list

    def __repr__(self) -> str:
        shown = ", ".join(str(a) for a in self[:4])
        return f"AddressView([{shown}{', ...' if len(self) > 4 else ''}], n={len(self)})"


# Multipliers of a multiplicative hash (odd 64-bit constants with well-spread bits).
_MIX_A = np.uint64(0x9E3779B97F4A7C15)
_FMIX_1 = np.uint64(0xFF51AFD7ED558CCD)   # MurmurHash3 fmix64's constants
_FMIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT_FMIX = np.uint64(33)
MIN_CAPACITY = 1024          # hash buckets of an empty index
MAX_LOAD = 0.5               # entries per bucket before the index doubles (short probe runs)


def key_hash(k0: np.ndarray, k1: np.ndarray) -> np.ndarray:
    """(N,) uint64 hash of keys given as their two words: both words folded, then MurmurHash3's 64-bit
    finaliser, so consecutive addresses (the usual case) get unrelated hashes (a lone multiply
    clustered them: `KeyIndex`'s probe runs at load 0.4 were 4x longer)."""
    h = k0 * _MIX_A
    h ^= k1
    h ^= h >> _SHIFT_FMIX
    h *= _FMIX_1
    h ^= h >> _SHIFT_FMIX
    h *= _FMIX_2
    h ^= h >> _SHIFT_FMIX
    return h


def unique_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of (N, 2) keys: (index of each distinct key's first row, ascending: the distinct
    keys in the order they first come; inverse (N,) int64, each row's distinct key).

    The order is what the reader's address ids and the rate tracker's slots are given in: the spill
    store's slots then read into rows of ascending ids, nearly in sequence, and the engine's arrays are
    walked in that order too. In the order of their values instead, a million rows scattered at random
    took ~65 ms a read instead of ~30, and the tick's per-address passes gathered at random (measured
    at 1,000,000 destinations: rates, detection and learning 1.6-2.3x slower)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    s = keys[order]
    starts = np.ones(n, bool)
    starts[1:] = (s[1:, 0] != s[:-1, 0]) | (s[1:, 1] != s[:-1, 1])
    group = np.cumsum(starts) - 1
    inverse = np.empty(n, np.int64)
    inverse[order] = group
    # The first row (in input order) of each group: the minimum original index in it.
    first = np.full(int(group[-1]) + 1, n, np.int64)
    np.minimum.at(first, group, order)
    by_position = np.argsort(first)
    rank = np.empty_like(by_position)
    rank[by_position] = np.arange(len(by_position))
    return first[by_position], rank[inverse]


class RowIndex:
    """A hash map from (N, 2) uint64 keys to rows of its owner's key table, vectorised: the owner keeps
    each row's key (`table[row]`), the index only the rows, 4 bytes a bucket.

    Open addressing with linear probing over numpy arrays: a lookup or an insertion of N keys is a
    few whole-array operations per probe step (a bucket's row, then that row's key in the table), and
    probe runs stay short at a load of at most MAX_LOAD. The owner passes its table at every call (it
    may have grown into a new array). No deletion: owners rebuild the index (`rebuild`) when they
    drop many keys at once. Buckets that held the keys too (24 bytes a bucket, key words and value)
    cost 48 MiB an index at a million keys, and the reader and the rate tracker keep one each.
    """

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        self._alloc(_buckets_for(capacity))
        self._count = 0

    def _alloc(self, buckets: int) -> None:
        self._bits = int(buckets).bit_length() - 1
        self._mask = np.int64(buckets - 1)
        self._rows = np.full(buckets, -1, np.int32)       # the row of each bucket's key, -1: empty

    def __len__(self) -> int:
        return self._count

    def _bucket(self, k0: np.ndarray, k1: np.ndarray) -> np.ndarray:
        return (key_hash(k0, k1) >> np.uint64(64 - self._bits)).astype(np.int64)

    def get(self, keys: np.ndarray, table: np.ndarray) -> np.ndarray:
        """(N,) int64 rows of `keys` in `table` ((R, 2) uint64, the owner's), -1 where a key is absent."""
        keys = np.asarray(keys, np.uint64).reshape(-1, 2)
        if not self._count or not len(keys):
            return np.full(len(keys), -1, np.int64)
        k0, k1 = keys[:, 0], keys[:, 1]
        out = np.full(len(keys), -1, np.int64)
        todo, pos = np.arange(len(keys)), self._bucket(k0, k1)
        key_rows = _key_rows(table)
        while len(todo):
            row = self._rows.take(pos)
            held = key_rows.take(np.maximum(row, 0)).view(np.uint64).reshape(-1, 2)
            occupied = row >= 0
            hit = occupied & (held[:, 0] == k0[todo]) & (held[:, 1] == k1[todo])
            out[todo[hit]] = row[hit]
            going = occupied & ~hit           # an occupied bucket of another key: probe on
            todo, pos = todo[going], (pos[going] + 1) & self._mask
        return out

    def add(self, keys: np.ndarray, rows: np.ndarray, table: np.ndarray) -> None:
        """Insert distinct keys that are not in the index yet (callers check with `get`), at distinct
        `rows` of `table`, which already hold them."""
        keys = np.asarray(keys, np.uint64).reshape(-1, 2)
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(keys) != len(rows):
            raise ValueError(f"key index: {len(keys)} keys but {len(rows)} rows")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= min(len(table), np.iinfo(np.int32).max)):
            raise ValueError(f"key index: rows must be within the table's {len(table)}")
        if self._count + len(keys) > MAX_LOAD * len(self._rows):
            self._grow(self._count + len(keys), table)
        self._insert(keys[:, 0], keys[:, 1], rows.astype(np.int32))
        self._count += len(keys)

    def _insert(self, k0: np.ndarray, k1: np.ndarray, rows: np.ndarray) -> None:
        todo = np.arange(len(rows))
        pos = self._bucket(k0, k1)
        while len(todo):
            empty = self._rows.take(pos) < 0
            # Several keys may claim one empty bucket: the last write wins (rows are distinct), the others
            # probe on.
            self._rows[pos[empty]] = rows[todo[empty]]
            won = empty & (self._rows.take(pos) == rows[todo])
            todo, pos = todo[~won], (pos[~won] + 1) & self._mask

    def _grow(self, entries: int, table: np.ndarray) -> None:
        held = self._rows[self._rows >= 0]
        buckets = len(self._rows)
        while entries > MAX_LOAD * buckets:
            buckets *= 2
        self._alloc(buckets)
        keys = table[held]
        self._insert(keys[:, 0], keys[:, 1], held)

    def rebuild(self, rows: np.ndarray, table: np.ndarray) -> None:
        """Replace the contents with the keys of distinct `rows` of `table`."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        self._alloc(len(self._rows) if len(rows) <= MAX_LOAD * len(self._rows) else _buckets_for(len(rows)))
        self._count = 0
        self.add(table[rows], rows, table)

    def clear(self) -> None:
        self._alloc(MIN_CAPACITY)
        self._count = 0


def _key_rows(table: np.ndarray) -> np.ndarray:
    """An (R, 2) uint64 key table as R 16-byte elements (a 1-D gather moves a key as one element)."""
    table = np.ascontiguousarray(table, np.uint64)
    return table.view(np.dtype((np.void, 16))).reshape(len(table))


def _buckets_for(entries: int) -> int:
    """Buckets of an index that holds `entries` keys at most at MAX_LOAD (a power of two)."""
    return max(MIN_CAPACITY, 1 << int(np.ceil(np.log2(max(entries, 1) / MAX_LOAD))))


class KeyIndex:
    """A hash map from (N, 2) uint64 keys to non-negative int64 values, vectorised: a `RowIndex` over
    its own table of the keys and their values, in the order they were added. No deletion: owners
    rebuild the index (`rebuild`) when they drop many keys at once."""

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        self._index = RowIndex(capacity)
        self._keys = np.zeros((MIN_CAPACITY, 2), np.uint64)
        self._values = np.zeros(MIN_CAPACITY, np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 values of `keys`, -1 where a key is absent."""
        rows = self._index.get(keys, self._keys)
        return np.where(rows >= 0, self._values.take(np.maximum(rows, 0)), -1)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Insert distinct keys that are not in the index yet (callers check with `get`)."""
        keys = np.asarray(keys, np.uint64).reshape(-1, 2)
        values = np.asarray(values, np.int64).reshape(-1)
        if len(keys) != len(values):
            raise ValueError(f"key index: {len(keys)} keys but {len(values)} values")
        if (values < 0).any():
            raise ValueError("key index: values must be non-negative")
        count = len(self._index)
        if count + len(keys) > len(self._keys):
            size = max(2 * len(self._keys), count + len(keys))
            self._keys = np.concatenate([self._keys[:count], np.zeros((size - count, 2), np.uint64)])
            self._values = np.concatenate([self._values[:count], np.zeros(size - count, np.int64)])
        self._keys[count:count + len(keys)] = keys
        self._values[count:count + len(keys)] = values
        self._index.add(keys, np.arange(count, count + len(keys)), self._keys)

    def rebuild(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Replace the contents with distinct `keys` → `values`."""
        self._index = RowIndex(len(keys))
        self.add(keys, values)

    def clear(self) -> None:
        self._index.clear()
