"""Issue 18 item 2: the destination decode on random maps, bit for bit against summing every copy by address,
and its one-copy spill path (counters scattered straight from the read's buffer) against the several-copy
one (summed into a new array first, as every spill read was before)."""

from __future__ import annotations

import numpy as np
import pytest

from dataplane.api import DataplaneError
from dataplane.constants import NO_TENANT, TrafficClass
from dataplane.reader import ADDRESS_LAYOUT as LAY
from dataplane.reader import (
    COPY_CHUNK_SLOTS,
    AddressMemo,
    cache_copy_layout,
    copy_cache,
    decode_destination_counters,
)

C = len(TrafficClass)
CW = 2 * C + 1     # packets, bytes, dropped


def random_maps(rng: np.random.Generator, slots: int, cpus: int, n_spill: int, overlap: int):
    """A cache of `slots` x `cpus` with empty, unreported (no tenant) and conflicting copies, and a spill map of
    `n_spill` addresses, `overlap` of them also cached."""
    pool = rng.integers(1, 2**62, (slots + slots * cpus + n_spill, 2), dtype=np.uint64)
    fresh = slots + slots * cpus        # the spill map's own addresses start here
    cache = np.zeros((slots, cpus, LAY.entry_words), np.uint64)
    for s in range(slots):
        base_key = pool[s]
        for cpu in range(cpus):
            kind = rng.random()
            if kind < 0.15:
                continue                                    # never filled (generation 0)
            key = base_key if kind < 0.9 else pool[slots + s * cpus + cpu]   # a few conflicting copies
            tenant = NO_TENANT if rng.random() < 0.05 else int(rng.integers(0, 50))
            cache[s, cpu, LAY.addr_at:LAY.addr_at + 2] = key
            cache[s, cpu, LAY.head_at] = (np.uint64(tenant) << np.uint64(LAY.tenant_shift)) | \
                (np.uint64(1) << np.uint64(LAY.generation_shift))
            cache[s, cpu, LAY.counters_at:LAY.counters_at + CW] = rng.integers(0, 1000, CW, dtype=np.uint64)
    spill_keys = np.concatenate([pool[:overlap], pool[fresh:fresh + n_spill - overlap]])
    spill = np.zeros((n_spill, 1, LAY.spilled_words), np.uint64)
    spill[:, 0, :CW] = rng.integers(1, 1000, (n_spill, CW), dtype=np.uint64)
    spill[:, 0, LAY.spilled_tenant_at] = rng.integers(0, 50, n_spill, dtype=np.uint64)
    return cache, spill_keys, spill


def brute_force(cache: np.ndarray, spill_keys: np.ndarray, spill: np.ndarray) -> dict[bytes, np.ndarray]:
    """Counters per address: every live cache copy (a tenant set) plus every spill copy, summed."""
    out: dict[bytes, np.ndarray] = {}
    for s in range(cache.shape[0]):
        for cpu in range(cache.shape[1]):
            head = int(cache[s, cpu, LAY.head_at])
            tenant, generation = (head >> LAY.tenant_shift) & 0xFFFFFFFF, (head >> LAY.generation_shift) & 0xFFFFFFFF
            if generation and tenant != NO_TENANT:
                key = cache[s, cpu, LAY.addr_at:LAY.addr_at + 2].tobytes()
                out[key] = out.get(key, np.zeros(CW, np.uint64)) + cache[s, cpu, LAY.counters_at:LAY.counters_at + CW]
    for key, row in zip(spill_keys, spill, strict=True):
        k = key.tobytes()
        out[k] = out.get(k, np.zeros(CW, np.uint64)) + row[:, :CW].sum(axis=0, dtype=np.uint64)
    return out


def rows_of(counters) -> dict[bytes, np.ndarray]:
    block = np.concatenate([counters.packets, counters.bytes, counters.dropped_packets[:, None]], axis=1)
    return {counters.keys[i].tobytes(): block[i] for i in range(len(counters.keys))}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize(("slots", "cpus", "n_spill", "overlap"), [(64, 2, 300, 0), (64, 3, 200, 20), (8, 1, 50, 4),
                                                                    (32, 2, 0, 0)])
