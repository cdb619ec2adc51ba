"""The address cache (one per CPU): two addresses that share a slot evict each other, and their
counters survive through the spill map (user space adds both)."""

from __future__ import annotations

import ipaddress
import itertools
import struct

from dataplane.constants import ADDRESS_CACHE_BITS
from tests.bpf import frames
from tests.bpf.conftest import CLEAN_SRC6, XDP_REDIRECT, run


def slot_of(address: ipaddress.IPv6Address, bits: int = ADDRESS_CACHE_BITS) -> int:
    """The program's slot hash (sw_addr_slot in seawall.c), written again from its definition, for a cache
    of 2**bits slots a CPU."""
    w0, w1 = struct.unpack("<QQ", address.packed)
    x = w0 ^ w1
    folded = (x ^ (x >> 32)) & 0xFFFFFFFF
    return ((folded * 0x9E3779B1) & 0xFFFFFFFF) >> (32 - bits)


def colliding_pair(network: str) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
    net = ipaddress.ip_network(network)
    seen: dict[int, ipaddress.IPv6Address] = {}
    for i in itertools.count(1):
        address = net.network_address + i * 7919  # spread over the interface ids
        other = seen.setdefault(slot_of(address), address)
        if other != address:
            return other, address


def test_colliding_addresses_keep_their_counts_through_the_spill_map(dp, tenants):
    a, b = colliding_pair("2001:db8:a::/64")
    sequence = [a, b, a, a, b]           # every switch evicts the other address to the spill map
    for dst in sequence:
        assert run(dp, frames.udp(CLEAN_SRC6, str(dst), dport=28960)) == XDP_REDIRECT
    counters = dp.read_destination_counters()
    rows = {addr: i for i, addr in enumerate(counters.addresses)}
    for dst in (a, b):
        assert dst in rows, f"{dst} lost"
        assert int(counters.packets[rows[dst]].sum()) == sequence.count(dst)
        assert int(counters.tenant_idx[rows[dst]]) == tenants["alpha"]
