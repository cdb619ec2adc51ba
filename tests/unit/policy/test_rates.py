"""Counters → rates: priming, LRU churn by address, counter resets, variable tick length, tenants."""

from __future__ import annotations

import ipaddress
import itertools

import numpy as np
import pytest

from dataplane.api import DestinationCounters, TenantCounters
from dataplane.constants import MAX_TENANTS, NO_TENANT, DropReason, TrafficClass
from policy.rates import RateTracker

C = len(TrafficClass)
A, B, D = (ipaddress.ip_address(x) for x in ("198.51.100.1", "198.51.100.2", "2001:db8::3"))


def counters(rows: dict) -> DestinationCounters:
    """rows: address -> (packets per class list, dropped)"""
    addrs = list(rows)
    return DestinationCounters.from_addresses(
        addresses=addrs, tenant_idx=np.array([1] * len(addrs), np.uint32),
        packets=np.array([rows[a][0] for a in addrs], np.uint64).reshape(-1, C),
        bytes=np.array([[v * 100 for v in rows[a][0]] for a in addrs], np.uint64).reshape(-1, C),
        dropped_packets=np.array([rows[a][1] for a in addrs], np.uint64))


def pk(udp: int = 0, syn: int = 0) -> list[int]:
    v = [0] * C
    v[TrafficClass.UDP] = udp
    v[TrafficClass.TCP_SYN] = syn
    return v


def by_address(rates) -> dict:
    return {a: (rates.pps[i], rates.dropped_pps[i]) for i, a in enumerate(rates.addresses)}


def test_first_read_primes_and_yields_no_rates():
    rt = RateTracker()
    r, _ = rt.update_destinations(10.0, counters({A: (pk(udp=1_000_000), 5)}))
    assert not r.valid.any() and r.pps.sum() == 0


def test_rates_follow_addresses_across_row_order_churn_and_resets():
    rt = RateTracker()
    rt.update_destinations(0.0, counters({A: (pk(udp=1000), 0), B: (pk(syn=50), 0)}))
    # Row order changes, a new address appears (its whole counter is this tick's traffic).
    r, _ = rt.update_destinations(2.0, counters({D: (pk(udp=300), 0), B: (pk(syn=250), 10), A: (pk(udp=3000), 0)}))
    got = by_address(r)
    assert got[A][0][TrafficClass.UDP] == pytest.approx(1000.0)        # (3000 - 1000) / 2 s
    assert got[B][0][TrafficClass.TCP_SYN] == pytest.approx(100.0)
    assert got[B][1] == pytest.approx(5.0)
    assert got[D][0][TrafficClass.UDP] == pytest.approx(150.0)
    assert r.valid.all()
    # A is evicted; B reads below its previous value: no rate until a second read tells a reset from
    # counts in flight between the reader's two maps (test_rates_read_races.py).
    r, _ = rt.update_destinations(3.0, counters({B: (pk(syn=40), 0), D: (pk(udp=400), 0)}))
    got = by_address(r)
    assert A not in got
    assert got[B][0][TrafficClass.TCP_SYN] == 0.0
    assert got[D][0][TrafficClass.UDP] == pytest.approx(100.0)
    # A comes back into the LRU below its old counters: re-created, fresh counter, same slot (its
    # baseline survives). B is still below: it was reset, and counts on from here.
    slot_a = rt.slots.slot_of(A)
    r, _ = rt.update_destinations(3.5, counters({A: (pk(udp=20), 0), B: (pk(syn=40), 0), D: (pk(udp=400), 0)}))
    got = by_address(r)
    assert got[A][0][TrafficClass.UDP] == pytest.approx(40.0)           # 20 packets in 0.5 s
    assert rt.slots.slot_of(A) == slot_a
    assert got[B][0].sum() == 0


