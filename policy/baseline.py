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
from policy import native

N_CLASSES = len(TrafficClass)
PARTIAL_BASELINE_S = 3.0    # learned seconds after which a warming-up row gets the onset floors


@dataclasses.dataclass(slots=True)
class BaselineRows:
    """Copies of some rows' state (`EwmaBaseline.gather`)."""

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
        # Counts the changes of the state (updates, resets): what detection worked out from it is valid
        # while it stays the same (`policy.detect.RowValues`).
        self.version = 0

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
        self.version += 1
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

    def ewma_weight(self, dt: float) -> float:
        """The EWMA's weight of a tick of `dt` seconds (a row's weight is the larger of this and its
        running average's, dt / (learned seconds + dt))."""
        return 1.0 - 2.0 ** (-dt / self.half_life_s)

    def update(self, rows: np.ndarray | slice, pps: np.ndarray, dt: float, learn: np.ndarray,
               cap: np.ndarray | None = None, over_cap: np.ndarray | None = None) -> None:
        """Learn one tick of rates `pps` (N, C) for `rows` where `learn` (N, C) is True.

        `cap` is `baseline_threshold(rows)` when the caller already has it, else worked out element by
        element from the state before the update (the same bits), only where `over_cap` (detection's
        rate > max(cap, 1) on this state, when the caller has it) says the rate may be winsorised.
        `rows` may be a slice of consecutive rows; they are distinct (a row listed
        twice would learn twice: every caller's rows are slots or indices of distinct keys). The state
        is updated in place, element by element, by `policy.native.learn_rows` (the module
        docstring's model, with no (N, C) temporaries: ~200 MiB of them at a million destinations in
        numpy).
        """
        n_rows = len(range(*rows.indices(self.capacity))) if isinstance(rows, slice) else len(rows)
        if dt <= 0 or not n_rows:
            return
        self.version += 1
        native.learn_rows(rows, self.mean, self.var, self.learned_s, pps, cap, learn, dt=dt,
                          ewma=self.ewma_weight(dt), warmup_s=self.warmup_s, k_sigma=self.k_sigma, margin=self.margin,
                          over_cap=over_cap)
