"""Plain data types of the dataplane's Python API (no bcc import here).

`policy/` and `securewatch/` program against these types and against the
methods of `dataplane.Dataplane` listed in `DataplaneLike`, so their unit tests
can use a small fake while the real object talks to the kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from dataplane.constants import Direction, DropReason, RuleAction, TrafficClass
from dataplane.keys import AddressView, IPAddress, address_keys


class DataplaneError(RuntimeError):
    """The kernel refused something: compile, load, attach, or a map update."""


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
class TenantCounterArrays:
    """Cumulative counters of every tenant row at once, summed over CPUs (one batch read).

    Row i is tenant index i; the dataplane's last row (index MAX_TENANTS) counts traffic to
    no tenant. Arrays are indexed [row, direction] or [row, direction, class | reason]; the
    reader hands out views of its buffer, so treat them as read-only. Passed counts are
    derived (class totals minus dropped), as the program does not count them separately.
    """

    present: np.ndarray            # (R,) bool: the row has counters (a tenant that saw traffic)
    dropped_packets: np.ndarray    # (R, 2) uint64
    dropped_bytes: np.ndarray      # (R, 2)
    class_packets: np.ndarray      # (R, 2, len(TrafficClass)), passed + dropped
    class_bytes: np.ndarray        # (R, 2, len(TrafficClass))
    reason_packets: np.ndarray     # (R, 2, len(DropReason))

    def __len__(self) -> int:
        return len(self.present)

    @property
    def passed_packets(self) -> np.ndarray:
        """(R, 2) uint64."""
        return _minus_floor_zero(self.class_packets.sum(axis=2, dtype=np.uint64), self.dropped_packets)

    @property
    def passed_bytes(self) -> np.ndarray:
        return _minus_floor_zero(self.class_bytes.sum(axis=2, dtype=np.uint64), self.dropped_bytes)

    def tenant(self, idx: int) -> TenantCounters:
        """One row as a `TenantCounters` (copies)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"tenant counters: index {idx} is not within 0..{len(self) - 1}")
        cp, cb = self.class_packets[idx].copy(), self.class_bytes[idx].copy()
        dp, db = self.dropped_packets[idx].copy(), self.dropped_bytes[idx].copy()
        return TenantCounters(
            passed_packets=_minus_floor_zero(cp.sum(axis=1, dtype=np.uint64), dp),
            passed_bytes=_minus_floor_zero(cb.sum(axis=1, dtype=np.uint64), db),
            dropped_packets=dp, dropped_bytes=db, class_packets=cp, class_bytes=cb,
            reason_packets=self.reason_packets[idx].copy())

    @classmethod
    def from_mapping(cls, counters: Mapping[int, TenantCounters], rows: int) -> TenantCounterArrays:
        """Arrays of `rows` rows from per-tenant objects (their indices must be within 0..rows-1).

        Passed counts are not carried over: they are derived from the classes and drops.
        """
        n_cls, n_rsn = len(TrafficClass), len(DropReason)
        out = cls(present=np.zeros(rows, bool), dropped_packets=np.zeros((rows, 2), np.uint64),
                  dropped_bytes=np.zeros((rows, 2), np.uint64),
                  class_packets=np.zeros((rows, 2, n_cls), np.uint64),
                  class_bytes=np.zeros((rows, 2, n_cls), np.uint64),
                  reason_packets=np.zeros((rows, 2, n_rsn), np.uint64))
        for idx, c in counters.items():
            if not 0 <= idx < rows:
                raise IndexError(f"tenant counters: index {idx} is not within 0..{rows - 1}")
            out.present[idx] = True
            out.dropped_packets[idx] = c.dropped_packets
            out.dropped_bytes[idx] = c.dropped_bytes
            out.class_packets[idx] = c.class_packets
            out.class_bytes[idx] = c.class_bytes
            out.reason_packets[idx] = c.reason_packets
        return out


