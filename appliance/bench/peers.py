"""Reference XDP programs that `seawall bench dataplane` times next to Seawall, on the same frames.

A ratio to `return XDP_DROP` mostly measures the CPU's fixed cost of calling a BPF program
(26 ns on a CPU with the SRSO return-thunk mitigation, 5 ns on one without), not Seawall. Two
yardsticks that do real work hold across CPUs:

- xdp-tools' `xdp-filter` (the Debian package's own program, embedded in its binary), loaded by
  the `xdp-filter` command with a rule that drops the flood's destination port. It is what an
  operator would otherwise put in front of a server, so `drop_vs_xdp_filter` = its ns ÷
  Seawall's drop ns (above 1.0: Seawall drops cheaper).
- a bare bridge (`dataplane/bpf/bare_bridge.c`: check the Ethernet header, redirect through a
  devmap), the least any two-port XDP bridge does, so `pass_vs_bare_bridge` = Seawall's pass ns ÷
  its ns is what Seawall's lookups and counters cost on top of bridging.

xdp-filter keeps its configuration in bpffs. It runs in a namespace of its own with a bpffs
mounted only inside that command's mount namespace, so nothing is left under /sys/fs/bpf; the
program stays loaded while it is attached to the namespace's veth, and goes with the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator

from dataplane import bpfsys
from dataplane.dataplane import BPF_DIR

LOOPBACK_IFINDEX = 1  # where BPF_PROG_TEST_RUN's redirected frames go, as in Seawall's own test runs


class PeerProgramError(RuntimeError):
    """A reference program could not be loaded (tool missing, load refused)."""


@contextlib.contextmanager
def xdp_filter_dropping_udp_port(port: int) -> Iterator[int]:
    """Yield an fd of xdp-tools' xdp-filter program, configured to drop UDP to `port`."""
    if shutil.which("xdp-filter") is None:
        raise PeerProgramError("xdp-filter not found: install Debian's xdp-tools (scripts/bootstrap.sh does)")
    netns = f"sw-bench-xdpfilter-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    fd = -1
    try:
        # One shell in one mount namespace: xdp-filter's state lives in the bpffs mounted here.
        script = ("mount -t bpf bpf /sys/fs/bpf && ip link add xf0 type veth peer name xf1 && "
                  "ip link set xf0 up && ip link set xf1 up && xdp-filter load xf0 --mode skb && "
                  f"xdp-filter port {port} --mode dst --proto udp")
        done = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script], capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerProgramError(f"xdp-filter load failed: {(done.stderr or done.stdout).strip()}")
        link = json.loads(subprocess.run(["ip", "-j", "-n", netns, "link", "show", "dev", "xf0"],
                                         check=True, capture_output=True, text=True).stdout)[0]
        fd = bpfsys.prog_get_fd_by_id(link["xdp"]["prog"]["id"])
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)
        subprocess.run(["ip", "netns", "del", netns], check=False)


@contextlib.contextmanager
def bare_bridge() -> Iterator[int]:
    """Yield an fd of the bare bridge, its egress port the loopback device."""
    from bcc import BPF  # noqa: PLC0415

    prog = BPF(src_file=str(BPF_DIR / "bare_bridge.c").encode())
    try:
        ports = prog["bare_ports"]
        ports[ports.Key(0)] = ports.Leaf(LOOPBACK_IFINDEX)
        yield prog.load_func(b"xdp_bare_bridge", BPF.XDP).fd
    finally:
        prog.cleanup()
