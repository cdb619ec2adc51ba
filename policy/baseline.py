"""Per-second baselines of packet rates, per row (destination slot or tenant) and traffic class.

Model
-----
Each (row, class) keeps an exponentially weighted mean and variance of its
per-second packet rate. A tick of `dt` seconds carries weight
``alpha = 1 - 2 ** (-dt / half_life_s)``, so variable tick lengths learn at the
same speed per second of wall time; the default half-life is 30 minutes, slow
enough that an attack ramp of minutes is not absorbed and fast enough to follow
a game server's evening peak (a ramp over an hour stays within the margin).

Update (West's EWMA form): ``d = x - mean; mean += alpha·d;
var = (1 - alpha)·(var + alpha·d²)``. While a row has learned fewer seconds than
the EWMA's memory, alpha is ``dt / learned_seconds`` instead (a plain running
mean and variance), so warm-up ends with unbiased estimates.

Threshold of a row and class::

    max(policy.min_pps, (mean + k·sigma) · margin / sensitivity)

Warm-up: until a (row, class) has learned `warmup_s` seconds (10 minutes by
default), no baseline-based detection happens; absolute floors apply instead:
- to a row that has learned fewer than `PARTIAL_BASELINE_S` seconds, the high
  `warmup_floor_pps` (`max(min_pps, floor)`): whatever an address the engine has
  just met receives may be its usual traffic, so only the obvious floods count;
- once it has learned that many seconds, the lower `onset_floor_pps`, raised (never
  lowered) by the row's partial baseline threshold: the engine has seen the
  address's normal traffic, so a jump from it to a flood is an onset it witnessed,
  while an address that is simply busier than the floor keeps a threshold above its
  own traffic.

Attack seconds are not learned: every second in which a (row, class) is flagged
as anomalous (and not cleared as benign by classification) leaves its mean,
variance and learned time untouched, so a long attack never becomes the norm.
Seconds that are learned are winsorised at the current threshold, so traffic that
creeps up just below the threshold pulls the baseline up at most by the margin
per half-life instead of at its own pace. The known limit: a legitimate step
change far above the threshold stays an anomaly until an operator adjusts the
tenant's policy (sensitivity or min_pps); classification decides whether it is
reported as an attack.

No quantile estimate is kept: with the margin on top of mean + k·sigma the
threshold already sits above the bursts of the synthetic and lab traffic; a
streaming high quantile is the next step if real traffic shows heavy tails.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dataplane.constants import TrafficClass

N_CLASSES = len(TrafficClass)
PARTIAL_BASELINE_S = 3.0    # learned seconds after which a warming-up row gets the onset floors


@dataclasses.dataclass(slots=True)
class BaselineRows:
    """Copies of some rows' state, gathered once per tick for detection and learning."""

    rows: np.ndarray
    mean: np.ndarray            # (N, C)
    var: np.ndarray             # (N, C)
    learned_s: np.ndarray       # (N, C)


def _as_rows(a: np.ndarray) -> np.ndarray | None:
    """A C-contiguous (R, C) float64 array as R void elements (a row moves as one memcpy), or None."""
    if a.ndim != 2 or a.dtype != np.float64 or not a.flags.c_contiguous:
        return None
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(len(a))


def _take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`a[rows]` for integer `rows`: numpy's row-wise fancy indexing of a 2-D array is 2-3x slower."""
    va = _as_rows(a)
    if va is None or not isinstance(rows, np.ndarray) or rows.dtype.kind not in "iu":
        return a[rows]
    return va.take(rows).view(a.dtype).reshape(len(rows), a.shape[1])


