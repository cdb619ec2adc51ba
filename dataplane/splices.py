"""The splice gate (`sw_splice_gate`), closed again once no destination is splice active.

The inbound program opens the gate at the first splice (bpf/seawall.c, `sw_splice_dest_open`): from
then on every TCP packet to a tenant address leaves the short pass path and asks `sw_splice_dests`
whether its destination is splice active, which costs the usual packet ~7 ns on the AMD VM (README,
"SYN authentication"). A destination is splice active until SPLICE_IDLE_MS after its last spliced
packet (the map holds that time, bpf_ktime_get_ns); past it the program translates none of its
packets anyway. So once no destination is active the gate only costs: `SpliceGate.maintain()`,
called by the policy engine's reads once a tick, looks every CHECK_EVERY_NS while the gate is open
and closes it when every destination is idle.

A splice that opens while the gate closes must not find it closed: the program writes the
destination's time first and then adds to the gate with a fully ordered atomic (so the gate is open
after any close that came before it, and the time is visible before it), and this module closes the
gate first and reads the destinations after, then opens the gate again if one became active.
Whichever order the two sides' steps take, the gate ends open when a destination is active.
"""

from __future__ import annotations

import time

import numpy as np

from dataplane import bpfsys
from dataplane.constants import SPLICE_IDLE_MS
from dataplane.reader import MapRef, read_all

CHECK_EVERY_NS = 60_000_000_000          # between two looks at the destinations while the gate is open, ns
IDLE_NS = SPLICE_IDLE_MS * 1_000_000     # a destination is splice active this long after its last spliced packet
GATE_KEY = bytes(4)                      # sw_splice_gate's one entry


class SpliceGate:
    """`gate`, `dests`: the MapRefs of sw_splice_gate (u32 -> u64) and sw_splice_dests (address -> u64 ns)."""

    def __init__(self, gate: MapRef, dests: MapRef) -> None:
        self.gate, self.dests = gate, dests
        self._next_check_ns = 0           # the first call looks: a pinned gate may be open from an earlier run
        self.closes = 0                   # times this process closed the gate
        self.active_destinations = 0      # splice-active destinations at the last look

    def is_open(self) -> bool:
        value = bpfsys.map_lookup(self.gate.fd, GATE_KEY, self.gate.value_bytes)
        return value is not None and int.from_bytes(value[:8], "little") != 0

    def maintain(self, now_ns: int | None = None) -> bool:
        """Close the gate if CHECK_EVERY_NS passed since the last look, it is open and no destination is
        splice active at `now_ns` (time.monotonic_ns(), bpf_ktime_get_ns's clock). True if it closed it."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if now < self._next_check_ns:
            return False
        self._next_check_ns = now + CHECK_EVERY_NS   # a closed gate too: its word is read once a minute
        if not self.is_open():
            return False
        self.active_destinations = self._active(now)
        if self.active_destinations:
            return False
        self._write(0)
        # A splice that opened meanwhile: its destination's time is written before its add to the gate, and
        # is later than `now` (active).
        self.active_destinations = self._active(now)
        if self.active_destinations:
            self._write(1)
            return False
        self.closes += 1
        return True

    def status(self) -> dict[str, int | bool]:
        return {"open": self.is_open(), "closes": self.closes, "active_destinations": self.active_destinations}

    def _active(self, now: int) -> int:
        _, values, count = read_all(self.dests)
        last = values[:count, :8].copy().view(np.uint64).ravel()
        # Written after `now` was read (a splice meanwhile): active, as a time within the idle span is.
        return int(np.count_nonzero(last.astype(np.int64) >= now - IDLE_NS))

    def _write(self, value: int) -> None:
        bpfsys.map_update(self.gate.fd, GATE_KEY, value.to_bytes(8, "little"))
