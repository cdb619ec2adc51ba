"""The tick's per-destination passes in C (`policy/native.c`), compiled when first used
(`dataplane.native.compile_library`).

The rates, detection and learning at a million destinations were numpy passes over whole (N, C)
arrays plus gathers and scatters of baseline rows by slot: each element read and written a dozen
times. The C loops read each once, with numpy's arithmetic in numpy's order (the file says how), so
the results are the same bits as the numpy formulas in `policy.baseline`, `policy.detect` and
`policy.rates` describe.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib

import numpy as np

from dataplane.constants import TrafficClass
from dataplane.native import at, compile_library, contiguous, f64, i64, ptr, writable

SOURCE = pathlib.Path(__file__).with_name("native.c")


class _Onset(ctypes.Structure):
    """struct sw_onset of native.c: the flood-onset candidates' selection during detection."""

    _fields_ = [("jump_share", ctypes.c_double), ("min_share", ctypes.c_double), ("keep", ctypes.c_int64),
                ("found", ctypes.c_int64), ("flat", ctypes.c_void_p), ("ratio", ctypes.c_void_p)]


@functools.cache
def library(scalar: bool = False) -> ctypes.CDLL:
    """policy/native.c, compiled at the first call in this process; `scalar`: without its AVX2 detection
    (what a CPU without AVX2 runs: tests compare the two)."""
    return compile_library(SOURCE, {
        "sw_detect_rows": (None, [i64, i64, ptr, ptr, ptr, ptr, ptr, f64, f64, f64, f64, ptr, ptr, ptr, f64, ptr, f64,
                                  ptr, ptr, ptr, ptr, ptr, ptr, ctypes.POINTER(_Onset)]),
        "sw_slot_rates": (i64, [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, i64, f64, ctypes.c_int32, ptr, ptr, ptr]),
        "sw_learn_rows": (None, [i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, f64, f64, f64, f64, f64]),
        "sw_slots_by_id": (None, [i64, ptr, ptr, i64, ptr, ptr, i64, ptr, ptr]),
        "sw_detect_lanes": (i64, []),
    }, defines={"SW_CLASSES": len(TrafficClass), **({"SW_SCALAR": 1} if scalar else {})})


def detect_lanes() -> int:
    """Elements the compiled detection works on at once: 4 with AVX2, else 1."""
    return int(library().sw_detect_lanes())


def _rates_against(pps: np.ndarray, mean: np.ndarray) -> tuple[int, int, tuple[int, ...]]:
    """(rows, classes) of rates `pps` and the shape of baseline state `mean`, checked to have as many classes."""
    n, classes = pps.shape
    if mean.shape[1:] != (classes,):
        raise ValueError(f"baseline rows of {mean.shape[1:]} classes, rates of {classes}")
    return n, classes, mean.shape


def _rows_within(rows: np.ndarray, n: int, state_rows: int, name: str) -> np.ndarray:
    """`rows` (n,) as int64, each a row of state arrays of `state_rows` rows (`name` for the error)."""
    rows = contiguous(rows, np.int64, (n,), name)
    if n and (int(rows.min()) < 0 or int(rows.max()) >= state_rows):
        raise ValueError(f"{name} outside the baseline's {state_rows} rows")
    return rows