def _put_rows(a: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """`a[rows] = values` for integer `rows` (`np.put` of whole rows: 2-3x faster than numpy's
    row-wise fancy assignment, and faster than assigning the void rows by index)."""
    va = _as_rows(a)
    vv = _as_rows(np.ascontiguousarray(values, np.float64)) if va is not None else None
    if vv is None or not isinstance(rows, np.ndarray) or rows.dtype.kind not in "iu" or len(vv) != len(rows):
        a[rows] = values
        return
    np.put(va, rows, vv)


# Elements not learned (attacks, invalid rows) are restored one by one after the whole-array update
# while they are at most this share of all elements; past it, a zero weight in the update is cheaper.
_SPARSE_SHARE = 0.125
# Rows learned at a time when `update` gathers them itself: 16,384 rows of 6 classes are 768 KiB per
# array, which stay in the CPU's cache through the update's passes.
UPDATE_BLOCK_ROWS = 16_384


class EwmaBaseline:
    """Mean, variance and learned seconds for `capacity` rows × classes."""

    def __init__(self, capacity: int, *, half_life_s: float, warmup_s: float, k_sigma: float,
                 margin: float, warmup_floor_pps: tuple[float, ...],
                 onset_floor_pps: tuple[float, ...] | None = None) -> None:
        if half_life_s <= 0:
            raise ValueError(f"baseline half-life must be positive, got {half_life_s}")
        self.half_life_s = half_life_s
        self.warmup_s = warmup_s
        self.k_sigma = k_sigma
        self.margin = margin
        self.floor = np.asarray(warmup_floor_pps, np.float64)
        self.onset_floor = np.asarray(warmup_floor_pps if onset_floor_pps is None else onset_floor_pps, np.float64)
        self.mean = np.zeros((capacity, N_CLASSES))
        self.var = np.zeros((capacity, N_CLASSES))
        self.learned_s = np.zeros((capacity, N_CLASSES))

    @property
    def capacity(self) -> int:
        return len(self.mean)

    def resize(self, capacity: int) -> None:
        pad = capacity - self.capacity
        if pad <= 0:
            return
        zeros = np.zeros((pad, N_CLASSES))
        self.mean = np.vstack([self.mean, zeros])
        self.var = np.vstack([self.var, zeros])
        self.learned_s = np.vstack([self.learned_s, zeros])

    def reset(self, rows: np.ndarray) -> None:
        self.mean[rows] = 0.0
        self.var[rows] = 0.0
        self.learned_s[rows] = 0.0

    def gather(self, rows: np.ndarray) -> BaselineRows:
        """The state of `rows`, read once (each fancy-indexed read of 100k rows costs milliseconds)."""
        return BaselineRows(rows, _take_rows(self.mean, rows), _take_rows(self.var, rows),
                            _take_rows(self.learned_s, rows))

    def sigma(self, rows: np.ndarray) -> np.ndarray:
        return np.sqrt(self.var[rows])

    def warm(self, rows: np.ndarray) -> np.ndarray:
        """(N, C) bool: past warm-up, so baseline-based detection applies."""
        return self.learned_s[rows] >= self.warmup_s

    def baseline_threshold(self, rows: np.ndarray) -> np.ndarray:
        """(mean + k·sigma)·margin per (row, class), before policy floors and sensitivity."""
        return (self.mean[rows] + self.k_sigma * np.sqrt(self.var[rows])) * self.margin

    def warmup_threshold(self, rows: np.ndarray, base: np.ndarray, min_pps: np.ndarray) -> np.ndarray:
        """(N, C) threshold while warming up (see the module docstring).

        `base` is the baseline threshold after sensitivity.
        """
        seen = self.learned_s[rows] >= PARTIAL_BASELINE_S
        floor = np.where(seen, np.maximum(self.onset_floor[None, :], base), self.floor[None, :])
        return np.maximum(min_pps[:, None], floor)

    def threshold(self, rows: np.ndarray, min_pps: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
        """(N, C) packets/s above which a (row, class) is anomalous."""
        base = self.baseline_threshold(rows) / sensitivity[:, None]
        return np.where(self.warm(rows), np.maximum(min_pps[:, None], base),
                        self.warmup_threshold(rows, base, min_pps))

    def _weights(self, learned: np.ndarray, dt: float) -> np.ndarray:
        """max(dt / (learned + dt), EWMA weight) per element, with as few whole-array passes as the
        learned seconds allow (fl(dt / fl(l + dt)) never grows with l, so the extremes decide)."""
        ewma = 1.0 - 2.0 ** (-dt / self.half_life_s)
        if dt / (float(learned.max(initial=0.0)) + dt) >= ewma:
            # Every element is still a running average (the engine's first ~45 minutes): no maximum.
            alpha = learned + dt
            return np.divide(dt, alpha, out=alpha)
        if ewma > 1e-9:
            # Past 2·dt/ewma learned seconds the running-average weight is at most about half the
            # EWMA's (far beyond rounding): those elements take the EWMA weight, the few younger
            # ones (addresses new to the engine) are computed by index.
            young = np.flatnonzero(learned < 2.0 * dt / ewma)
            if len(young) <= _SPARSE_SHARE * learned.size:
                alpha = np.full(learned.shape, ewma)
                at = learned.reshape(-1)[young]
                alpha.reshape(-1)[young] = np.maximum(dt / (at + dt), ewma)
                return alpha
        alpha = learned + dt
        np.divide(dt, alpha, out=alpha)
        return np.maximum(alpha, ewma, out=alpha)

    def update(self, rows: np.ndarray | slice, pps: np.ndarray, dt: float, learn: np.ndarray,
               cap: np.ndarray | None = None, gathered: BaselineRows | None = None,
               deviation: np.ndarray | None = None) -> None:
        """Learn one tick of rates `pps` (N, C) for `rows` where `learn` (N, C) is True.

        `cap` is `baseline_threshold(rows)` when the caller already has it (detection does);
        `gathered` is `gather(rows)` taken since the last change to these rows, whose arrays this
        update then overwrites; `deviation` is `pps - mean` of these rows when the caller has it
        (detection's), which this update only reads. `rows` may be a slice (consecutive rows: the
        state is updated in place, with no gathers). Without `gathered`, the rows are gathered,
        learned and put back UPDATE_BLOCK_ROWS at a time: the update is elementwise, so the result
        is the same, without (N, C) temporaries (~200 MiB at a million destinations).
        """
        n_rows = len(range(*rows.indices(self.capacity))) if isinstance(rows, slice) else len(rows)
        if dt <= 0 or not n_rows:
            return
        if gathered is not None and gathered.rows is not rows and not np.array_equal(gathered.rows, rows):
            raise ValueError("baseline update: gathered state is for other rows")
        learn = np.broadcast_to(learn, pps.shape)
        if cap is None:
            cap = self.baseline_threshold(rows)
        if deviation is not None and (deviation.shape != pps.shape or not deviation.flags.c_contiguous):
            deviation = None
        if gathered is not None:
            self._learn(rows, gathered, pps, dt, learn, cap, deviation)
            return
        span = range(*rows.indices(self.capacity)) if isinstance(rows, slice) else None
        for lo in range(0, n_rows, UPDATE_BLOCK_ROWS):
            hi = min(lo + UPDATE_BLOCK_ROWS, n_rows)
            part = rows[lo:hi] if span is None else slice(span[lo], span[lo] + (hi - lo) * span.step, span.step)
            self._learn(part, self.gather(part), np.ascontiguousarray(pps[lo:hi]), dt, learn[lo:hi], cap[lo:hi],
                        None if deviation is None else deviation[lo:hi])

    def _learn(self, rows: np.ndarray | slice, state: BaselineRows, pps: np.ndarray, dt: float, learn: np.ndarray,
               cap: np.ndarray, deviation: np.ndarray | None) -> None:
        """`update` of `rows` from their gathered `state`, written back."""
        # Contiguous (as gathered: no copies), so that flat indices address the elements themselves.
        mean, var, learned = (np.ascontiguousarray(a) for a in (state.mean, state.var, state.learned_s))
        self._update_rows(mean, var, learned, pps, dt, learn, cap, deviation)
        _put_rows(self.mean, rows, mean)
        _put_rows(self.var, rows, var)
        _put_rows(self.learned_s, rows, learned)

    def _update_rows(self, mean: np.ndarray, var: np.ndarray, learned: np.ndarray, pps: np.ndarray, dt: float,
                     learn: np.ndarray, cap: np.ndarray, deviation: np.ndarray | None) -> None:
        """`update` of some rows' contiguous state arrays, in place."""
        # Most elements are learned: the update runs on all of them with the learned weight, and the
        # few that are not get their state back afterwards, which is what a zero weight leaves
        # (mean + 0·d, (var + 0·d²)·1, learned + 0) with one pass less.
        skip = np.flatnonzero(~learn)
        sparse = len(skip) <= _SPARSE_SHARE * learn.size
        if sparse:
            kept = (mean.reshape(-1)[skip], var.reshape(-1)[skip], learned.reshape(-1)[skip])
        # A plain running average while few seconds are known (so warm-up ends with an
        # unbiased mean and variance), the EWMA weight once it is the larger one; zero
        # weight for seconds that are not learned leaves mean and variance as they are.
        alpha = self._weights(learned, dt)
        if not sparse:
            alpha *= learn
        # Winsorise at the threshold once warm: creeping traffic moves the baseline slowly. Only an
        # element above its cap can be clipped (to max(cap, 1)): found in one pass, clipped by index.
        if deviation is None:
            deviation = np.subtract(pps, mean)
        # The clipped elements' own steps are computed by index after the whole-array ones (the same
        # arithmetic on the same operands), so `deviation` stays rate - mean: detection keeps it.
        diff = deviation
        over = np.flatnonzero(np.greater(pps, cap))
        clipped = None
        if len(over):
            at = learned.reshape(-1)[over]
            clip = np.maximum(cap.reshape(-1)[over], 1.0)
            over_warm = (pps.reshape(-1)[over] > clip) & (at >= self.warmup_s) & (at > 0)
            over, clip = over[over_warm], clip[over_warm]
            if len(over):
                old_mean = mean.reshape(-1)[over]
                d = clip - old_mean
                clipped = (over, old_mean, d, alpha.reshape(-1)[over] * d)
        step = alpha * diff
        mean += step
        step *= diff
        if clipped is not None:
            over, old_mean, d, m_step = clipped
            mean.reshape(-1)[over] = old_mean + m_step
            step.reshape(-1)[over] = m_step * d
        var += step
        np.subtract(1.0, alpha, out=alpha)
        var *= alpha
        if sparse:
            learned += dt
            if len(skip):
                mean.reshape(-1)[skip], var.reshape(-1)[skip], learned.reshape(-1)[skip] = kept
        else:
            learned += dt * learn