def test_rows_by_slot_is_each_slot_row_of_the_last_read_across_churn_and_growth():
    # Issue 18 item 2: the engine takes the tracker's slot -> row table instead of building its own
    # each tick; it must be exactly that table after reordering, eviction, new addresses and growth.
    rt = RateTracker()
    rng = np.random.default_rng(4)
    pool = [ipaddress.ip_address(f"198.51.100.{i}") for i in range(1, 200)] + \
        [ipaddress.ip_address(f"2001:db8::{i:x}") for i in range(1, 3000)]
    for t in range(6):
        present = [pool[i] for i in rng.permutation(len(pool))[:rng.integers(50, len(pool))]]
        r, _ = rt.update_destinations(float(t), counters({a: (pk(udp=10 * t), 0) for a in present}))
        want = np.full(rt.slots.capacity, -1, np.int64)
        want[r.slots] = np.arange(len(r))
        got = rt.rows_by_slot()
        assert np.array_equal(got, want)
        with pytest.raises(ValueError):
            got[0] = 1


def test_slots_expire_after_long_absence_and_are_reused():
    rt = RateTracker(forget_after_s=100.0)
    rt.update_destinations(0.0, counters({A: (pk(udp=1), 0)}))
    rt.update_destinations(1.0, counters({B: (pk(udp=1), 0)}))
    _, freed = rt.update_destinations(200.0, counters({B: (pk(udp=2), 0)}))
    assert rt.slots.slot_of(A) is None and len(freed) == 1


def test_many_addresses_grow_the_slot_table():
    rt = RateTracker()
    addrs = {ipaddress.ip_address(0xC6120000 + i): (pk(udp=i), 0) for i in range(5000)}
    rt.update_destinations(0.0, counters(addrs))
    r, _ = rt.update_destinations(1.0, counters({a: (pk(udp=v[0][TrafficClass.UDP] * 2), 0)
                                                 for a, v in addrs.items()}))
    assert rt.slots.capacity >= 5000
    assert np.allclose(r.pps[:, TrafficClass.UDP], np.arange(5000))


def test_time_must_advance():
    rt = RateTracker()
    rt.update_destinations(5.0, counters({A: (pk(udp=1), 0)}))
    with pytest.raises(ValueError, match="time went backwards"):
        rt.update_destinations(5.0, counters({A: (pk(udp=2), 0)}))


def test_tenant_rates_by_direction_with_reset():
    def tc(inb: int, out: int, dropped: int) -> TenantCounters:
        cp = np.zeros((2, C), np.uint64)
        cp[0, TrafficClass.UDP], cp[1, TrafficClass.UDP] = inb, out
        return TenantCounters(passed_packets=np.array([inb - dropped, out], np.uint64),
                              passed_bytes=np.zeros(2, np.uint64), dropped_packets=np.array([dropped, 0], np.uint64),
                              dropped_bytes=np.zeros(2, np.uint64), class_packets=cp, class_bytes=cp * 100,
                              reason_packets=np.zeros((2, len(DropReason)), np.uint64))

    rt = RateTracker()
    rt.update_tenants(0.0, {3: tc(100, 50, 0)})
    r = rt.update_tenants(0.5, {3: tc(600, 150, 100)})
    assert r.pps[3, TrafficClass.UDP] == pytest.approx(1000.0)
    assert r.out_pps[3, TrafficClass.UDP] == pytest.approx(200.0)
    assert r.dropped_pps[3] == pytest.approx(200.0)
    assert r.byte_rate[3, TrafficClass.UDP] == pytest.approx(100_000.0)
    assert r.valid[3] and not r.valid[4]
    r = rt.update_tenants(1.5, {3: tc(10, 150, 0)})      # the dataplane was restarted
    assert r.pps[3, TrafficClass.UDP] == pytest.approx(10.0)
    r = rt.update_tenants(2.0, {NO_TENANT: tc(1, 1, 0), 3: tc(20, 150, 0)})     # a bad row is skipped
    assert rt.ignored_tenant_indices == 1
    assert r.pps[3, TrafficClass.UDP] == pytest.approx(20.0)


