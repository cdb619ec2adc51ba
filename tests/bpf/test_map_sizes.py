"""The pinned sizes: bcc's Key/Leaf types (from seawall.h) against the sizes the kernel gave each map.

A layout that drifted between C and what Python reads would corrupt every counter and rule silently.
"""

from __future__ import annotations

import ctypes

import pytest

from dataplane import bpfsys

kernel_map_info = bpfsys.map_info


PERCPU_MAPS = {"sw_tenant_stats", "sw_rule_stats", "sw_synauth_stats"}
MAPS = ["sw_config", "sw_prefix4", "sw_prefix6", "sw_policy", "sw_acl4_tries", "sw_acl6_tries", "sw_addr_cache",
        "sw_addr_spill", "sw_tenant_stats", "sw_rule_set_index", "sw_rule_sets", "sw_rules", "sw_rule_stats",
        "sw_rule_buckets", "sw_syn_sources", "sw_synack_buckets", "sw_synack_global", "sw_synauth_stats"]


@pytest.mark.parametrize("name", MAPS)
def test_bcc_types_match_the_kernel_map(dataplane, name):
    table = dataplane.bpf[name.encode()]
    info = kernel_map_info(table.map_fd)
    assert ctypes.sizeof(table.Key) == info.key_size
    if name in PERCPU_MAPS:
        # bcc's per-CPU Leaf is an array with one per-CPU value per possible CPU.
        assert issubclass(table.Leaf, ctypes.Array) and table.Leaf._length_ == dataplane.ncpus
        assert ctypes.sizeof(table.Leaf._type_) == info.value_size
        assert info.value_size % 8 == 0  # else the kernel pads each CPU's value and bcc's array is misread
    else:
        assert ctypes.sizeof(table.Leaf) == info.value_size
    assert table.max_entries == info.max_entries


def test_layouts_have_the_fields_python_reads(dataplane):
    """The fields and offsets the adapter's batch readers rely on."""
    cache = dataplane.bpf[b"sw_addr_cache"].Leaf
    assert ctypes.sizeof(cache) % 8 == 0   # mapped into memory: the kernel packs its entries 8-byte aligned
    assert (cache.addr.offset, cache.tenant_idx.offset, cache.generation.offset) == (0, 16, 20)
    assert cache.counters.offset % 8 == 0
    stats = dataplane.bpf[b"sw_tenant_stats"].Leaf._type_
    direction = stats._fields_[0][1]._type_
    assert [f for f, _ in direction._fields_] == ["dropped_packets", "dropped_bytes", "class_packets",
                                                  "class_bytes", "reason_packets"]
