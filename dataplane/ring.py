"""The sample ring: packets the XDP program copies to user space (sw_samples, a BPF ring buffer)."""

from __future__ import annotations

import ctypes
from collections import deque

from dataplane.api import Sample
from dataplane.constants import Direction, DropReason

SAMPLE_BACKLOG = 8192   # samples kept between drains; older ones than 2 ticks are stale anyway


class SampleRing:
    """Drains sw_samples of a loaded program (bcc's `BPF` object) into `Sample` objects. The ring
    is opened at the first drain, so a dataplane that never samples never polls it."""

    def __init__(self, bpf) -> None:
        self._bpf = bpf
        self._samples: deque[Sample] = deque(maxlen=SAMPLE_BACKLOG)
        self._open = False

    def _open_ring(self) -> None:
        ring = self._bpf[b"sw_samples"]
        layout = ctypes.POINTER(self._bpf[b"sw_sample_layout"].Leaf)

        def on_sample(_ctx, data, _size) -> None:
            s = ctypes.cast(data, layout).contents
            self._samples.append(Sample(
                timestamp_ns=int(s.timestamp_ns), tenant_idx=int(s.tenant_idx),
                direction=Direction(s.direction), dropped=bool(s.dropped), reason=DropReason(s.reason),
                wire_length=int(s.wire_length), data=bytes(s.data[: s.captured])))

        ring.open_ring_buffer(on_sample)
        self._open = True

    def drain(self, limit: int = 4096) -> list[Sample]:
        """Sampled packets since the last call (at most `limit`; the rest wait)."""
        if not self._open:
            self._open_ring()
        self._bpf.ring_buffer_consume()
        out = []
        while self._samples and len(out) < limit:
            out.append(self._samples.popleft())
        return out


__all__ = ["SampleRing"]
