"""The few bpf(2) commands bcc does not wrap the way Seawall needs them.

BPF_PROG_TEST_RUN (verdicts and benchmarks), BPF_MAP_CREATE and element updates
(the inner tries of the allow/deny array of maps), BPF_LINK_CREATE / BPF_LINK_UPDATE
and BPF_OBJ_PIN / BPF_OBJ_GET (an XDP attachment that lives in bpffs and can be
replaced atomically by a restarted control plane), and BPF_MAP_LOOKUP_BATCH
(reading 100k counters in one pass). The attr layouts are the kernel's stable
UAPI (include/uapi/linux/bpf.h).
"""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_BPF = 321  # x86_64

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TEST_RUN = 10
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34

BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1 << 0

BPF_XDP = 37  # enum bpf_attach_type
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_ACTION_NAMES = {XDP_ABORTED: "ABORTED", XDP_DROP: "DROP", XDP_PASS: "PASS", XDP_TX: "TX",
                    XDP_REDIRECT: "REDIRECT"}


class BpfError(OSError):
    """A bpf(2) command failed; errno and the command name are kept."""


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    ret = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


BPF_PROG_LOAD = 5
BPF_PROG_TYPE_XDP = 6
# mov r0, XDP_PASS; exit: the smallest XDP program, for veth peers that must merely have one.
_XDP_PASS_INSNS = bytes.fromhex("b700000002000000" "9500000000000000")


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


def prog_load_xdp_pass() -> int:
    """Load an XDP program that passes every frame; returns its fd (the caller closes it)."""
    insns = ctypes.create_string_buffer(_XDP_PASS_INSNS, len(_XDP_PASS_INSNS))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=BPF_PROG_TYPE_XDP, insn_cnt=len(_XDP_PASS_INSNS) // 8,
                         insns=ctypes.addressof(insns), license=ctypes.addressof(license_), prog_name=b"xdp_pass")
    return _bpf(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD(xdp_pass)")


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16), ("_rest", ctypes.c_uint64 * 8)]


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               name: str = "") -> int:
    """Create a map; returns its fd (the caller closes it once a map of maps holds the map)."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size, max_entries=max_entries,
                          map_flags=flags, map_name=name.encode()[:15])
    return _bpf(BPF_MAP_CREATE, attr, f"BPF_MAP_CREATE {name or map_type}")


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _bpf(BPF_MAP_UPDATE_ELEM, _MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v)),
         "BPF_MAP_UPDATE_ELEM")


def queue_push(map_fd: int, value: bytes) -> None:
    """Push one value onto a queue map (BPF_MAP_TYPE_QUEUE: no key). Raises BpfError E2BIG when it is full."""
    v = ctypes.create_string_buffer(value, len(value))
    _bpf(BPF_MAP_UPDATE_ELEM, _MapElemAttr(map_fd=map_fd, key=0, value=ctypes.addressof(v)), "BPF_MAP_UPDATE_ELEM")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """One element's value, or None when there is none (for a map of maps: the inner map's id)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = _MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
    if _libc.syscall(SYS_BPF, BPF_MAP_LOOKUP_ELEM, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return None
        raise BpfError(err, f"BPF_MAP_LOOKUP_ELEM: {os.strerror(err)}")
    return v.raw


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete one element; False when there was none."""
    k = ctypes.create_string_buffer(key, len(key))
    attr = _MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k))
    if _libc.syscall(SYS_BPF, BPF_MAP_DELETE_ELEM, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise BpfError(err, f"BPF_MAP_DELETE_ELEM: {os.strerror(err)}")
    return True


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> tuple[int, int, bytes]:
    """Run an XDP program on `frame`; returns (action, mean ns per run, frame out)."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out_size = len(frame) + 256
    data_out = ctypes.create_string_buffer(out_size)
    attr = _TestRunAttr(prog_fd=prog_fd, data_size_in=len(frame), data_in=ctypes.addressof(data_in),
                        data_size_out=out_size, data_out=ctypes.addressof(data_out), repeat=repeat)
    _bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    return attr.retval, attr.duration, data_out.raw[: attr.data_size_out]


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("_rest", ctypes.c_uint64 * 4)]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("new_prog_fd", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("old_prog_fd", ctypes.c_uint32)]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("path_fd", ctypes.c_int32), ("_pad", ctypes.c_uint32)]


