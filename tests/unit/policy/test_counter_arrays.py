"""Counters as arrays: map keys and their hash index, lazy addresses, tenant counter arrays, and the
destination reader's merge of cache slots, conflicting slots and the spill map (no kernel)."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from dataplane.api import DestinationCounters, TenantCounterArrays, TenantCounters
from dataplane.constants import NO_TENANT, DropReason, TrafficClass
from dataplane.keys import AddressView, KeyIndex, RowIndex, address_keys, unique_keys
from dataplane.reader import ADDRESS_LAYOUT as LAYOUT
from dataplane.reader import AddressMemo, decode_destination_counters
from policy.rates import RateTracker

C = len(TrafficClass)


def keys_of(*addresses: str) -> np.ndarray:
    return address_keys([ipaddress.ip_address(a) for a in addresses])


def test_keys_are_the_maps_bytes_with_ipv4_mapped():
    keys = keys_of("198.51.100.7", "2001:db8::1")
    assert keys.shape == (2, 2) and keys.dtype == np.uint64
    assert keys[0].tobytes() == b"\0" * 10 + b"\xff\xff" + bytes([198, 51, 100, 7])
    assert keys[1].tobytes() == ipaddress.ip_address("2001:db8::1").packed


def test_address_view_builds_addresses_on_access_and_compares_as_a_sequence():
    names = ["198.51.100.7", "2001:db8::1", "203.0.113.9"]
    view = AddressView(keys_of(*names))
    assert len(view) == 3
    assert view[0] == ipaddress.IPv4Address("198.51.100.7") and type(view[0]) is ipaddress.IPv4Address
    assert view[1] == ipaddress.IPv6Address("2001:db8::1")
    assert view == [ipaddress.ip_address(n) for n in names]
    assert view != [ipaddress.ip_address(n) for n in names[:2]]
    assert list(view[1:]) == [ipaddress.ip_address(n) for n in names[1:]]
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        AddressView(np.zeros(4, np.uint64))


def test_key_index_finds_every_key_through_collisions_and_growth():
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**63, (50_000, 2), dtype=np.uint64)
    keys[:1000, 0] = 0                     # IPv4-mapped keys share their first word
    index = KeyIndex()
    index.add(keys[:20_000], np.arange(20_000))       # grows several times
    index.add(keys[20_000:], np.arange(20_000, 50_000))
    assert len(index) == 50_000
    order = rng.permutation(50_000)
    np.testing.assert_array_equal(index.get(keys[order]), order)
    absent = keys.copy()
    absent[:, 1] ^= np.uint64(1)
    assert (index.get(absent) == -1).all()
    index.rebuild(keys[:10], np.arange(10) * 3)
    assert len(index) == 10
    np.testing.assert_array_equal(index.get(keys[:12]), [*(np.arange(10) * 3), -1, -1])
    with pytest.raises(ValueError, match="non-negative"):
        index.add(keys[20:21], np.array([-1]))
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        index.add(keys[20:22], np.array([1]))


def test_row_index_finds_rows_of_its_owners_table_through_collisions_growth_and_a_new_table():
    # Issue 18 item 2: the index holds only rows (4 bytes a bucket); the keys are the owner's table, which
    # may be a new, larger array at the next call.
    rng = np.random.default_rng(8)
    keys = rng.integers(0, 2**63, (40_000, 2), dtype=np.uint64)
    keys[:1000, 0] = 0                     # IPv4-mapped keys share their first word
    keys[5] = 0                            # the unspecified address is a key like any other
    table = np.zeros((20_000, 2), np.uint64)
    rows = rng.permutation(20_000)
    table[rows] = keys[:20_000]
    index = RowIndex()
    index.add(keys[:20_000], rows, table)             # grows several times
    grown = np.zeros((60_000, 2), np.uint64)
    grown[:20_000] = table
    grown[20_000:40_000] = keys[20_000:]
    index.add(keys[20_000:], np.arange(20_000, 40_000), grown)
    assert len(index) == 40_000
    want = np.concatenate([rows, np.arange(20_000, 40_000)])
    order = rng.permutation(40_000)
    np.testing.assert_array_equal(index.get(keys[order], grown), want[order])
    absent = keys.copy()
    absent[:, 1] ^= np.uint64(1)
    assert (index.get(absent, grown) == -1).all()
    index.rebuild(np.array([7, 9, 30_000]), grown)
    assert len(index) == 3
    np.testing.assert_array_equal(index.get(grown[[7, 9, 30_000, 8]], grown), [7, 9, 30_000, -1])
    with pytest.raises(ValueError, match="within the table's"):
        index.add(keys[:1], np.array([60_000]), grown)
    index.clear()
    assert len(index) == 0 and (index.get(keys[:3], grown) == -1).all()


def test_unique_keys_gives_first_rows_and_inverse():
    keys = keys_of("198.51.100.1", "198.51.100.2", "198.51.100.1", "2001:db8::1", "198.51.100.2")
    first, inverse = unique_keys(keys)
    np.testing.assert_array_equal(keys[first][inverse], keys)
    assert first.tolist() == [0, 1, 3]           # in the order the keys first come
    assert inverse.tolist() == [0, 1, 0, 2, 1]


def tenant_counters(inbound: int, dropped: int) -> TenantCounters:
    cp = np.zeros((2, C), np.uint64)
    cp[0, TrafficClass.UDP] = inbound
    return TenantCounters(passed_packets=np.array([max(inbound - dropped, 0), 0], np.uint64),
                          passed_bytes=np.zeros(2, np.uint64), dropped_packets=np.array([dropped, 0], np.uint64),
                          dropped_bytes=np.zeros(2, np.uint64), class_packets=cp, class_bytes=cp * 10,
                          reason_packets=np.zeros((2, len(DropReason)), np.uint64))


def test_tenant_counter_arrays_round_trip_and_derive_passed_counts():
    arrays = TenantCounterArrays.from_mapping({2: tenant_counters(100, 30), 5: tenant_counters(7, 0)}, 8)
    assert arrays.present.tolist() == [False, False, True, False, False, True, False, False]
    assert arrays.passed_packets[2].tolist() == [70, 0]
    one = arrays.tenant(2)
    assert one.passed_packets.tolist() == [70, 0] and one.class_packets[0, TrafficClass.UDP] == 100
    with pytest.raises(IndexError, match="within 0..7"):
        arrays.tenant(8)
    with pytest.raises(IndexError, match="within 0..7"):
        TenantCounterArrays.from_mapping({9: tenant_counters(1, 0)}, 8)
    # Drops summed over CPUs a moment ahead of their class counts: passed floors at zero, no wrap.
    racing = TenantCounterArrays.from_mapping({1: tenant_counters(5, 9)}, 2)
    assert racing.passed_packets[1].tolist() == [0, 0]


def cache_entry(raw: np.ndarray, slot: int, cpu: int, key: np.ndarray, tenant: int, packets: int) -> None:
    raw[slot, cpu, :2] = key
    raw[slot, cpu, 2] = np.uint64(tenant) | np.uint64(1 << 32)
    raw[slot, cpu, LAYOUT.counters_at + LAYOUT.packets_at + TrafficClass.UDP] = packets
    raw[slot, cpu, LAYOUT.counters_at + LAYOUT.dropped_at] = packets // 10


def test_reader_merges_cache_slots_conflicting_slots_and_the_spill_map_by_address():
    a, b, c, d, e = keys_of("198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::4", "198.51.100.5")
    cache = np.zeros((4, 2, LAYOUT.entry_words), np.uint64)
    cache_entry(cache, 0, 0, a, 1, 100)          # both CPUs hold a: summed in place
    cache_entry(cache, 0, 1, a, 1, 20)
    cache_entry(cache, 1, 0, b, 1, 30)           # the CPUs disagree: b on one, c on the other
    cache_entry(cache, 1, 1, c, 2, 40)
    cache_entry(cache, 2, 1, e, NO_TENANT, 50)   # no tenant owns e: not reported
    cache_entry(cache, 3, 0, d, 3, 50)           # d is cached with its tenant on one CPU, and was counted
    cache_entry(cache, 3, 1, d, NO_TENANT, 9)    # without one on the other (before its tenant came): not reported
    spill_keys = np.stack([a, c, d])
    spill = np.zeros((3, 2, LAYOUT.spilled_words), np.uint64)
    for row, (cpu, tenant, packets) in enumerate(((1, 1, 5), (0, 2, 6), (0, 3, 7))):
        spill[row, cpu, LAYOUT.packets_at + TrafficClass.UDP] = packets
        spill[row, cpu, LAYOUT.spilled_tenant_at] = tenant
    memo = AddressMemo(1000)
    ids_by_read = []
    for _ in range(2):                           # the second read takes the kept-slot path
        out = decode_destination_counters(cache, spill_keys, spill, LAYOUT, memo)
        got = {str(addr): (int(out.packets[i, TrafficClass.UDP]), int(out.tenant_idx[i]), int(out.dropped_packets[i]))
               for i, addr in enumerate(out.addresses)}
        assert got == {"198.51.100.1": (125, 1, 12), "198.51.100.2": (30, 1, 3), "198.51.100.3": (46, 2, 4),
                       "2001:db8::4": (57, 3, 5)}
        assert out.ids is not None and (np.diff(out.ids) > 0).all()   # ascending reader ids
        ids_by_read.append(dict(zip(got, out.ids.tolist(), strict=True)))
    assert ids_by_read[0] == ids_by_read[1]      # an address keeps its id from read to read


def test_rates_follow_keys_when_the_reader_reuses_its_ids_for_other_addresses():
    rt = RateTracker()

    def read(names: list[str], ids: list[int], udp: list[int]) -> DestinationCounters:
        packets = np.zeros((len(names), C), np.uint64)
        packets[:, TrafficClass.UDP] = udp
        return DestinationCounters(keys=keys_of(*names), tenant_idx=np.ones(len(names), np.uint32), packets=packets,
                                   bytes=packets * 100, dropped_packets=np.zeros(len(names), np.uint64),
                                   ids=np.array(ids, np.int64))

    r0, _ = rt.update_destinations(0.0, read(["198.51.100.1", "198.51.100.2"], [0, 1], [10, 20]))
    r1, _ = rt.update_destinations(1.0, read(["198.51.100.1", "198.51.100.2"], [0, 1], [15, 40]))
    np.testing.assert_array_equal(r1.slots, r0.slots)
    assert r1.pps[:, TrafficClass.UDP].tolist() == [5.0, 20.0]
    # The reader forgot everything and numbered the addresses anew, the other way round.
    r2, _ = rt.update_destinations(2.0, read(["198.51.100.2", "198.51.100.1"], [0, 1], [50, 16]))
    assert r2.slots.tolist() == r0.slots[::-1].tolist()
    assert r2.pps[:, TrafficClass.UDP].tolist() == [10.0, 1.0]
    with pytest.raises(ValueError, match="ids has shape"):
        bad = read(["198.51.100.1"], [0], [1])
        rt.update_destinations(3.0, DestinationCounters(keys=bad.keys, tenant_idx=bad.tenant_idx, packets=bad.packets,
                                                        bytes=bad.bytes, dropped_packets=bad.dropped_packets,
                                                        ids=np.array([0, 1])))
