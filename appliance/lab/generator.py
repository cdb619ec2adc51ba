"""Paced attack generation: live-frames batches, then a timed wait, so a requested rate is held.

`Generator.run()` must run in the namespace that owns the sending interface
(`<p>-up`, interface `ext`, the peer of the appliance's external NIC), so frames
enter the appliance without a Linux routing hop. It counts honestly: frames its own
XDP program handed to bpf_redirect, minus the frames the veth failed to transmit
(`tx_queue_*_xdp_xmit_errors`, counted per interface, so pessimistic when several
generators share it), and reports achieved against requested.
"""

from __future__ import annotations

import dataclasses
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
    transmitted: int          # submitted minus xmit_errors
    xmit_errors: int          # frames the interface failed to transmit meanwhile (any sender)
    skipped: int              # frames the pacer gave up on (fell behind by more than MAX_BACKLOG_S)
    method: str = "xdp-live-frames"
    per_second: list[int] = dataclasses.field(default_factory=list)

    @property
    def achieved_pps(self) -> float:
        return self.transmitted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["achieved_pps"] = round(self.achieved_pps, 1)
        data["type"] = "summary"
        return data


def xdp_xmit_counters(ifname: str) -> tuple[int, int]:
    """(transmitted, errors) summed over the veth's tx queues, from its driver statistics
    (`ethtool -S`) in this thread's namespace."""
    sent = errors = 0
    for key, value in netlink.statistics(ifname).items():
        if key.startswith("tx_queue_") and key.endswith("_xdp_xmit"):
            sent += value
        elif key.startswith("tx_queue_") and key.endswith("_xdp_xmit_errors"):
            errors += value
    return sent, errors


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
            return self._run(sender, on_second)
        finally:
            sender.close()

    def _run(self, sender: LiveFrameSender, on_second) -> AttackResult:
        total_weight = sum(s.weight for s in self.streams)
        rates = [self.pps * s.weight / total_weight for s in self.streams]
        owed = [0] * len(self.streams)        # frames sent or skipped per stream
        cursors = [0] * len(self.streams)     # next template per stream
        skipped = 0
        configured = -1
        _, base_errors = xdp_xmit_counters(self.ifname)
        last_submitted, last_errors = 0, base_errors
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
            for index, stream in enumerate(self.streams):
                if self.pps == 0:
                    due = UNPACED_BATCH if not final else 0
                else:
                    due = int(rates[index] * shaped) - owed[index]
                    backlog_cap = max(1, int(rates[index] * MAX_BACKLOG_S))
                    if due > backlog_cap and not final:
                        skipped += due - backlog_cap
                        owed[index] += due - backlog_cap
                        due = backlog_cap
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
                        sender.send(stream.frames[cursors[index] % len(stream.frames)], batch)
                        frames -= batch
                        owed[index] += batch
                    cursors[index] += 1
            if final:
                break
            second = int(time.monotonic() - start)
            if len(per_second) < second <= self.duration:
                submitted, (_, errors) = sender.frames_redirected(), xdp_xmit_counters(self.ifname)
                per_second.append(max(0, submitted - last_submitted - (errors - last_errors)))
                last_submitted, last_errors = submitted, errors
                if on_second:
                    on_second(SecondReport(len(per_second), per_second[-1], self.pps))
            next_tick += TICK_S if self.pps else 0.0
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing: hold the requested rate, not just the maximum
            else:
                next_tick = time.monotonic()  # late: do not try to catch up on ticks, only on frames
        elapsed = time.monotonic() - start
        _, errors = xdp_xmit_counters(self.ifname)
        submitted = sender.frames_redirected()
        if len(per_second) < int(min(elapsed, self.duration)):   # the last full second ended with the run
            per_second.append(max(0, submitted - last_submitted - (errors - last_errors)))
            if on_second:
                on_second(SecondReport(len(per_second), per_second[-1], self.pps))
        result = AttackResult(
            vectors=sorted({s.vector for s in self.streams}), interface=self.ifname, requested_pps=self.pps,
            requested_duration_s=self.duration, elapsed_s=round(elapsed, 3),
            submitted=submitted, transmitted=max(0, submitted - (errors - base_errors)),
            xmit_errors=errors - base_errors,
            skipped=skipped, per_second=per_second)
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