def detect_rows(slots: np.ndarray, mean: np.ndarray, var: np.ndarray, learned: np.ndarray, pps: np.ndarray, *,
                k_sigma: float, margin: float, warmup_s: float, partial_s: float, floor: np.ndarray,
                onset_floor: np.ndarray, min_pps: np.ndarray | float, sensitivity: np.ndarray | float,
                warm: np.ndarray, threshold: np.ndarray, anomalous: np.ndarray, over_cap: np.ndarray,
                known: np.ndarray | None = None, valid: np.ndarray | None = None, onset_jump_share: float,
                onset_min_share: float, onset_keep: int) -> np.ndarray:
    """Detection of the rows of `pps` (N, C) against baseline rows `slots` (N,) of the (S, C) state arrays,
    written into `warm`, `threshold`, `anomalous`, `over_cap` (N, C) (see native.c). `min_pps` and `sensitivity`:
    (N,) or (N, 1) per row, or one float for all; `known` (rows that may be anomalous) and `valid` (rows that
    may be onset candidates): (N,) bool, or None for every row.

    Returns the flat numbers (row · C + class) of the flood-onset candidates (see native.c and
    `policy.onset`): ascending when there are at most `onset_keep`, else the `onset_keep` of highest
    pps / max(threshold, 1), highest first (equal ratios: the lower number first)."""
    n, classes, state = _rates_against(pps, mean)
    slots = _rows_within(slots, n, state[0], "slots")
    mean, var, learned = (contiguous(a, np.float64, state, name) for a, name in
                          ((mean, "mean"), (var, "var"), (learned, "learned_s")))
    pps = contiguous(pps, np.float64, (n, classes), "pps")
    floor, onset_floor = (contiguous(a, np.float64, (classes,), name) for a, name in
                          ((floor, "floor"), (onset_floor, "onset_floor")))
    per_row = {}
    for name, value in (("min_pps", min_pps), ("sensitivity", sensitivity)):
        per_row[name] = (None, float(value)) if np.ndim(value) == 0 \
            else (contiguous(np.reshape(value, -1), np.float64, (n,), name), 0.0)
    outputs = [writable(a, dtype, (n, classes), name) for a, dtype, name in
               ((warm, np.bool_, "warm"), (threshold, np.float64, "threshold"), (anomalous, np.bool_, "anomalous"),
                (over_cap, np.bool_, "over_cap"))]
    (min_rows, min_all), (sens_rows, sens_all) = per_row["min_pps"], per_row["sensitivity"]
    known, valid = (None if a is None else contiguous(a, np.bool_, (n,), name) for a, name in
                    ((known, "known"), (valid, "valid")))
    if onset_keep < 1:
        raise ValueError(f"onset candidates: keep must be at least 1, got {onset_keep}")
    flat, ratio = np.empty(onset_keep, np.int64), np.empty(onset_keep)
    onset = _Onset(onset_jump_share, onset_min_share, onset_keep, 0, at(flat), at(ratio))
    library().sw_detect_rows(n, classes, at(slots), at(mean), at(var), at(learned), at(pps), k_sigma, margin,
                             warmup_s, partial_s, at(floor), at(onset_floor), at(min_rows), min_all,
                             at(sens_rows), sens_all, at(known), at(valid), *(at(a) for a in outputs),
                             ctypes.byref(onset))
    if onset.found <= onset_keep:
        return np.sort(flat[:onset.found])
    return flat[np.lexsort((flat, -ratio))]


def learn_rows(rows: np.ndarray | slice, mean: np.ndarray, var: np.ndarray, learned: np.ndarray, pps: np.ndarray,
               cap: np.ndarray | None, learn: np.ndarray, *, dt: float, ewma: float, warmup_s: float,
               k_sigma: float, margin: float, over_cap: np.ndarray | None = None) -> None:
    """One tick of learning of `pps` (N, C) into baseline rows `rows` (N,) (or a slice of step 1) of the
    (S, C) state arrays, in place, where `learn` (N, C) is True (see native.c). `cap`: the rows' baseline
    caps when the caller has them, else None (worked out from the state with `k_sigma` and `margin`, where
    `over_cap` (N, C), detection's rate > max(cap, 1) on the same state, says so, or everywhere)."""
    n, classes, state = _rates_against(pps, mean)
    first = 0
    if isinstance(rows, slice):
        start, stop, step = rows.indices(state[0])
        if step != 1 or stop - start != n:
            raise ValueError(f"rows {rows}: {len(range(start, stop, step))} rows for {n} rates")
        first, rows = start, None
    else:
        rows = _rows_within(rows, n, state[0], "rows")
    for a, name in ((mean, "mean"), (var, "var"), (learned, "learned_s")):
        writable(a, np.float64, state, name)
    pps = contiguous(pps, np.float64, (n, classes), "pps")
    if cap is not None:
        cap = contiguous(cap, np.float64, (n, classes), "cap")
    if over_cap is not None:
        over_cap = contiguous(over_cap, np.bool_, (n, classes), "over_cap")
    learn = contiguous(np.broadcast_to(learn, (n, classes)), np.bool_, (n, classes), "learn")
    library().sw_learn_rows(n, classes, at(rows), first, at(mean), at(var), at(learned), at(pps), at(cap),
                            at(over_cap), at(learn), dt, ewma, warmup_s, k_sigma, margin)


