"""A restart over maps pinned by another version of Seawall is refused with a way out.

bcc reuses whatever map is pinned at a table's path, so without a check a program whose map
changed (type, sizes, flags) would run on the old map as if it had the new layout.
"""

from __future__ import annotations

import os
import uuid

import pytest

from dataplane import bpfsys

BPF_MAP_TYPE_PERCPU_ARRAY = 6   # enum bpf_map_type: what the address cache was before it was memory-mapped


@pytest.fixture
def pin_dir():
    from dataplane.dataplane import purge  # noqa: PLC0415 - the bpf tier may be skipped before this

    path = f"/sys/fs/bpf/seawall-test-{uuid.uuid4().hex[:8]}"
    os.makedirs(path)
    yield path
    purge(path)


def test_a_map_pinned_with_another_layout_is_refused_until_purged(pin_dir):
    from dataplane.dataplane import Dataplane, DataplaneError, purge  # noqa: PLC0415

    old_cache = bpfsys.map_create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 248, 65536, name="sw_addr_cache")
    try:
        bpfsys.obj_pin(old_cache, f"{pin_dir}/sw_addr_cache")
    finally:
        os.close(old_cache)
    with pytest.raises(DataplaneError, match=r"sw_addr_cache .*another version.*seawall detach --purge"):
        Dataplane(pin_dir)
    purge(pin_dir)
    first = Dataplane(pin_dir)         # pins a fresh set
    first.close()
    again = Dataplane(pin_dir)         # and a restart over its own maps is accepted
    assert again.cache_regions >= 1
    again.close()
