"""Loading the XDP program: compile with bcc, check pinned maps, attach to and detach from the NICs.

`Program` owns what the kernel holds for this process: the compiled object (bcc's `BPF`),
the two direction programs and their refresh programs, the maps by name, and the XDP
links. Everything that reads or writes map contents lives in `dataplane.tables`,
`dataplane.reader` and `dataplane.ring`; `dataplane.Dataplane` composes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import pathlib
import re
import socket
import subprocess
from collections.abc import Sequence

import structlog

from dataplane import bpfsys, constants
from dataplane.api import DataplaneError
from dataplane.constants import Direction, Port
from dataplane.memory import release_compiler_code, release_freed_heap
from dataplane.reader import MapRef
from dataplane.sizing import MAX_ADDRESSES_RANGE, MAX_CACHE_BITS, MIN_CACHE_BITS, overflow_entries
from dataplane.spill import StoreMaps

log = structlog.get_logger("seawall.dataplane")

BPF_DIR = pathlib.Path(__file__).parent / "bpf"
PROGRAM_FILE = BPF_DIR / "seawall.c"
# Each NIC runs the program of its direction; each program tail-calls its refresh program on an
# address cache miss (seawall.c). sw_progs slots: main programs at the direction's value, refresh
# programs after them.
PROGRAM_NAMES = {Direction.INBOUND: "xdp_seawall_inbound", Direction.OUTBOUND: "xdp_seawall_outbound"}
SYNAUTH_PROGRAM_NAME = "xdp_seawall_synauth"
# The programs that translate a spliced connection's packets (synauth.h), after the SYN-auth one.
SPLICE_PROGRAM_NAMES = {Direction.INBOUND: "xdp_seawall_splice_inbound",
                        Direction.OUTBOUND: "xdp_seawall_splice_outbound"}
# The programs of connection accounting (flows.h), after the splice ones, and the one that resets a blocked
# source's connections after them.
FLOWS_PROGRAM_NAMES = {Direction.INBOUND: "xdp_seawall_flows_inbound", Direction.OUTBOUND: "xdp_seawall_flows_outbound"}
BLOCK_RESET_PROGRAM_NAME = "xdp_seawall_block_reset"
# Not a port's program: user space runs it on frames it builds to reset the connections a source held when
# it was blocked (flows.h, sw_flows_reset_held; dataplane.flows.Flows.reset_held).
RESET_HELD_PROGRAM_NAME = "xdp_seawall_reset_held"
REFRESH_PROGRAM_NAMES = {Direction.INBOUND: "xdp_seawall_refresh_inbound",
                         Direction.OUTBOUND: "xdp_seawall_refresh_outbound"}
# The maps Python reads or writes.
MAP_NAMES = ("sw_config", "sw_ports", "sw_prefix4", "sw_prefix6", "sw_policy", "sw_acl4_tries", "sw_acl6_tries",
             "sw_acl4_template", "sw_acl6_template", "sw_addr_cache", "sw_addr_store", "sw_addr_store_index",
             "sw_addr_store_next", "sw_addr_store_free", "sw_addr_spill", "sw_tenant_stats",
             "sw_rule_set_index", "sw_rule_sets", "sw_rules", "sw_rule_stats", "sw_rule_buckets", "sw_attack",
             "sw_reflection_ports", "sw_syn_sources", "sw_synack_buckets", "sw_synack_global", "sw_synauth_stats",
             "sw_splices", "sw_splice_dests", "sw_splice_gate")
# BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH: bcc's Leaf is the per-CPU array
PERCPU_MAP_TYPES = frozenset({5, 6, 10})

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")


@dataclasses.dataclass(frozen=True, slots=True)
class Attachment:
    interface: str
    ifindex: int
    mode: str          # "native" or "generic"
    pinned_link: str   # bpffs path, "" when not pinned


class Program:
    """The compiled program, its maps (`maps`, by name) and its XDP links.

    `pin_dir`: a bpffs directory where maps and links persist across restarts (None: nothing
    outlives the object). `max_addresses`: slots of the spill store (dataplane.spill). `defines`: extra -D
    flags (test builds, such as -DSW_NO_FAST_PARSE). `cache_bits`: log2 of the address cache's
    slots per CPU region (`dataplane.sizing.address_cache_bits`).
    """

    def __init__(self, pin_dir: str | None, max_addresses: int, defines: Sequence[str] = (),
                 cache_bits: int = constants.ADDRESS_CACHE_BITS) -> None:
        from bcc import BPF  # noqa: PLC0415 - only the kernel adapter imports bcc

        self.pin_dir = pin_dir
        # A -D in `defines` replaces the constants' default of that name (sizes from the configuration).
        replaced = {d.partition("=")[0] for d in defines}
        cflags = [*(f for f in constants.cflags() if f.partition("=")[0] not in replaced), *defines, f"-I{BPF_DIR}"]
        if max_addresses != constants.MAX_ADDRESSES:
            low, high = MAX_ADDRESSES_RANGE
            if not low <= max_addresses <= high:
                raise DataplaneError(f"max_addresses {max_addresses} is outside {low}..{high}")
            cflags = [f for f in cflags if not f.startswith(("-DSW_MAX_ADDRESSES=", "-DSW_ADDRESS_OVERFLOW_ENTRIES="))]
            cflags += [f"-DSW_MAX_ADDRESSES={int(max_addresses)}U",
                       f"-DSW_ADDRESS_OVERFLOW_ENTRIES={overflow_entries(int(max_addresses))}U"]
        if cache_bits != constants.ADDRESS_CACHE_BITS:
            if not MIN_CACHE_BITS <= cache_bits <= MAX_CACHE_BITS:
                raise DataplaneError(f"address cache bits {cache_bits} is outside {MIN_CACHE_BITS}..{MAX_CACHE_BITS}")
            cflags = [f for f in cflags if not f.startswith("-DSW_ADDRESS_CACHE_BITS=")]
            cflags.append(f"-DSW_ADDRESS_CACHE_BITS={int(cache_bits)}U")
        self.cache_bits = cache_bits
        if pin_dir is not None:
            if not _SAFE_PATH.match(pin_dir):
                raise DataplaneError(f"pin directory {pin_dir!r} must be an absolute path of plain characters")
            _ensure_bpffs_dir(pin_dir)
            cflags.append(f'-DSW_PIN_DIR="{pin_dir}"')
        self.bpf = None
        try:
            self.bpf = BPF(src_file=str(PROGRAM_FILE).encode(), cflags=cflags)
            self.programs = {d: self.bpf.load_func(name.encode(), BPF.XDP) for d, name in PROGRAM_NAMES.items()}
            progs = self.bpf[b"sw_progs"]
            for d, name in REFRESH_PROGRAM_NAMES.items():
                progs[ctypes.c_int(int(d))] = ctypes.c_int(self.programs[d].fd)
                refresh = self.bpf.load_func(name.encode(), BPF.XDP)
                progs[ctypes.c_int(len(Direction) + int(d))] = ctypes.c_int(refresh.fd)
            # The program that answers SYNs and cookie ACKs itself (synauth.h), after both pairs.
            self.synauth = self.bpf.load_func(SYNAUTH_PROGRAM_NAME.encode(), BPF.XDP)
            progs[ctypes.c_int(2 * len(Direction))] = ctypes.c_int(self.synauth.fd)
            for d, name in SPLICE_PROGRAM_NAMES.items():
                splice = self.bpf.load_func(name.encode(), BPF.XDP)
                progs[ctypes.c_int(2 * len(Direction) + 1 + int(d))] = ctypes.c_int(splice.fd)
            for d, name in FLOWS_PROGRAM_NAMES.items():
                flows = self.bpf.load_func(name.encode(), BPF.XDP)
                progs[ctypes.c_int(3 * len(Direction) + 1 + int(d))] = ctypes.c_int(flows.fd)
            # A blocked source's segment turned into a reset of the server's connection (flows.h).
            reset = self.bpf.load_func(BLOCK_RESET_PROGRAM_NAME.encode(), BPF.XDP)
            progs[ctypes.c_int(4 * len(Direction) + 1)] = ctypes.c_int(reset.fd)
            self.reset_held = self.bpf.load_func(RESET_HELD_PROGRAM_NAME.encode(), BPF.XDP)
        except Exception as exc:  # bcc raises bare Exception on compile/load failures
            if pin_dir is not None and self.bpf is not None:
                # The verifier rejects a program whose pinned map is smaller than it needs: name the map.
                self.check_pinned_maps()
            hint = ""
            if pin_dir and "pin" in str(exc).lower():
                hint = f" (pinned maps under {pin_dir} may be from another version: `seawall detach --purge`)"
            raise DataplaneError(f"cannot load the XDP program: {exc}{hint}") from exc
        release_freed_heap()       # what the compile leaves resident: ~150 MiB (dataplane.memory)
        release_compiler_code()
        from bcc.utils import get_possible_cpus  # noqa: PLC0415

        self.ncpus = len(get_possible_cpus())
        self.maps = {name: self.bpf[name.encode()] for name in MAP_NAMES}
        if pin_dir is not None:
            self.check_pinned_maps()
        self._attachments: list[Attachment] = []
        self._link_fds: list[int] = []
        self._test_ports_set = False

    def check_pinned_maps(self) -> None:
        """Refuse maps pinned by another version. bcc reuses a map pinned at a table's path
        whatever its layout, so after an upgrade that changed a map the program would run on
        the old one as if it had the new layout."""
        for name in sorted(os.listdir(self.pin_dir)):
            try:
                table = self.bpf[name.encode()]
            except KeyError:
                continue          # a link, or a map this version no longer has
            leaf = table.Leaf._type_ if table.ttype in PERCPU_MAP_TYPES else table.Leaf
            key_bytes = ctypes.sizeof(table.Key) if hasattr(table, "Key") else 0    # a queue has no key
            want = (table.ttype, key_bytes, ctypes.sizeof(leaf), table.max_entries, table.flags)
            info = bpfsys.map_info(table.map_fd)
            have = (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)
            if have != want:
                raise DataplaneError(
                    f"the map {name} pinned under {self.pin_dir} was made by another version of Seawall "
                    f"(type, key size, value size, entries, flags: {have}; this version needs {want}). "
                    f"`seawall detach --purge` removes the old program and its state (the bridge stops "
                    f"until `seawall run` attaches again)")

    def set_ports(self, external_ifindex: int, internal_ifindex: int) -> None:
        """Where frames leave: each NIC's program knows its own direction, so the devmap's two
        ports are all the program needs to know of the NICs."""
        ports = self.maps["sw_ports"]
        ports[ports.Key(Port.EXTERNAL)] = ports.Leaf(external_ifindex)
        ports[ports.Key(Port.INTERNAL)] = ports.Leaf(internal_ifindex)

    def attach(self, external: str, internal: str, mode: str = "auto") -> list[Attachment]:
        """Bridge `external` and `internal` through the program (see `Dataplane.attach`)."""
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

    def test_run(self, frame: bytes, direction: Direction = Direction.INBOUND, repeat: int = 1) -> tuple[int, int]:
        """BPF_PROG_TEST_RUN of `direction`'s program on one frame (see `Dataplane.test_run`)."""
        if self._attachments:
            raise DataplaneError("test_run is for unattached dataplanes only")
        self._ensure_test_ports()
        action, duration, _ = bpfsys.prog_test_run(self.programs[direction].fd, frame, repeat)
        return action, duration

    def _ensure_test_ports(self) -> None:
        if not self._test_ports_set:
            # The devmap is not pinned: a program loaded over pinned maps starts without ports.
            self.set_ports(1, 1)
            self._test_ports_set = True

    def test_run_frame(self, frame: bytes, direction: Direction = Direction.INBOUND) -> tuple[int, bytes]:
        """BPF_PROG_TEST_RUN once: (XDP action, the frame as the program left it)."""
        if self._attachments:
            raise DataplaneError("test_run is for unattached dataplanes only")
        self._ensure_test_ports()
        action, _, out = bpfsys.prog_test_run(self.programs[direction].fd, frame, 1)
        return action, out

    def map_ref(self, name: str) -> MapRef:
        """A map as `dataplane.reader` reads it (bcc's per-CPU Leaf is already the per-CPU array)."""
        table = self.maps[name]
        key_bytes = ctypes.sizeof(table.Key) if hasattr(table, "Key") else 0    # a queue has no key
        return MapRef(fd=table.map_fd, key_bytes=key_bytes, value_bytes=ctypes.sizeof(table.Leaf),
                      max_entries=table.max_entries)

    def store_maps(self) -> StoreMaps:
        """The spill store's maps as `dataplane.spill.SpillStore` reads them."""
        store = self.maps["sw_addr_store"]
        return StoreMaps(store_fd=store.map_fd, slot_bytes=ctypes.sizeof(store.Leaf), slots=store.max_entries,
                         index_fd=self.maps["sw_addr_store_index"].map_fd,
                         next_fd=self.maps["sw_addr_store_next"].map_fd, free_fd=self.maps["sw_addr_store_free"].map_fd)

    def close(self) -> None:
        """Release this process's handles. Pinned links and maps stay: the bridge keeps running."""
        self._detach_unpinned_links()
        self.bpf.cleanup()


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


__all__ = ["BPF_DIR", "PROGRAM_FILE", "Attachment", "Program", "purge", "remove_pinned_link"]
