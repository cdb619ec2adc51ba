"""Issue 18 item 2: the address cache sized by configuration and CPU count (dataplane.sizing)."""

from __future__ import annotations

import pytest

from dataplane import sizing
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