def test_slots_follow_equal_address_objects_and_interned_ones_alike():
    """A reader may hand out the same object every read (the dataplane's) or new equal ones."""
    rt = RateTracker()
    a1 = ipaddress.ip_address("198.51.100.7")
    rt.update_destinations(0.0, counters({a1: (pk(udp=10), 0), B: (pk(udp=1), 0)}))
    slot = rt.slots.slot_of(a1)
    a2 = ipaddress.ip_address("198.51.100.7")             # equal, not the same object
    assert a2 is not a1
    r, _ = rt.update_destinations(1.0, counters({B: (pk(udp=2), 0), a2: (pk(udp=30), 0)}))
    assert r.slots[1] == slot and by_address(r)[a2][0][TrafficClass.UDP] == pytest.approx(20.0)
    del a1                                                 # its id may now be reused by any new object
    fresh = [ipaddress.ip_address(f"203.0.113.{i}") for i in range(1, 200)]
    r, _ = rt.update_destinations(2.0, counters({a: (pk(udp=1), 0) for a in fresh}))
    assert slot not in set(r.slots.tolist()) and len(set(r.slots.tolist())) == len(fresh)
    r, _ = rt.update_destinations(3.0, counters({a2: (pk(udp=35), 0)}))
    # Absent from one read only: it goes on from its counters of the read before (30).
    assert r.slots[0] == slot and r.pps[0][TrafficClass.UDP] == pytest.approx(5.0)


def _as_one_block(c: DestinationCounters) -> DestinationCounters:
    """The same counters as views of one (N, packets + bytes + dropped) block, as the dataplane's reader gives them."""
    block = np.concatenate([c.packets, c.bytes, c.dropped_packets[:, None]], axis=1).astype(np.uint64)
    return DestinationCounters(keys=c.keys, tenant_idx=c.tenant_idx, packets=block[:, :C],
                               bytes=block[:, C:2 * C], dropped_packets=block[:, 2 * C])


def test_rates_from_one_counter_block_equal_rates_from_separate_arrays():
    reads = [{A: (pk(udp=1000), 0), B: (pk(syn=50), 0)},
             {D: (pk(udp=300), 0), B: (pk(syn=250), 10), A: (pk(udp=3000), 0)},
             {B: (pk(syn=40), 0), D: (pk(udp=400), 7)}]
    separate, blocked = RateTracker(), RateTracker()
    for t, rows in enumerate(reads):
        a, _ = separate.update_destinations(float(t), counters(rows))
        b, _ = blocked.update_destinations(float(t), _as_one_block(counters(rows)))
        assert by_address(a).keys() == by_address(b).keys()
        for addr, (pps, dropped) in by_address(a).items():
            assert by_address(b)[addr][0].tolist() == pps.tolist() and by_address(b)[addr][1] == dropped
        assert a.byte_rate.tolist() == b.byte_rate.tolist()
    assert blocked.last_destination_rates.pps[:, TrafficClass.TCP_SYN].tolist() == [0.0, 0.0]   # B low: no rate


