"""`Dataplane`: the one adapter between Seawall and the kernel.

It compiles the XDP program with bcc, attaches it to the two NICs through
pinned bpf_links, and owns every map read and write: tenant sets (applied
atomically through a double-buffered slot), dynamic rules, counters (read in
batch), and packet samples. Key and leaf types come from the compiled program
(bcc's `table.Key` / `table.Leaf`), never from hand-written copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import ipaddress
import mmap
import os
import pathlib
import re
import socket
import subprocess
import time
from collections import deque
from collections.abc import Iterable

import numpy as np
import structlog

from dataplane import bpfsys, constants
from dataplane.api import (
    DestinationCounters,
    IPAddress,
    Range,
    Rule,
    RuleCounters,
    Sample,
    TenantCounterArrays,
    TenantCounters,
)
from dataplane.constants import (
    MAX_ACL_PREFIXES,
    MAX_RULES,
    MAX_TENANTS,
    NO_TENANT,
    PAYLOAD_MATCH_BYTES,
    RULES_PER_TARGET,
    TENANT_SET_SLOTS,
    AclKind,
    Direction,
    DropReason,
    RuleAction,
    TenantMode,
    TrafficClass,
)
from dataplane.keys import MIN_CAPACITY, KeyIndex, unique_keys
from dataplane.memory import release_compiler_code, release_freed_heap

log = structlog.get_logger("seawall.dataplane")

BPF_DIR = pathlib.Path(__file__).parent / "bpf"
PROGRAM_FILE = BPF_DIR / "seawall.c"
# Each NIC runs the program of its direction; each program tail-calls its refresh program on an
# address cache miss (seawall.c). sw_progs slots: main programs at the direction's value, refresh
# programs after them.
PROGRAM_NAMES = {Direction.INBOUND: "xdp_seawall_inbound", Direction.OUTBOUND: "xdp_seawall_outbound"}
REFRESH_PROGRAM_NAMES = {Direction.INBOUND: "xdp_seawall_refresh_inbound",
                         Direction.OUTBOUND: "xdp_seawall_refresh_outbound"}

# Flags of struct sw_policy and struct sw_rule (seawall.h).
POLICY_INVALID_FILTERS = 1 << 0
POLICY_HAS_ALLOW = 1 << 1
POLICY_HAS_DENY = 1 << 2
POLICY_SYN_PROTECTION = 1 << 3
POLICY_REFLECTION_ALWAYS = 1 << 4
POLICY_REFLECTION_AUTO = 1 << 5
POLICY_HAS_BUDGET = 1 << 6
MATCH_PROTO, MATCH_SPORT, MATCH_DPORT, MATCH_LENGTH = 1 << 0, 1 << 1, 1 << 2, 1 << 3
MATCH_TTL, MATCH_TCP_FLAGS, MATCH_PAYLOAD = 1 << 4, 1 << 5, 1 << 6
MATCH_FRAGMENT, MATCH_NOT_FRAGMENT = 1 << 7, 1 << 8
SCOPE_ADDRESS, SCOPE_TENANT = 0, 1
NO_RULE_SET = 0xFFFFFFFF
PORT_EXTERNAL, PORT_INTERNAL = 0, 1
UNPROTECTED = MAX_TENANTS  # stats index of traffic to no tenant

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")


class DataplaneError(RuntimeError):
    """The kernel refused something: compile, load, attach, or a map update."""


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    interface: str
    ifindex: int
    mode: str          # "native" or "generic"
    pinned_link: str   # bpffs path, "" when not pinned


def _v4mapped(address: IPAddress) -> bytes:
    if address.version == 4:
        return b"\0" * 10 + b"\xff\xff" + address.packed
    return address.packed


def _address_from_key(raw: bytes) -> IPAddress:
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return ipaddress.IPv4Address(raw[12:16])
    return ipaddress.IPv6Address(raw)


def sw_acl_index(slot: int, kind: AclKind, tenant_idx: int) -> int:
    """Where the allow (or deny) trie of a tenant in a tenant-set slot sits in sw_acl4_tries / sw_acl6_tries
    (the same formula as sw_acl_match() in seawall.c)."""
    return (slot * 2 + int(kind)) * MAX_TENANTS + tenant_idx


class Dataplane:
    """The XDP program and its maps.

    `pin_dir`: a bpffs directory where maps and links persist across restarts
    of the control plane (None for tests and benchmarks: nothing outlives the
    object). `sample_every`: one packet in N per CPU goes to the sample ring
    (0 = off). `max_addresses`: size of the per-address LRU.
    """

    def __init__(self, pin_dir: str | os.PathLike | None = None, *, sample_every: int = 0,
                 max_addresses: int = constants.MAX_ADDRESSES) -> None:
        from bcc import BPF  # noqa: PLC0415 - only the kernel adapter imports bcc

        self._bpf_cls = BPF
        self.pin_dir = str(pin_dir) if pin_dir is not None else None
        cflags = [*constants.cflags(), f"-I{BPF_DIR}"]
        if max_addresses != constants.MAX_ADDRESSES:
            if not 1024 <= max_addresses <= 16 * 1024 * 1024:
                raise DataplaneError(f"max_addresses {max_addresses} is outside 1024..16777216")
            cflags = [f for f in cflags if not f.startswith("-DSW_MAX_ADDRESSES=")]
            cflags.append(f"-DSW_MAX_ADDRESSES={int(max_addresses)}U")
        if self.pin_dir is not None:
            if not _SAFE_PATH.match(self.pin_dir):
                raise DataplaneError(f"pin directory {self.pin_dir!r} must be an absolute path of plain characters")
            _ensure_bpffs_dir(self.pin_dir)
            cflags.append(f'-DSW_PIN_DIR="{self.pin_dir}"')
        self.max_addresses = max_addresses
        try:
            self.bpf = BPF(src_file=str(PROGRAM_FILE).encode(), cflags=cflags)
            self.programs = {d: self.bpf.load_func(name.encode(), BPF.XDP) for d, name in PROGRAM_NAMES.items()}
            progs = self.bpf[b"sw_progs"]
            for d, name in REFRESH_PROGRAM_NAMES.items():
                progs[ctypes.c_int(int(d))] = ctypes.c_int(self.programs[d].fd)
                refresh = self.bpf.load_func(name.encode(), BPF.XDP)
                progs[ctypes.c_int(len(Direction) + int(d))] = ctypes.c_int(refresh.fd)
        except Exception as exc:  # bcc raises bare Exception on compile/load failures
            if self.pin_dir is not None and getattr(self, "bpf", None) is not None:
                # The verifier rejects a program whose pinned map is smaller than it needs: name the map.
                self._check_pinned_maps()
            hint = ""
            if self.pin_dir and "pin" in str(exc).lower():
                hint = f" (pinned maps under {self.pin_dir} may be from another version: `seawall detach --purge`)"
            raise DataplaneError(f"cannot load the XDP program: {exc}{hint}") from exc
        release_freed_heap()       # what the compile leaves resident: ~150 MiB (dataplane.memory)
        release_compiler_code()
        from bcc.utils import get_possible_cpus  # noqa: PLC0415

        self.ncpus = len(get_possible_cpus())
        self._maps = {name: self.bpf[name.encode()] for name in (
            "sw_config", "sw_ports", "sw_prefix4", "sw_prefix6", "sw_policy", "sw_acl4_tries", "sw_acl6_tries",
            "sw_acl4_template", "sw_acl6_template",
            "sw_addr_cache", "sw_addr_spill", "sw_tenant_stats", "sw_rule_set_index", "sw_rule_sets", "sw_rules",
            "sw_rule_stats", "sw_rule_buckets", "sw_attack", "sw_reflection_ports")}
        if self.pin_dir is not None:
            self._check_pinned_maps()
        self._map_address_cache()
        # Tenant stats rows worth reading: every row until a tenant set is applied (after a restart,
        # the counters of the set in force are in the pinned map), then those of the set.
        self._tenant_rows = MAX_TENANTS
        self._attachments: list[Attachment] = []
        self._link_fds: list[int] = []
        self._address_memo = AddressMemo(4 * max_addresses)
        self._samples: deque[Sample] = deque(maxlen=8192)  # older samples than 2 ticks are stale
        self._ring_open = False
        self._rules: dict[int, Rule] = {}
        self._next_set_id = 0
        self._acl_indices: dict[int, set[int]] = {4: set(), 6: set()}   # filled entries of sw_acl4_tries / sw_acl6_tries
        # Slots whose tries an earlier run may have left in pinned arrays (a fresh program's are empty).
        self._acl_slots_unscanned = set(range(TENANT_SET_SLOTS)) if self.pin_dir is not None else set()
        self._test_ports_set = False
        self._recover_rules()
        self._fill_reflection_ports()
        cfg = self._config()
        if cfg.generation == 0:  # a fresh (unpinned or first) program: start generations at 1
            cfg.generation = 1
        cfg.sample_every = sample_every
        self._write_config(cfg)

    # -- configuration -----------------------------------------------------

    def _config(self):
        table = self._maps["sw_config"]
        return table[table.Key(0)]

    def _write_config(self, cfg) -> None:
        table = self._maps["sw_config"]
        table[table.Key(0)] = cfg

    def _bump_generation(self) -> None:
        cfg = self._config()
        cfg.generation = (cfg.generation + 1) & 0xFFFFFFFF or 1
        self._write_config(cfg)

    def set_sample_every(self, every: int) -> None:
        cfg = self._config()
        cfg.sample_every = max(0, int(every))
        self._write_config(cfg)

    def set_ports(self, external_ifindex: int, internal_ifindex: int) -> None:
        """Where frames leave: each NIC's program knows its own direction, so the devmap's two
        ports are all the program needs to know of the NICs."""
        ports = self._maps["sw_ports"]
        ports[ports.Key(PORT_EXTERNAL)] = ports.Leaf(external_ifindex)
        ports[ports.Key(PORT_INTERNAL)] = ports.Leaf(internal_ifindex)

    # -- attach / detach ----------------------------------------------------

    def attach(self, external: str, internal: str, mode: str = "auto") -> list[Attachment]:
        """Bridge `external` and `internal` through the program.

        mode "auto" tries native XDP and falls back to generic (logged);
        "native" and "generic" insist. With a pin directory, an existing pinned
        link is updated in place (atomic program replacement: a restart drops
        no packet) and a new link is pinned so the bridge outlives the process.
        """
        if mode not in ("auto", "native", "generic"):
            raise DataplaneError(f"attach mode {mode!r} is not auto, native or generic")
        if external == internal:
            raise DataplaneError("external and internal must be two different interfaces")
        ext_idx, int_idx = _ifindex(external), _ifindex(internal)
        self.set_ports(ext_idx, int_idx)
        self._attachments = [self._attach_one(name, idx, mode, self.programs[direction].fd) for name, idx, direction in
                             ((external, ext_idx, Direction.INBOUND), (internal, int_idx, Direction.OUTBOUND))]
        return list(self._attachments)

    def _attach_one(self, name: str, ifindex: int, mode: str, prog_fd: int) -> Attachment:
        pin = f"{self.pin_dir}/link_{name}" if self.pin_dir else ""
        if pin and os.path.exists(pin):
            link_fd = bpfsys.obj_get(pin)
            try:
                bpfsys.link_update(link_fd, prog_fd)
            finally:
                os.close(link_fd)
            attached_mode = _read_mode_file(pin) or "native"
            log.info("dataplane.attach", interface=name, mode=attached_mode, how="replaced pinned link")
            return Attachment(name, ifindex, attached_mode, pin)
        tries = {"auto": ("native", "generic"), "native": ("native",), "generic": ("generic",)}[mode]
        last_error: Exception | None = None
        for attempt in tries:
            flags = bpfsys.XDP_FLAGS_DRV_MODE if attempt == "native" else bpfsys.XDP_FLAGS_SKB_MODE
            try:
                link_fd = bpfsys.xdp_link_create(prog_fd, ifindex, flags)
            except OSError as exc:
                last_error = exc
                if attempt == "native" and mode == "auto":
                    log.warning("dataplane.native_xdp_unavailable", interface=name, error=str(exc),
                                fallback="generic")
                continue
            if pin:
                bpfsys.obj_pin(link_fd, pin)
                _write_mode_file(pin, attempt)
                os.close(link_fd)
            else:
                self._link_fds.append(link_fd)
            log.info("dataplane.attach", interface=name, mode=attempt, pinned=bool(pin))
            return Attachment(name, ifindex, attempt, pin)
        raise DataplaneError(f"cannot attach XDP to {name}: {last_error}")

    def _detach_unpinned_links(self) -> None:
        """Links this process holds without pinning (no pin directory) go with it."""
        for fd in self._link_fds:
            with contextlib.suppress(OSError):
                bpfsys.link_detach(fd)
            os.close(fd)
        self._link_fds = []

    def detach(self) -> None:
        """Remove the program from both NICs (unpin and close the links)."""
        self._detach_unpinned_links()
        for att in self._attachments:
            if att.pinned_link:
                remove_pinned_link(att.pinned_link)
        self._attachments = []

    @property
    def attachments(self) -> list[Attachment]:
        return list(self._attachments)

    def _check_pinned_maps(self) -> None:
        """Refuse maps pinned by another version. bcc reuses a map pinned at a table's path
        whatever its layout, so after an upgrade that changed a map the program would run on
        the old one as if it had the new layout."""
        percpu = {5, 6, 10}   # BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH: bcc's Leaf is per CPU
        for name in sorted(os.listdir(self.pin_dir)):
            try:
                table = self.bpf[name.encode()]
            except KeyError:
                continue          # a link, or a map this version no longer has
            leaf = table.Leaf._type_ if table.ttype in percpu else table.Leaf
            want = (table.ttype, ctypes.sizeof(table.Key), ctypes.sizeof(leaf), table.max_entries, table.flags)
            info = bpfsys.map_info(table.map_fd)
            have = (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)
            if have != want:
                raise DataplaneError(
                    f"the map {name} pinned under {self.pin_dir} was made by another version of Seawall "
                    f"(type, key size, value size, entries, flags: {have}; this version needs {want}). "
                    f"`seawall detach --purge` removes the old program and its state (the bridge stops "
                    f"until `seawall run` attaches again)")

    def _map_address_cache(self) -> None:
        """Map the address cache into this process (read-only): a tick reads its counters in
        memory, not through a bpf() copy. Regions are CPU ids, each 2**ADDRESS_CACHE_BITS slots."""
        table = self._maps["sw_addr_cache"]
        entry_bytes = ctypes.sizeof(table.Leaf)
        self.cache_regions = table.max_entries >> constants.ADDRESS_CACHE_BITS
        if entry_bytes % 8 or self.cache_regions << constants.ADDRESS_CACHE_BITS != table.max_entries:
            raise DataplaneError(f"unexpected address cache layout: {table.max_entries} entries of {entry_bytes} bytes")
        size = table.max_entries * entry_bytes
        self._cache_mmap = mmap.mmap(table.map_fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.MAP_SHARED,
                                     mmap.PROT_READ)
        self._cache_words = np.frombuffer(self._cache_mmap, np.uint64, count=size // 8).reshape(
            self.cache_regions, 1 << constants.ADDRESS_CACHE_BITS, entry_bytes // 8)
        self._cache_snapshot: np.ndarray | None = None

    def close(self) -> None:
        """Release this process's handles. Pinned links and maps stay: the bridge keeps running."""
        self._detach_unpinned_links()
        self._cache_words = None
        with contextlib.suppress(BufferError):   # a caller still holds a view: the mapping goes with it
            self._cache_mmap.close()
        self.bpf.cleanup()

    # -- tenants --------------------------------------------------------------

    def apply_tenants(self, tables, reset_stats: Iterable[int] = ()) -> None:
        """Load a compiled tenant set (tenants.compile.CompiledTables) atomically.

        The set is written into the inactive slot, then one write of sw_config
        flips the active slot and bumps the generation: every packet sees either
        the old set or the new one, never a mixture. The old slot is cleared at
        the next apply. `reset_stats`: tenant indices newly (re)assigned, whose
        counters start from zero.
        """
        cfg = self._config()
        target = 1 - cfg.active_slot
        self._clear_slot(target)
        p4, p6 = self._maps["sw_prefix4"], self._maps["sw_prefix6"]
        try:
            for network, idx in tables.prefixes:
                trie = p4 if network.version == 4 else p6
                key = trie.Key()
                key.prefixlen = 32 + network.prefixlen
                key.slot = target
                _fill(key.addr, network.network_address.packed)
                trie[key] = trie.Leaf(idx)
            policy_map = self._maps["sw_policy"]
            for idx, pol in tables.policies.items():
                leaf = policy_map.Leaf()
                leaf.in_use = 1
                leaf.mode = int(pol.mode)
                flags = 0
                if pol.invalid_filters:
                    flags |= POLICY_INVALID_FILTERS
                if pol.has_allow:
                    flags |= POLICY_HAS_ALLOW
                if pol.has_deny:
                    flags |= POLICY_HAS_DENY
                if pol.syn_protection:
                    flags |= POLICY_SYN_PROTECTION
                reflection = int(pol.reflection)
                if reflection == 2:
                    flags |= POLICY_REFLECTION_ALWAYS
                elif reflection == 1:
                    flags |= POLICY_REFLECTION_AUTO
                if pol.syn_rate_pps or pol.udp_rate_pps or pol.icmp_rate_pps or pol.fragment_rate_pps:
                    flags |= POLICY_HAS_BUDGET
                leaf.flags = flags
                leaf.syn_rate_pps = pol.syn_rate_pps
                leaf.udp_rate_pps = pol.udp_rate_pps
                leaf.icmp_rate_pps = pol.icmp_rate_pps
                leaf.fragment_rate_pps = pol.fragment_rate_pps
                policy_map[policy_map.Key(target * MAX_TENANTS + idx)] = leaf
            self._load_acls(target, tables.acl)
        except Exception as exc:
            self._clear_slot(target)  # the running set stays untouched
            raise DataplaneError(f"cannot load the tenant set into the dataplane: {exc}") from exc
        stats = self._maps["sw_tenant_stats"]
        for idx in reset_stats:
            stats[stats.Key(idx)] = stats.Leaf()
        cfg.active_slot = target
        cfg.generation = (cfg.generation + 1) & 0xFFFFFFFF or 1
        self._write_config(cfg)
        self._tenant_rows = max(tables.policies, default=-1) + 1
        log.info("dataplane.tenants_applied", slot=target, tenants=len(tables.policies),
                 prefixes=len(tables.prefixes), acl_keys=len(tables.acl))

    def _load_acls(self, slot: int, acls) -> None:
        """One trie of source prefixes per (kind, tenant) and family, created here and put into
        the family's array of maps at sw_acl_index(); the array keeps it alive once our fd closes."""
        groups: dict[tuple[int, int], list] = {}
        for acl in acls:
            groups.setdefault((acl.src.version, sw_acl_index(slot, acl.kind, acl.tenant_idx)), []).append(acl)
        for (version, index), members in groups.items():
            template = self._maps["sw_acl4_template" if version == 4 else "sw_acl6_template"]
            fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_LPM_TRIE, ctypes.sizeof(template.Key),
                                   ctypes.sizeof(template.Leaf), MAX_ACL_PREFIXES, bpfsys.BPF_F_NO_PREALLOC,
                                   name=f"sw_acl{version}_{index}")
            try:
                for acl in members:
                    key = template.Key()
                    key.prefixlen = acl.src.prefixlen
                    _fill(key.src, acl.src.network_address.packed)
                    leaf = template.Leaf()
                    leaf.count = len(acl.entries)
                    for i, (proto, slo, shi, dlo, dhi) in enumerate(acl.entries):
                        e = leaf.entries[i]
                        e.proto, e.sport_lo, e.sport_hi, e.dport_lo, e.dport_hi = proto, slo, shi, dlo, dhi
                    bpfsys.map_update(fd, bytes(key), bytes(leaf))
                outer = self._maps["sw_acl4_tries" if version == 4 else "sw_acl6_tries"]
                bpfsys.map_update(outer.map_fd, bytes(ctypes.c_uint32(index)), bytes(ctypes.c_uint32(fd)))
                self._acl_indices[version].add(index)
            finally:
                os.close(fd)

    def _clear_acls(self, slot: int) -> None:
        lo, hi = sw_acl_index(slot, AclKind.ALLOW, 0), sw_acl_index(slot, AclKind.DENY, MAX_TENANTS - 1) + 1
        for version in (4, 6):
            outer = self._maps[f"sw_acl{version}_tries"]
            known = self._acl_indices[version]
            if slot in self._acl_slots_unscanned:
                # After a restart the arrays may hold tries of an earlier run: find them once.
                known |= {i for i in range(lo, hi) if bpfsys.map_lookup(outer.map_fd, bytes(ctypes.c_uint32(i)), 4)}
            for index in [i for i in known if lo <= i < hi]:
                bpfsys.map_delete(outer.map_fd, bytes(ctypes.c_uint32(index)))
                known.discard(index)
        self._acl_slots_unscanned.discard(slot)

    def _clear_slot(self, slot: int) -> None:
        for name in ("sw_prefix4", "sw_prefix6"):
            trie = self._maps[name]
            stale = [k for k in trie if k.slot == slot]
            for k in stale:
                del trie[k]
        self._clear_acls(slot)
        policy_map = self._maps["sw_policy"]
        base = slot * MAX_TENANTS
        _, values, _ = self._batch("sw_policy")
        in_use = values[:, 0]
        for i in np.nonzero(in_use[base:base + MAX_TENANTS])[0]:
            policy_map[policy_map.Key(base + int(i))] = policy_map.Leaf()

    @property
    def active_slot(self) -> int:
        return int(self._config().active_slot)

    @property
    def generation(self) -> int:
        return int(self._config().generation)

    # -- heuristics ------------------------------------------------------------

    def _fill_reflection_ports(self) -> None:
        words = [0] * 2048
        for port in constants.REFLECTION_PORTS:
            words[port >> 5] |= 1 << (port & 31)
        table = self._maps["sw_reflection_ports"]
        for i, word in enumerate(words):
            if word:
                table[table.Key(i)] = table.Leaf(word)

    def set_under_attack(self, tenant_idx: int, dst: IPAddress | None, classes: Iterable[TrafficClass],
                         syn_ports: Range | None = None) -> None:
        """Mark a destination (or a whole tenant, dst None) as under attack in these classes.

        It switches on the stateful heuristics there at once: SYN challenge and
        validated sources for TCP_SYN (on `syn_ports` only, default every port),
        connection tracking for TCP_OTHER (ACK/RST/FIN floods: after a grace
        period that learns the server's connections, only those pass), the
        reflection filter (policy "auto") for UDP and FRAGMENT. An empty
        `classes` clears the mark.
        """
        table = self._maps["sw_attack"]
        key = table.Key()
        key.tenant_idx = tenant_idx
        if dst is None:
            key.scope = SCOPE_TENANT
        else:
            key.scope = SCOPE_ADDRESS
            _fill(key.addr, _v4mapped(dst))
        bits = 0
        for c in classes:
            bits |= 1 << int(c)
        if bits:
            current = table.get(key)
            leaf = table.Leaf()
            leaf.classes = bits
            # The mark's age drives grace periods: a refreshed mark keeps its start.
            leaf.since_ns = current.since_ns if current is not None else time.monotonic_ns()
            leaf.syn_port_lo, leaf.syn_port_hi = (syn_ports.lo, syn_ports.hi) if syn_ports else (0, 0xFFFF)
            table[key] = leaf
        else:
            try:
                del table[key]
            except KeyError:
                pass
        self._bump_generation()

    # Budget field of struct sw_policy (seawall.h) per traffic class that has a budget.
    _BUDGET_FIELDS = {TrafficClass.TCP_SYN: "syn_rate_pps", TrafficClass.UDP: "udp_rate_pps",
                      TrafficClass.ICMP: "icmp_rate_pps", TrafficClass.FRAGMENT: "fragment_rate_pps"}

    def set_class_budgets(self, tenant_idx: int, budgets: dict[TrafficClass, int]) -> dict[TrafficClass, int]:
        """Set per-destination class budgets (packets/s, 0 = none) of one tenant of the active set, in place.

        Only the budget fields named in `budgets` (TCP_SYN, UDP, ICMP, FRAGMENT) change; the rest of
        the tenant's policy leaf, the other tenants and the inactive slot stay as they are, and no
        flip happens: the program reads the leaf per packet, so the new budget counts from the next
        packet (each destination's bucket keeps its tokens, capped at the new burst). The next
        `apply_tenants` writes the leaf anew from the compiled policy: whoever derives budgets must
        push them again after it (the policy engine does, in `set_tenants`). A tenant in monitor
        mode counts packets over budget (reason HEURISTIC) and passes them, as for its other drops.
        Returns the four budgets now in the leaf. DataplaneError: the tenant is not in the active set.
        """
        if isinstance(tenant_idx, bool) or not isinstance(tenant_idx, int) or not 0 <= tenant_idx < MAX_TENANTS:
            raise DataplaneError(f"tenant index {tenant_idx!r} is not within 0..{MAX_TENANTS - 1}")
        values: dict[str, int] = {}
        for cls, pps in budgets.items():
            field = self._BUDGET_FIELDS.get(TrafficClass(cls))
            if field is None:
                raise DataplaneError(f"traffic class {TrafficClass(cls).name} has no per-destination budget "
                                     f"(only {', '.join(c.name for c in self._BUDGET_FIELDS)})")
            if isinstance(pps, bool) or not isinstance(pps, int) or not 0 <= pps <= 0xFFFFFFFF:
                raise DataplaneError(f"budget of {TrafficClass(cls).name}: {pps!r} is not 0..4294967295 packets/s")
            values[field] = pps
        table = self._maps["sw_policy"]
        key = table.Key(self._config().active_slot * MAX_TENANTS + tenant_idx)
        leaf = table[key]
        if not leaf.in_use:
            raise DataplaneError(f"tenant index {tenant_idx} is not in the active tenant set")
        for field, pps in values.items():
            setattr(leaf, field, pps)
        now = {cls: int(getattr(leaf, field)) for cls, field in self._BUDGET_FIELDS.items()}
        flags_before = int(leaf.flags)
        if any(now.values()):
            leaf.flags |= POLICY_HAS_BUDGET
        else:
            leaf.flags &= ~POLICY_HAS_BUDGET & 0xFFFF
        table[key] = leaf
        if leaf.flags != flags_before:
            self._bump_generation()   # address cache slots hold a copy of the policy flags
        return now

    # -- rules ---------------------------------------------------------------

    def add_rule(self, rule: Rule) -> int:
        """Install a rule; returns its id. DataplaneError when the target is full."""
        used = set(self._rules)
        free = next((i for i in range(MAX_RULES) if i not in used), None)
        if free is None:
            raise DataplaneError(f"all {MAX_RULES} rule slots are in use")
        rules = self._maps["sw_rules"]
        rules[rules.Key(free)] = self._encode_rule(rule)
        stats = self._maps["sw_rule_stats"]
        stats[stats.Key(free)] = stats.Leaf()
        buckets = self._maps["sw_rule_buckets"]
        bucket = buckets.Leaf()
        bucket.last_ns = time.monotonic_ns()
        bucket.tokens = rule.rate_pps // 10 + 1
        buckets[buckets.Key(free)] = bucket
        key = self._set_key(rule)
        current = self._rule_set_ids(key)
        if len(current) >= RULES_PER_TARGET:
            rules[rules.Key(free)] = rules.Leaf()
            raise DataplaneError(f"{rule.dst or 'tenant ' + str(rule.tenant_idx)} already has "
                                 f"{RULES_PER_TARGET} rules")
        self._rules[free] = rule
        self._write_rule_set(key, [*current, free])
        return free

    def remove_rule(self, rule_id: int) -> None:
        rule = self._rules.pop(rule_id, None)
        if rule is None:
            raise KeyError(f"no rule {rule_id}")
        key = self._set_key(rule)
        self._write_rule_set(key, [i for i in self._rule_set_ids(key) if i != rule_id])
        rules = self._maps["sw_rules"]
        rules[rules.Key(rule_id)] = rules.Leaf()

    def installed_rules(self) -> dict[int, Rule]:
        return dict(self._rules)

    def read_rule_counters(self) -> dict[int, RuleCounters]:
        if not self._rules:
            return {}
        stats = self._maps["sw_rule_stats"]
        out = {}
        for rid in self._rules:
            per_cpu = stats[stats.Key(rid)]
            out[rid] = RuleCounters(matched_packets=sum(v.matched_packets for v in per_cpu),
                                    matched_bytes=sum(v.matched_bytes for v in per_cpu),
                                    dropped_packets=sum(v.dropped_packets for v in per_cpu))
        return out

    def _set_key(self, rule: Rule):
        index = self._maps["sw_rule_set_index"]
        key = index.Key()
        key.tenant_idx = rule.tenant_idx
        if rule.dst is None:
            key.scope = SCOPE_TENANT
        else:
            key.scope = SCOPE_ADDRESS
            _fill(key.addr, _v4mapped(rule.dst))
        return key

    def _rule_set_ids(self, key) -> list[int]:
        index = self._maps["sw_rule_set_index"]
        set_id = index.get(key)
        if set_id is None:
            return []
        rule_set = self._maps["sw_rule_sets"][ctypes.c_uint32(set_id.value)]
        return [int(rule_set.rule_ids[i]) for i in range(rule_set.count)]

    def _write_rule_set(self, key, ids: list[int]) -> None:
        """Publish a rule list as a fresh set, then repoint the index: readers never see a torn set."""
        index = self._maps["sw_rule_set_index"]
        sets = self._maps["sw_rule_sets"]
        if ids:
            set_id = self._next_set_id
            self._next_set_id = (self._next_set_id + 1) % MAX_RULES  # round robin: a freed set rests long
            leaf = sets.Leaf()
            leaf.count = len(ids)
            for i, rid in enumerate(ids):
                leaf.rule_ids[i] = rid
            sets[sets.Key(set_id)] = leaf
            index[key] = index.Leaf(set_id)
        else:
            try:
                del index[key]
            except KeyError:
                pass
        self._bump_generation()

    def _encode_rule(self, rule: Rule):
        rules = self._maps["sw_rules"]
        r = rules.Leaf()
        r.in_use = 1
        r.action = int(rule.action)
        match = 0
        if rule.proto is not None:
            match |= MATCH_PROTO
            r.proto = rule.proto
        if rule.sport is not None:
            match |= MATCH_SPORT
            r.sport_lo, r.sport_hi = rule.sport.lo, rule.sport.hi
        if rule.dport is not None:
            match |= MATCH_DPORT
            r.dport_lo, r.dport_hi = rule.dport.lo, rule.dport.hi
        if rule.length is not None:
            match |= MATCH_LENGTH
            r.length_lo, r.length_hi = rule.length.lo, min(rule.length.hi, 0xFFFF)
        if rule.ttl is not None:
            match |= MATCH_TTL
            r.ttl_lo, r.ttl_hi = rule.ttl.lo, min(rule.ttl.hi, 255)
        if rule.tcp_flags is not None:
            match |= MATCH_TCP_FLAGS
            r.tcp_flags_mask, r.tcp_flags_value = rule.tcp_flags[0], rule.tcp_flags[0] & rule.tcp_flags[1]
        if rule.payload:
            if len(rule.payload) > PAYLOAD_MATCH_BYTES:
                raise DataplaneError(f"payload match is limited to {PAYLOAD_MATCH_BYTES} bytes")
            mask = rule.payload_mask or b"\xff" * len(rule.payload)
            if len(mask) != len(rule.payload):
                raise DataplaneError("payload_mask must be as long as payload")
            match |= MATCH_PAYLOAD
            padded_mask = mask.ljust(PAYLOAD_MATCH_BYTES, b"\0")
            padded = bytes(a & b for a, b in zip(rule.payload.ljust(PAYLOAD_MATCH_BYTES, b"\0"), padded_mask,
                                                 strict=True))
            _fill(r.payload, padded)
            _fill(r.payload_mask, padded_mask)
        if rule.fragments is True:
            match |= MATCH_FRAGMENT
        elif rule.fragments is False:
            match |= MATCH_NOT_FRAGMENT
        r.match = match
        r.rate_pps = rule.rate_pps
        return r

    def _recover_rules(self) -> None:
        """Rebuild the rule list from pinned maps after a restart."""
        index = self._maps["sw_rule_set_index"]
        sets = self._maps["sw_rule_sets"]
        rules = self._maps["sw_rules"]
        max_set = -1
        for key, set_id in index.items():
            max_set = max(max_set, set_id.value)
            rule_set = sets[ctypes.c_uint32(set_id.value)]
            dst = None if key.scope == SCOPE_TENANT else _address_from_key(bytes(key.addr))
            for i in range(rule_set.count):
                rid = int(rule_set.rule_ids[i])
                self._rules[rid] = _decode_rule(rules[ctypes.c_uint32(rid)], key.tenant_idx, dst)
        self._next_set_id = (max_set + 1) % MAX_RULES
        if self._rules:
            log.info("dataplane.rules_recovered", rules=len(self._rules))

    # -- counters ------------------------------------------------------------

    def _batch(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """Every element of a map: (keys, values, count) as uint8 arrays of count rows (bcc's
        per-CPU Leaf is already the per-CPU array)."""
        table = self._maps[name]
        return bpfsys.map_lookup_batch(table.map_fd, ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf),
                                       table.max_entries)

    def _stats_layout(self):
        return self._maps["sw_tenant_stats"].Leaf._type_

    def read_tenant_counter_arrays(self) -> TenantCounterArrays:
        """Cumulative counters of every tenant row (and the UNPROTECTED row) as arrays: the rows of
        the tenant set in force and the UNPROTECTED row read in two batch calls, summed over CPUs,
        then views of that sum (no per-tenant objects; rows no tenant of the set uses are zero)."""
        table = self._maps["sw_tenant_stats"]
        layout = self._tenant_stats_layout()
        row_bytes = ctypes.sizeof(table.Leaf)
        # Only the rows of the tenants in force and the UNPROTECTED row: a set of 10,000 tenants
        # leaves 6,000 rows that no tenant uses, and copying them out cost ~3 ms a tick.
        summed = np.zeros((table.max_entries, 2, layout.dir_words), np.uint64)
        for start, count in ((0, self._tenant_rows), (UNPROTECTED, 1)):
            values = bpfsys.array_lookup_range(table.map_fd, row_bytes, start, count)
            words = values.view(np.uint64).reshape(len(values), self.ncpus, 2, layout.dir_words)
            summed[start:start + len(values)] = sum_over_cpus(words)
        return decode_tenant_counters(summed, layout)

    def read_tenant_counters(self, indices: Iterable[int] | None = None) -> dict[int, TenantCounters]:
        """Cumulative counters per tenant index (UNPROTECTED for traffic to no tenant): the rows
        in `indices`, or every row that has counters."""
        arrays = self.read_tenant_counter_arrays()
        wanted = np.flatnonzero(arrays.present).tolist() if indices is None else indices
        return {int(idx): arrays.tenant(int(idx)) for idx in wanted}

    def _tenant_stats_layout(self) -> TenantStatsLayout:
        dir_type = self._stats_layout()._fields_[0][1]._type_   # struct sw_direction_stats
        return TenantStatsLayout(
            dir_words=ctypes.sizeof(dir_type) // 8, dropped_packets_at=dir_type.dropped_packets.offset // 8,
            dropped_bytes_at=dir_type.dropped_bytes.offset // 8, class_packets_at=dir_type.class_packets.offset // 8,
            class_bytes_at=dir_type.class_bytes.offset // 8, reason_packets_at=dir_type.reason_packets.offset // 8)

    def read_destination_counters(self) -> DestinationCounters:
        """Inbound counters per customer-side address: the address cache slots of every CPU
        plus the spill map of evicted slots, merged by address (a copy of the mapped cache and a batch read;
        see `decode_destination_counters`)."""
        return decode_destination_counters(*self.address_maps(), self._address_layout(), self._address_memo)

    def address_maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The per-address maps as `decode_destination_counters` takes them: a snapshot of the
        address cache as (slots, CPU regions, entry words) uint64 (a view of one copy of the
        mapped memory: the counters keep moving while a tick decodes them), the spill map's
        (S, 2) keys and its (S, 1, spilled words) values (one copy: it is shared by the CPUs).
        The cache snapshot is a buffer that the next call writes again."""
        # The spill map first: counts only ever move from a cache slot to the spill map, so a
        # slot evicted between the two reads is missed for this read (its counts show up in the
        # next), never counted twice as it would be the other way round.
        skeys, svalues, scount = self._batch("sw_addr_spill")
        if self._cache_snapshot is None:
            self._cache_snapshot = np.empty_like(self._cache_words)
        np.copyto(self._cache_snapshot, self._cache_words)
        layout = self._address_layout()
        spill_keys = skeys.view(np.uint64).reshape(scount, 2)
        spill = svalues.view(np.uint64).reshape(scount, 1, layout.spilled_words)
        return self._cache_snapshot.transpose(1, 0, 2), spill_keys, spill

    def _address_layout(self) -> AddressCounterLayout:
        entry = self._maps["sw_addr_cache"].Leaf
        spilled = self._maps["sw_addr_spill"].Leaf
        counters = type(entry().counters)  # struct sw_addr_counters, as bcc describes it
        return AddressCounterLayout(
            entry_words=ctypes.sizeof(entry) // 8, counters_at=entry.counters.offset // 8,
            spilled_words=ctypes.sizeof(spilled) // 8, spilled_tenant_at=spilled.tenant_idx.offset // 8,
            counter_words=ctypes.sizeof(counters) // 8, packets_at=counters.packets.offset // 8,
            bytes_at=counters.bytes.offset // 8, dropped_at=counters.dropped_packets.offset // 8)

    # -- samples -------------------------------------------------------------

    def drain_samples(self, limit: int = 4096) -> list[Sample]:
        """Sampled packets since the last call (at most `limit`; the rest wait)."""
        if not self._ring_open:
            ring = self.bpf[b"sw_samples"]
            layout = ctypes.POINTER(self.bpf[b"sw_sample_layout"].Leaf)

            def on_sample(_ctx, data, _size) -> None:
                s = ctypes.cast(data, layout).contents
                self._samples.append(Sample(
                    timestamp_ns=int(s.timestamp_ns), tenant_idx=int(s.tenant_idx),
                    direction=Direction(s.direction), dropped=bool(s.dropped), reason=DropReason(s.reason),
                    wire_length=int(s.wire_length), data=bytes(s.data[: s.captured])))

            ring.open_ring_buffer(on_sample)
            self._ring_open = True
        self.bpf.ring_buffer_consume()
        out = []
        while self._samples and len(out) < limit:
            out.append(self._samples.popleft())
        return out

    # -- testing and benchmarks ---------------------------------------------

    def test_run(self, frame: bytes, direction: Direction = Direction.INBOUND, repeat: int = 1):
        """Run the program of `direction`'s NIC on one frame with BPF_PROG_TEST_RUN; returns
        (action, ns per run).

        Only for a dataplane that is not attached: both ports of a test run are the
        loopback device, where redirected frames go.
        """
        if self._attachments:
            raise DataplaneError("test_run is for unattached dataplanes only")
        if not self._test_ports_set:
            # The devmap is not pinned: a program loaded over pinned maps starts without ports.
            ports = self._maps["sw_ports"]
            ports[ports.Key(PORT_EXTERNAL)] = ports.Leaf(1)
            ports[ports.Key(PORT_INTERNAL)] = ports.Leaf(1)
            self._test_ports_set = True
        action, duration, _ = bpfsys.prog_test_run(self.programs[direction].fd, frame, repeat)
        return action, duration


@dataclasses.dataclass(frozen=True, slots=True)
class AddressCounterLayout:
    """Where things are in the per-address maps' values, in 64-bit words (from the compiled
    program's types; the synthetic benchmark fills in the same layout by hand)."""

    entry_words: int          # struct sw_addr_entry, one cache slot of one CPU
    counters_at: int          # its struct sw_addr_counters
    spilled_words: int        # struct sw_addr_spilled, one spill-map value of one CPU
    spilled_tenant_at: int    # the word holding its tenant_idx (low 32 bits)
    counter_words: int        # struct sw_addr_counters
    packets_at: int           # within struct sw_addr_counters: packets[classes]
    bytes_at: int             # bytes[classes]
    dropped_at: int           # dropped_packets


@dataclasses.dataclass(frozen=True, slots=True)
class TenantStatsLayout:
    """struct sw_direction_stats in 64-bit words (struct sw_tenant_stats is two of them, one per
    direction; from the compiled program's types, or filled in by hand by the benchmark)."""

    dir_words: int
    dropped_packets_at: int
    dropped_bytes_at: int
    class_packets_at: int     # class_packets[classes]
    class_bytes_at: int       # class_bytes[classes]
    reason_packets_at: int    # reason_packets[reasons]


def decode_tenant_counters(words: np.ndarray, layout: TenantStatsLayout) -> TenantCounterArrays:
    """Tenant counters from the stats map's (rows, 2, dir_words) uint64 sum over CPUs (views)."""
    n_cls, n_rsn = len(TrafficClass), len(DropReason)
    cp, cb, rp = layout.class_packets_at, layout.class_bytes_at, layout.reason_packets_at
    return TenantCounterArrays(
        present=words.reshape(len(words), -1).any(axis=1),
        dropped_packets=words[:, :, layout.dropped_packets_at],
        dropped_bytes=words[:, :, layout.dropped_bytes_at],
        class_packets=words[:, :, cp:cp + n_cls],
        class_bytes=words[:, :, cb:cb + n_cls],
        reason_packets=words[:, :, rp:rp + n_rsn])


class AddressMemo:
    """Small integer ids for 16-byte map keys, so that a read can merge rows by address with numpy.

    Ids are dense (0, 1, ...) and stable across reads until the memo forgets everything past
    `limit` addresses (the map's churn). Keys are looked up in a numpy hash (`KeyIndex`), and a
    cache slot that still holds the address it held at the previous read keeps its id without
    a lookup at all: an address keeps its slot for as long as it is cached.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._index = KeyIndex()
        self._keys = np.zeros((MIN_CAPACITY, 2), np.uint64)   # key of each id
        self._count = 0
        self._slot_keys = np.zeros((0, 2), np.uint64)
        self._slot_ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self._count

    def slot_ids(self, keys: np.ndarray, used: np.ndarray) -> np.ndarray:
        """Ids of the cache's (slots, 2) keys where `used`, -1 elsewhere; call before `ids()`."""
        if self._count > self.limit:
            self._clear()
        out = np.full(len(keys), -1, np.int64)
        if self._slot_keys.shape == keys.shape:
            kept = used & (keys[:, 0] == self._slot_keys[:, 0]) & (keys[:, 1] == self._slot_keys[:, 1])
            kept &= self._slot_ids >= 0
            out[kept] = self._slot_ids[kept]
            todo = used & ~kept
        else:
            todo = used
        rows = np.flatnonzero(todo)
        out[rows] = self.ids(keys[rows], clear=False)
        self._slot_keys = keys.copy()
        self._slot_ids = out
        return out

    def _clear(self) -> None:
        self._index.clear()
        self._count = 0
        self._slot_keys = np.zeros((0, 2), np.uint64)
        self._slot_ids = np.zeros(0, np.int64)

    def ids(self, keys: np.ndarray, clear: bool = True) -> np.ndarray:
        """(N,) int64 ids of (N, 2) uint64 keys; ids are valid until a call that clears."""
        if clear and self._count > self.limit:
            self._clear()
        keys = np.ascontiguousarray(keys, np.uint64).reshape(-1, 2)
        ids = self._index.get(keys)
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            first, inverse = unique_keys(keys[missing])     # the same new address twice in one call
            new_keys = keys[missing[first]]
            new_ids = np.arange(self._count, self._count + len(first), dtype=np.int64)
            self._index.add(new_keys, new_ids)
            if self._count + len(first) > len(self._keys):
                grown = np.zeros((max(2 * len(self._keys), self._count + len(first)), 2), np.uint64)
                grown[:self._count] = self._keys[:self._count]
                self._keys = grown
            self._keys[self._count:self._count + len(first)] = new_keys
            self._count += len(first)
            ids[missing] = new_ids[inverse]
        return ids

    def keys(self, ids: np.ndarray) -> np.ndarray:
        """(N, 2) uint64 keys of ids."""
        return _row_view(self._keys).take(ids).view(np.uint64).reshape(len(ids), 2)


def decode_destination_counters(cache: np.ndarray, spill_keys: np.ndarray, spill: np.ndarray,
                                layout: AddressCounterLayout, memo: AddressMemo) -> DestinationCounters:
    """Destination counters from the two maps' batch reads.

    `cache`: (slots, CPUs, entry_words) uint64, the direct-mapped cache of each CPU;
    `spill_keys`: (S, 2) uint64 addresses and `spill`: (S, copies, spilled_words) the
    LRU spill map of evicted slots (the kernel's is shared by the CPUs: one copy). An address hashes to the same slot on every CPU,
    so a slot whose live copies all hold one address sums in place (the common case);
    slots whose CPUs hold different addresses, and spilled counters, are added by
    address id. Rows come out ordered by the memo's id, which is stable from read to
    read, so consecutive reads list the addresses they share in the same order.
    """
    raw = cache
    n_cpus = raw.shape[1]
    # Only the words the result carries (packets, bytes, dropped), not the outbound ones.
    c0 = layout.counters_at
    cw = max(layout.packets_at, layout.bytes_at) + len(TrafficClass)
    cw = max(cw, layout.dropped_at + 1)
    # The cache is tens of MB and every strided pass over it touches each slot's cache lines:
    # few passes, no (slots, CPUs, words) temporaries.
    # Address and head words of every copy, copied out in one pass.
    key_head = _leading_words(raw, 3)
    head = key_head[:, :, 2]  # tenant_idx | generation << 32
    filled = (head >> 32) != 0
    live = filled & ((head & 0xFFFFFFFF) != NO_TENANT)
    any_live = live.any(axis=1)
    rep = key_head[:, n_cpus - 1, :2]        # the address of each slot's first live copy
    for cpu in range(n_cpus - 2, -1, -1):
        rep = np.where(live[:, cpu, None], key_head[:, cpu, :2], rep)
    agree = any_live.copy()
    for cpu in range(n_cpus):
        agree &= ((key_head[:, cpu, 0] == rep[:, 0]) & (key_head[:, cpu, 1] == rep[:, 1])) | ~live[:, cpu]
    agree_rows = np.flatnonzero(agree)
    # Sum the copies of agreeing slots: copies never filled (generation 0) hold zeros; copies of an
    # address without a tenant were counted but are not reported, so those few are taken out.
    if 2 * len(agree_rows) < len(raw):
        agree_counters = sum_over_cpus(raw[agree_rows, :, c0:c0 + cw])   # a sparse cache: its rows only
    else:
        summed = sum_over_cpus(raw[:, :, c0:c0 + cw])
        agree_counters = _row_view(summed).take(agree_rows).view(np.uint64).reshape(len(agree_rows), cw)
    unreported = filled & ~live
    taken_out = np.flatnonzero(agree & unreported.any(axis=1))
    for row, slot in zip(np.searchsorted(agree_rows, taken_out).tolist(), taken_out.tolist(), strict=True):
        for cpu in np.flatnonzero(unreported[slot]):
            agree_counters[row] -= raw[slot, cpu, c0:c0 + cw]
    tenant_of_rep = head[:, n_cpus - 1]
    for cpu in range(n_cpus - 2, -1, -1):
        tenant_of_rep = np.where(live[:, cpu], head[:, cpu], tenant_of_rep)
    agree_tenants = (tenant_of_rep[agree_rows] & 0xFFFFFFFF).astype(np.uint32)

    conflict = live & ~agree[:, None]
    conflict_rows = raw[conflict]
    if len(spill_keys):
        spill_counters = sum_over_cpus(spill[:, :, :cw])
        # The tenant of the last CPU that spilled it; a CPU that never did holds zeros, so only rows
        # whose CPUs' tenant words differ need a look at which CPUs spilled.
        tenant_words = spill[:, :, layout.spilled_tenant_at] & 0xFFFFFFFF
        spill_tenants = tenant_words[:, 0].copy()
        differ = np.flatnonzero((tenant_words != tenant_words[:, :1]).any(axis=1))
        if len(differ):
            spilled = spill[differ, :, :layout.counter_words].any(axis=2)
            spill_tenants[differ] = np.where(spilled, tenant_words[differ], NO_TENANT).min(axis=1)
    else:
        spill_counters = np.zeros((0, cw), np.uint64)
        spill_tenants = np.zeros(0, np.uint64)
    agree_ids = memo.slot_ids(rep, agree)[agree_rows]
    ids = memo.ids(np.concatenate([conflict_rows[:, :2], spill_keys.reshape(-1, 2)]), clear=False)
    n_conflict = len(conflict_rows)
    ids, counters, tenant = _merge_by_address(
        len(memo), (agree_ids, agree_counters, agree_tenants),
        (ids[:n_conflict], conflict_rows[:, c0:c0 + cw], conflict_rows[:, 2] & 0xFFFFFFFF),
        (ids[n_conflict:], spill_counters, spill_tenants))
    n_cls = len(TrafficClass)
    pk, by, dr = layout.packets_at, layout.bytes_at, layout.dropped_at
    return DestinationCounters(
        keys=memo.keys(ids),
        tenant_idx=tenant,
        packets=counters[:, pk:pk + n_cls],
        bytes=counters[:, by:by + n_cls],
        dropped_packets=counters[:, dr],
        ids=ids,
    )


def sum_over_cpus(per_cpu: np.ndarray) -> np.ndarray:
    """Sum over axis 1 (the CPUs) by adding the CPUs' slices: ~3x faster than `.sum(axis=1)`,
    which walks the short CPU axis innermost."""
    out = per_cpu[:, 0].copy() if per_cpu.shape[1] < 2 else per_cpu[:, 0] + per_cpu[:, 1]
    for cpu in range(2, per_cpu.shape[1]):
        out += per_cpu[:, cpu]
    return out


def _leading_words(raw: np.ndarray, n: int) -> np.ndarray:
    """A contiguous copy of the first `n` words of each entry of a (slots, CPUs, words) uint64 array,
    moved as one n-word element each: 3-4x faster than numpy's word-by-word strided copy."""
    moved = np.ascontiguousarray(raw[:, :, :n].view(np.dtype((np.void, 8 * n))))
    return moved.view(np.uint64).reshape(raw.shape[0], raw.shape[1], n)


def _row_view(rows: np.ndarray) -> np.ndarray:
    """A (N, W) uint64 array as N void elements of W words (contiguous; copied if it is not)."""
    rows = np.ascontiguousarray(rows, np.uint64)
    return rows.view(np.dtype((np.void, rows.shape[1] * 8))).reshape(len(rows))


def _merge_by_address(n_ids: int, cached: tuple[np.ndarray, np.ndarray, np.ndarray],
                      conflicts: tuple[np.ndarray, np.ndarray, np.ndarray],
                      spilled: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per address id, in ascending id order, from (ids, counters, tenant) parts.

    Ascending ids keep consecutive reads in one order, so the engine's per-address state
    (slots assigned in the same order) is walked nearly in sequence, not at random.
    `cached` (agreeing cache slots) and `spilled` (the spill map) hold each address at
    most once each; `conflicts` (cache slots whose CPUs hold different addresses: rare)
    may repeat one. Counters add up; the tenant comes from the cache where the address
    is cached (a spilled copy keeps the tenant it had when it left). `n_ids` bounds the ids.
    """
    present = np.zeros(n_ids, bool)
    for part_ids, _, _ in (cached, conflicts, spilled):
        present[part_ids] = True
    ids = np.flatnonzero(present)
    row_of = np.empty(n_ids, np.int64)
    row_of[ids] = np.arange(len(ids))
    width = cached[1].shape[1]
    counters = np.empty((len(ids), width), np.uint64)
    tenants = np.full(len(ids), NO_TENANT, np.uint32)
    # Whole counter rows move as single elements (one memcpy each) through void views: numpy's
    # row-wise fancy indexing of a 2-D array is 2-3x slower.
    rows_of = _row_view(counters)
    c_ids, c_counters, c_tenants = conflicts
    if len(c_ids):
        counters[row_of[c_ids]] = 0         # rows that only conflicting slots hold start from zero
    # Plain scatters where one part alone holds a row; a gather-add-scatter only for addresses
    # both in the cache and in the spill map (numpy's fancy `+=` is several times slower).
    in_cache = np.zeros(n_ids, bool)
    in_cache[cached[0]] = True
    rows = row_of[cached[0]]
    rows_of[rows] = _row_view(cached[1])
    tenants[rows] = cached[2]
    s_ids, s_counters, s_tenants = spilled
    both = in_cache[s_ids]
    both_at = np.flatnonzero(both)
    if len(both_at) < len(s_ids):
        only_at = np.flatnonzero(~both)
        srows = row_of[s_ids[only_at]]
        rows_of[srows] = _row_view(s_counters).take(only_at)
        tenants[srows] = s_tenants[only_at]
    if len(both_at):
        brows = row_of[s_ids[both_at]]
        summed = _row_view(s_counters).take(both_at).view(np.uint64).reshape(len(both_at), width)
        summed += rows_of.take(brows).view(np.uint64).reshape(len(brows), width)
        rows_of[brows] = _row_view(summed)
    if len(c_ids):
        crows = row_of[c_ids]
        np.add.at(counters, crows, c_counters)
        tenants[crows] = np.where(tenants[crows] == NO_TENANT, c_tenants, tenants[crows])
    return ids, counters, tenants


def _decode_rule(r, tenant_idx: int, dst: IPAddress | None) -> Rule:
    m = r.match
    payload = bytes(r.payload) if m & MATCH_PAYLOAD else None
    mask = bytes(r.payload_mask) if m & MATCH_PAYLOAD else None
    if payload is not None and mask is not None:
        n = len(mask.rstrip(b"\0")) or PAYLOAD_MATCH_BYTES
        payload, mask = payload[:n], mask[:n]
    return Rule(
        tenant_idx=tenant_idx, dst=dst, action=RuleAction(r.action),
        proto=r.proto if m & MATCH_PROTO else None,
        sport=Range(r.sport_lo, r.sport_hi) if m & MATCH_SPORT else None,
        dport=Range(r.dport_lo, r.dport_hi) if m & MATCH_DPORT else None,
        length=Range(r.length_lo, r.length_hi) if m & MATCH_LENGTH else None,
        ttl=Range(r.ttl_lo, r.ttl_hi) if m & MATCH_TTL else None,
        tcp_flags=(r.tcp_flags_mask, r.tcp_flags_value) if m & MATCH_TCP_FLAGS else None,
        payload=payload, payload_mask=mask,
        fragments=True if m & MATCH_FRAGMENT else (False if m & MATCH_NOT_FRAGMENT else None),
        rate_pps=r.rate_pps)


def _fill(array, data: bytes) -> None:
    for i, b in enumerate(data):
        array[i] = b


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError as exc:
        raise DataplaneError(f"interface {name!r} does not exist") from exc


def _ensure_bpffs_dir(path: str) -> None:
    root = pathlib.Path("/sys/fs/bpf")
    if not pathlib.Path(path).is_relative_to(root):
        raise DataplaneError(f"pin directory {path} must be under {root} (a bpffs mount)")
    if not os.path.ismount(root):
        r = subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], capture_output=True, text=True)
        if r.returncode != 0:
            raise DataplaneError(f"cannot mount bpffs on {root}: {r.stderr.strip()}")
    os.makedirs(path, exist_ok=True)


def _mode_file(pin: str) -> pathlib.Path:
    # bpffs holds only BPF objects; the attach mode is remembered beside the state in /run.
    return pathlib.Path("/run/seawall") / (pin.strip("/").replace("/", "_") + ".mode")


def _write_mode_file(pin: str, mode: str) -> None:
    f = _mode_file(pin)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(mode)


def _read_mode_file(pin: str) -> str | None:
    try:
        return _mode_file(pin).read_text().strip()
    except OSError:
        return None


def remove_pinned_link(pin: str) -> None:
    """Detach a pinned XDP link (the kernel detaches when the last reference goes)."""
    try:
        fd = bpfsys.obj_get(pin)
    except OSError:
        fd = None
    if fd is not None:
        try:
            bpfsys.link_detach(fd)
        except OSError:
            pass
        os.close(fd)
    try:
        os.unlink(pin)
    except FileNotFoundError:
        pass
    _mode_file(pin).unlink(missing_ok=True)


def purge(pin_dir: str) -> list[str]:
    """Detach pinned links and remove every pinned object under `pin_dir`."""
    removed = []
    base = pathlib.Path(pin_dir)
    if not base.exists():
        return removed
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("link_"):
            remove_pinned_link(str(entry))
        else:
            entry.unlink()
        removed.append(str(entry))
    base.rmdir()
    return removed


__all__ = ["Dataplane", "DataplaneError", "Attachment", "purge", "remove_pinned_link",
           "AclKind", "TenantMode", "TENANT_SET_SLOTS", "UNPROTECTED"]