MAX_COUNTER_WORDS = 64      # words a counter row may have (SW_MAX_COUNTER_WORDS in native.c)


def slot_rates(current: np.ndarray, slots: np.ndarray, prev: np.ndarray, read_of: np.ndarray, kept: np.ndarray,
               read: int, classes: int, dt: float, pps: np.ndarray | None, rest: np.ndarray | None) -> int:
    """Rates of the rows of `current` (N, W) uint64 counters against the state of their `slots` (N,):
    `prev` (S, W) uint64, `read_of` (S,) int64, `kept` (S,) bool, updated in place as each row is done
    (see native.c), `read` this read's number; `pps` (N, classes) float64 and `rest` (N, W - classes) uint32
    or uint64 written, or both None on the first read (`dt` 0: the state only). Returns the rows done:
    fewer than N when the next row's delta does not fit a uint32 `rest` (that row untouched). A slot twice
    in one read raises (the rows before it are done)."""
    n, words = current.shape
    if not classes <= words <= MAX_COUNTER_WORDS:
        raise ValueError(f"counter rows of {words} words: {classes} to {MAX_COUNTER_WORDS} expected")
    current = contiguous(current, np.uint64, (n, words), "current")
    slots = contiguous(slots, np.int64, (n,), "slots")
    capacity = len(prev)
    writable(prev, np.uint64, (capacity, words), "previous counters")
    writable(read_of, np.int64, (capacity,), "read of each slot")
    writable(kept, np.bool_, (capacity,), "kept")
    if n and (int(slots.min()) < 0 or int(slots.max()) >= capacity):
        raise ValueError(f"slots outside the tracker's {capacity}")
    prime = pps is None
    if prime != (rest is None) or (not prime and dt <= 0):
        raise ValueError("rates: pps and rest both, with dt > 0, or neither (the first read)")
    wide = False
    if not prime:
        writable(pps, np.float64, (n, classes), "pps")
        wide = rest.dtype == np.uint64
        writable(rest, np.uint64 if wide else np.uint32, (n, words - classes), "rest")
    done = int(library().sw_slot_rates(n, words, classes, at(current), at(slots), at(prev), at(read_of), at(kept),
                                       read, 1.0 / dt if not prime else 0.0, int(prime), at(pps),
                                       at(rest) if not prime and not wide else None, at(rest) if wide else None))
    if done < 0:
        raise ValueError(f"rates: slot {int(slots[-1 - done])} listed twice in one read (an address twice)")
    return done


def slots_by_id(ids: np.ndarray, slot_of_id: np.ndarray, slot_keys: np.ndarray, in_use: np.ndarray,
                keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int32 slots remembered for the reader's `ids` in `slot_of_id` (int32, -1 for none) whose slot is
    `in_use` and holds the same (N, 2) key in `slot_keys`, else -1 (see native.c); and the rows of -1."""
    n = len(ids)
    ids = contiguous(ids, np.int64, (n,), "ids")
    keys = contiguous(keys, np.uint64, (n, 2), "keys")
    slot_of_id = contiguous(slot_of_id, np.int32, (len(slot_of_id),), "slot of each id")
    slot_keys = contiguous(slot_keys, np.uint64, (len(slot_keys), 2), "slot keys")
    in_use = contiguous(in_use, np.bool_, (len(slot_keys),), "slots in use")
    slots = np.empty(n, np.int32)
    library().sw_slots_by_id(n, at(ids), at(slot_of_id), len(slot_of_id), at(slot_keys), at(in_use), len(slot_keys),
                             at(keys), at(slots))
    return slots, np.flatnonzero(slots < 0)

