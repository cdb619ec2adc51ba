"""The splice gate closes again once no destination is splice active (dataplane/splices.py).

The program opens `sw_splice_gate` at the first splice; while open, every TCP packet to a tenant
address takes the full path to ask `sw_splice_dests` about its destination. The control plane
closes it when every destination's last spliced packet is older than SPLICE_IDLE_MS, the span past
which the program translates none of a destination's packets anyway: closing it changes no
verdict and no frame, and a splice that opens while it closes finds it open again.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from dataplane import bpfsys, constants, splices
from dataplane.keys import key_bytes
from dataplane.splices import CHECK_EVERY_NS
from tests.bpf.conftest import XDP_REDIRECT, apply_tenant_dicts, dataplane_built_with
from tests.bpf.test_plain_pass import DELTA_DST, TENANTS
from tests.bpf.test_synauth import MOD, ack, open_splice, run_frame

# The test build's SPLICE_IDLE_MS, ms: a destination idle that long can be made a few seconds after
# boot (the product's 7,875 s is longer than a fresh CI machine has been up).
IDLE_MS = 2_000


@pytest.fixture
def fresh(monkeypatch):
    """A program of its own (the tier's shared one holds earlier tests' splices, and its gate is open),
    built with SPLICE_IDLE_MS = IDLE_MS, which the control plane's side uses too."""
    monkeypatch.setattr(constants, "SPLICE_IDLE_MS", IDLE_MS)
    monkeypatch.setattr(splices, "IDLE_NS", IDLE_MS * 1_000_000)
    yield from dataplane_built_with()


def splice(dp, tenant_idx: int, client: str, sport: int, client_isn: int = 100, server_isn: int = 7000) -> bytes:
    """Splice a connection from `client` to DELTA_DST and return a data segment of it (which the
    program translates while the destination is splice active)."""
    cookie = open_splice(dp, tenant_idx, client, DELTA_DST, sport, client_isn, server_isn)
    return bytes(Ether(ack(client, DELTA_DST, sport, seq=client_isn + 1, ack_no=cookie + 1, flags="PA",
                           payload=b"x")))


def last_spliced(dp, ns: int) -> None:
    """Set DELTA_DST's time of last spliced packet (bpf_ktime_get_ns), as if it were then."""
    ref = dp.splice_gate.dests
    bpfsys.map_update(ref.fd, key_bytes(ipaddress.ip_address(DELTA_DST)), ns.to_bytes(8, "little"))


def acked(dp, frame: bytes) -> int:
    action, out = run_frame(dp, frame)
    assert action == XDP_REDIRECT
    return Ether(out)[TCP].ack


def test_the_gate_closes_once_every_destination_is_idle_and_no_frame_changes(fresh):
    dp = fresh
    applied = apply_tenant_dicts(dp, TENANTS)
    assert not dp.splice_gate.is_open(), "a fresh program has spliced nothing"
    segment = splice(dp, applied["delta"], "198.19.92.7", 50500)
    assert dp.splice_gate.is_open()
    assert acked(dp, segment) == 7001 % MOD, "translated: the server's numbers"

    # Active: the gate stays open, and the next look waits CHECK_EVERY_NS.
    now = time.monotonic_ns()
    assert dp.splice_gate.maintain(now) is False
    assert dp.splice_gate.is_open() and dp.splice_gate.active_destinations == 1
    last_spliced(dp, now - splices.IDLE_NS - 1_000_000_000)
    assert dp.splice_gate.maintain(now + CHECK_EVERY_NS - 1) is False and dp.splice_gate.is_open(), "looked too soon"

    # Idle past SPLICE_IDLE_MS: the program already leaves the segment untranslated, gate open or not.
    untranslated = acked(dp, segment)
    assert untranslated != 7001 % MOD
    assert dp.splice_gate.maintain(now + CHECK_EVERY_NS) is True
    assert not dp.splice_gate.is_open()
    assert dp.splice_gate.status() == {"open": False, "closes": 1, "active_destinations": 0}
    assert acked(dp, segment) == untranslated, "closing the gate changed a frame"

    # The next splice opens it again, and a look finds it active.
    splice(dp, applied["delta"], "198.19.92.8", 50501)
    assert dp.splice_gate.is_open()
    look = splices.SpliceGate(dp.splice_gate.gate, dp.splice_gate.dests)   # a look due now (a restarted engine's)
    assert look.maintain() is False and look.active_destinations == 1 and dp.splice_gate.is_open()


def test_a_splice_that_opens_while_the_gate_closes_finds_it_open(fresh, monkeypatch):
    """The control plane closes the gate, then reads the destinations again: a splice the program
    opened between its look and the close (its destination's time written before its gate check)
    keeps the gate open."""
    dp = fresh
    applied = apply_tenant_dicts(dp, TENANTS)
    splice(dp, applied["delta"], "198.19.92.7", 50500)
    now = time.monotonic_ns()
    last_spliced(dp, now - splices.IDLE_NS - 1_000_000_000)
    gate = dp.splice_gate
    update = bpfsys.map_update
    written = []

    def update_then_splice(fd: int, key: bytes, value: bytes) -> None:
        update(fd, key, value)
        if fd == gate.gate.fd:
            written.append(int.from_bytes(value, "little"))
            if written == [0]:  # the program's splice lands right after the close
                splice(dp, applied["delta"], "198.19.92.9", 50502)

    monkeypatch.setattr(bpfsys, "map_update", update_then_splice)
    assert gate.maintain(time.monotonic_ns()) is False
    assert written == [0, 1], "closed, then opened again on the second look"
    assert gate.is_open() and gate.closes == 0 and gate.active_destinations == 1
