"""`Dataplane`: the one adapter between Seawall and the kernel, a facade over four parts.

- `dataplane.loader.Program`: compiles the XDP program with bcc, checks pinned maps,
  attaches it to the two NICs through (pinned) bpf_links and detaches it;
- `dataplane.tables.Tables`: every map write: tenant sets (applied atomically through a
  double-buffered slot), heuristics and per-destination budgets, dynamic rules;
- `dataplane.reader.CounterReader`: counters read in batch and decoded without bcc;
- `dataplane.ring.SampleRing`: packet samples;
- `dataplane.flows.Flows`: connection accounting, per-source limits and the block list (issue 15).

`policy/`, `securewatch/` and `appliance/` use this object only (the engine through
`dataplane.api.DataplaneLike`); tests that look at the maps themselves go through
`dataplane.testing`. Key and leaf types come from the compiled program (bcc's
`table.Key` / `table.Leaf`), never from hand-written copies.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Sequence

import numpy as np

from dataplane import constants
from dataplane.api import (
    BlockedSource,
    DataplaneError,
    DestinationCounters,
    FlowCounters,
    IPAddress,
    Range,
    Rule,
    RuleCounters,
    Sample,
    SourceLimit,
    TenantCounterArrays,
    TenantCounters,
)
from dataplane.constants import TENANT_SET_SLOTS, AclKind, Direction, SynAuthStat, TenantMode, TrafficClass
from dataplane.flows import Flows
from dataplane.loader import BPF_DIR, PROGRAM_FILE, Attachment, Program, purge, remove_pinned_link
from dataplane.reader import (
    UNPROTECTED,
    AddressCounterLayout,
    AddressMemo,
    CounterReader,
    TenantStatsLayout,
    address_layout,
    decode_destination_counters,
    decode_tenant_counters,
    sum_over_cpus,
    tenant_stats_layout,
)
from dataplane.ring import SampleRing
from dataplane.sizing import FlowSizes
from dataplane.splices import SpliceGate
from dataplane.tables import Tables, sw_acl_index


class Dataplane:
    """The XDP program and its maps.

    `pin_dir`: a bpffs directory where maps and links persist across restarts
    of the control plane (None for tests and benchmarks: nothing outlives the
    object). `sample_every`: one packet in N per CPU goes to the sample ring
    (0 = off). `max_addresses`: slots of the spill store (dataplane.spill). `defines`: extra
    -D flags for test builds of the program (-DSW_NO_FAST_PARSE, ...).
    `address_cache_bits`: log2 of the address cache's slots per CPU region (the
    appliance passes `dataplane.sizing.address_cache_bits` of its configuration).
    `flow_sizes`: the connection-accounting maps' sizes (`[appliance]` flow_table_entries, ...).
    """

    def __init__(self, pin_dir: str | os.PathLike | None = None, *, sample_every: int = 0,
                 max_addresses: int = constants.MAX_ADDRESSES, defines: Sequence[str] = (),
                 address_cache_bits: int = constants.ADDRESS_CACHE_BITS, flow_sizes: FlowSizes | None = None) -> None:
        self.pin_dir = str(pin_dir) if pin_dir is not None else None
        self.max_addresses = max_addresses
        self.flow_sizes = flow_sizes or FlowSizes()
        self.program = Program(self.pin_dir, max_addresses, [*self.flow_sizes.cflags(), *defines], address_cache_bits)
        self.bpf = self.program.bpf
        self.programs = self.program.programs
        self.ncpus = self.program.ncpus
        maps = self.program.maps
        try:
            self.reader = CounterReader(
                stats=self.program.map_ref("sw_tenant_stats"), cache=self.program.map_ref("sw_addr_cache"),
                spill=self.program.map_ref("sw_addr_spill"), store=self.program.store_maps(), ncpus=self.ncpus,
                address=address_layout(maps["sw_addr_cache"].Leaf, maps["sw_addr_spill"].Leaf),
                tenant=tenant_stats_layout(maps["sw_tenant_stats"].Leaf._type_),
                memo_limit=4 * max_addresses, cache_bits=address_cache_bits)
            self.cache_regions = self.reader.cache_regions
            self.tables = Tables(maps, self.program.map_ref("sw_policy"), pinned=self.pin_dir is not None)
            self.ring = SampleRing(self.bpf)
            self.flows = Flows(self.bpf, self.flow_sizes, reset_prog_fd=self.program.reset_held.fd)
            self.splice_gate = SpliceGate(self.program.map_ref("sw_splice_gate"), self.program.map_ref("sw_splice_dests"))
            self.tables.recover_rules()
            self.tables.fill_reflection_ports()
            cfg = self.tables.config()
            if cfg.generation == 0:  # a fresh (unpinned or first) program: start generations at 1
                cfg.generation = 1
            cfg.sample_every = sample_every
            self.tables.write_config(cfg)
        except BaseException:
            self.program.close()   # the loaded program goes with the failed adapter
            raise

    # -- configuration and attachment ------------------------------------------

    def set_sample_every(self, every: int) -> None:
        self.tables.set_sample_every(every)

    def set_ports(self, external_ifindex: int, internal_ifindex: int) -> None:
        """Where frames leave: each NIC's program knows its own direction, so the devmap's two
        ports are all the program needs to know of the NICs."""
        self.program.set_ports(external_ifindex, internal_ifindex)
        self.flows.reset_ifindex = internal_ifindex   # where resets at the block leave (Flows.reset_held)

    def attach(self, external: str, internal: str, mode: str = "auto") -> list[Attachment]:
        """Bridge `external` and `internal` through the program.

        mode "auto" tries native XDP and falls back to generic (logged);
        "native" and "generic" insist. With a pin directory, an existing pinned
        link is updated in place (atomic program replacement: a restart drops
        no packet) and a new link is pinned so the bridge outlives the process.
        """
        attached = self.program.attach(external, internal, mode)
        self.flows.reset_ifindex = attached[-1].ifindex   # the internal NIC: where resets at the block leave
        return attached

    def detach(self) -> None:
        """Remove the program from both NICs (unpin and close the links)."""
        self.program.detach()
        self.flows.reset_ifindex = None

    @property
    def attachments(self) -> list[Attachment]:
        return self.program.attachments

    def close(self) -> None:
        """Release this process's handles. Pinned links and maps stay: the bridge keeps running."""
        self.reader.close()
        self.flows.close()
        self.program.close()

    # -- tenants, heuristics, budgets -------------------------------------------

    def apply_tenants(self, tables, reset_stats: Iterable[int] = ()) -> None:
        """Load a compiled tenant set (tenants.compile.CompiledTables) atomically (see `Tables.apply_tenants`)."""
        self.reader.tenant_rows = self.tables.apply_tenants(tables, reset_stats)

    @property
    def active_slot(self) -> int:
        return self.tables.active_slot

    @property
    def generation(self) -> int:
        return self.tables.generation

    def set_under_attack(self, tenant_idx: int, dst: IPAddress | None, classes: Iterable[TrafficClass],
                         syn_ports: Range | None = None) -> None:
        """Mark a destination (or a whole tenant, dst None) as under attack in these classes
        (see `Tables.set_under_attack`). An empty `classes` clears the mark."""
        self.tables.set_under_attack(tenant_idx, dst, classes, syn_ports)

    def set_class_budgets(self, tenant_idx: int, budgets: dict[TrafficClass, int]) -> dict[TrafficClass, int]:
        """Set per-destination class budgets (packets/s, 0 = none) of one tenant of the active set, in
        place (see `Tables.set_class_budgets`). Returns the budgets now in force."""
        return self.tables.set_class_budgets(tenant_idx, budgets)

    # -- rules -------------------------------------------------------------------

    def add_rule(self, rule: Rule) -> int:
        """Install a rule; returns its id. DataplaneError when the target is full."""
        return self.tables.add_rule(rule)

    def remove_rule(self, rule_id: int) -> None:
        self.tables.remove_rule(rule_id)

    def installed_rules(self) -> dict[int, Rule]:
        return self.tables.installed_rules()

    def read_rule_counters(self) -> dict[int, RuleCounters]:
        return self.tables.read_rule_counters()

    # -- counters and samples ------------------------------------------------------

    def read_tenant_counter_arrays(self) -> TenantCounterArrays:
        """Cumulative counters of every tenant row (and the UNPROTECTED row) as arrays."""
        return self.reader.read_tenant_counter_arrays()

    def read_tenant_counters(self, indices: Iterable[int] | None = None) -> dict[int, TenantCounters]:
        """Cumulative counters per tenant index (UNPROTECTED for traffic to no tenant): the rows
        in `indices`, or every row that has counters."""
        arrays = self.reader.read_tenant_counter_arrays()
        wanted = np.flatnonzero(arrays.present).tolist() if indices is None else indices
        return {int(idx): arrays.tenant(int(idx)) for idx in wanted}

    def read_synauth_stats(self) -> dict[str, int]:
        """SYN authentication's cumulative counters (sw_synauth_stats, summed over the CPUs), by
        the lower-case name of `constants.SynAuthStat`."""
        table = self.program.maps["sw_synauth_stats"]
        return {stat.name.lower(): int(sum(table[ctypes.c_int(int(stat))])) for stat in SynAuthStat}

    def spill_store_status(self) -> dict[str, int]:
        """The spill store's occupancy (see `CounterReader.spill_store_status`)."""
        return self.reader.spill_store_status()

    def read_destination_counters(self) -> DestinationCounters:
        """Inbound counters per customer-side address (see `CounterReader.read_destination_counters`).
        The policy engine's read once a tick: the splice gate is closed here when no destination is
        splice active any more (`dataplane.splices`)."""
        self.splice_gate.maintain()
        return self.reader.read_destination_counters()

    def splice_gate_status(self) -> dict[str, int | bool]:
        """Whether the splice gate is open, how often this process closed it, and the splice-active
        destinations at its last look (`dataplane.splices.SpliceGate`)."""
        return self.splice_gate.status()

    def address_maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, AddressCounterLayout]:
        """The per-address maps as `decode_destination_counters` takes them (see `CounterReader.address_maps`)."""
        return self.reader.address_maps()

    # -- connection accounting, per-source limits, block list (issue 15) ----------------

    def read_flow_counters(self, per_source: bool = False) -> FlowCounters:
        """Connection accounting of the protected tenants' destinations, per destination or per
        (destination, source) pair (see `api.FlowCounters`, `Flows.read_flow_counters`)."""
        return self.flows.read_flow_counters(per_source)

    def set_source_limits(self, limits: Sequence[SourceLimit]) -> None:
        """Replace the whole set of per-source limits; DataplaneError beyond source_limits_max."""
        self.flows.set_source_limits(limits)

    def block_sources(self, entries: Sequence[BlockedSource]) -> int:
        """Add or refresh block list entries; returns how many the list holds now (at
        blocked_sources_max the oldest go: `read_flow_cap_counters()["blocked_sources_evicted"]`)."""
        return self.flows.block_sources(entries)

    def unblock_source(self, tenant_idx: int, src: IPAddress) -> None:
        self.flows.unblock_source(tenant_idx, src)

    def read_blocked_sources(self) -> list[BlockedSource]:
        """The block list without expired entries, oldest first, with the reasons."""
        return self.flows.read_blocked_sources()

    def read_flow_cap_counters(self) -> dict[str, int]:
        """Evictions at the caps and drops of the limits and the block list since load (see `Flows`)."""
        return self.flows.read_flow_cap_counters()

    def drain_samples(self, limit: int = 4096) -> list[Sample]:
        """Sampled packets since the last call (at most `limit`; the rest wait)."""
        return self.ring.drain(limit)

    # -- testing and benchmarks -----------------------------------------------------

    def test_run(self, frame: bytes, direction: Direction = Direction.INBOUND, repeat: int = 1) -> tuple[int, int]:
        """Run the program of `direction`'s NIC on one frame with BPF_PROG_TEST_RUN; returns
        (action, ns per run).

        Only for a dataplane that is not attached: both ports of a test run are the
        loopback device, where redirected frames go.
        """
        return self.program.test_run(frame, direction, repeat)


__all__ = ["BPF_DIR", "PROGRAM_FILE", "TENANT_SET_SLOTS", "UNPROTECTED", "AclKind", "AddressCounterLayout",
           "AddressMemo", "Attachment", "Dataplane", "DataplaneError", "TenantMode", "TenantStatsLayout",
           "decode_destination_counters", "decode_tenant_counters", "purge", "remove_pinned_link", "sum_over_cpus",
           "sw_acl_index"]
