"""Allow/deny tries behind pinned arrays of maps: they outlive the control plane, and a restarted
one finds and replaces the tries an earlier run left in the inactive slot."""

from __future__ import annotations

import ctypes
import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from dataplane import bpfsys
from tests.bpf.conftest import (
    ALPHA_DST,
    CLEAN_SRC,
    DENIED_SRC,
    STANDARD_TENANTS,
    XDP_DROP,
    XDP_REDIRECT,
    apply_tenant_dicts,
)


def _frame(src: str) -> bytes:
    return bytes(Ether() / IP(src=src, dst=ALPHA_DST) / UDP(sport=5000, dport=80) / (b"x" * 20))


def _filled(dp) -> int:
    """Entries of both arrays of maps that hold a trie."""
    n = 0
    for name in ("sw_acl4_tries", "sw_acl6_tries"):
        outer = dp.bpf[name.encode()]
        n += sum(bpfsys.map_lookup(outer.map_fd, bytes(ctypes.c_uint32(i)), 4) is not None
                 for i in range(outer.max_entries))
    return n


@pytest.fixture
def pin_dir():
    from dataplane.dataplane import purge  # noqa: PLC0415 - the bpf tier may be skipped before this

    path = f"/sys/fs/bpf/seawall-test-{uuid.uuid4().hex[:8]}"
    yield path
    purge(path)


def test_lists_survive_a_restart_and_a_restarted_apply_replaces_them(pin_dir):
    from dataplane import Dataplane  # noqa: PLC0415

    first = Dataplane(pin_dir)
    apply_tenant_dicts(first, STANDARD_TENANTS)
    lists = _filled(first)
    assert lists > 0
    assert first.test_run(_frame(DENIED_SRC))[0] == XDP_DROP
    first.close()

    second = Dataplane(pin_dir)       # a restarted control plane: nothing applied yet
    assert second.test_run(_frame(DENIED_SRC))[0] == XDP_DROP, "the deny list did not survive the restart"
    assert second.test_run(_frame(CLEAN_SRC))[0] == XDP_REDIRECT
    apply_tenant_dicts(second, STANDARD_TENANTS)   # into the other slot
    apply_tenant_dicts(second, STANDARD_TENANTS)   # back into the first run's slot: its tries are replaced
    assert _filled(second) == 2 * lists, "tries of the first run were left behind (or lost)"
    assert second.test_run(_frame(DENIED_SRC))[0] == XDP_DROP
    without_lists = [{k: v for k, v in t.items() if k not in ("allow", "deny")} for t in STANDARD_TENANTS]
    apply_tenant_dicts(second, without_lists)
    apply_tenant_dicts(second, without_lists)
    assert _filled(second) == 0
    assert second.test_run(_frame(DENIED_SRC))[0] == XDP_REDIRECT
    second.close()

    third = Dataplane(pin_dir)        # restarted with lists in both slots: a set without lists clears both
    apply_tenant_dicts(third, STANDARD_TENANTS)
    apply_tenant_dicts(third, STANDARD_TENANTS)
    assert _filled(third) == 2 * lists
    third.close()
    fourth = Dataplane(pin_dir)
    apply_tenant_dicts(fourth, without_lists)
    apply_tenant_dicts(fourth, without_lists)
    assert _filled(fourth) == 0, "tries an earlier run left in the slot active at the restart survived"
    assert fourth.test_run(_frame(DENIED_SRC))[0] == XDP_REDIRECT
    fourth.close()