def xdp_link_create(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach an XDP program to an interface through a bpf_link; returns the link fd."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=BPF_XDP, flags=flags)
    return _bpf(BPF_LINK_CREATE, attr, f"BPF_LINK_CREATE(ifindex {ifindex})")


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Atomically replace the program behind a link: no packet sees no program."""
    _bpf(BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=new_prog_fd), "BPF_LINK_UPDATE")


def link_detach(link_fd: int) -> None:
    _bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=link_fd), "BPF_LINK_DETACH")


def obj_pin(fd: int, path: str) -> None:
    raw = ctypes.create_string_buffer(path.encode())
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(raw), bpf_fd=fd), f"BPF_OBJ_PIN {path}")


def obj_get(path: str) -> int:
    raw = ctypes.create_string_buffer(path.encode())
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(raw)), f"BPF_OBJ_GET {path}")


class _GetIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def prog_get_fd_by_id(prog_id: int) -> int:
    """An fd for a loaded program known by its id (e.g. one another tool attached)."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _GetIdAttr(id=prog_id), f"BPF_PROG_GET_FD_BY_ID {prog_id}")


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (stable UAPI): what the kernel made of a map."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("_rest", ctypes.c_uint8 * 64)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def map_info(map_fd: int) -> MapInfo:
    info = MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=map_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
         "BPF_OBJ_GET_INFO_BY_FD")
    return info


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def array_lookup_range(map_fd: int, value_size: int, start: int, count: int) -> np.ndarray:
    """Elements start .. start + count - 1 of an array map (fewer if it ends first) by one
    BPF_MAP_LOOKUP_BATCH: (n, value_size) uint8 rows. The batch cursor is the last key read (the
    walk goes on from the key after it), so the read begins at `start` and copies only what is
    asked."""
    keys = np.empty((count, 4), np.uint8)
    values = np.empty((count, value_size), np.uint8)
    cursor_in = ctypes.c_uint32(max(start - 1, 0))
    cursor_out = ctypes.c_uint32(0)
    attr = _BatchAttr(in_batch=ctypes.addressof(cursor_in) if start else 0, out_batch=ctypes.addressof(cursor_out),
                      keys=keys.ctypes.data, values=values.ctypes.data, count=count, map_fd=map_fd)
    ret = _libc.syscall(SYS_BPF, BPF_MAP_LOOKUP_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0 and ctypes.get_errno() != errno.ENOENT:   # ENOENT: the array ended within the range
        err = ctypes.get_errno()
        raise BpfError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
    return values[:attr.count]


def map_delete_batch(map_fd: int, keys: np.ndarray) -> int:
    """Delete the elements of (N, key_size) uint8 `keys` from a hash map, in BPF_MAP_DELETE_BATCH calls
    (one call for all but keys that are absent: the kernel stops at one, which is skipped); returns how
    many were deleted."""
    keys = np.ascontiguousarray(keys, np.uint8)
    done = deleted = 0
    while done < len(keys):
        attr = _BatchAttr(keys=keys.ctypes.data + done * keys.shape[1], count=len(keys) - done, map_fd=map_fd)
        ret = _libc.syscall(SYS_BPF, BPF_MAP_DELETE_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
        deleted += attr.count
        done += attr.count
        if ret < 0:
            err = ctypes.get_errno()
            if err != errno.ENOENT:
                raise BpfError(err, f"BPF_MAP_DELETE_BATCH: {os.strerror(err)}")
            done += 1                        # the absent key
    return deleted


def map_lookup_batch(map_fd: int, key_size: int, value_size: int, max_entries: int,
                     chunk: int = 8192, buffers: tuple[np.ndarray, np.ndarray] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """Every element of a hash or array map by BPF_MAP_LOOKUP_BATCH, the kernel writing straight
    into two numpy buffers: (keys, values, count), uint8 arrays of `count` rows of key_size /
    value_size bytes.

    `value_size` is the size user space sees per element (for per-CPU maps: round_up(value, 8)
    * possible CPUs). The cursor carries on from call to call and ENOENT ends the walk. A hash
    bucket larger than the chunk answers ENOSPC with nothing copied: the chunk then doubles (the
    buffers grow if the rows left are fewer) and the read goes on from the same cursor. Writing
    into the final buffers, rather than gathering chunks, saves three copies of everything
    (31 MB for the address cache: ~48 ms against ~20 ms).

    `buffers`: (keys, values) uint8 arrays of max_entries + 1 rows to write into instead of new
    ones (a reader that reads the map every tick: the first touch of a fresh buffer's pages costs
    the kernel a page fault each, ~40 ms a read for a map of a million addresses). The result
    is then views of them, which the next read with the same buffers overwrites.
    """
    rows = max_entries + 1                       # one spare row: a full map still gets a call with room
    if buffers is not None and buffers[0].shape == (rows, key_size) and buffers[1].shape == (rows, value_size) \
            and buffers[0].dtype == buffers[1].dtype == np.uint8:
        keys, values = buffers
    else:
        keys = np.empty((rows, key_size), np.uint8)
        values = np.empty((rows, value_size), np.uint8)
    cursor_in = ctypes.create_string_buffer(max(key_size, 8))
    cursor_out = ctypes.create_string_buffer(max(key_size, 8))
    total = 0
    first = True
    while True:
        n = min(chunk, rows - total)
        attr = _BatchAttr(in_batch=0 if first else ctypes.addressof(cursor_in),
                          out_batch=ctypes.addressof(cursor_out), keys=keys.ctypes.data + total * key_size,
                          values=values.ctypes.data + total * value_size, count=n, map_fd=map_fd)
        ret = _libc.syscall(SYS_BPF, BPF_MAP_LOOKUP_BATCH, ctypes.byref(attr), ctypes.sizeof(attr))
        err = ctypes.get_errno() if ret < 0 else 0
        if ret < 0 and err == errno.ENOSPC and attr.count == 0:
            chunk *= 2
            if rows - total < chunk:             # room for the larger bucket
                rows = total + chunk
                keys = np.concatenate([keys[:total], np.empty((rows - total, key_size), np.uint8)])
                values = np.concatenate([values[:total], np.empty((rows - total, value_size), np.uint8)])
            continue
        if ret < 0 and err != errno.ENOENT:
            raise BpfError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        total += attr.count
        if ret < 0:  # ENOENT: the walk is complete
            return keys[:total], values[:total], total
        ctypes.memmove(cursor_in, cursor_out, len(cursor_out))
        first = False
