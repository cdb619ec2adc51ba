"""The three-namespace bench for `seawall bench compare`: generator → veth → DUT → veth → sink.

    <tag>g (generator)          <tag>d (device under test)          <tag>s (sink)
      <tag>g0  ───────────────  <tag>d0 ══ DUT ══ <tag>d1  ───────────  <tag>s0 (XDP_DROP)
      <tag>gl  ─────────────────────── direct link ─────────────────────  <tag>sl

Frames come from the live-frames generator (`appliance.lab.livegen`) in a worker thread that
lives in the generator namespace, pinned to GENERATOR_CPU. The DUT's receive work runs in
threaded NAPI on <tag>d0, whose kthread is pinned to DUT_CPU; the DUT's cost per packet is the
kthread's CPU time (/proc/<pid>/schedstat, first field, ns) over the packets it handled. The
sink's receive work (XDP_DROP) runs in its own threaded-NAPI kthread on GENERATOR_CPU at a
real-time priority, so it is never charged to the DUT and never starved by the generator.
The direct link joins the latency endpoints without the DUT, for the baseline RTT.

With `queues` > 1 (the multi-queue part) the generator's and the sink's veths get that many
receive and transmit queues, and there is one generator per vCPU. A veth picks the receive
queue of an XDP-redirected frame (the generator's, the DUT's bridge's) by the CPU that sends
it (veth_xdp_xmit(): smp_processor_id() % real_num_rx_queues), not by a flow hash; only skbs
from the stack are spread by their flow (their queue mapping). So what spreads the DUT's
receive work over queues here is sending from several CPUs, as a multi-queue NIC's RSS spreads
flows; each queue's NAPI then runs in its own threaded-NAPI kthread, one pinned per vCPU.

Latency is measured with NAPI in softirq instead (`softirq_napi()`, the kernel's default and
what a NIC does after its interrupt): a threaded-NAPI kthread costs a wake-up per veth hop,
often on the other vCPU (an IPI, a VM exit), which measured 10-25 us of RTT here that
belongs to the bench, not to the device under test.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from appliance.lab import netlink
from appliance.lab.livegen import FrameEdits, LiveFrameSender
from appliance.lab.nsenter import enter_netns, run_in_netns

log = structlog.get_logger()

GENERATOR_CPU = 0                 # vCPU of the frame generator and the sink's NAPI kthread
DUT_CPU = 1                       # vCPU of the DUT's NAPI kthread
SINK_RT_PRIORITY = 50             # SCHED_FIFO priority of the sink's NAPI kthread
MINIMAL_PROGRAM = pathlib.Path(__file__).resolve().parents[2] / "dataplane" / "bpf" / "minimal.c"
THROUGH_CLIENT = "192.0.2.1"      # latency client (generator side), through the DUT
THROUGH_SERVER = "192.0.2.2"      # latency server (sink side)
DIRECT_CLIENT = "192.0.2.17"      # the same hosts on the direct link
DIRECT_SERVER = "192.0.2.18"
LINK_PREFIXLEN = 28
DRAIN_TIMEOUT_S = 10.0            # seconds for the DUT to empty its rings after a burst
KTHREAD_TIMEOUT_S = 5.0           # seconds for a threaded-NAPI kthread to appear
GENERATOR_JOB_TIMEOUT_S = 600.0   # seconds for one generator job (compiles bcc first)


class BenchError(RuntimeError):
    """The bench cannot be built or measured (missing tool, kernel refusal)."""


def doing(what: str):
    """Kernel refusals while doing `what` become a BenchError naming it."""
    return netlink.explained(BenchError, what)


def sh(argv: list[str], check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Generator:
    """A worker thread inside the generator namespace, pinned to one vCPU, owning a LiveFrameSender."""

    def __init__(self, netns: str, interface: str, cpu: int = GENERATOR_CPU) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, args=(netns, interface, cpu),
                                        name=f"generator-{netns}", daemon=True)
        self._thread.start()
        status, value = self._results.get(timeout=GENERATOR_JOB_TIMEOUT_S)  # the compile; its error here
        if status == "error":
            raise value

    def _serve(self, netns: str, interface: str, cpu: int) -> None:
        sender = None
        try:
            enter_netns(netns)
            os.sched_setaffinity(0, {cpu})  # this thread only
            sender = LiveFrameSender(socket.if_nametoindex(interface))
            self._results.put(("ok", None))
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                try:
                    self._results.put(("ok", job(sender)))
                except Exception as exc:  # handed back to the caller
                    self._results.put(("error", exc))
        except Exception as exc:
            self._results.put(("error", exc))
        finally:
            if sender is not None:
                sender.close()

    def _call(self, job: Callable[[LiveFrameSender], Any]) -> Any:
        self._jobs.put(job)
        status, value = self._results.get(timeout=GENERATOR_JOB_TIMEOUT_S)
        if status == "error":
            raise value
        return value

    def send(self, frame: bytes, edits: FrameEdits, count: int, chunk: int = 1 << 20) -> int:
        """Send `count` frames as fast as the generator goes; returns frames handed to the egress veth."""
        def job(sender: LiveFrameSender) -> int:
            sender.configure(edits)
            before = sender.frames_redirected()
            left = count
            while left > 0:
                sender.send(frame, min(left, chunk))
                left -= min(left, chunk)
            return sender.frames_redirected() - before
        return self._call(job)

    def start_paced(self, frame: bytes, edits: FrameEdits, pps: int, batch: int = 500) -> threading.Event:
        """Send at about `pps` in batches until the returned event is set (a background job)."""
        stop = threading.Event()

        def job(sender: LiveFrameSender) -> int:
            sender.configure(edits)
            sent = 0
            start = time.monotonic()
            while not stop.is_set():
                sender.send(frame, batch)
                sent += batch
                ahead = sent / pps - (time.monotonic() - start)
                if ahead > 0:
                    stop.wait(ahead)  # pacing, not waiting for an outcome
            return sent

        self._jobs.put(job)
        return stop

    def finish_paced(self) -> int:
        status, value = self._results.get(timeout=GENERATOR_JOB_TIMEOUT_S)
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(30)


class CompareLab:
    """Namespaces, veths, threaded NAPI and pinning; everything removed by down()."""

    def __init__(self, tag: str | None = None, queues: int = 1) -> None:
        if not 1 <= queues <= (os.cpu_count() or 1):
            raise ValueError(f"queues {queues}: 1 to the number of CPUs ({os.cpu_count()})")
        self.queues = queues
        self.tag = tag or f"sc{uuid.uuid4().hex[:5]}"
        if len(self.tag) > 10:
            raise ValueError(f"tag {self.tag!r}: at most 10 characters (interface names)")
        t = self.tag
        self.gen_ns, self.dut_ns, self.sink_ns = f"{t}g", f"{t}d", f"{t}s"
        self.gen_if, self.dut_in, self.dut_out, self.sink_if = f"{t}g0", f"{t}d0", f"{t}d1", f"{t}s0"
        self.gen_direct, self.sink_direct = f"{t}gl", f"{t}sl"
        self._sink_bpf = None
        self.generator: Generator | None = None
        self.generators: list[Generator] = []   # one per queue, generators[i] on vCPU i (queues > 1)
        self.dut_kthreads: dict[int, int] = {}  # vCPU -> pid of a DUT receive kthread pinned there
        self.dut_kthread = 0
        self.sink_kthread = 0
        self._bpf_stats_before: str | None = None

    # -- lifecycle --------------------------------------------------------------

    def up(self) -> CompareLab:
        for ns in (self.gen_ns, self.dut_ns, self.sink_ns):
            with doing(f"create namespace {ns}"):
                netlink.create_namespace(ns)
                with netlink.iproute(ns) as ipr:
                    netlink.set_up(ipr, "lo")
        pairs = ((self.gen_if, self.gen_ns, self.dut_in, self.dut_ns),
                 (self.dut_out, self.dut_ns, self.sink_if, self.sink_ns),
                 (self.gen_direct, self.gen_ns, self.sink_direct, self.sink_ns))
        for a, ans, b, bns in pairs:
            queues = self.queues if a != self.gen_direct else 1
            with doing(f"veth {a}@{ans} - {b}@{bns} ({queues} queues)"):
                with netlink.iproute(ans) as ipr:
                    if queues == 1:
                        netlink.add_veth(ipr, a, b, bns)
                    else:
                        ipr.link("add", ifname=a, kind="veth", num_rx_queues=queues, num_tx_queues=queues,
                                 peer={"ifname": b, "net_ns_fd": bns, "num_rx_queues": queues,
                                       "num_tx_queues": queues})
                for name, ns in ((a, ans), (b, bns)):
                    # GRO on: a veth takes redirected XDP frames only with NAPI (GRO or an XDP program);
                    # TX checksum off on endpoints: redirected frames carry no partial checksums.
                    netlink.set_offloads(ns, name, gro=True, tx_checksum=False)
                    with netlink.iproute(ns) as ipr:
                        netlink.set_up(ipr, name)
        for name, ns, addr in ((self.gen_if, self.gen_ns, THROUGH_CLIENT), (self.sink_if, self.sink_ns, THROUGH_SERVER),
                               (self.gen_direct, self.gen_ns, DIRECT_CLIENT),
                               (self.sink_direct, self.sink_ns, DIRECT_SERVER)):
            with doing(f"address {addr} on {name}@{ns}"), netlink.iproute(ns) as ipr:
                ipr.addr("add", index=netlink.index(ipr, name), address=addr, prefixlen=LINK_PREFIXLEN)
        # Static neighbours: no ARP in flight while RTTs are sampled.
        for ns, dev, peer_addr, peer_dev, peer_ns in (
                (self.gen_ns, self.gen_if, THROUGH_SERVER, self.sink_if, self.sink_ns),
                (self.sink_ns, self.sink_if, THROUGH_CLIENT, self.gen_if, self.gen_ns),
                (self.gen_ns, self.gen_direct, DIRECT_SERVER, self.sink_direct, self.sink_ns),
                (self.sink_ns, self.sink_direct, DIRECT_CLIENT, self.gen_direct, self.gen_ns)):
            lladdr = self.mac(peer_ns, peer_dev)
            with doing(f"neighbour {peer_addr} on {dev}@{ns}"), netlink.iproute(ns) as ipr:
                ipr.neigh("replace", dst=peer_addr, lladdr=lladdr, ifindex=netlink.index(ipr, dev),
                          state=NUD_PERMANENT)
        self._start_kthreads()
        self.sink_drop(True)
        self._bpf_stats_before = pathlib.Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
        pathlib.Path("/proc/sys/kernel/bpf_stats_enabled").write_text("0\n")
        self.generator = Generator(self.gen_ns, self.gen_if)
        self.generators = [self.generator] + [Generator(self.gen_ns, self.gen_if, cpu=c) for c in range(1, self.queues)]
        log.info("compare.lab_up", tag=self.tag, dut_kthread=self.dut_kthread, sink_kthread=self.sink_kthread)
        return self

    def down(self) -> None:
        """Remove everything up() made; safe on a half-built lab."""
        for generator in self.generators or ([self.generator] if self.generator else []):
            with contextlib.suppress(Exception):
                generator.close()
        self.generator = None
        self.generators = []
        with contextlib.suppress(Exception):
            self.sink_drop(False)
        failures = []   # "already gone" is fine; other refusals are reported after the rest is removed
        for ns in (self.gen_ns, self.dut_ns, self.sink_ns):
            try:
                with doing(f"delete namespace {ns}"):
                    netlink.remove_namespace(ns)  # takes its veths (and their XDP programs) along
            except BenchError as exc:
                failures.append(str(exc))
        if self._bpf_stats_before is not None:
            # bpf_stats_enabled is a counter of users; restore what was there.
            pathlib.Path("/proc/sys/kernel/bpf_stats_enabled").write_text(self._bpf_stats_before + "\n")
            self._bpf_stats_before = None
        if failures:
            raise BenchError("; ".join(failures))
        log.info("compare.lab_down", tag=self.tag)

    # -- pieces -------------------------------------------------------------------

    @staticmethod
    def _link(ns: str, dev: str):
        with doing(f"read link {dev}@{ns}"), netlink.iproute(ns) as ipr:
            return ipr.link("get", index=netlink.index(ipr, dev))[0]

    @classmethod
    def mac(cls, ns: str, dev: str) -> str:
        return cls._link(ns, dev).get("address")

    def _start_kthreads(self) -> None:
        if self.queues == 1:
            self.dut_kthread = self._threaded_napi(self.dut_ns, self.dut_in, DUT_CPU)
            self.dut_kthreads = {DUT_CPU: self.dut_kthread}
            self.sink_kthread = self._threaded_napi(self.sink_ns, self.sink_if, GENERATOR_CPU)
            sinks = [self.sink_kthread]
        else:
            # One kthread per receive queue; which queue a kthread serves does not matter: each
            # is pinned to its own vCPU, and the program's per-CPU counters tell its packets.
            pids = self._threaded_napis(self.dut_ns, self.dut_in, self.queues)
            self.dut_kthreads = {cpu: pid for cpu, pid in enumerate(pids)}
            self.dut_kthread = pids[DUT_CPU % len(pids)]
            sinks = self._threaded_napis(self.sink_ns, self.sink_if, self.queues)
            self.sink_kthread = sinks[0]
        # Real-time priority: the sink preempts the busy generator as soon as frames wait, so its
        # 256-frame ring never overflows (failed redirects would cost the DUT less than forwarding).
        for pid in sinks:
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(SINK_RT_PRIORITY))

    @contextlib.contextmanager
    def softirq_napi(self) -> Iterator[None]:
        """NAPI of the DUT's ingress and the sink back in softirq for the duration (latency); threaded
        and pinned again afterwards. The kernel stops a NAPI kthread when threading is turned off and
        starts a new one when it is turned on again, so the kthread pids change."""
        for ns, dev in ((self.dut_ns, self.dut_in), (self.sink_ns, self.sink_if)):
            sh(["sh", "-c", f"echo 0 > /sys/class/net/{dev}/threaded"], netns=ns)
        self.dut_kthread = self.sink_kthread = 0
        try:
            yield
        finally:
            self._start_kthreads()

    def napi_threaded(self, ns: str, dev: str) -> bool:
        return sh(["cat", f"/sys/class/net/{dev}/threaded"], netns=ns).stdout.strip() != "0"

    def _threaded_napi(self, ns: str, dev: str, cpu: int) -> int:
        sh(["sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded"], netns=ns)
        prefix = f"napi/{dev}-"[:15]
        deadline = time.monotonic() + KTHREAD_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in pathlib.Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        if (proc / "comm").read_text().strip().startswith(prefix):
                            pid = int(proc.name)
                            os.sched_setaffinity(pid, {cpu})
                            return pid
            time.sleep(0.02)  # poll interval
        raise BenchError(f"no threaded NAPI kthread for {dev} (kernel too old for /sys/class/net/*/threaded?)")

    def _threaded_napis(self, ns: str, dev: str, count: int) -> list[int]:
        """Threaded NAPI on every receive queue of `dev`: the `count` kthreads, kthread i pinned to vCPU i."""
        sh(["sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded"], netns=ns)
        prefix = f"napi/{dev}-"[:15]
        deadline = time.monotonic() + KTHREAD_TIMEOUT_S
        pids: list[int] = []
        while time.monotonic() < deadline:
            pids = []
            for proc in pathlib.Path("/proc").iterdir():
                if proc.name.isdigit():
                    with contextlib.suppress(OSError):
                        if (proc / "comm").read_text().strip().startswith(prefix):
                            pids.append(int(proc.name))
            if len(pids) >= count:
                pids = sorted(pids)[:count]
                for cpu, pid in enumerate(pids):
                    os.sched_setaffinity(pid, {cpu})
                return pids
            time.sleep(0.02)  # poll interval
        raise BenchError(f"{dev}: {len(pids)} threaded NAPI kthreads, expected one per queue ({count})")

    def kthread_cpu_ns_by_cpu(self) -> dict[int, int]:
        """CPU time (ns) of each DUT receive kthread, by the vCPU it is pinned to."""
        return {cpu: int(pathlib.Path(f"/proc/{pid}/schedstat").read_text().split()[0])
                for cpu, pid in self.dut_kthreads.items()}

    def sink_drop(self, on: bool) -> None:
        """XDP_DROP on the sink (benchmarks) or nothing (latency: the echo server must get its packets)."""
        from bcc import BPF  # noqa: PLC0415

        if on and self._sink_bpf is None:
            self._sink_bpf = BPF(src_file=str(MINIMAL_PROGRAM).encode())
            fn = self._sink_bpf.load_func(b"xdp_minimal", BPF.XDP)
            run_in_netns(self.sink_ns, BPF.attach_xdp, self.sink_if, fn, 0)
        elif not on and self._sink_bpf is not None:
            with contextlib.suppress(Exception):
                run_in_netns(self.sink_ns, BPF.remove_xdp, self.sink_if, 0)
            self._sink_bpf.cleanup()
            self._sink_bpf = None

    def kthread_cpu_ns(self) -> int:
        if not self.dut_kthread:
            raise BenchError("the DUT's NAPI is not threaded now (inside softirq_napi()): no kthread to read")
        return int(pathlib.Path(f"/proc/{self.dut_kthread}/schedstat").read_text().split()[0])

    def rx_packets(self, ns: str, dev: str) -> int:
        return int(self._link(ns, dev).get("IFLA_STATS64")["rx_packets"])

    def wait_drained(self, ns: str, dev: str) -> int:
        """Poll the receive counter until it stops moving; returns it."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        last = self.rx_packets(ns, dev)
        while time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval
            now = self.rx_packets(ns, dev)
            if now == last:
                return now
            last = now
        raise BenchError(f"{dev} kept receiving for {DRAIN_TIMEOUT_S}s after the generator stopped")
