"""Addresses, networks and ports as the model and the compiler both use them.

A leaf module: `tenants.model` (which checks a set against the dataplane's capacity through
`tenants.compile`) and `tenants.compile` both import it, so neither has to import the other
back (scripts/check_imports.py fails on such a cycle).
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
PORT_MAX = 65535


def network_bounds(network: Network) -> tuple[int, int]:
    """First and last address of a network as integers (cheaper than broadcast_address)."""
    first = int(network.network_address)
    return first, first + (1 << (network.max_prefixlen - network.prefixlen)) - 1