def test_a_class_below_its_previous_value_has_no_rate_and_the_others_count_by_difference():
    rt = RateTracker()
    rt.update_destinations(0.0, counters({A: (pk(udp=5000, syn=700), 9), B: (pk(udp=10), 0)}))
    # A's UDP counter went back (the row was re-created and counted 300 since), its SYN counter grew;
    # D is new in the map; B is unchanged.
    r, _ = rt.update_destinations(0.5, counters({A: (pk(udp=300, syn=900), 9), B: (pk(udp=10), 0),
                                                 D: (pk(syn=25), 4)}))
    got = by_address(r)
    assert got[A][0][TrafficClass.UDP] == 0.0 and got[A][0][TrafficClass.TCP_SYN] == 400.0
    assert got[A][1] == 0.0
    assert got[B][0].tolist() == [0.0] * C
    assert got[D][0][TrafficClass.TCP_SYN] == 50.0 and got[D][1] == 8.0
    assert r.byte_rate[list(r.addresses).index(A), TrafficClass.UDP] == 0.0
    # Still below at the next read: A's UDP counter was reset, and counts on from 300.
    rt.update_destinations(1.0, counters({A: (pk(udp=350, syn=950), 9), B: (pk(udp=10), 0), D: (pk(syn=25), 4)}))
    r, _ = rt.update_destinations(1.5, counters({A: (pk(udp=400, syn=1000), 9), B: (pk(udp=10), 0),
                                                 D: (pk(syn=25), 4)}))
    assert by_address(r)[A][0][TrafficClass.UDP] == 100.0


def test_a_tenant_row_new_at_a_read_counts_whole_and_an_absent_one_has_no_rate():
    def tc(udp: int, dropped: int = 0) -> TenantCounters:
        cp = np.zeros((2, C), np.uint64)
        cp[0, TrafficClass.UDP] = udp
        return TenantCounters(passed_packets=np.array([udp - dropped, 0], np.uint64),
                              passed_bytes=np.zeros(2, np.uint64), dropped_packets=np.array([dropped, 0], np.uint64),
                              dropped_bytes=np.zeros(2, np.uint64), class_packets=cp, class_bytes=cp * 10,
                              reason_packets=np.zeros((2, len(DropReason)), np.uint64))

    rt = RateTracker()
    rt.update_tenants(0.0, {0: tc(1000), 3: tc(500)})
    r = rt.update_tenants(2.0, {0: tc(1400, dropped=100), 5: tc(40)})   # 3 gone, 5 new
    assert r.pps[0, TrafficClass.UDP] == 200.0 and r.dropped_pps[0] == 50.0 and r.passed_pps[0] == 150.0
    assert r.byte_rate[0, TrafficClass.UDP] == 2000.0
    assert r.pps[5, TrafficClass.UDP] == 20.0 and r.valid[5]
    assert r.pps[3].tolist() == [0.0] * C and not r.valid[3] and r.passed_pps[3] == 0.0
    r = rt.update_tenants(3.0, {0: tc(1400, dropped=100), 3: tc(30), 5: tc(40)})   # 3 back: counted whole
    assert r.pps[3, TrafficClass.UDP] == 30.0 and r.pps[5, TrafficClass.UDP] == 0.0


def test_one_rows_byte_and_drop_rates_equal_the_whole_arrays_computed_later():
    def read(scale: int) -> DestinationCounters:
        return counters({A: (pk(udp=7 * scale, syn=3 * scale), scale), B: (pk(udp=11 * scale), 2 * scale)})

    rt = RateTracker()
    rt.update_destinations(0.0, read(1))
    r, _ = rt.update_destinations(0.3, read(1000))
    rows = [(r.byte_rate_of(i).tolist(), r.dropped_pps_of(i)) for i in range(len(r))]
    assert rows == [(r.byte_rate[i].tolist(), float(r.dropped_pps[i])) for i in range(len(r))]
    assert rows[list(r.addresses).index(B)][1] == pytest.approx(1998 / 0.3)


