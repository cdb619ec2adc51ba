"""Connection accounting, per-source limits and the dynamic block list (issue 15): the maps of
bpf/flows.h, read and written for `dataplane.Dataplane` (docs/design/connection-accounting.md).

The program counts; this side decodes the counter maps (layouts from bcc's `table.Leaf`, never
written down here), keeps the block list's reasons and its cap (the kernel map holds only each
entry's expiry; the oldest entries go first when the cap is reached), replaces the set of
per-source limits as a whole, and opens or closes the gate bits (sw_config.flags) that spare packets the lookups
of empty lists.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ipaddress
import socket
import struct
import time
from collections.abc import Sequence

import numpy as np
import structlog

from dataplane import bpfsys
from dataplane.api import BlockedSource, DataplaneError, FlowCounters, IPAddress, SourceLimit
from dataplane.constants import (
    BLOCK_RESET_DELAY_MS,
    BLOCK_RESET_RETRY_MAX,
    BLOCK_RESET_SEND_TRIES,
    BLOCK_RESETS_PER_TICK,
    MAX_TENANTS,
    FlowGate,
    FlowStat,
    FlowState,
)
from dataplane.keys import V4_MAPPED_PREFIX, address_from_key_bytes, key_bytes
from dataplane.reader import MapRef, read_all
from dataplane.sizing import FlowSizes

log = structlog.get_logger("seawall.dataplane")

# The maps of bpf/flows.h that this side reads or writes.
MAP_NAMES = ("sw_flow_conns", "sw_flow_handshakes", "sw_flow_dests", "sw_flow_pairs", "sw_source_limits", "sw_limit_buckets", "sw_blocked",
             "sw_flow_stats", "sw_config")
U32_MAX = 0xFFFFFFFF
RESTORED_REASON = "restored after a restart (reason not kept)"
NEVER = 1 << 64   # past any monotonic time, ns
XDP_TX = 3        # the reset program's "send this frame" (xdp_seawall_reset_held)
RESET_TTL = 64    # hop limit of the frames handed to the reset program (it writes its own: SW_SYNACK_TTL)
# A (tenant, source) key as one value, so that the scan matches the blocked sources exactly with np.isin.
_SOURCE_KEY = np.dtype([("tenant", np.uint64), ("high", np.uint64), ("low", np.uint64)])


def _map_ref(table) -> MapRef:
    return MapRef(fd=table.map_fd, key_bytes=ctypes.sizeof(table.Key), value_bytes=ctypes.sizeof(table.Leaf),
                  max_entries=table.max_entries)


def _address(value: object, what: str) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    raise DataplaneError(f"{what}: expected an IPv4 or IPv6 address, got {value!r}")


def _whole(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DataplaneError(f"{what}: expected an integer within {low}..{high}, got {value!r}")
    return value


class Flows:
    """The maps of bpf/flows.h in a loaded program (`bpf`: bcc's BPF object), sized by `sizes`."""

    def __init__(self, bpf, sizes: FlowSizes, reset_prog_fd: int | None = None) -> None:
        self.sizes = sizes
        self.maps = {name: bpf[name.encode()] for name in MAP_NAMES}
        # Resets at the block (`reset_held`): the program that writes them, the internal NIC they leave by
        # (set by `Dataplane.attach` / `set_ports`; None: not attached, nothing is sent and no entry changes).
        self.reset_prog_fd = reset_prog_fd
        self.reset_ifindex: int | None = None
        self.resets_per_tick = BLOCK_RESETS_PER_TICK
        self.reset_retry_max = BLOCK_RESET_RETRY_MAX   # frames waiting for another send at most
        self.reset_delay_ns = BLOCK_RESET_DELAY_MS * 1_000_000
        self._reset_socket: socket.socket | None = None
        self._reset_socket_ifindex: int | None = None   # the NIC the socket is bound to
        # Blocked sources whose held connections wait for their reset -> (not before this monotonic ns, not
        # before the per-destination read of the flow counters after this many: see `reset_held`).
        self._reset_wanted: dict[tuple[int, bytes], tuple[int, int]] = {}
        self._flow_reads = 0         # per-destination reads of the flow counters (the engine's ticks) since load
        # Reset frames a send refused: (source key, frame, sends tried), sent again at the next ticks.
        self._reset_retry: collections.deque[tuple[tuple[int, bytes], bytes, int]] = collections.deque()
        self._resets_sent = 0        # resets sent out of the internal NIC
        self._resets_deferred = 0    # held connections left for a later tick at BLOCK_RESETS_PER_TICK, each once
        self._deferred_conns: set[bytes] = set()   # ... the connections (entry keys) left at the last tick
        self._resets_unsent = 0      # resets written but never sent (BLOCK_RESET_SEND_TRIES refused, or dropped
                                     # at BLOCK_RESET_RETRY_MAX)
        # Batch read buffers, kept: a tick reads these maps whole (max_entries + 1 rows each).
        self._buffers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        conn = self.maps["sw_flow_conns"].Leaf
        self._conn_at = {name: getattr(conn, name).offset for name in ("state", "tenant_idx", "client_next", "l2",
                                                                       "l2_len")}
        counts = self.maps["sw_flow_dests"].Leaf
        # Field offsets of struct sw_flow_counts, in 64-bit words (the layout comes from the program).
        self._words = {name: getattr(counts, name).offset // 8 for name in (
            "new_connections", "established", "http_requests", "tls_hellos", "bytes_to_server", "bytes_to_client")}
        self._tenant_at = counts.tenant_idx.offset
        self._blocked: dict[tuple[int, bytes], BlockedSource] = {}   # oldest (least recently set) first
        self._limits: dict[tuple[int, bytes, int], SourceLimit] = {}
        self._blocked_evicted = 0
        self._next_expiry = 0   # monotonic ns of the earliest block's end (0: find out; NEVER: no block)
        # Rows that pinned maps kept from an earlier run: evictions count from this load on, and the
        # program's counter of rows made (not pinned) starts at 0.
        self._rows_at_load = {name: self._present(name) for name in ("sw_flow_conns", "sw_flow_handshakes",
                                                                        "sw_flow_dests", "sw_flow_pairs")}
        self._recover()

    # -- counters ------------------------------------------------------------------

    def _stats(self) -> dict[FlowStat, int]:
        table = self.maps["sw_flow_stats"]
        return {stat: int(sum(table[ctypes.c_int(int(stat))])) for stat in FlowStat}

    def _present(self, name: str) -> int:
        return read_all(_map_ref(self.maps[name]))[2]

    def _evicted(self, made: int, closed: int, name: str, present: int | None = None) -> int:
        present = self._present(name) if present is None else present
        return max(0, self._rows_at_load[name] + made - closed - present)

    def read_flow_counters(self, per_source: bool = False) -> FlowCounters:
        """Cumulative counters per destination, or per (destination, source) pair with `per_source`
        (see `api.FlowCounters`); `evictions`: rows of that map the LRU pushed out since load."""
        # The engine reads these every interval: expired blocks leave here too, and the gate closes
        # when none is left (else every packet of a protected tenant kept paying the list's lookup).
        self._prune(time.monotonic_ns())
        name = "sw_flow_pairs" if per_source else "sw_flow_dests"
        keys, values, n = self._read(name)
        keys, values = keys[:n], values[:n]
        key_words = np.ascontiguousarray(keys).view(np.uint64).reshape(n, keys.shape[1] // 8)
        words = np.ascontiguousarray(values).view(np.uint64).reshape(n, values.shape[1] // 8)
        tenants = np.ascontiguousarray(values[:, self._tenant_at:self._tenant_at + 4]).view(np.uint32).reshape(n)
        w = self._words
        stats = self._stats()
        made = stats[FlowStat.SOURCE_ROWS if per_source else FlowStat.DESTINATION_ROWS]
        # A gauge can dip below 0 when its row was evicted while connections were open, then made anew.
        established = np.maximum(words[:, w["established"]].view(np.int64), 0)
        if not per_source:
            # The engine's tick (one per-destination read each): its rows are taken (in their own buffers,
            # which the pass does not touch), so the held connections of sources blocked before the last tick
            # go now (`reset_held`: BLOCK_RESET_DELAY_MS, at most one pass a tick).
            self._flow_reads += 1
            self.reset_held()
        return FlowCounters(
            keys=key_words[:, :2].copy(), sources=key_words[:, 2:4].copy() if per_source else None,
            tenant_idx=tenants.copy(), new_connections=words[:, w["new_connections"]].copy(),
            established=established, http_requests=words[:, w["http_requests"]].copy(),
            tls_hellos=words[:, w["tls_hellos"]].copy(), bytes_to_server=words[:, w["bytes_to_server"]].copy(),
            bytes_to_client=words[:, w["bytes_to_client"]].copy(),
            evictions=self._evicted(made, 0, name, present=n),
            block_resets_sent=self._resets_sent, block_resets_deferred=self._resets_deferred,
            block_resets_unsent=self._resets_unsent)

    def _read(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """A whole map in one batch read, into buffers kept for the next (views: copy what must last)."""
        ref = _map_ref(self.maps[name])
        if name not in self._buffers:
            rows = ref.max_entries + 1
            self._buffers[name] = (np.empty((rows, ref.key_bytes), np.uint8), np.empty((rows, ref.value_bytes), np.uint8))
        return read_all(ref, self._buffers[name])

    def read_flow_cap_counters(self) -> dict[str, int]:
        """What the caps cost since load: rows the LRU maps pushed out (connections tracked, destination
        rows, (destination, source) rows), block list entries dropped as the oldest at its cap, the
        packets the limits and the list dropped (monitor mode: would have dropped), and the blocked
        sources' segments sent on to their servers as resets of the connections (`block_resets`), the
        connections they held reset at the block (`block_resets_sent`), left for a later tick at the cap
        (`block_resets_deferred`) or written but not sent (`block_resets_unsent`); and the segments that paid
        the accounting program's tail call (`accounting_calls`, what it costs)."""
        stats = self._stats()
        connections = self._evicted(stats[FlowStat.CONNECTIONS_OPENED], stats[FlowStat.CONNECTIONS_CLOSED],
                                    "sw_flow_conns")
        handshakes = self._evicted(stats[FlowStat.HANDSHAKES_STARTED], stats[FlowStat.HANDSHAKES_ENDED],
                                   "sw_flow_handshakes")
        destinations = self._evicted(stats[FlowStat.DESTINATION_ROWS], 0, "sw_flow_dests")
        sources = self._evicted(stats[FlowStat.SOURCE_ROWS], 0, "sw_flow_pairs")
        rate, concurrent = stats[FlowStat.LIMIT_RATE_DROPS], stats[FlowStat.LIMIT_CONCURRENT_DROPS]
        return {"connections_evicted": connections, "handshakes_evicted": handshakes,
                "destination_rows_evicted": destinations,
                "source_rows_evicted": sources, "flow_rows_evicted": destinations + sources,
                "blocked_sources_evicted": self._blocked_evicted, "limit_rate_drops": rate,
                "limit_concurrent_drops": concurrent, "limit_drops": rate + concurrent,
                "block_drops": stats[FlowStat.BLOCK_DROPS], "block_resets": stats[FlowStat.BLOCK_RESETS],
                "block_resets_sent": self._resets_sent, "block_resets_deferred": self._resets_deferred,
                "block_resets_unsent": self._resets_unsent,
                "accounting_calls": stats[FlowStat.ACCOUNTING_CALLS]}

    # -- per-source limits ------------------------------------------------------------

    def set_source_limits(self, limits: Sequence[SourceLimit]) -> None:
        """Replace the whole set of per-source limits (validated first: on an error nothing changes)."""
        cap = self.sizes.source_limits_max
        if len(limits) > cap:
            raise DataplaneError(f"{len(limits)} per-source limits exceed source_limits_max ({cap})")
        table = self.maps["sw_source_limits"]
        wanted: dict[tuple[int, bytes, int], tuple[SourceLimit, object, object]] = {}
        for limit in limits:
            what = f"source limit {limit.tenant_idx}/{limit.dst}"
            tenant = _whole(limit.tenant_idx, f"{what}: tenant_idx", 0, MAX_TENANTS - 1)
            dst = key_bytes(_address(limit.dst, f"{what}: dst"))
            port = 0 if limit.dport is None else _whole(limit.dport, f"{what}: dport", 1, 0xFFFF)
            key = table.Key()
            key.tenant_idx, key.dport = tenant, port
            ctypes.memmove(key.dst, dst, 16)
            leaf = table.Leaf()
            leaf.new_per_s = _whole(limit.new_per_s, f"{what}: new_per_s", 0, U32_MAX)
            leaf.new_burst = _whole(limit.new_burst, f"{what}: new_burst", 0, U32_MAX)
            leaf.max_concurrent = _whole(limit.max_concurrent, f"{what}: max_concurrent", 0, U32_MAX)
            if (tenant, dst, port) in wanted:
                raise DataplaneError(f"{what}: port {limit.dport} is given twice")
            wanted[(tenant, dst, port)] = (limit, key, leaf)
        try:
            for _, key, leaf in wanted.values():
                table[key] = leaf
        except Exception as exc:
            raise DataplaneError(f"cannot write the per-source limits: {exc}") from exc
        for stale in set(self._limits) - set(wanted):
            tenant, dst, port = stale
            key = table.Key()
            key.tenant_idx, key.dport = tenant, port
            ctypes.memmove(key.dst, dst, 16)
            bpfsys.map_delete(table.map_fd, bytes(key))
        self._limits = {k: limit for k, (limit, _, _) in wanted.items()}
        self._write_gate()
        log.info("dataplane.source_limits", entries=len(self._limits))

    def source_limits(self) -> list[SourceLimit]:
        return list(self._limits.values())

    # -- block list -----------------------------------------------------------------------

    def _block_key(self, tenant: int, src: bytes):
        table = self.maps["sw_blocked"]
        key = table.Key()
        key.tenant_idx = tenant
        ctypes.memmove(key.src, src, 16)
        return key

    def block_sources(self, entries: Sequence[BlockedSource]) -> int:
        """Add or refresh entries (a refreshed entry takes its new expiry and reason and counts as the
        newest); at blocked_sources_max the oldest go, counted in `blocked_sources_evicted`. Returns
        how many entries the list holds now."""
        checked = []
        for entry in entries:
            what = f"blocked source {entry.src}"
            tenant = _whole(entry.tenant_idx, f"{what}: tenant_idx", 0, MAX_TENANTS - 1)
            src = key_bytes(_address(entry.src, f"{what}: src"))
            _whole(entry.expires_ns, f"{what}: expires_ns", 1, (1 << 64) - 1)
            if not isinstance(entry.reason, str):
                raise DataplaneError(f"{what}: reason must be text, got {entry.reason!r}")
            checked.append(((tenant, src), entry))
        now = time.monotonic_ns()
        self._prune(now)
        for key, entry in checked:
            self._blocked.pop(key, None)
            if entry.expires_ns > now:
                self._blocked[key] = entry
                self._next_expiry = min(self._next_expiry, entry.expires_ns)
        over = len(self._blocked) - self.sizes.blocked_sources_max
        table = self.maps["sw_blocked"]
        if over > 0:
            for key in list(self._blocked)[:over]:
                del self._blocked[key]
                self._reset_wanted.pop(key, None)
                bpfsys.map_delete(table.map_fd, bytes(self._block_key(*key)))
            self._blocked_evicted += over
            log.warning("dataplane.blocked_sources_cap", evicted=over, cap=self.sizes.blocked_sources_max)
        for key, entry in checked:
            if self._blocked.get(key) is entry:
                table[self._block_key(*key)] = table.Leaf(entry.expires_ns)
                # Reset at a tick after the next, once the delay passed (`reset_held`), not here: the tick
                # after the block still sees what it blocked.
                self._reset_wanted[key] = (now + self.reset_delay_ns, self._flow_reads)
        self._write_gate()
        return len(self._blocked)

    def unblock_source(self, tenant_idx: int, src: IPAddress) -> None:
        """Take a source off a tenant's list (nothing happens if it is not on it)."""
        tenant = _whole(tenant_idx, "unblock: tenant_idx", 0, MAX_TENANTS - 1)
        key = (tenant, key_bytes(_address(src, "unblock: src")))
        self._reset_wanted.pop(key, None)
        if self._blocked.pop(key, None) is not None:
            bpfsys.map_delete(self.maps["sw_blocked"].map_fd, bytes(self._block_key(*key)))
            self._write_gate()

    def read_blocked_sources(self) -> list[BlockedSource]:
        """Entries not yet expired, oldest first (expired ones leave the map here)."""
        self._prune(time.monotonic_ns())
        return list(self._blocked.values())

    def _prune(self, now: int) -> None:
        if self._next_expiry > now:
            return  # nothing expired yet: no walk over the list on every read
        expired = [key for key, entry in self._blocked.items() if entry.expires_ns <= now]
        fd = self.maps["sw_blocked"].map_fd
        for key in expired:
            del self._blocked[key]
            self._reset_wanted.pop(key, None)
            bpfsys.map_delete(fd, bytes(self._block_key(*key)))
        self._next_expiry = min((entry.expires_ns for entry in self._blocked.values()), default=NEVER)
        if expired:
            self._write_gate()

    # -- resets at the block -------------------------------------------------------------------

    def reset_held(self) -> int:
        """Reset at their servers the connections that blocked sources hold, without waiting for the sources'
        next segments (a silent connection-flood bot sends none). Called once per engine tick, by the
        per-destination read of the flow counters after its rows are taken; a source's connections go at the
        first such call after both BLOCK_RESET_DELAY_MS (`reset_delay_ns`) since its block and one read of
        the counters after the block (the tick after the block still sees them, whatever tick_ms is).

        One batch read of sw_flow_conns finds their ESTABLISHED entries; for each, the program
        xdp_seawall_reset_held (flows.h, sw_flows_reset_held) checks the block, turns a frame built from the
        entry into the RST and moves the entry out of ESTABLISHED with the gauges, as a bot's segment would;
        the frame leaves by the internal NIC on a non-blocking packet socket (a tick holds the engine's lock:
        it never waits for a full buffer). A refused send is tried again at the next ticks, then counted in
        `block_resets_unsent`. At most `resets_per_tick` (BLOCK_RESETS_PER_TICK) entries a call: the rest wait
        for the next (`block_resets_deferred`, once per connection). Sources unblocked meanwhile (their
        tenant left mitigate mode, the block expired) are not reset. Returns the resets sent. Nothing happens
        before `reset_ifindex` is known (an unattached dataplane)."""
        if self.reset_ifindex is None or self.reset_prog_fd is None:
            return 0
        failed: list[str] = []     # send errors of this call (one warning for all)
        sent = self._send_retries(failed)
        now = time.monotonic_ns()
        wanted = {key for key, (due, reads) in self._reset_wanted.items()
                  if due <= now and reads < self._flow_reads and key in self._blocked}
        if wanted:
            sent += self._reset_sources(wanted, failed)
        if failed:
            log.warning("dataplane.block_resets_unsent", frames=len(failed), error=failed[-1],
                        ifindex=self.reset_ifindex, waiting=len(self._reset_retry), unsent=self._resets_unsent)
        return sent

    def _reset_sources(self, wanted: set[tuple[int, bytes]], failed: list[str]) -> int:
        try:
            keys, values, n = self._read("sw_flow_conns")
        except OSError as exc:   # all of them stay wanted: the next tick tries again
            log.warning("dataplane.block_resets_read_failed", error=str(exc), sources=len(wanted))
            return 0
        keys, values = keys[:n], values[:n]
        at = self._conn_at
        state = np.ascontiguousarray(values[:, at["state"]:at["state"] + 8]).view(np.uint64).reshape(n)
        rows = np.flatnonzero(state == FlowState.ESTABLISHED)
        tenants = np.ascontiguousarray(values[rows, at["tenant_idx"]:at["tenant_idx"] + 4]).view(np.uint32).reshape(-1)
        remote = np.ascontiguousarray(keys[rows, 16:32]).view(np.uint64).reshape(-1, 2)
        held_keys = np.empty(len(rows), _SOURCE_KEY)
        held_keys["tenant"], held_keys["high"], held_keys["low"] = tenants, remote[:, 0], remote[:, 1]
        want = np.frombuffer(b"".join(src for _, src in wanted), np.uint64).reshape(-1, 2)
        want_keys = np.empty(len(wanted), _SOURCE_KEY)
        want_keys["tenant"] = np.fromiter((t for t, _ in wanted), np.uint64, len(wanted))
        want_keys["high"], want_keys["low"] = want[:, 0], want[:, 1]
        match = np.isin(held_keys, want_keys)
        held = [(r, (t, keys[r, 16:32].tobytes())) for r, t in zip(rows[match].tolist(), tenants[match].tolist(),
                                                                   strict=True)]
        left = held[self.resets_per_tick:]
        held = held[:self.resets_per_tick]
        # Sources with connections left at the cap or whose frame failed stay wanted (still ESTABLISHED at the
        # next tick's read: reset then); the others are done.
        keep = {key for _, key in left}
        deferred = {keys[r].tobytes() for r, _ in left}
        self._resets_deferred += len(deferred - self._deferred_conns)
        self._deferred_conns = deferred
        if left:
            log.warning("dataplane.block_resets_cap", waiting=len(left), cap=self.resets_per_tick)
        sent = 0
        errors: list[str] = []
        for r, key in held:
            try:
                frame = self._reset_frame(keys[r].tobytes(), values[r].tobytes())
                if frame is None:
                    continue
                action, _, out = bpfsys.prog_test_run(self.reset_prog_fd, frame)
            except (OSError, DataplaneError) as exc:
                keep.add(key)   # still ESTABLISHED: tried again at the next tick
                errors.append(str(exc))
                continue
            if action != XDP_TX:
                continue   # reset meanwhile by the source's own segment, closed, or unblocked
            sent += self._send_or_queue(key, out, 1, failed)
        for key in wanted - keep:
            self._reset_wanted.pop(key, None)
        if errors:
            log.warning("dataplane.block_resets_failed", connections=len(errors), error=errors[-1])
        if held:
            log.info("dataplane.block_resets", connections=len(held), sent=sent)
        return sent

    def _send_retries(self, failed: list[str]) -> int:
        """The frames a send refused at earlier ticks, again (those of sources unblocked since: dropped)."""
        retry, self._reset_retry = self._reset_retry, collections.deque()
        sent = 0
        for key, frame, tries in retry:
            if key in self._blocked:
                sent += self._send_or_queue(key, frame, tries + 1, failed)
        return sent

    def _send_or_queue(self, key: tuple[int, bytes], frame: bytes, tries: int, failed: list[str]) -> int:
        """Send one reset (1) or keep it for the next tick (0): after BLOCK_RESET_SEND_TRIES sends, or
        pushed out of the `reset_retry_max` frames waiting (the oldest goes), it counts as unsent."""
        try:
            self._send_reset(frame)
        except OSError as exc:
            failed.append(str(exc))
            if tries >= BLOCK_RESET_SEND_TRIES:
                self._resets_unsent += 1
            else:
                if len(self._reset_retry) >= self.reset_retry_max:
                    self._reset_retry.popleft()
                    self._resets_unsent += 1
                self._reset_retry.append((key, frame, tries))
            return 0
        self._resets_sent += 1
        return 1

    def _reset_frame(self, key: bytes, value: bytes) -> bytes | None:
        """The client -> server frame the reset program rewrites into the RST: the entry's recorded Ethernet
        header and tags, an IP header and a TCP header with the flow's addresses and ports (the program writes
        the sequence number, flags, lengths and checksums)."""
        at = self._conn_at
        l2_len = value[at["l2_len"]]
        if l2_len < 14:
            return None   # not recorded (cannot happen for an entry this program made)
        l2 = value[at["l2"]:at["l2"] + l2_len]
        server, client = key[0:16], key[16:32]
        server_port, client_port = struct.unpack_from("=HH", key, 32)
        tcp = struct.pack("!HHIIBBHHH", client_port, server_port, 0, 0, 5 << 4, 0x10, 0, 0, 0)
        if client[:12] == V4_MAPPED_PREFIX and server[:12] == V4_MAPPED_PREFIX:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, RESET_TTL, socket.IPPROTO_TCP, 0,
                             client[12:], server[12:])
        else:
            ip = struct.pack("!IHBB16s16s", 6 << 28, 20, socket.IPPROTO_TCP, RESET_TTL, client, server)
        return l2 + ip + tcp

    def _send_reset(self, frame: bytes) -> None:
        """Out of the internal NIC as it is (a packet socket bound to it: the frame carries its own Ethernet
        header), never waiting: a full buffer raises (EAGAIN/ENOBUFS) and the frame waits for the next tick."""
        if self._reset_socket is None or self._reset_socket_ifindex != self.reset_ifindex:
            self._close_reset_socket()
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                sock.setblocking(False)
                sock.bind((socket.if_indextoname(self.reset_ifindex), 0))
            except OSError:
                sock.close()
                raise
            self._reset_socket, self._reset_socket_ifindex = sock, self.reset_ifindex
        self._reset_socket.send(frame, socket.MSG_DONTWAIT)

    def _close_reset_socket(self) -> None:
        if self._reset_socket is not None:
            with contextlib.suppress(OSError):
                self._reset_socket.close()
            self._reset_socket, self._reset_socket_ifindex = None, None

    def close(self) -> None:
        self._close_reset_socket()

    # -- state ------------------------------------------------------------------------------

    def _write_gate(self) -> None:
        bits = (FlowGate.BLOCKED if self._blocked else FlowGate(0)) | (FlowGate.LIMITS if self._limits else FlowGate(0))
        # sw_config.flags (its other fields belong to `dataplane.tables.Tables`: read, change one, write).
        table = self.maps["sw_config"]
        cfg = table[table.Key(0)]
        cfg.flags = int(bits)
        table[table.Key(0)] = cfg

    def _recover(self) -> None:
        """Pinned maps outlive the process: take over the block list (its reasons were in the old process)
        and the limits an earlier run left, so that the next replacement removes them."""
        blocked = self.maps["sw_blocked"]
        for key, leaf in blocked.items():
            src = bytes(key.src)
            self._blocked[(int(key.tenant_idx), src)] = BlockedSource(
                tenant_idx=int(key.tenant_idx), src=address_from_key_bytes(src), expires_ns=int(leaf.value),
                reason=RESTORED_REASON)
        limits = self.maps["sw_source_limits"]
        for key, leaf in limits.items():
            dst = bytes(key.dst)
            self._limits[(int(key.tenant_idx), dst, int(key.dport))] = SourceLimit(
                tenant_idx=int(key.tenant_idx), dst=address_from_key_bytes(dst), dport=int(key.dport) or None,
                new_per_s=int(leaf.new_per_s), new_burst=int(leaf.new_burst), max_concurrent=int(leaf.max_concurrent))
        self._prune(time.monotonic_ns())
        self._write_gate()


__all__ = ["MAP_NAMES", "RESTORED_REASON", "Flows"]