def _minus_floor_zero(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b for unsigned counters, 0 where b > a (the two were summed over CPUs that were
    counting meanwhile, so a drop can show before its class count)."""
    return np.where(a >= b, a - np.minimum(a, b), 0).astype(np.uint64)


COUNTER_CLASSES = len(TrafficClass)
# A destination's counter row: packets[C], bytes[C] (inbound, passed + dropped) and dropped packets.
COUNTER_WORDS = 2 * COUNTER_CLASSES + 1


class CounterRows:
    """A read's counter rows, (N, COUNTER_WORDS) uint64: packets[C], bytes[C], dropped packets.

    Either a whole block, or made on demand a block of rows at a time by `fill(lo, hi, out)` from the
    maps the reader read (`dataplane.reader`): a million addresses' rows are ~90 MiB, and a consumer
    that takes them a block at a time (the rate tracker) never holds them all. Rows made on demand are
    valid until the reader reads again (it then `release`s them: a later fill raises); `whole()` makes
    every row once and keeps them.
    """

    __slots__ = ("_fill", "_whole", "count")

    def __init__(self, count: int, fill: Callable[[int, int, np.ndarray], None] | None = None,
                 whole: np.ndarray | None = None) -> None:
        if (fill is None) == (whole is None):
            raise ValueError("counter rows: give either a fill function or the whole block")
        if whole is not None and (whole.shape != (count, COUNTER_WORDS) or whole.dtype != np.uint64):
            raise ValueError(f"counter rows: a block of {count} rows of {COUNTER_WORDS} uint64 words expected, "
                             f"got {whole.shape} {whole.dtype}")
        self.count = count
        self._fill = fill
        self._whole = whole

    @classmethod
    def of_columns(cls, packets: np.ndarray, bytes: np.ndarray, dropped_packets: np.ndarray) -> CounterRows:  # noqa: A002
        """Rows of (N, C) packets, (N, C) bytes and (N,) dropped packets (copied into one block)."""
        n = len(packets)
        if packets.shape != (n, COUNTER_CLASSES) or bytes.shape != (n, COUNTER_CLASSES) \
                or dropped_packets.shape != (n,):
            raise ValueError(f"destination counters: {n} addresses but packets, bytes, dropped_packets have shapes "
                             f"{packets.shape}, {bytes.shape}, {dropped_packets.shape}")
        block = np.empty((n, COUNTER_WORDS), np.uint64)
        block[:, :COUNTER_CLASSES] = packets
        block[:, COUNTER_CLASSES:2 * COUNTER_CLASSES] = bytes
        block[:, 2 * COUNTER_CLASSES] = dropped_packets
        return cls(n, whole=block)

    def __len__(self) -> int:
        return self.count

    def fill(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows lo..hi-1 into `out` ((hi - lo, COUNTER_WORDS) uint64, C-contiguous)."""
        if not 0 <= lo <= hi <= self.count:
            raise ValueError(f"counter rows {lo}..{hi} outside the read's {self.count}")
        if out.shape != (hi - lo, COUNTER_WORDS) or out.dtype != np.uint64 or not out.flags.c_contiguous:
            raise ValueError(f"counter rows: out must be ({hi - lo}, {COUNTER_WORDS}) C-contiguous uint64, got "
                             f"{out.shape} {out.dtype}")
        if self._whole is not None:
            out[:] = self._whole[lo:hi]
        elif self._fill is None:
            raise DataplaneError("counter rows of an earlier read: the reader has read again since (fill them "
                                 "before the next read, or keep `whole()`)")
        else:
            self._fill(lo, hi, out)

    def whole(self) -> np.ndarray:
        """Every row, (N, COUNTER_WORDS) uint64, made once and kept."""
        if self._whole is None:
            block = np.empty((self.count, COUNTER_WORDS), np.uint64)
            self.fill(0, self.count, block)
            self._whole, self._fill = block, None
        return self._whole

    def release(self) -> None:
        """Let go of the maps the rows are made from (the reader, before it reads again)."""
        self._fill = None


class DestinationCounters:
    """Cumulative inbound counters per customer-side address, summed over CPUs.

    Row i describes the address whose map key is `keys[i]` (16 bytes as two uint64
    words, IPv4 as ::ffff:a.b.c.d; see `dataplane.keys`); `addresses` builds ipaddress
    objects lazily, for the rows that are reported. Rows appear and disappear as the
    LRU map evicts, so rates must be computed by address, not by row.

    The counters are `rows` (`CounterRows`: made a block at a time by the dataplane's reader);
    `packets`, `bytes` and `dropped_packets` are views of all of them, made when first asked for.
    """

    __slots__ = ("ids", "keys", "rows", "tenant_idx")

    def __init__(self, keys: np.ndarray, tenant_idx: np.ndarray, packets: np.ndarray | None = None,
                 bytes: np.ndarray | None = None, dropped_packets: np.ndarray | None = None,  # noqa: A002
                 ids: np.ndarray | None = None, *, rows: CounterRows | None = None) -> None:
        columns = (packets, bytes, dropped_packets)
        if rows is None:
            if any(c is None for c in columns):
                raise ValueError("destination counters: give packets, bytes and dropped_packets, or rows")
            rows = CounterRows.of_columns(*columns)
        elif any(c is not None for c in columns):
            raise ValueError("destination counters: give packets, bytes and dropped_packets, or rows, not both")
        self.keys = keys                 # (N, 2) uint64
        self.tenant_idx = tenant_idx     # (N,) uint32
        self.rows = rows
        # (N,) int64 or None: numbers the reader gives addresses, the same for an address from read to
        # read for as long as the reader remembers it (a hint that spares a consumer a hash lookup per
        # row; a consumer checks the key behind a remembered number, as numbers are reused after a reset)
        self.ids = ids

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def packets(self) -> np.ndarray:
        """(N, len(TrafficClass)) uint64, inbound, passed + dropped."""
        return self.rows.whole()[:, :COUNTER_CLASSES]

    @property
    def bytes(self) -> np.ndarray:
        """(N, len(TrafficClass)) uint64."""
        return self.rows.whole()[:, COUNTER_CLASSES:2 * COUNTER_CLASSES]

    @property
    def dropped_packets(self) -> np.ndarray:
        """(N,) uint64."""
        return self.rows.whole()[:, 2 * COUNTER_CLASSES]

    @property
    def addresses(self) -> AddressView:
        return AddressView(self.keys)

    @classmethod
    def from_addresses(cls, addresses: Sequence[IPAddress], tenant_idx: np.ndarray, packets: np.ndarray,
                       bytes: np.ndarray, dropped_packets: np.ndarray) -> DestinationCounters:  # noqa: A002
        """Counters of rows named by ipaddress objects (test doubles, small sets)."""
        return cls(keys=address_keys(addresses), tenant_idx=tenant_idx, packets=packets, bytes=bytes,
                   dropped_packets=dropped_packets)


@dataclasses.dataclass(frozen=True, slots=True)
class FlowCounters:
    """Connection accounting (issue 15) for the destinations of protected tenants, summed over CPUs.

    One row per tracked key: per destination (`sources` is None) or per (destination, source)
    pair. Counters are cumulative since the row entered its LRU map (rates by key, as for
    `DestinationCounters`: rows come and go as the map evicts); `established` is a gauge.
    """

    keys: np.ndarray               # (N, 2) uint64: the destination's 16-byte key (see dataplane.keys)
    sources: np.ndarray | None     # (N, 2) uint64: the source's key, or None for per-destination rows
    tenant_idx: np.ndarray         # (N,) uint32
    new_connections: np.ndarray    # (N,) uint64: handshakes completed (SYN, SYN-ACK, then the client's ACK)
    established: np.ndarray        # (N,) int64: connections open now (completed, not yet FIN/RST)
    http_requests: np.ndarray      # (N,) uint64: client segments starting an HTTP/1.x request line
    tls_hellos: np.ndarray         # (N,) uint64: client segments carrying a TLS ClientHello
    bytes_to_server: np.ndarray    # (N,) uint64: TCP payload bytes, client -> server
    bytes_to_client: np.ndarray    # (N,) uint64: TCP payload bytes, server -> client
    evictions: int = 0             # rows the LRU map pushed out since load (the cap was reached)
    block_resets_sent: int = 0     # connections blocked sources held, reset at their servers at the block, since load
    block_resets_deferred: int = 0  # ... left for a later tick at the cap (dataplane.constants.BLOCK_RESETS_PER_TICK),
                                    # each connection once
    block_resets_unsent: int = 0   # ... written but never sent (dataplane.constants.BLOCK_RESET_SEND_TRIES refused)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def addresses(self) -> AddressView:
        return AddressView(self.keys)

    @property
    def source_addresses(self) -> AddressView | None:
        return None if self.sources is None else AddressView(self.sources)


@dataclasses.dataclass(frozen=True, slots=True)
class SourceLimit:
    """Per-source connection limits (issue 15) for one attacked destination and port of a tenant:
    each source may open `new_per_s` connections a second (burst `new_burst`) and hold
    `max_concurrent` at once; beyond them its SYNs are dropped."""

    tenant_idx: int
    dst: IPAddress
    dport: int | None              # None: every port of the destination
    new_per_s: int
    new_burst: int
    max_concurrent: int


@dataclasses.dataclass(frozen=True, slots=True)
class BlockedSource:
    """A source on a tenant's dynamic block list (issue 15): every packet from it to the tenant is
    dropped until `expires_ns` (CLOCK_MONOTONIC)."""

    tenant_idx: int
    src: IPAddress
    expires_ns: int
    reason: str                    # kept in Python (the map holds only the expiry): shown in status, UI, API


class DataplaneLike(Protocol):
    """What the policy engine and SecureWatch may call on the dataplane: every method the engine
    calls, so a dataplane that lacks one fails the type check, not a tick
    (tests/unit/policy/test_engine_interfaces.py checks that the engine calls nothing else)."""

    def read_tenant_counters(self) -> dict[int, TenantCounters]: ...
    def read_tenant_counter_arrays(self) -> TenantCounterArrays: ...
    def read_destination_counters(self) -> DestinationCounters: ...
    def add_rule(self, rule: Rule) -> int: ...
    def remove_rule(self, rule_id: int) -> None: ...
    def read_rule_counters(self) -> dict[int, RuleCounters]: ...
    def drain_samples(self, limit: int = 4096) -> list[Sample]: ...
    def set_class_budgets(self, tenant_idx: int, budgets: dict[TrafficClass, int]) -> dict[TrafficClass, int]: ...
    # Connection accounting, per-source limits and the dynamic block list (issue 15).
    def read_flow_counters(self, per_source: bool = False) -> FlowCounters: ...
    def set_source_limits(self, limits: Sequence[SourceLimit]) -> None: ...
    def block_sources(self, entries: Sequence[BlockedSource]) -> int: ...
    def unblock_source(self, tenant_idx: int, src: IPAddress) -> None: ...
    def read_blocked_sources(self) -> list[BlockedSource]: ...


__all__ = ["COUNTER_CLASSES", "COUNTER_WORDS", "CounterRows", "DataplaneError", "Range", "Rule", "RuleCounters", "Sample", "TenantCounters", "TenantCounterArrays",
           "DestinationCounters", "AddressView", "FlowCounters", "SourceLimit", "BlockedSource",
           "DataplaneLike", "TrafficClass", "DropReason", "Direction", "RuleAction", "IPAddress"]
