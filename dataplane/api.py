"""Plain data types of the dataplane's Python API (no bcc import here).

`policy/` and `securewatch/` program against these types and against the
methods of `dataplane.Dataplane` listed in `DataplaneLike`, so their unit tests
can use a small fake while the real object talks to the kernel.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Protocol

import numpy as np

from dataplane.constants import Direction, DropReason, RuleAction, TrafficClass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """Inclusive range of an unsigned field; (0, 0xFFFF) for ports means any."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if self.lo > self.hi:
            raise ValueError(f"range {self.lo}-{self.hi} is empty")


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """A dynamic filter rule for one destination address (or a whole tenant).

    Every match field is optional; None means "any". A rule matches only
    inbound traffic of its tenant. `payload` matches the first bytes of the L4
    payload (after the TCP or UDP header) under `payload_mask`.
    """

    tenant_idx: int
    dst: IPAddress | None                 # None: every address of the tenant
    action: RuleAction = RuleAction.DROP
    proto: int | None = None              # IP protocol number
    sport: Range | None = None
    dport: Range | None = None
    length: Range | None = None           # IP total length (IPv4) / payload length + 40 (IPv6), bytes
    ttl: Range | None = None              # IPv4 TTL or IPv6 hop limit
    tcp_flags: tuple[int, int] | None = None   # (mask, value): (flags & mask) == value
    payload: bytes | None = None          # up to PAYLOAD_MATCH_BYTES
    payload_mask: bytes | None = None     # same length as payload; default all ones
    fragments: bool | None = None         # True: only fragments, False: only non-fragments
    rate_pps: int = 0                     # RATE_LIMIT: packets per second admitted
    comment: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RuleCounters:
    matched_packets: int
    matched_bytes: int
    dropped_packets: int


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """A packet copied from the XDP program at a bounded rate."""

    timestamp_ns: int          # CLOCK_MONOTONIC (bpf_ktime_get_ns)
    tenant_idx: int            # constants.NO_TENANT when no tenant owns the address
    direction: Direction
    dropped: bool
    reason: DropReason
    wire_length: int           # bytes of the whole frame
    data: bytes                # the first SAMPLE_BYTES bytes of the frame (or fewer)


@dataclasses.dataclass(frozen=True, slots=True)
class TenantCounters:
    """Cumulative per-tenant counters, summed over CPUs.

    Arrays are indexed [direction] or [direction, class] or [direction, reason].
    """

    passed_packets: np.ndarray     # shape (2,)
    passed_bytes: np.ndarray       # shape (2,)
    dropped_packets: np.ndarray    # shape (2,)
    dropped_bytes: np.ndarray      # shape (2,)
    class_packets: np.ndarray      # shape (2, len(TrafficClass)), passed + dropped
    class_bytes: np.ndarray        # shape (2, len(TrafficClass))
    reason_packets: np.ndarray     # shape (2, len(DropReason))


@dataclasses.dataclass(frozen=True, slots=True)
class DestinationCounters:
    """Cumulative inbound counters per customer-side address, summed over CPUs.

    Row i describes `addresses[i]`; rows appear and disappear as the LRU map
    evicts, so rates must be computed by address, not by row.
    """

    addresses: list[IPAddress]
    tenant_idx: np.ndarray         # shape (N,), uint32
    packets: np.ndarray            # shape (N, len(TrafficClass)), uint64, inbound, passed + dropped
    bytes: np.ndarray              # shape (N, len(TrafficClass)), uint64
    dropped_packets: np.ndarray    # shape (N,), uint64


class DataplaneLike(Protocol):
    """What the policy engine and SecureWatch may call on the dataplane."""

    def read_tenant_counters(self) -> dict[int, TenantCounters]: ...
    def read_destination_counters(self) -> DestinationCounters: ...
    def add_rule(self, rule: Rule) -> int: ...
    def remove_rule(self, rule_id: int) -> None: ...
    def read_rule_counters(self) -> dict[int, RuleCounters]: ...
    def drain_samples(self, limit: int = 4096) -> list[Sample]: ...


__all__ = ["Range", "Rule", "RuleCounters", "Sample", "TenantCounters", "DestinationCounters",
           "DataplaneLike", "TrafficClass", "DropReason", "Direction", "RuleAction", "IPAddress"]
