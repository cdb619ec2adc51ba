"""The spill store (issue 18): addresses evicted from the address cache keep their counts in slots that
user space reads in place; when every slot is taken they go to the LRU overflow map; the slots of
idle addresses are freed and claimed again. Counts are exact throughout.

One program built small for the module: 2**10 cache slots per CPU id and 1,024 store slots, with
BPF_PROG_TEST_RUN pinned to one CPU so that the cache it fills is one region.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import numpy as np
import pytest
from structlog.testing import capture_logs

from dataplane import spill, testing
from tests.bpf import frames
from tests.bpf.conftest import CLEAN_SRC6, STANDARD_TENANTS, XDP_REDIRECT, apply_tenant_dicts, run
from tests.bpf.test_address_cache import slot_of

STORE_SLOTS = 1024
ALPHA_NET = ipaddress.ip_network("2001:db8:a::/48")


@pytest.fixture(scope="module")
def small() -> Iterator:
    from dataplane.dataplane import Dataplane  # noqa: PLC0415 - a compile of its own, only in this module

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    dp = Dataplane(address_cache_bits=10, max_addresses=STORE_SLOTS)
    try:
        apply_tenant_dicts(dp, STANDARD_TENANTS)
        yield dp
    finally:
        dp.close()
        os.sched_setaffinity(0, cpus)


def addresses(first: int, count: int) -> list[str]:
    """`count` of alpha's IPv6 addresses from interface id `first` on (spread over the cache's slots)."""
    return [str(ALPHA_NET.network_address + (first + i) * 7919) for i in range(count)]


def send_rounds(dp, dsts: list[str], rounds: int) -> None:
    for _ in range(rounds):
        for dst in dsts:
            assert run(dp, frames.udp(CLEAN_SRC6, dst, dport=28960)) == XDP_REDIRECT


def packets_of(dp) -> dict[str, int]:
    counters = dp.read_destination_counters()
    return {str(a): int(p) for a, p in zip(counters.addresses, counters.packets.sum(axis=1), strict=True)}


def overflow_count(dp) -> int:
    return testing.read_map(dp, "sw_addr_spill")[2]


def index_entries(dp) -> dict[bytes, int]:
    keys, values, count = testing.read_map(dp, "sw_addr_store_index")
    return {keys[i].tobytes(): int(values[i].view(np.uint32)[0]) for i in range(count)}


def test_evicted_addresses_count_through_store_slots_that_the_reader_maps(small):
    store = small.reader.store
    before = store.handed_out()
    dsts = addresses(1, 600)
    send_rounds(small, dsts, 2)
    seen = packets_of(small)
    assert {d: seen.get(d) for d in dsts} == dict.fromkeys(dsts, 2)
    keys, values, free = store.rows()
    assert store.handed_out() > before, "600 addresses in 1,024 direct-mapped slots: some must have been evicted"
    assert overflow_count(small) == 0
    assert len(keys) == store.handed_out() and len(free) == 0 and store.in_use == len(keys)
    # Every claimed slot is in the index under its own address, with the address's tenant.
    index = index_entries(small)
    assert len(index) == len(keys)
    for slot, key in enumerate(keys):
        assert index[key.tobytes()] == slot
    assert (values[:, 0, small.reader.address_layout.spilled_tenant_at] & 0xFFFFFFFF == 0).all()   # alpha: index 0


def test_a_full_store_spills_into_the_overflow_map_and_every_count_is_kept(small):
    store = small.reader.store
    dsts = addresses(10_000, 1_800)
    send_rounds(small, dsts, 2)
    with capture_logs() as logs:
        seen = packets_of(small)
    assert store.handed_out() == STORE_SLOTS
    status = small.spill_store_status()
    assert status["in_use"] == status["slots"] == STORE_SLOTS and status["overflow_capacity"] == 1024
    assert status["overflow_entries"] == overflow_count(small) > 0
    full = [e for e in logs if e["event"] == "dataplane.spill_store_full"]
    assert full and full[0]["overflow_entries"] == status["overflow_entries"] and "max_addresses" in full[0]["hint"]
    assert overflow_count(small) > 0, "1,800 addresses for 1,024 cache and 1,024 store slots (some taken by the first test)"
    assert {d: seen.get(d) for d in dsts} == dict.fromkeys(dsts, 2)


def test_idle_slots_are_freed_after_two_reads_and_claimed_again_by_new_addresses(small, monkeypatch):
    """After the module's earlier tests every store slot is taken by an idle address. Under pressure the
    reader takes them out of the index, reads them once more, then zeroes and frees them; new evictions
    claim the freed slots (the handed-out count stays at the store's size), and count exactly."""
    monkeypatch.setattr(spill, "RECLAIM_READS", 1)
    monkeypatch.setattr(spill, "RETIRE_MAX", 300)         # a check retires this many at most
    store = small.reader.store
    send_rounds(small, addresses(10_000, 1_800), 2)      # the store full, also when this test runs alone
    small.read_destination_counters()     # the first check notes each slot's activity
    assert store.in_use == STORE_SLOTS and not len(store.retiring)
    freed_before = store.freed
    small.read_destination_counters()     # the second finds them unchanged: out of the index
    retired = store.retiring
    # RETIRE_MAX of the idle slots looked at, less those whose address is cached.
    assert 200 < len(retired) <= 300, "idle slots under pressure are retired, RETIRE_MAX at a read"
    keys, claimed, _ = store.slot_state(retired)
    assert claimed.all()                  # still read once more
    index = index_entries(small)
    assert not any(key.tobytes() in index for key in keys)
    monkeypatch.setattr(spill, "RECLAIM_READS", 1000)   # no new check: the check's other idle slots go on
    small.read_destination_counters()     # read once more with their last counts; the next 300 retired
    assert 2 * len(retired) - 100 < len(store.retiring) <= len(retired) + 300
    small.read_destination_counters()     # then zeroed and queued as free
    assert store.freed - freed_before == len(retired)
    assert store.slot_state(retired)[2].all()
    _, _, free = store.rows()          # read in place, the freed slots skipped
    assert set(retired.tolist()) <= set(free.tolist())
    retired_addresses = {str(ipaddress.IPv6Address(key.tobytes())) for key in keys}
    assert retired_addresses.isdisjoint(packets_of(small))
    fresh = addresses(50_000, 400)
    send_rounds(small, fresh, 2)
    assert store.handed_out() == STORE_SLOTS     # nothing new handed out: the freed slots went first
    seen = packets_of(small)
    assert {d: seen.get(d) for d in fresh} == dict.fromkeys(fresh, 2)
    assert store.slot_state(retired)[1].any(), "new evictions must claim freed slots"


def test_the_store_and_its_index_survive_a_restart_of_the_control_plane():
    """Pinned: a restarted control plane reads the counts spilled before it started, and the index still sends
    an address's next spill to its own slot."""
    import uuid  # noqa: PLC0415

    from dataplane.dataplane import Dataplane, purge  # noqa: PLC0415

    pin_dir = f"/sys/fs/bpf/seawall-test-{uuid.uuid4().hex[:8]}"
    os.makedirs(pin_dir)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        first = Dataplane(pin_dir, address_cache_bits=10, max_addresses=STORE_SLOTS)
        apply_tenant_dicts(first, STANDARD_TENANTS)
        dsts = addresses(90_000, 600)
        send_rounds(first, dsts, 2)
        handed = first.reader.store.handed_out()
        assert handed > 0
        first.close()
        again = Dataplane(pin_dir, address_cache_bits=10, max_addresses=STORE_SLOTS)
        try:
            assert again.reader.store.handed_out() == handed
            seen = packets_of(again)
            assert {d: seen.get(d) for d in dsts} == dict.fromkeys(dsts, 2)
            send_rounds(again, dsts, 1)
            assert again.reader.store.handed_out() == handed      # the same addresses: their own slots
            seen = packets_of(again)
            assert {d: seen.get(d) for d in dsts} == dict.fromkeys(dsts, 3)
        finally:
            again.close()
    finally:
        os.sched_setaffinity(0, cpus)
        purge(pin_dir)


def test_an_address_in_the_overflow_map_that_then_claims_a_freed_slot_counts_both(monkeypatch):
    """An address spilled while the store was full stays in the overflow map; once idle slots are freed, its
    next eviction claims one: the read adds its counts from both."""
    from dataplane.dataplane import Dataplane  # noqa: PLC0415 - a compile of its own: a store filled from empty

    monkeypatch.setattr(spill, "RECLAIM_READS", 1)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    dp = Dataplane(address_cache_bits=10, max_addresses=STORE_SLOTS)
    try:
        apply_tenant_dicts(dp, STANDARD_TENANTS)
        send_rounds(dp, addresses(0, 1_800), 2)
        keys, _, count = testing.read_map(dp, "sw_addr_spill")
        overflowed = {str(ipaddress.IPv6Address(keys[i].tobytes())) for i in range(count)}
        assert overflowed
        store = dp.reader.store
        for _ in range(4):                      # note, retire (out of the index), read once more, free
            dp.read_destination_counters()
        assert store.freed > 0
        before = packets_of(dp)
        target = ipaddress.IPv6Address(sorted(overflowed)[0])
        other = next(a for a in (ALPHA_NET.network_address + 5_000_000 + i for i in range(1, 100_000))
                     if slot_of(a, 10) == slot_of(target, 10))
        for dst in (target, other):             # the target takes its cache slot, then loses it again
            assert run(dp, frames.udp(CLEAN_SRC6, str(dst), dport=28960)) == XDP_REDIRECT
        assert str(target) in overflowed and target.packed in index_entries(dp)     # in both now
        assert packets_of(dp)[str(target)] == before[str(target)] + 1
    finally:
        dp.close()
        os.sched_setaffinity(0, cpus)