def test_issue18_decode_matches_summing_every_copy(seed, slots, cpus, n_spill, overlap):
    rng = np.random.default_rng(seed)
    cache, spill_keys, spill = random_maps(rng, slots, cpus, n_spill, overlap)
    view = cache.copy().transpose(1, 0, 2).copy().transpose(1, 0, 2)    # CPU-major memory, as the kernel's
    fast = decode_destination_counters(view, spill_keys, spill, LAY, AddressMemo(1 << 20))
    expected = brute_force(cache, spill_keys, spill)
    got = rows_of(fast)
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        np.testing.assert_array_equal(got[key], row)
    # Ascending ids, one row per address.
    assert (np.diff(fast.ids) > 0).all()
    # The copying path (several copies of the spill map: summed first) agrees bit for bit, tenants included.
    two = np.zeros((n_spill, 2, LAY.spilled_words), np.uint64)
    two[:, 0] = spill[:, 0]
    two[:, 1, LAY.spilled_tenant_at] = spill[:, 0, LAY.spilled_tenant_at]
    slow = decode_destination_counters(view, spill_keys, two, LAY, AddressMemo(1 << 20))
    for field in ("keys", "tenant_idx", "packets", "bytes", "dropped_packets", "ids"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field), err_msg=field)
    # A spilled address not cached keeps the tenant it was spilled with.
    cached = {cache[s, c, LAY.addr_at:LAY.addr_at + 2].tobytes() for s in range(slots) for c in range(cpus)}
    tenant_of = {fast.keys[i].tobytes(): int(fast.tenant_idx[i]) for i in range(len(fast.keys))}
    for key, row in zip(spill_keys, spill, strict=True):
        if key.tobytes() not in cached:
            assert tenant_of[key.tobytes()] == int(row[0, LAY.spilled_tenant_at])


@pytest.mark.parametrize("seed", [5, 6])
def test_issue18_the_cache_copy_of_the_counted_words_decodes_as_the_whole_slots(seed):
    """The read copies each slot's address, head and carried counter words only (`copy_cache`): decoded with
    that copy's layout, the result is the whole slots' bit for bit."""
    rng = np.random.default_rng(seed)
    cache, spill_keys, spill = random_maps(rng, 64, 2, 100, 10)
    cpu_major = cache.transpose(1, 0, 2).copy()
    whole = decode_destination_counters(cpu_major.transpose(1, 0, 2), spill_keys, spill, LAY, AddressMemo(1 << 20))
    copied = copy_cache(cpu_major, LAY)
    lay = cache_copy_layout(LAY)
    assert copied.shape == (2, 64, lay.entry_words) and lay.entry_words < LAY.entry_words
    part = decode_destination_counters(copied.transpose(1, 0, 2), spill_keys, spill, lay, AddressMemo(1 << 20))
    for field in ("keys", "tenant_idx", "packets", "bytes", "dropped_packets", "ids"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(part, field), err_msg=field)
    # The buffer is reused read after read.
    assert copy_cache(cpu_major, LAY, copied) is copied


def test_issue18_a_slot_evicted_between_the_copys_passes_reads_as_empty():
    """The kernel evicts a slot while the read copies the cache: between the address pass and the counters
    pass, the old address's counters go to the spill map and the new address's start. The copy must not pair
    the old address with the new counters: that slot reads as never filled."""
    rng = np.random.default_rng(7)
    cache, _, _ = random_maps(rng, 16, 1, 0, 0)
    cpu_major = cache.transpose(1, 0, 2).copy()
    slot = int(np.flatnonzero(cpu_major[0, :, LAY.head_at] != 0)[0])
    old_key = cpu_major[0, slot, :2].copy()
    new_key = np.array([0x20010DB8, 0x99], np.uint64)

    def evict() -> None:
        cpu_major[0, slot, LAY.counters_at:LAY.counters_at + CW] = 0
        cpu_major[0, slot, LAY.counters_at] = 3            # the new address's first packets
        cpu_major[0, slot, :2] = new_key

    copied = copy_cache(cpu_major, LAY, between=evict)
    assert not copied[0, slot].any()
    others = np.ones(16, bool)
    others[slot] = False
    np.testing.assert_array_equal(copied[0, others, :2], cpu_major[0, others, :2])
    decoded = decode_destination_counters(copied.transpose(1, 0, 2), np.zeros((0, 2), np.uint64),
                                          np.zeros((0, 1, LAY.spilled_words), np.uint64), cache_copy_layout(LAY),
                                          AddressMemo(1 << 20))
    keys = {k.tobytes() for k in decoded.keys}
    assert old_key.tobytes() not in keys and new_key.tobytes() not in keys


