"""Paced attack generation: live-frames batches, then a timed wait, so a requested rate is held.

`Generator.run()` must run in the namespace that owns the sending interface
(`<p>-up`, interface `ext`, the peer of the appliance's external NIC), so frames
enter the appliance without a Linux routing hop. It counts honestly: of the frames its own
XDP program handed to bpf_redirect, those the veth transmitted, and it reports achieved
against requested.

The veth counts per interface (`tx_queue_*_xdp_xmit`, `_xdp_xmit_errors`), whoever sent, and
the kernel transmits a live-frames batch within the bpf() call that ran it. So the generators
of one network namespace take turns (`SendTurn`): each reads the counter before and after its
sends of a tick, while the others wait, and the frames transmitted in between are its own.
Counted once per run as redirected minus the interface's errors, a scenario's SYN flood and UDP
flood on one interface each subtracted the other's errors too (the UDP flood reported 0 frames
sent while 66,305 SYNs failed), and frames the kernel dropped before the driver (a peer that is
down) were counted as sent.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable

import structlog

from appliance.lab import netlink
from appliance.lab.attack import Stream
from appliance.lab.livegen import LiveFrameSender

log = structlog.get_logger(__name__)

TICK_S = 0.005                # seconds between pacing decisions
MAX_FRAMES_PER_CALL = 65536   # frames per BPF_PROG_TEST_RUN call (keeps a tick short at any rate)
MIN_FRAMES_PER_CALL = 32      # below this, more templates per tick cost more than they vary
MAX_CALLS_PER_TICK = 32       # templates (carpet destinations, fragments) touched per stream and tick
MAX_BACKLOG_S = 0.1           # seconds of frames a late generator may catch up; the rest is dropped
UNPACED_BATCH = 4096          # frames per stream and tick at --pps 0 (short calls keep the duration exact)


@dataclasses.dataclass(slots=True)
class SecondReport:
    second: int               # seconds since the start (1 = the first full second)
    transmitted: int          # frames the interface transmitted during this second
    requested_pps: int

    def to_dict(self) -> dict:
        return {"type": "second", **dataclasses.asdict(self)}


@dataclasses.dataclass(slots=True)
class AttackResult:
    vectors: list[str]
    interface: str
    requested_pps: int        # 0 = as fast as possible
    requested_duration_s: float
    elapsed_s: float
    submitted: int            # frames the XDP program handed to bpf_redirect
    transmitted: int          # of those, frames the interface transmitted (`SendTurn`)
    xmit_errors: int          # the others: the driver failed them, or the kernel dropped them before it
    skipped: int              # frames the pacer gave up on (fell behind by more than MAX_BACKLOG_S)
    method: str = "xdp-live-frames"   # or "af-packet-xdp-redirect" (LiveFrameSender.method)
    per_second: list[int] = dataclasses.field(default_factory=list)

    @property
    def achieved_pps(self) -> float:
        return self.transmitted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["achieved_pps"] = round(self.achieved_pps, 1)
        data["type"] = "summary"
        return data


class SendTurn:
    """The turn to send among the generators of this thread's network namespace, and what the
    interface transmitted during it (`with turn: ...`, then `turn.transmitted`: this holder's own).

    The lock is an flock on the namespace itself (/proc/thread-self/ns/net: one inode per namespace,
    so nothing to create or clean up, and the kernel releases it with the process)."""

    def __init__(self, ifname: str) -> None:
        self._ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._counters = netlink.XdpTransmitted(ifname)
        self.transmitted = 0     # frames the interface transmitted during this holder's turns
        self._before = 0

    def __enter__(self) -> SendTurn:
        fcntl.flock(self._ns, fcntl.LOCK_EX)
        try:
            self._before = self._counters.read()
        except BaseException:
            fcntl.flock(self._ns, fcntl.LOCK_UN)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.transmitted += self._counters.read() - self._before
        finally:
            fcntl.flock(self._ns, fcntl.LOCK_UN)

    def close(self) -> None:
        self._counters.close()
        os.close(self._ns)


def full_rate_seconds(elapsed: float, pulse: tuple[float, float] | None = None,
                      ramp: float | None = None) -> float:
    """Seconds at full rate that fit into `elapsed` seconds of a shaped attack: frames owed by then
    are this times the rate. A pulse wave sends at full rate for `on` s, then nothing for `off` s,
    repeated; a ramp rises linearly from 0 to the full rate over `ramp` s, then holds it."""
    if pulse is not None:
        on, off = pulse
        periods, into = divmod(elapsed, on + off)
        return periods * on + min(into, on)
    if ramp is not None:
        if elapsed < ramp:
            return elapsed * elapsed / (2.0 * ramp)
        return ramp / 2.0 + (elapsed - ramp)
    return elapsed


class Generator:
    """Sends `streams` out of `ifname` at `pps` in total (split by stream weight) for `duration` s,
    shaped as a pulse wave or a ramp when asked (`full_rate_seconds`)."""

    def __init__(self, streams: list[Stream], pps: int, duration: float, ifname: str, *,
                 pulse: tuple[float, float] | None = None, ramp: float | None = None):
        if not streams:
            raise ValueError("no streams to send")
        self.pulse, self.ramp = pulse, ramp
        self.streams = streams
        self.pps = pps
        self.duration = duration
        self.ifname = ifname
        self.stop_event = threading.Event()

    def run(self, on_second: Callable[[SecondReport], None] | None = None) -> AttackResult:
        sender = LiveFrameSender(socket.if_nametoindex(self.ifname))
        try:
            turn = SendTurn(self.ifname)
            try:
                return self._run(sender, turn, on_second)
            finally:
                turn.close()
        finally:
            sender.close()

    def _run(self, sender: LiveFrameSender, turn: SendTurn, on_second) -> AttackResult:
        total_weight = sum(s.weight for s in self.streams)
        rates = [self.pps * s.weight / total_weight for s in self.streams]
        owed = [0] * len(self.streams)        # frames sent or skipped per stream
        cursors = [0] * len(self.streams)     # next template per stream
        skipped = 0
        configured = -1
        last_transmitted = 0
        per_second: list[int] = []
        log.info("attack.start", vectors=sorted({s.vector for s in self.streams}), pps=self.pps,
                 duration_s=self.duration, interface=self.ifname)
        start = time.monotonic()
        next_tick = start
        final = False
        while True:
            now = time.monotonic()
            elapsed = min(now - start, self.duration)
            if elapsed >= self.duration or self.stop_event.is_set():
                final = True
            shaped = full_rate_seconds(elapsed, self.pulse, self.ramp)
            dues = []
            for index in range(len(self.streams)):
                if self.pps == 0:
                    due = UNPACED_BATCH if not final else 0
                else:
                    due = int(rates[index] * shaped) - owed[index]
                    backlog_cap = max(1, int(rates[index] * MAX_BACKLOG_S))
                    if due > backlog_cap and not final:
                        skipped += due - backlog_cap
                        owed[index] += due - backlog_cap
                        due = backlog_cap
                dues.append(due)
            if any(due > 0 for due in dues):
                with turn:
                    for index, (stream, due) in enumerate(zip(self.streams, dues, strict=True)):
                        if due <= 0:
                            continue
                        if configured != index:
                            sender.configure(stream.edits)
                            configured = index
                        calls = min(len(stream.frames), max(1, due // MIN_FRAMES_PER_CALL), MAX_CALLS_PER_TICK)
                        for call in range(calls):
                            frames = due // calls + (1 if call < due % calls else 0)
                            while frames > 0:
                                batch = min(frames, MAX_FRAMES_PER_CALL)
                                sender.send(stream.frames[cursors[index] % len(stream.frames)], batch,
                                            self.stop_event)
                                frames -= batch
                                owed[index] += batch
                            cursors[index] += 1
            if final:
                break
            second = int(time.monotonic() - start)
            if len(per_second) < second <= self.duration:
                per_second.append(turn.transmitted - last_transmitted)
                last_transmitted = turn.transmitted
                if on_second:
                    on_second(SecondReport(len(per_second), per_second[-1], self.pps))
            next_tick += TICK_S if self.pps else 0.0
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing: hold the requested rate, not just the maximum
            else:
                next_tick = time.monotonic()  # late: do not try to catch up on ticks, only on frames
        elapsed = time.monotonic() - start
        submitted, transmitted = sender.frames_redirected(), turn.transmitted
        if len(per_second) < int(min(elapsed, self.duration)):   # the last full second ended with the run
            per_second.append(transmitted - last_transmitted)
            if on_second:
                on_second(SecondReport(len(per_second), per_second[-1], self.pps))
        result = AttackResult(
            vectors=sorted({s.vector for s in self.streams}), interface=self.ifname, requested_pps=self.pps,
            requested_duration_s=self.duration, elapsed_s=round(elapsed, 3),
            submitted=submitted, transmitted=transmitted, xmit_errors=max(0, submitted - transmitted),
            skipped=skipped, method=sender.method, per_second=per_second)
        log.info("attack.end", vectors=result.vectors, requested_pps=self.pps,
                 achieved_pps=round(result.achieved_pps), transmitted=result.transmitted,
                 errors=result.xmit_errors)
        return result


def run_in_lab(lab_name: str, spec, on_second: Callable[[SecondReport], None] | None = None,
               stop_event: threading.Event | None = None) -> AttackResult:
    """Build the frames for `spec`, enter `<lab>-up` and send them (this thread stays in that namespace)."""
    from appliance.lab.attack import TemplateBuilder  # noqa: PLC0415
    from appliance.lab.nsenter import enter_netns  # noqa: PLC0415
    from appliance.lab.topology import Lab, LabError  # noqa: PLC0415

    lab = Lab(lab_name)
    upstream = lab.ns("up")
    found = []
    if upstream in netlink.namespaces():
        with netlink.iproute(upstream) as ipr:
            found = ipr.get_links(ifname=lab.UPSTREAM_IF)
    if not found:
        raise LabError(f"lab {lab_name!r} is not up (no {lab.UPSTREAM_IF} in {upstream}); "
                       f"run `seawall lab up --name {lab_name}` first")
    source_mac = found[0].get("address")
    streams = TemplateBuilder(lab, spec, source_mac=source_mac).streams()
    enter_netns(upstream)
    generator = Generator(streams, spec.pps, spec.duration, lab.UPSTREAM_IF, pulse=spec.pulse, ramp=spec.ramp)
    if stop_event is not None:
        generator.stop_event = stop_event
    return generator.run(on_second)