def test_resets_are_found_with_counters_above_two_to_the_63():
    # Past 2**63 a wrapped delta need not have its top bit set: every element is compared instead.
    big = 1 << 63

    def counters(rows: dict) -> DestinationCounters:      # bytes equal to packets (x100 would overflow)
        packets = np.array([rows[a][0] for a in rows], np.uint64)
        return DestinationCounters.from_addresses(
            addresses=list(rows), tenant_idx=np.ones(len(rows), np.uint32), packets=packets, bytes=packets.copy(),
            dropped_packets=np.zeros(len(rows), np.uint64))

    rt = RateTracker()
    rt.update_destinations(0.0, counters({A: (pk(udp=big + 1000, syn=10), 0), B: (pk(udp=5), 0)}))
    r, _ = rt.update_destinations(1.0, counters({A: (pk(udp=big + 1500, syn=4), 0), B: (pk(udp=big + 5000), 0)}))
    got = by_address(r)
    assert got[A][0][TrafficClass.UDP] == 500.0 and got[A][0][TrafficClass.TCP_SYN] == 0.0   # SYN went down
    assert got[B][0][TrafficClass.UDP] == float(big + 4995)
    # B's counter went down from above 2**63: its wrapped delta, 2**63 - 4990, has the top bit clear.
    r, _ = rt.update_destinations(2.0, counters({A: (pk(udp=big + 1600, syn=6), 0), B: (pk(udp=10), 0)}))
    got = by_address(r)
    assert got[A][0][TrafficClass.UDP] == 100.0 and got[A][0][TrafficClass.TCP_SYN] == 0.0   # still down: reset
    assert got[B][0][TrafficClass.UDP] == 0.0
    r, _ = rt.update_destinations(3.0, counters({A: (pk(udp=big + 1700, syn=9), 0), B: (pk(udp=30), 0)}))
    got = by_address(r)
    assert got[A][0][TrafficClass.TCP_SYN] == 3.0 and got[B][0][TrafficClass.UDP] == 0.0     # B still down: reset
    r, _ = rt.update_destinations(4.0, counters({A: (pk(udp=big + 1700, syn=9), 0), B: (pk(udp=50), 0)}))
    assert by_address(r)[B][0][TrafficClass.UDP] == 20.0


def test_tenant_bits_outbound_passed_and_unprotected_rates_follow_resets():
    """Issue 13 item 4: the one definition of a tenant's passed and dropped packets and bits per second
    (every packet minus the dropped ones), outbound passed packets, and the row of no tenant."""
    def tc(inb: int, out: int, dropped: int, size: int = 100) -> TenantCounters:
        cp = np.zeros((2, C), np.uint64)
        cp[0, TrafficClass.UDP], cp[1, TrafficClass.UDP] = inb, out
        return TenantCounters(passed_packets=np.array([inb - dropped, out], np.uint64),
                              passed_bytes=np.array([(inb - dropped) * size, out * size], np.uint64),
                              dropped_packets=np.array([dropped, 0], np.uint64),
                              dropped_bytes=np.array([dropped * size, 0], np.uint64), class_packets=cp,
                              class_bytes=cp * size, reason_packets=np.zeros((2, len(DropReason)), np.uint64))

    rt = RateTracker()
    r = rt.update_tenants(0.0, {3: tc(100, 50, 10), MAX_TENANTS: tc(40, 0, 0)})
    assert r.unprotected_passed_pps == 0.0 and r.passed_bps.max() == 0.0          # priming
    r = rt.update_tenants(0.5, {3: tc(600, 150, 110), MAX_TENANTS: tc(90, 0, 0)})
    assert (r.passed_pps[3], r.dropped_pps[3]) == (800.0, 200.0)
    assert (r.passed_bps[3], r.dropped_bps[3]) == (8 * 80_000.0, 8 * 20_000.0)
    assert r.out_passed_pps[3] == 200.0 and r.unprotected_passed_pps == 100.0
    # Both rows were reset: what they hold now is this tick's.
    r = rt.update_tenants(1.5, {3: tc(30, 10, 10), MAX_TENANTS: tc(5, 0, 0)})
    assert (r.passed_pps[3], r.dropped_bps[3], r.out_passed_pps[3]) == (20.0, 8 * 1_000.0, 10.0)
    assert r.unprotected_passed_pps == 5.0
    # The row of no tenant absent, then back: counted whole, as a tenant row.
    assert rt.update_tenants(2.0, {3: tc(30, 10, 10)}).unprotected_passed_pps == 0.0
    assert rt.update_tenants(2.5, {3: tc(30, 10, 10), MAX_TENANTS: tc(7, 0, 0)}).unprotected_passed_pps == 14.0


