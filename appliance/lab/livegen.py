"""The fast path of the attack generator: BPF_PROG_TEST_RUN with live frames.

`LiveFrameSender` compiles `livegen.c` with bcc, fills its config map and calls
the bpf syscall directly (ctypes) with BPF_F_TEST_XDP_LIVE_FRAMES, so the kernel
runs the program `repeat` times on the template frame and transmits every
redirected copy out of the egress interface (kernel 5.18+). The kernel copies the
template only into new pages of its page pool; a page that returns during the run
(the receiver dropped the frame, or rewrote it and sent it on) is reused as it is,
so the template also goes into the `livegen_template` map and the program restores
each frame from there first. The calling thread must already be in the network
namespace that owns `ifindex`: the kernel looks the ingress device up in the
caller's namespace.

Anchor: a test run with repeat > 1 swaps the program into the kernel's XDP
dispatcher and back, two synchronize_rcu() calls, ~20-30 ms per call (measured
here). While the program is also attached to an interface it stays in the
dispatcher and a call costs ~30 us, so the sender attaches it (generic mode) to
an idle veth pair of its own, `lg<pid>a`/`lg<pid>b`, removed on close().
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import itertools
import os
import pathlib
import platform
import re
import threading

from appliance.lab import netlink

HERE = pathlib.Path(__file__).parent
BPF_PROG_TEST_RUN = 10              # bpf(2) command number
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
LIVE_BATCH_FRAMES = 64              # frames per kernel batch (NAPI_POLL_WEIGHT; kernel max 256)
MAX_LIVE_FRAME_BYTES = 3500         # bytes: one page minus XDP head/tailroom; no multi-buffer in live mode
XDP_FLAGS_SKB_MODE = 1 << 1
ANCHOR_RE = re.compile(r"^lg(\d+)a\d*$")
_ANCHOR_SERIAL = itertools.count()   # anchor veths of this process
# bcc compiles in process (clang and LLVM), and two compiles at once in two threads crash it (SIGSEGV,
# seen with two generators started together): senders made in threads compile one at a time.
_COMPILE_LOCK = threading.Lock()
SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}


class _TestRunAttr(ctypes.Structure):
    """`union bpf_attr`, the anonymous `test` member used by BPF_PROG_TEST_RUN (uapi/linux/bpf.h)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32),
    ]


class _XdpMd(ctypes.Structure):
    """`struct xdp_md` (uapi/linux/bpf.h), the context passed in with ctx_in."""

    _fields_ = [(name, ctypes.c_uint32) for name in
                ("data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index", "egress_ifindex")]


@dataclasses.dataclass(frozen=True, slots=True)
class FrameEdits:
    """Which fields of a template frame the program varies per frame (offsets in bytes, 0 = none)."""

    src_off: int = 0
    src_mask: int = 0          # host-order bits of the source word to randomize
    ip_csum_off: int = 0
    l4_csum_off: int = 0
    l4_pseudo: bool = False
    l4_udp: bool = False
    ipid_off: int = 0
    sport_off: int = 0
    sport_range: tuple[int, int] = (0, 0)   # (min, span); span 0 keeps the template's port
    dport_off: int = 0
    dport_range: tuple[int, int] = (0, 0)
    seq_off: int = 0

    def __post_init__(self) -> None:
        for name in ("src_off", "ip_csum_off", "l4_csum_off", "ipid_off", "sport_off", "dport_off", "seq_off"):
            if not 0 <= getattr(self, name) <= 0xFF - 3:
                raise ValueError(f"{name}={getattr(self, name)}: rewritten fields must lie in the first 252 bytes")
        for name in ("sport_range", "dport_range"):
            low, span = getattr(self, name)
            if not (0 <= low <= 0xFFFF and 0 <= span <= 0xFFFF and low + span <= 0x10000):
                raise ValueError(f"{name}={(low, span)}: (min, span) must stay within 0..65535")
        if not 0 <= self.src_mask <= 0xFFFFFFFF:
            raise ValueError(f"src_mask={self.src_mask:#x}: 32 bits at most")


