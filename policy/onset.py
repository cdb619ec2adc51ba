"""The rate of a flood in the tick where it began, from the timestamps of its samples.

A tick's rate is packets over the whole tick. When a flood starts 150 ms before a
tick ends, that tick shows 15 % of its rate: a 20 kpps ACK flood reads 3 kpps,
below the 10 kpps onset floor of TCP_OTHER, and is detected one tick later; a flood
that started half way reads just above the floor, its classification (whose
confidence grows with rate / threshold) stays below the fast-confirm level, and
its rule waits one more tick. Worse, a second classified benign at that weak
magnitude is learned, and a warming-up baseline then raises its threshold to the
flood's own level. Classes with low floors (UDP, ICMP, fragments: 2 kpps) cross
them even from a sliver of a tick, which is why only the ACK flood showed it.

Model: within one tick, the in-class samples of a destination are its usual
traffic (about `mean / pps` of them, spread over the tick) plus the flood's,
packed after the onset. The onset is estimated as the timestamp of the sample
that follows as many samples as the usual traffic accounts for (the latest onset
the samples allow), and the rate since the onset is

    mean + (pps - mean) · dt / active,   active = tick end - onset

with `active` at least `MIN_ACTIVE_S` (so at most dt / MIN_ACTIVE_S times the
tick's rate) and only when at least `MIN_SAMPLES` samples of the class arrived in
the tick. A flood that fills the whole tick gets its own rate back. The engine
uses this rate at a target's first anomalous tick only, to decide whether the
target is anomalous and how strongly it is classified; baselines, accounting and
signatures keep the tick's own figures.

The candidate (destination, class) pairs, at most MAX_CANDIDATES a tick, are found in detection's
own pass over the rows (`policy.detect`, `Detection.onset_candidates`; policy/native.c keeps the best
as it goes).
"""

from __future__ import annotations

import numpy as np

MIN_SAMPLES = 8            # in-class samples of the tick needed to place an onset
MIN_ACTIVE_S = 0.1         # seconds: shortest flood span the rate is extrapolated from
MIN_SHARE = 0.1            # a tick rate below this share of the threshold cannot be a flood onset
JUMP = 4.0                 # ... nor a rate below this many times the baseline mean
MAX_CANDIDATES = 256       # (destination, class) pairs examined per tick, highest rate / threshold first


def onset_rate(end: float, dt: float, pps: float, mean: float, timestamps_ns: np.ndarray) -> tuple[float, float]:
    """(rate since the onset within the tick, seconds since the onset) for one destination and class.

    `end` is when the tick's counters were read and `timestamps_ns` the class's samples drained
    in the tick, both on CLOCK_MONOTONIC (the XDP program's bpf_ktime_get_ns, the engine's
    time.monotonic()); samples after `end` (drained later in the tick) belong to the next
    tick's counters and are left out. Without enough samples, or with no excess over the
    mean, the tick's own rate comes back.
    """
    if dt <= 0 or pps <= 0 or pps <= mean:
        return pps, dt
    start = end - dt
    ts = np.sort(np.asarray(timestamps_ns, np.float64) / 1e9)
    ts = ts[(ts > start) & (ts <= end)]
    if len(ts) < MIN_SAMPLES:
        return pps, dt
    usual = int(np.floor(len(ts) * np.clip(mean / pps, 0.0, 1.0)))
    onset = max(start, float(ts[min(usual, len(ts) - 1)]))
    active = float(np.clip(end - onset, min(MIN_ACTIVE_S, dt), dt))
    return mean + (pps - mean) * dt / active, active


__all__ = ["onset_rate", "MIN_SAMPLES", "MIN_ACTIVE_S", "JUMP", "MIN_SHARE", "MAX_CANDIDATES"]
