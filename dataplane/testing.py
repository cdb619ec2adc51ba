"""What tests and benchmarks may look at inside a loaded `Dataplane`, beyond its adapter methods.

The adapter's methods are the interface; a test that checks what the program wrote into a
map, or pins a layout, needs the maps themselves. It takes them from here rather than from
the facade's parts, so a change of those parts changes this module, not the tests.
"""

from __future__ import annotations

import ctypes

import numpy as np

from dataplane.constants import Direction
from dataplane.dataplane import Dataplane
from dataplane.reader import AddressCounterLayout, TenantStatsLayout, read_all


def table(dp: Dataplane, name: str):
    """bcc's table object of one of the program's maps (`dataplane.loader.MAP_NAMES`)."""
    return dp.program.maps[name]


def flow_conn(dp: Dataplane, server: str, client: str, server_port: int, client_port: int):
    """The sw_flow_conns entry (bcc's Leaf) of a connection, or None."""
    import ipaddress  # noqa: PLC0415

    from dataplane.keys import key_bytes  # noqa: PLC0415

    table = dp.flows.maps["sw_flow_conns"]
    key = table.Key()
    ctypes.memmove(key.local, key_bytes(ipaddress.ip_address(server)), 16)
    ctypes.memmove(key.remote, key_bytes(ipaddress.ip_address(client)), 16)
    key.local_port, key.remote_port = server_port, client_port
    try:
        return table[key]
    except KeyError:
        return None


def run_frame(dp: Dataplane, frame: bytes, direction: Direction = Direction.INBOUND) -> tuple[int, bytes]:
    """(XDP action, the frame as the program left it): what an XDP_TX reply looks like on the wire."""
    return dp.program.test_run_frame(frame, direction)


def read_map(dp: Dataplane, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Every element of a map in one batch read: (keys, values, count) as uint8 arrays of count rows
    (a per-CPU map's value row holds every CPU's copy)."""
    return read_all(dp.program.map_ref(name))


def address_layout(dp: Dataplane) -> AddressCounterLayout:
    """The per-address maps' layout as the reader took it from the compiled program."""
    return dp.reader.address_layout


def tenant_stats_layout(dp: Dataplane) -> TenantStatsLayout:
    """The tenant stats map's layout as the reader took it from the compiled program."""
    return dp.reader.tenant_layout


__all__ = ["address_layout", "read_map", "run_frame", "table", "tenant_stats_layout"]
