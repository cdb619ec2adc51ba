"""The reader's static layouts (what the synthetic policy benchmark fills) against the compiled program's.

`appliance/bench/policy.py` fills byte buffers laid out as the kernel's maps at the offsets of
`dataplane.reader.ADDRESS_LAYOUT` and `TENANT_LAYOUT` (it must run without bcc), and decodes
them with the reader's code. If the program's structs change and those layouts do not, it
decodes garbage and times the wrong thing; this pins them to bcc's types of a loaded program.
"""

from __future__ import annotations

import ctypes
import ipaddress

import numpy as np
import pytest

from dataplane import reader, testing
from dataplane.api import DataplaneError
from dataplane.constants import MAX_TENANTS, TrafficClass
from tests.bpf import frames
from tests.bpf.conftest import ALPHA_DST, CLEAN_SRC, XDP_REDIRECT, run


def test_bench_address_layout_is_the_programs(dp):
    assert testing.address_layout(dp) == reader.ADDRESS_LAYOUT
    assert testing.table(dp, "sw_addr_cache").max_entries == reader.CACHE_SLOTS * dp.cache_regions


def test_bench_tenant_stats_layout_is_the_programs(dp):
    assert testing.tenant_stats_layout(dp) == reader.TENANT_LAYOUT
    stats = testing.table(dp, "sw_tenant_stats")
    assert stats.max_entries == MAX_TENANTS + 1
    assert ctypes.sizeof(stats.Leaf._type_) == 2 * reader.TENANT_LAYOUT.dir_words * 8


def test_bench_buffers_decode_like_the_real_read(dp, tenants):
    """One packet's counts, read through the real maps, decode the same with the bench's layouts."""
    dst = ALPHA_DST
    alpha = tenants["alpha"]
    assert run(dp, frames.udp(CLEAN_SRC, dst, dport=28960)) == XDP_REDIRECT
    cache, spill_keys, spill, lay = dp.address_maps()
    assert lay == reader.cache_copy_layout(reader.ADDRESS_LAYOUT)
    assert cache.shape == (reader.CACHE_SLOTS, dp.cache_regions, lay.entry_words)
    assert spill.shape[1:] == (1, lay.spilled_words)
    memo = reader.AddressMemo(1 << 20)
    decoded = reader.decode_destination_counters(cache, spill_keys, spill, lay, memo)
    real = dp.read_destination_counters()
    row = list(decoded.addresses).index(ipaddress.ip_address(dst))
    real_row = list(real.addresses).index(ipaddress.ip_address(dst))
    assert decoded.packets[row, TrafficClass.UDP] >= 1
    np.testing.assert_array_equal(decoded.packets[row], real.packets[real_row])
    assert decoded.tenant_idx[row] == real.tenant_idx[real_row] == alpha

    _, tvalues, tcount = testing.read_map(dp, "sw_tenant_stats")
    words = np.frombuffer(tvalues, np.uint64).reshape(tcount, dp.ncpus, 2, reader.TENANT_LAYOUT.dir_words)
    from_bench = reader.decode_tenant_counters(words.sum(axis=1, dtype=np.uint64), reader.TENANT_LAYOUT).tenant(alpha)
    from_reader = dp.read_tenant_counters([alpha])[alpha]
    for field in ("class_packets", "class_bytes", "dropped_packets", "passed_packets", "reason_packets"):
        np.testing.assert_array_equal(getattr(from_bench, field), getattr(from_reader, field), err_msg=field)
    assert from_bench.class_packets.sum() >= 1


def test_issue18_address_cache_sized_by_bits_is_read_through():
    """A program built with a smaller cache (dataplane.sizing's -D flag) maps 2**bits slots per CPU id, and
    what a packet counts there reads back through the reader."""
    from dataplane.dataplane import Dataplane  # noqa: PLC0415 - a second compile, only in this test

    small = Dataplane(address_cache_bits=12, max_addresses=4096)
    try:
        assert testing.table(small, "sw_addr_cache").max_entries == small.cache_regions << 12
        assert testing.table(small, "sw_addr_store").max_entries == 4096             # [appliance] max_addresses
        assert testing.table(small, "sw_addr_store_index").max_entries == 4096
        assert testing.table(small, "sw_addr_spill").max_entries == 1024             # the overflow: a quarter
        cache, _, _, _ = small.address_maps()
        assert cache.shape[:2] == (1 << 12, small.cache_regions)
        assert small.read_destination_counters().keys.shape == (0, 2)
    finally:
        small.close()


def test_issue18_spill_reads_reuse_their_buffers(dp):
    """The spilled rows are read in place (the mapped spill store) or into the same buffers every tick
    (the overflow map's batch reads: no fresh pages to fault in), and what they decode to is unchanged."""
    assert run(dp, frames.udp(CLEAN_SRC, ALPHA_DST, dport=28960)) == XDP_REDIRECT
    _, keys1, spill1, _ = dp.address_maps()
    first = dp.read_destination_counters()
    first.rows.whole()     # its counter rows made now: rows made when asked for are valid until the next read
    _, keys2, spill2, _ = dp.address_maps()
    second = dp.read_destination_counters()
    # The first rows of one buffer (even when no row was read: both views start where it starts); while
    # the first read's views are alive, a new buffer could not be there.
    assert spill1.__array_interface__["data"][0] == spill2.__array_interface__["data"][0]
    assert keys1.__array_interface__["data"][0] == keys2.__array_interface__["data"][0]
    for field in ("keys", "tenant_idx", "packets", "bytes", "dropped_packets"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field), err_msg=field)
    # Rows not made before the reader read again are refused, not made from the maps as they are now.
    third = dp.read_destination_counters()
    dp.read_destination_counters()
    with pytest.raises(DataplaneError, match="earlier read"):
        third.rows.whole()
