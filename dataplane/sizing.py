"""How large the per-address maps are: the address cache and the spill map, from the configuration
and the CPU count.

The address cache is a direct-mapped array with one region per CPU id (`constants.cpu_regions`), so
its kernel memory is regions × slots × entry bytes: a fixed 2**16 slots of 384 bytes took 24 MiB per
CPU id whatever the box, 1.5 GiB on 64 CPUs. It is sized instead from a memory budget,
`[appliance] address_cache_mib` (MiB of kernel memory for all regions together): each region gets
the largest power of two of slots that fits the budget, between 2**MIN_CACHE_BITS and
2**MAX_CACHE_BITS. The spill store (an array shared by the CPUs, mapped by user space) keeps the
counters of the addresses evicted from a cache slot, so it holds every address the box should count:
`[appliance] max_addresses` slots, plus an LRU overflow map of a quarter of that for spills while every
slot is taken (`overflow_entries`). Its memory does not grow with the CPUs.
"""

from __future__ import annotations

import dataclasses

from dataplane import constants
from dataplane.constants import ADDRESS_CACHE_BITS, MAX_ADDRESSES, cpu_regions

MIN_CACHE_BITS = 10              # 1,024 slots per CPU id: below it nearly everything spills
MAX_CACHE_BITS = 20              # 1,048,576 slots per CPU id (the slot hash's 32-bit fold is fine far beyond)
DEFAULT_CACHE_MIB = 64           # MiB of kernel memory for the cache: 2**16 slots per region up to 2 CPU ids
MAX_ADDRESSES_RANGE = (1024, 16 * 1024 * 1024)   # spill store slots the loader accepts
MIN_OVERFLOW_ENTRIES = 1024      # the overflow map's floor, entries
DEFAULT_MAX_ADDRESSES = MAX_ADDRESSES


# Connection accounting and its limits (bpf/flows.h): [appliance] key -> (constants name of its default and
# C macro, accepted range in entries). The lower bounds keep a map useful; the upper ones its kernel memory
# within a few GiB (a tracked connection costs ~110 bytes, a row ~120).
FLOW_SIZE_KEYS: dict[str, tuple[str, tuple[int, int]]] = {
    "flow_table_entries": ("FLOW_TABLE_ENTRIES", (1024, 16 * 1024 * 1024)),
    "flow_handshake_entries": ("FLOW_HANDSHAKE_ENTRIES", (1024, 16 * 1024 * 1024)),
    "flow_destination_entries": ("FLOW_DESTINATION_ENTRIES", (256, 4 * 1024 * 1024)),
    "flow_source_entries": ("FLOW_SOURCE_ENTRIES", (1024, 16 * 1024 * 1024)),
    "blocked_sources_max": ("BLOCKED_SOURCES_MAX", (16, 4 * 1024 * 1024)),
    "source_limits_max": ("SOURCE_LIMITS_MAX", (1, 65536)),
}


@dataclasses.dataclass(frozen=True, slots=True)
class FlowSizes:
    """Sizes of the connection-accounting maps, entries (`[appliance]` keys of the same names)."""

    flow_table_entries: int = constants.FLOW_TABLE_ENTRIES
    flow_handshake_entries: int = constants.FLOW_HANDSHAKE_ENTRIES
    flow_destination_entries: int = constants.FLOW_DESTINATION_ENTRIES
    flow_source_entries: int = constants.FLOW_SOURCE_ENTRIES
    blocked_sources_max: int = constants.BLOCKED_SOURCES_MAX
    source_limits_max: int = constants.SOURCE_LIMITS_MAX

    def __post_init__(self) -> None:
        for key, (_, (low, high)) in FLOW_SIZE_KEYS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{key}: must be an integer between {low} and {high} entries, got {value!r}")

    def cflags(self) -> list[str]:
        """The -D flags that size the maps (they replace the constants' defaults)."""
        return [f"-DSW_{name}={getattr(self, key)}U" for key, (name, _) in FLOW_SIZE_KEYS.items()]


def overflow_entries(max_addresses: int) -> int:
    """Entries of the LRU overflow map (sw_addr_spill) for a spill store of `max_addresses` slots: the
    spills of addresses that find every slot taken until user space frees the idle ones."""
    return max(MIN_OVERFLOW_ENTRIES, max_addresses // 4)


def entry_bytes() -> int:
    """Bytes of one cache slot, struct sw_addr_entry, as this build lays it out (the reader's static
    layout, which the bpf tier pins to the compiled program's; imported here only when sizing, so that
    the configuration loads without numpy)."""
    from dataplane.reader import ADDRESS_LAYOUT  # noqa: PLC0415

    return 8 * ADDRESS_LAYOUT.entry_words


def address_cache_bits(cache_mib: int, regions: int | None = None, slot_bytes: int | None = None) -> int:
    """log2 of the cache slots per CPU region: the largest power of two whose `regions` regions of
    `slot_bytes`-byte slots (`entry_bytes()` when not given) fit in `cache_mib` MiB, clamped to
    MIN_CACHE_BITS..MAX_CACHE_BITS. `regions`: the CPU ids (`constants.cpu_regions()`, read when not
    given)."""
    if isinstance(cache_mib, bool) or not isinstance(cache_mib, int) or cache_mib < 1:
        raise ValueError(f"address_cache_mib: expected a positive integer number of MiB, got {cache_mib!r}")
    regions = cpu_regions() if regions is None else regions
    slots = (cache_mib << 20) // (max(regions, 1) * (entry_bytes() if slot_bytes is None else slot_bytes))
    return max(MIN_CACHE_BITS, min(MAX_CACHE_BITS, slots.bit_length() - 1 if slots else 0))


def cache_bytes(bits: int, regions: int, slot_bytes: int | None = None) -> int:
    """Kernel memory of an address cache of 2**bits slots per region, bytes."""
    return regions * (entry_bytes() if slot_bytes is None else slot_bytes) << bits


__all__ = ["ADDRESS_CACHE_BITS", "DEFAULT_CACHE_MIB", "DEFAULT_MAX_ADDRESSES", "FLOW_SIZE_KEYS", "MAX_ADDRESSES_RANGE", "MIN_OVERFLOW_ENTRIES", "overflow_entries",
           "FlowSizes",
           "MAX_CACHE_BITS", "MIN_CACHE_BITS", "address_cache_bits", "cache_bytes", "entry_bytes"]