class LiveFrameSender:
    """Sends template frames out of one interface through the live-frames test run."""

    def __init__(self, ifindex: int):
        from bcc import BPF  # noqa: PLC0415 - bcc only where the fast path runs (never in unit tests)

        self.ifindex = ifindex
        with _COMPILE_LOCK:
            self._bpf = BPF(src_file=str(HERE / "livegen.c"), cflags=[f"-I{HERE}"])
        self._prog_fd = self._bpf.load_func("livegen", BPF.XDP).fd
        self._config = self._bpf["livegen_cfg"]
        self._template = self._bpf["livegen_template"]
        self._template_frame: bytes | None = None   # what the map holds now
        self._frames = self._bpf["livegen_frames"]
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        machine = platform.machine()
        if machine not in SYS_BPF:
            raise OSError(f"bpf syscall number unknown for {machine}")
        self._sys_bpf = SYS_BPF[machine]
        self._ctx = _XdpMd(ingress_ifindex=ifindex)
        # Numbered per sender: a process may run one per CPU (the multi-queue bench).
        serial = next(_ANCHOR_SERIAL)
        self._anchor = f"lg{os.getpid()}a{serial}"
        # In this thread's namespace (the caller entered it): IPRoute opens its socket here.
        with netlink.iproute() as ipr:
            self._remove_stale_anchors(ipr)
            netlink.add_veth(ipr, self._anchor, f"lg{os.getpid()}b{serial}")
        self._bpf.attach_xdp(self._anchor, self._bpf.load_func("livegen", BPF.XDP), XDP_FLAGS_SKB_MODE)

    @staticmethod
    def _remove_stale_anchors(ipr) -> None:
        """Anchors of generators that died without close() (their pid is gone)."""
        for name in netlink.link_names(ipr):
            match = ANCHOR_RE.match(name)
            if match and not os.path.exists(f"/proc/{match.group(1)}"):
                netlink.delete_link(ipr, name)

    def configure(self, edits: FrameEdits) -> None:
        leaf = self._config.Leaf()
        leaf.egress_ifindex = self.ifindex
        leaf.src_mask = edits.src_mask
        leaf.src_off = edits.src_off
        leaf.ip_csum_off = edits.ip_csum_off
        leaf.l4_csum_off = edits.l4_csum_off
        leaf.l4_pseudo = int(edits.l4_pseudo)
        leaf.l4_udp = int(edits.l4_udp)
        leaf.ipid_off = edits.ipid_off
        leaf.sport_off = edits.sport_off
        leaf.sport_min, leaf.sport_span = edits.sport_range
        leaf.dport_off = edits.dport_off
        leaf.dport_min, leaf.dport_span = edits.dport_range
        leaf.seq_off = edits.seq_off
        self._config[self._config.Key(0)] = leaf

    def send(self, frame: bytes, repeat: int) -> int:
        """Run the program `repeat` times on `frame`; returns the kernel's duration in ns per frame.

        A signal that arrives during the run (the SIGINT that asks `seawall attack` for its summary,
        any handler's signal) ends it early: the kernel stops between batches with EINTR. That is no
        error: fewer frames went out, and `frames_redirected()` counts the ones that did; the caller's
        loop sees why the signal came (a stop event) on its next turn. 0 is returned then."""
        if len(frame) > MAX_LIVE_FRAME_BYTES:
            raise ValueError(f"frame of {len(frame)} bytes exceeds {MAX_LIVE_FRAME_BYTES} (live frames)")
        if frame != self._template_frame:
            leaf = self._template.Leaf()
            leaf.len = len(frame)
            ctypes.memmove(leaf.bytes, frame, len(frame))
            self._template[self._template.Key(0)] = leaf
            self._template_frame = frame
        buf = ctypes.create_string_buffer(frame, len(frame))
        self._ctx.data_end = len(frame)
        attr = _TestRunAttr(
            prog_fd=self._prog_fd, data_size_in=len(frame), data_in=ctypes.addressof(buf),
            repeat=repeat, ctx_size_in=ctypes.sizeof(self._ctx), ctx_in=ctypes.addressof(self._ctx),
            flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=LIVE_BATCH_FRAMES)
        rc = self._libc.syscall(self._sys_bpf, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
        if rc != 0:
            err = ctypes.get_errno()
            if err == errno.EINTR:
                return 0
            raise OSError(err, f"BPF_PROG_TEST_RUN (live frames) failed: {os.strerror(err)}")
        return attr.duration

    def frames_redirected(self) -> int:
        """Frames the program handed to bpf_redirect since load (sum over CPUs)."""
        return int(sum(self._frames[self._frames.Key(0)]))

    def close(self) -> None:
        try:
            self._bpf.remove_xdp(self._anchor, XDP_FLAGS_SKB_MODE)
        finally:
            try:
                with netlink.iproute() as ipr:
                    netlink.delete_link(ipr, self._anchor)
            finally:
                self._bpf.cleanup()