def test_issue18_the_cache_copy_goes_chunk_by_chunk_and_checks_every_chunk():
    """The copy takes the slots COPY_CHUNK_SLOTS at a time: a cache of several chunks per region, from a
    strided source (the synthetic benchmark copies a transposed array), copies every slot's words as the
    layout says, and a slot evicted in a later chunk of the second region still reads as never filled."""
    rng = np.random.default_rng(11)
    slots = 3 * COPY_CHUNK_SLOTS + 5
    cache = rng.integers(1, 1 << 62, size=(slots, 2, LAY.entry_words), dtype=np.uint64)
    source = cache.transpose(1, 0, 2)            # (regions, slots, words), not contiguous
    lay = cache_copy_layout(LAY)
    cw = lay.entry_words - lay.counters_at
    victim = 2 * COPY_CHUNK_SLOTS + 3
    calls = []

    def evict() -> None:
        calls.append(1)
        if len(calls) == 2 * 4 - 1:              # the third chunk of the second region (4 chunks a region)
            source[1, victim, :2] = (0x20010DB8, 0x77)

    copied = copy_cache(source, LAY, between=evict)
    assert len(calls) == 2 * 4
    expected = np.concatenate([source[..., :lay.counters_at],
                               source[..., LAY.counters_at:LAY.counters_at + cw]], axis=-1)
    expected[1, victim] = 0
    np.testing.assert_array_equal(copied, expected)


