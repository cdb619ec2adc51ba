"""Rates across the dataplane reader's transient undercounts.

A read takes the spill map first and the address cache after it. Counts only move from a
cache slot to the spill map, so a slot evicted between the two reads is missing from that
read: its address reads low once (or not at all, when it had never been spilled before),
and its counts are back at the next read. Treated as a counter reset, such a dip would make
the next read count the address's whole history as one tick's traffic: a false flood.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from dataplane.api import DestinationCounters
from dataplane.constants import TrafficClass
from policy.rates import RateTracker

C = len(TrafficClass)
UDP = TrafficClass.UDP
A, B = (ipaddress.ip_address(x) for x in ("198.51.100.1", "198.51.100.2"))


def read(rows: dict) -> DestinationCounters:
    """rows: address -> cumulative UDP packets (bytes: 100 a packet, dropped: a tenth)."""
    addrs = list(rows)
    packets = np.zeros((len(addrs), C), np.uint64)
    packets[:, UDP] = [rows[a] for a in addrs]
    return DestinationCounters.from_addresses(
        addresses=addrs, tenant_idx=np.ones(len(addrs), np.uint32), packets=packets, bytes=packets * 100,
        dropped_packets=packets[:, UDP] // 10)


def udp_pps(tracker: RateTracker, now: float, rows: dict) -> dict:
    rates, _ = tracker.update_destinations(now, read(rows))
    return {a: float(rates.pps[i, UDP]) for i, a in enumerate(rates.addresses)}


def test_a_read_that_misses_counts_in_flight_yields_no_rate_and_the_next_one_counts_them_once():
    rt = RateTracker()
    udp_pps(rt, 0.0, {A: 1_000_000, B: 10})
    assert udp_pps(rt, 1.0, {A: 1_000_100, B: 20})[A] == 100.0
    # A's slot (600 packets since it was cached) was evicted between the two maps' reads.
    got = udp_pps(rt, 2.0, {A: 999_600, B: 30})
    assert got[A] == 0.0 and got[B] == 10.0
    # The 600 are in the spill map now: A grew by 150 over the two seconds.
    assert udp_pps(rt, 3.0, {A: 1_000_250, B: 40})[A] == pytest.approx(150.0)
    assert udp_pps(rt, 4.0, {A: 1_000_350, B: 50})[A] == pytest.approx(100.0)


def test_an_address_missing_from_one_read_continues_from_its_last_counters():
    rt = RateTracker()
    udp_pps(rt, 0.0, {A: 5_000_000, B: 10})
    udp_pps(rt, 1.0, {A: 5_000_100, B: 20})
    # Never spilled before, A was evicted in between the reads: absent from this one.
    assert A not in udp_pps(rt, 2.0, {B: 30})
    got = udp_pps(rt, 3.0, {A: 5_000_300, B: 40})
    assert got[A] == pytest.approx(200.0)            # not 5,000,300 packets in one second
    rates = rt.last_destination_rates
    row = list(rates.addresses).index(A)
    assert rates.byte_rate[row, UDP] == pytest.approx(20_000.0)
    assert rates.dropped_pps[row] == pytest.approx(20.0)


def test_a_counter_that_stays_low_is_a_reset_and_counts_on_from_there():
    rt = RateTracker()
    udp_pps(rt, 0.0, {A: 7_000, B: 10})
    # A's counters were lost (its spill entry left the LRU): the first low read may still be counts
    # in flight, the second is not; from then on A counts from its new value.
    assert udp_pps(rt, 1.0, {A: 50, B: 20})[A] == 0.0
    assert udp_pps(rt, 2.0, {A: 80, B: 30})[A] == 0.0
    assert udp_pps(rt, 3.0, {A: 130, B: 40})[A] == pytest.approx(50.0)


def test_an_address_back_after_a_longer_absence_or_below_its_last_counters_is_new():
    rt = RateTracker()
    udp_pps(rt, 0.0, {A: 9_000, B: 10})
    udp_pps(rt, 1.0, {A: 9_100, B: 20})
    udp_pps(rt, 2.0, {B: 30})
    udp_pps(rt, 3.0, {B: 40})
    assert udp_pps(rt, 4.0, {A: 9_500, B: 50})[A] == pytest.approx(9_500.0)    # gone two reads: re-created
    rt2 = RateTracker()
    udp_pps(rt2, 0.0, {A: 9_000, B: 10})
    udp_pps(rt2, 1.0, {B: 20})
    assert udp_pps(rt2, 2.0, {A: 40, B: 30})[A] == pytest.approx(40.0)          # below its last: re-created
