"""Issue 18 item 2: the address cache sized by configuration and CPU count (dataplane.sizing)."""

from __future__ import annotations

import dataclasses

import pytest

from dataplane import constants, sizing
from dataplane.constants import ADDRESS_CACHE_BITS


def test_issue18_cache_bits_fit_the_budget_whatever_the_cpu_count():
    slot = sizing.entry_bytes()
    for regions in (1, 2, 3, 4, 8, 16, 64, 128, 256):
        bits = sizing.address_cache_bits(sizing.DEFAULT_CACHE_MIB, regions)
        assert sizing.MIN_CACHE_BITS <= bits <= sizing.MAX_CACHE_BITS
        if bits > sizing.MIN_CACHE_BITS:
            assert sizing.cache_bytes(bits, regions) <= sizing.DEFAULT_CACHE_MIB << 20
        if bits < sizing.MAX_CACHE_BITS:      # the largest power of two that fits: one more would not
            assert regions * slot << (bits + 1) > sizing.DEFAULT_CACHE_MIB << 20
    # 64 CPU ids: 1.5 GiB before (2**16 slots each), now within the 64 MiB budget.
    assert sizing.cache_bytes(ADDRESS_CACHE_BITS, 64) == 1536 << 20
    assert sizing.cache_bytes(sizing.address_cache_bits(64, 64), 64) <= 64 << 20
    # The VM's 2 CPU ids keep today's 2**16 slots at the default budget.
    assert sizing.address_cache_bits(sizing.DEFAULT_CACHE_MIB, 2) == ADDRESS_CACHE_BITS


def test_issue18_cache_bits_clamped_and_checked():
    assert sizing.address_cache_bits(1, 4096) == sizing.MIN_CACHE_BITS
    assert sizing.address_cache_bits(65536, 1) == sizing.MAX_CACHE_BITS
    assert sizing.address_cache_bits(48, 2, slot_bytes=384) == 16
    assert sizing.address_cache_bits(47, 2, slot_bytes=384) == 15
    for bad in (0, -1, 1.5, True, "64"):
        with pytest.raises(ValueError, match="address_cache_mib"):
            sizing.address_cache_bits(bad, 2)   # type: ignore[arg-type]


def test_issue15_flow_sizes_default_to_the_constants_and_reach_c_as_replacing_flags():
    sizes = sizing.FlowSizes()
    defaults = {flag.partition("=")[0]: flag for flag in constants.cflags()}
    for flag in sizes.cflags():
        name = flag.partition("=")[0]
        assert defaults[name] == flag          # same name and value as the constants' default
    assert set(sizing.FLOW_SIZE_KEYS) == {f.name for f in dataclasses.fields(sizing.FlowSizes)}
    assert sizing.FlowSizes(source_limits_max=5).cflags()[-1] == "-DSW_SOURCE_LIMITS_MAX=5U"


@pytest.mark.parametrize("field", ["flow_table_entries", "flow_destination_entries", "flow_source_entries",
                                   "blocked_sources_max", "source_limits_max"])
def test_issue15_flow_sizes_out_of_range_name_the_key(field):
    with pytest.raises(ValueError, match=field):
        sizing.FlowSizes(**{field: 0})
    with pytest.raises(ValueError, match=field):
        sizing.FlowSizes(**{field: True})