def store_rows(spill_keys: np.ndarray, spill: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spill rows laid out as the mapped spill store holds them (counters, tenant word, then the address, in
    one row per slot, read in place through strided views) with zeroed slots at `free`."""
    n = len(spill_keys) + len(free)
    words = np.zeros((n, LAY.spilled_words + 2), np.uint64)
    used = np.setdiff1d(np.arange(n), free)
    words[used, :LAY.spilled_words] = spill[:, 0]
    words[used, LAY.spilled_words:] = spill_keys
    words[used, LAY.spilled_tenant_at] |= np.uint64(1 << 32)      # claimed
    return words[:, LAY.spilled_words:], words[:, :LAY.spilled_words].reshape(n, 1, LAY.spilled_words), free


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_issue18_store_rows_read_in_place_with_free_slots_decode_as_the_list_of_spilled_addresses(seed):
    """The spill store's rows are views of the mapped store (strided: the address follows the counters), free
    slots among them (all zeros) are skipped, and consecutive reads give the same rows and ids."""
    rng = np.random.default_rng(seed)
    cache, spill_keys, spill = random_maps(rng, 64, 2, 400, 30)
    view = cache.copy().transpose(1, 0, 2).copy().transpose(1, 0, 2)
    listed = decode_destination_counters(view, spill_keys, spill, LAY, AddressMemo(1 << 20))
    free = np.sort(rng.choice(len(spill_keys) + 40, 40, replace=False))
    keys, values, holes = store_rows(spill_keys, spill, free)
    assert not values.flags.c_contiguous and not keys.flags.c_contiguous
    memo = AddressMemo(1 << 20)
    for _ in range(3):
        in_place = decode_destination_counters(view, keys, values, LAY, memo, spill_holes=holes)
        assert rows_of(in_place).keys() == rows_of(listed).keys()      # no all-zero address from a free slot
        for field in ("keys", "tenant_idx", "packets", "bytes", "dropped_packets"):
            np.testing.assert_array_equal(getattr(in_place, field), getattr(listed, field), err_msg=field)
        assert (np.diff(in_place.ids) > 0).all()


def test_issue18_an_address_in_two_spilled_rows_counts_both():
    """While a retired store slot is read for the last time the address may already count in a new slot (and an
    address can be both in the store and in the overflow map): its rows add up, with the last row's tenant."""
    rng = np.random.default_rng(10)
    cache, spill_keys, spill = random_maps(rng, 16, 2, 50, 0)
    view = cache.copy().transpose(1, 0, 2).copy().transpose(1, 0, 2)
    twice_keys = np.concatenate([spill_keys, spill_keys[[3, 7]]])
    twice = np.concatenate([spill, spill[[3, 7]]])
    twice[-1, 0, LAY.spilled_tenant_at] = 49
    got = rows_of(decode_destination_counters(view, twice_keys, twice, LAY, AddressMemo(1 << 20)))
    expected = brute_force(cache, twice_keys, twice)
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        np.testing.assert_array_equal(got[key], row)
    np.testing.assert_array_equal(got[spill_keys[3].tobytes()], 2 * spill[3, 0, :CW])   # not cached: overlap 0
    decoded = decode_destination_counters(view, twice_keys, twice, LAY, AddressMemo(1 << 20))
    row = [i for i in range(len(decoded.keys)) if decoded.keys[i].tobytes() == spill_keys[7].tobytes()][0]
    assert int(decoded.tenant_idx[row]) == 49


def test_issue18_a_store_slot_read_while_it_is_given_back_is_no_address():
    """A CPU that lost the race to claim a slot for an address clears the slot it took: read claimed, it holds
    the unspecified address :: (never a destination) and no counts, and yields no row."""
    rng = np.random.default_rng(11)
    cache, spill_keys, spill = random_maps(rng, 16, 2, 40, 0)
    view = cache.copy().transpose(1, 0, 2).copy().transpose(1, 0, 2)
    keys, values, holes = store_rows(spill_keys, spill, np.zeros(0, np.int64))
    keys[5] = 0
    values[5, 0, :] = 0
    values[5, 0, LAY.spilled_tenant_at] = np.uint64(1 << 32)         # still claimed
    got = decode_destination_counters(view, keys, values, LAY, AddressMemo(1 << 20), spill_holes=holes)
    assert (0, 0) not in {tuple(k) for k in got.keys.tolist()}
    assert len(got.keys) == len(rows_of(got)) == len(brute_force(cache, np.delete(spill_keys, 5, axis=0),
                                                                   np.delete(spill, 5, axis=0)))


@pytest.mark.parametrize("seed", [12, 13])
@pytest.mark.parametrize("block", [1, 3, 17])
def test_issue18_the_counter_rows_made_a_block_at_a_time_are_the_whole_read(seed, block):
    """The rate tracker asks for a read's rows a block at a time (`CounterRows.fill`): blocks of any size, with
    conflicting cache slots and spilled repeats on either side of a block's edge, give the rows `whole()` gives,
    and the rows `brute_force` sums. A read's rows are refused once they are released (the reader's next read)."""
    rng = np.random.default_rng(seed)
    cache, spill_keys, spill = random_maps(rng, 32, 3, 120, 10)
    twice = rng.choice(len(spill_keys), 9, replace=False)
    spill_keys, spill = np.concatenate([spill_keys, spill_keys[twice]]), np.concatenate([spill, spill[twice]])
    view = cache.copy().transpose(1, 0, 2).copy().transpose(1, 0, 2)
    decoded = decode_destination_counters(view, spill_keys, spill, LAY, AddressMemo(1 << 20))
    n = len(decoded)
    blocks = np.zeros((n, CW), np.uint64)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        decoded.rows.fill(lo, hi, blocks[lo:hi])
    np.testing.assert_array_equal(blocks, decoded.rows.whole())
    expected = brute_force(cache, spill_keys, spill)
    assert {decoded.keys[i].tobytes(): tuple(blocks[i]) for i in range(n)} == \
        {key: tuple(row) for key, row in expected.items()}
    again = decode_destination_counters(view, spill_keys, spill, LAY, AddressMemo(1 << 20))
    again.rows.release()
    with pytest.raises(DataplaneError, match="earlier read"):
        again.rows.fill(0, 1, np.zeros((1, CW), np.uint64))
