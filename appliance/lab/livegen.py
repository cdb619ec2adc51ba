"""The fast path of the attack generator: BPF_PROG_TEST_RUN with live frames, or, where the
kernel refuses those, frames written into a veth pair whose XDP program sends them on.

`LiveFrameSender` compiles `livegen.c` with bcc, fills its config map and calls
the bpf syscall directly (ctypes) with BPF_F_TEST_XDP_LIVE_FRAMES, so the kernel
runs the program `repeat` times on the template frame and transmits every
redirected copy out of the egress interface (kernel 5.18+). Where the kernel refuses
live-frames runs (EPERM), the sender writes the frames with an AF_PACKET socket into its
anchor pair, where the same program, attached natively, varies and redirects them
(`LiveFrameSender.method`). The kernel copies the
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
import socket
import threading
import time

import structlog

from appliance.lab import netlink
from appliance.lab.capture import SOL_PACKET

HERE = pathlib.Path(__file__).parent
BPF_PROG_TEST_RUN = 10              # bpf(2) command number
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
LIVE_BATCH_FRAMES = 64              # frames per kernel batch (NAPI_POLL_WEIGHT; kernel max 256)
MAX_LIVE_FRAME_BYTES = 3500         # bytes: one page minus XDP head/tailroom; no multi-buffer in live mode
# bytes appended to every frame sent in and trimmed by the program (livegen.c: the trim makes the kernel
# take each frame's length from the context again); with them a frame still fits the page (3,520 bytes)
LIVE_TRIM_BYTES = 4
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
ETH_HLEN = 14                       # bytes: the Ethernet header
ETH_MIN_FRAME_BYTES = 60            # bytes: the shortest Ethernet frame without its FCS
PACKET_QDISC_BYPASS = 20            # option of linux/if_packet.h: straight to the driver (a veth has no queue anyway)
SENDMMSG_FRAMES = 1024              # frames per sendmmsg call (the kernel's UIO_MAXIOV bound on a call)
MAX_REFUSED_WRITES = 1000           # sendmmsg calls in a row refused with ENOBUFS before the sender gives up
ANCHOR_RE = re.compile(r"^lg(\d+)a\d*$")
_ANCHOR_SERIAL = itertools.count()   # anchor veths of this process
# bcc compiles in process (clang and LLVM), and two compiles at once in two threads crash it (SIGSEGV,
# seen with two generators started together): senders made in threads compile one at a time.
_COMPILE_LOCK = threading.Lock()
log = structlog.get_logger(__name__)
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


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


class LiveFrameSender:
    """Sends template frames out of one interface: every frame goes through `livegen.c`, which
    restores the template, varies its fields and redirects it out of the interface.

    `method` says how the frames reach the program. "xdp-live-frames": the live-frames test run
    (the kernel runs the program `repeat` times on pages of its own). "af-packet-xdp-redirect",
    where the kernel refuses live-frames test runs (EPERM, as the 6.18.44-fc kernels of these VMs
    do): an AF_PACKET socket writes the frames into the anchor pair (`sendmmsg`, 1,024 a call), and
    the program, attached natively to the anchor's other end, redirects them out of the interface.
    Either way the interface transmits them through its XDP transmit path (the counters
    `SendTurn` reads), so what is counted and reported is the same."""

    def __init__(self, ifindex: int):
        from bcc import BPF  # noqa: PLC0415 - bcc only where the fast path runs (never in unit tests)

        self.ifindex = ifindex
        with _COMPILE_LOCK:
            self._bpf = BPF(src_file=str(HERE / "livegen.c"),
                            cflags=[f"-I{HERE}", f"-DLIVEGEN_TRIM_BYTES={LIVE_TRIM_BYTES}"])
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
        self._injector = f"lg{os.getpid()}b{serial}"
        self._socket: socket.socket | None = None
        self._buffer: ctypes.Array | None = None     # the padded template frame, as sent
        # In this thread's namespace (the caller entered it): IPRoute opens its socket here.
        with netlink.iproute() as ipr:
            self._remove_stale_anchors(ipr)
            netlink.add_veth(ipr, self._anchor, self._injector)
            self._anchor_ifindex = netlink.index(ipr, self._anchor)
            try:
                self.method = "xdp-live-frames" if self._live_frames_allowed() else "af-packet-xdp-redirect"
                if self.method == "af-packet-xdp-redirect":
                    # A frame and its padding must fit the veth's MTU (AF_PACKET) and a page (native XDP).
                    mtu = MAX_LIVE_FRAME_BYTES + LIVE_TRIM_BYTES - ETH_HLEN
                    # Nothing but the frames written into the pair may reach the program: no router or
                    # listener reports of the kernel's own once the pair is up.
                    netlink.write_sysctls(None, {f"net.ipv6.conf.{name}.disable_ipv6": 1
                                                 for name in (self._anchor, self._injector)})
                    for name in (self._anchor, self._injector):
                        ipr.link("set", index=netlink.index(ipr, name), mtu=mtu)
                        netlink.set_up(ipr, name)
                self._bpf.attach_xdp(self._anchor, self._bpf.load_func("livegen", BPF.XDP), self._attach_mode)
                if self.method == "af-packet-xdp-redirect":
                    self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                    self._socket.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
                    self._socket.bind((self._injector, 0))
            except BaseException:
                if self._socket is not None:
                    self._socket.close()
                netlink.delete_link(ipr, self._anchor)
                self._bpf.cleanup()
                raise
        self._batch = (_Mmsghdr * SENDMMSG_FRAMES)()
        self._iov = _Iovec()
        for message in self._batch:
            message.msg_hdr.msg_iov = ctypes.pointer(self._iov)
            message.msg_hdr.msg_iovlen = 1

    @property
    def _attach_mode(self) -> int:
        """Live frames: generic mode on the idle anchor (it only keeps the program in the kernel's XDP
        dispatcher); frames written into the pair: native, so that its redirect is an XDP transmit."""
        return XDP_FLAGS_SKB_MODE if self.method == "xdp-live-frames" else XDP_FLAGS_DRV_MODE

    def _test_run(self, buf: ctypes.Array, ctx: _XdpMd, repeat: int, batch_size: int) -> tuple[int, int]:
        """One live-frames test run of the program on `buf` (all of it); (errno or 0, ns per frame)."""
        ctx.data_end = len(buf)
        attr = _TestRunAttr(
            prog_fd=self._prog_fd, data_size_in=len(buf), data_in=ctypes.addressof(buf), repeat=repeat,
            ctx_size_in=ctypes.sizeof(ctx), ctx_in=ctypes.addressof(ctx), flags=BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size=batch_size)
        rc = self._libc.syscall(self._sys_bpf, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
        return (ctypes.get_errno() if rc != 0 else 0), attr.duration

    def _live_frames_allowed(self) -> bool:
        """Whether the kernel runs live-frames test runs: one run of the program on a zeroed frame
        that comes in on the anchor (down, so nothing goes anywhere; the zeroed configuration makes
        the program pass it). Any error (EPERM here, EINVAL before kernel 5.18): the other path."""
        probe = bytes(ETH_MIN_FRAME_BYTES + LIVE_TRIM_BYTES)
        err, _ = self._test_run(ctypes.create_string_buffer(probe, len(probe)),
                                _XdpMd(ingress_ifindex=self._anchor_ifindex), 1, 1)
        if err == 0:
            return True
        log.info("livegen.live_frames_refused", error=os.strerror(err), method="af-packet-xdp-redirect")
        return False

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
        leaf.ingress_ifindex = self.ifindex if self._socket is None else self._anchor_ifindex
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

    def send(self, frame: bytes, repeat: int, stop: threading.Event | None = None) -> int:
        """Run the program `repeat` times on `frame`; returns the duration in ns per frame.

        A run ends early when it is asked to stop (the SIGINT that asks `seawall attack` for its
        summary): with live frames, any signal that arrives during the run does it, the kernel
        stopping between batches with EINTR; with frames written into the anchor, `stop` set (checked
        every SENDMMSG_FRAMES frames) does. That is no error: fewer frames went out, and
        `frames_redirected()` counts the ones that did; the caller's loop sees why (a stop event) on
        its next turn. 0 is returned then."""
        if len(frame) > MAX_LIVE_FRAME_BYTES:
            raise ValueError(f"frame of {len(frame)} bytes exceeds {MAX_LIVE_FRAME_BYTES} (live frames)")
        if frame != self._template_frame:
            leaf = self._template.Leaf()
            leaf.len = len(frame)
            ctypes.memmove(leaf.bytes, frame, len(frame))
            self._template[self._template.Key(0)] = leaf
            self._template_frame = frame
            padded = frame + bytes(LIVE_TRIM_BYTES)
            self._buffer = ctypes.create_string_buffer(padded, len(padded))
        if self._socket is not None:
            return self._inject(self._buffer, repeat, stop)
        err, duration = self._test_run(self._buffer, self._ctx, repeat, LIVE_BATCH_FRAMES)
        if err == errno.EINTR:
            return 0
        if err:
            raise OSError(err, f"BPF_PROG_TEST_RUN (live frames) failed: {os.strerror(err)}")
        return duration

    def _inject(self, buf: ctypes.Array, repeat: int, stop: threading.Event | None) -> int:
        """Write `repeat` copies of the padded frame into the anchor pair; returns ns per frame
        (this thread's wall time: the program runs in the softirq of each write)."""
        self._iov.iov_base = ctypes.addressof(buf)
        self._iov.iov_len = len(buf)
        start = time.monotonic_ns()
        left = repeat
        refused = 0
        while left > 0:
            if stop is not None and stop.is_set():
                return 0
            count = min(left, SENDMMSG_FRAMES)
            sent = self._libc.sendmmsg(self._socket.fileno(), self._batch, count, 0)
            if sent < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    return 0
                refused += 1
                # The anchor's ring full for a moment (its softirq empties it after each write): again.
                if err in (errno.ENOBUFS, errno.EAGAIN) and refused < MAX_REFUSED_WRITES:
                    continue
                raise OSError(err, f"sendmmsg on {self._injector} failed: {os.strerror(err)}")
            refused = 0
            left -= sent
        return (time.monotonic_ns() - start) // max(1, repeat)

    def frames_redirected(self) -> int:
        """Frames the program handed to bpf_redirect since load (sum over CPUs)."""
        return int(sum(self._frames[self._frames.Key(0)]))

    def close(self) -> None:
        try:
            if self._socket is not None:
                self._socket.close()
            self._bpf.remove_xdp(self._anchor, self._attach_mode)
        finally:
            try:
                with netlink.iproute() as ipr:
                    netlink.delete_link(ipr, self._anchor)
            finally:
                self._bpf.cleanup()