def _model_rates(reads: list[dict], dts: list[float]) -> list[dict]:
    """The module docstring's rules by address, written out: per read, address -> (pps (C,), rest deltas)."""
    state: dict = {}          # key -> (previous counters, read number, kept)
    out = []
    for t, (rows, dt) in enumerate(zip(reads, dts, strict=True)):
        got = {}
        for key, cur in rows.items():
            was, read, kept = state.get(key, (None, None, False))
            keep = False
            if read == t - 1:
                delta = np.where(cur < was, 0, cur - np.minimum(cur, was)).astype(np.uint64)
                keep = bool((cur < was).any()) and not kept
            elif read == t - 2 and not (cur < was).any():
                delta = cur - was
            else:
                delta = cur.copy()
            state[key] = (np.maximum(cur, was) if keep else cur, t, keep)
            if t:
                got[key] = (delta[:C].astype(np.float64) * (1.0 / dt), delta[C:])
        out.append(got)
    return out


@pytest.mark.parametrize("block", [2, 5, 65_536])
def test_issue18_rates_by_slot_in_blocks_follow_the_rules_written_out(monkeypatch, block):
    """Random reads with addresses missing one read or more, counters reading low once, resets and a byte
    delta past 32 bits in the middle of a read: the tracker, its read's rows taken `block` at a time and each
    slot's previous counters kept in place, gives the rules' rates bit for bit."""
    monkeypatch.setattr("policy.rates.RATE_BLOCK_ROWS", block)
    rng = np.random.default_rng(7)
    keys = [ipaddress.ip_address(f"198.51.100.{i}") for i in range(1, 24)]
    totals = {k: rng.integers(0, 1000, 2 * C + 1).astype(np.uint64) for k in keys}
    reads, dts = [], []
    for t in range(12):
        rows = {}
        for k in keys:
            if rng.random() < 0.2:
                continue                                     # missing from this read
            totals[k] = totals[k] + rng.integers(0, 500, 2 * C + 1).astype(np.uint64)
            cur = totals[k].copy()
            kind = rng.random()
            if kind < 0.1:
                cur = cur // np.uint64(2)                    # reads low (kept once, then a reset)
            elif kind < 0.15:
                totals[k] = cur = rng.integers(0, 50, 2 * C + 1).astype(np.uint64)      # reset
            rows[k] = cur
        if t == 6:
            k = list(rows)[len(rows) // 2]           # in the middle of the read
            totals[k][C] += np.uint64(1 << 33)               # bytes of one tick past 32 bits
            rows[k] = totals[k].copy()
        reads.append(rows)
        dts.append(float(rng.uniform(0.5, 2.0)))
    nows = np.cumsum(dts).tolist()
    expected = _model_rates(reads, [0.0] + [b - a for a, b in itertools.pairwise(nows)])
    rt = RateTracker()
    for t, rows in enumerate(reads):
        now = nows[t]
        block_rows = np.array([rows[k] for k in rows], np.uint64).reshape(-1, 2 * C + 1)
        r, _ = rt.update_destinations(now, DestinationCounters.from_addresses(
            list(rows), np.ones(len(rows), np.uint32), block_rows[:, :C], block_rows[:, C:2 * C], block_rows[:, 2 * C]))
        if not t:
            continue
        assert set(r.addresses) == set(expected[t])
        for i, a in enumerate(r.addresses):
            pps, rest = expected[t][a]
            np.testing.assert_array_equal(r.pps[i], pps)
            np.testing.assert_array_equal(r.byte_rate_of(i), rest[:C].astype(np.float64) * (1.0 / r.dt))
            assert r.dropped_pps_of(i) == float(rest[C]) * (1.0 / r.dt)
