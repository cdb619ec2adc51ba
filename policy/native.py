"""The tick's per-destination baseline passes in C (`policy/native.c`), compiled when first used.

Detection and learning at a million destinations were numpy passes over whole (N, C) arrays plus
gathers and scatters of baseline rows by slot: each element read and written a dozen times. The C
loops read each once, with numpy's arithmetic in numpy's order (the file says how), so the
results are the same bits as the numpy formulas in `policy.baseline` and `policy.detect` describe.

The file is compiled once per process with clang (which `make bootstrap` installs for the XDP
program) into a temporary directory that is removed once the library is loaded: nothing is left
on disk, and a changed source can never meet a stale library. ~0.2 s, at the first tick.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np

SOURCE = pathlib.Path(__file__).with_name("native.c")
COMPILER = "clang"
# No fused multiply-add (numpy rounds a product and a sum apart) and no fast-math: the same bits as numpy.
CFLAGS = ("-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-std=c11", "-Wall", "-Werror")

_f64 = ctypes.c_double
_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


class NativeBuildError(RuntimeError):
    """policy/native.c could not be compiled or loaded."""


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernels (compiled at the first call in this process)."""
    compiler = shutil.which(COMPILER)
    if compiler is None:
        raise NativeBuildError(f"{COMPILER} not found: the policy engine compiles {SOURCE.name} with it "
                               "(`make bootstrap` installs it)")
    with tempfile.TemporaryDirectory(prefix="seawall-native-") as tmp:
        out = pathlib.Path(tmp) / "native.so"
        done = subprocess.run([compiler, *CFLAGS, "-o", str(out), str(SOURCE), "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeBuildError(f"compiling {SOURCE}: {done.stderr.strip()[-2000:]}")
        lib = ctypes.CDLL(str(out))     # mapped: the file can go
    lib.sw_detect_rows.restype = None
    lib.sw_detect_rows.argtypes = [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _f64, _f64, _f64, _f64, _ptr, _ptr,
                                   _ptr, _f64, _ptr, _f64, _ptr, _ptr, _ptr, _ptr, _ptr]
    lib.sw_counter_rates.restype = _i64
    lib.sw_counter_rates.argtypes = [_i64, _i64, _i64, _ptr, _ptr, _ptr, _f64, _ptr, _ptr, _ptr, _ptr, _ptr]
    lib.sw_learn_rows.restype = None
    lib.sw_learn_rows.argtypes = [_i64, _i64, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _f64, _f64, _f64]
    return lib


def _at(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _checked(a: np.ndarray, dtype: type, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`a` as the C loop reads it: C contiguous, of `dtype` and `shape` (no copy when it already is)."""
    a = np.ascontiguousarray(a, dtype)
    if a.shape != shape:
        raise ValueError(f"{name}: shape {a.shape}, expected {shape}")
    return a


def _writable(a: np.ndarray, dtype: type, shape: tuple[int, ...], name: str) -> np.ndarray:
    if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name}: needs a writable C-contiguous {np.dtype(dtype)} array of shape {shape}")
    return a


def detect_rows(slots: np.ndarray, mean: np.ndarray, var: np.ndarray, learned: np.ndarray, pps: np.ndarray, *,
                k_sigma: float, margin: float, warmup_s: float, partial_s: float, floor: np.ndarray,
                onset_floor: np.ndarray, min_pps: np.ndarray | float, sensitivity: np.ndarray | float,
                cap: np.ndarray, warm: np.ndarray, threshold: np.ndarray, deviation: np.ndarray,
                anomalous: np.ndarray) -> None:
    """Detection of the rows of `pps` (N, C) against baseline rows `slots` (N,) of the (S, C) state arrays,
    written into `cap`, `warm`, `threshold`, `deviation`, `anomalous` (N, C) (see native.c). `min_pps` and
    `sensitivity`: (N,) or (N, 1) per row, or one float for all."""
    n, classes = pps.shape
    state = mean.shape
    if state[1:] != (classes,):
        raise ValueError(f"baseline rows of {state[1:]} classes, rates of {classes}")
    slots = _checked(slots, np.int64, (n,), "slots")
    if n and (int(slots.min()) < 0 or int(slots.max()) >= state[0]):
        raise ValueError(f"slots outside the baseline's {state[0]} rows")
    mean, var, learned = (_checked(a, np.float64, state, name) for a, name in
                          ((mean, "mean"), (var, "var"), (learned, "learned_s")))
    pps = _checked(pps, np.float64, (n, classes), "pps")
    floor, onset_floor = (_checked(a, np.float64, (classes,), name) for a, name in
                          ((floor, "floor"), (onset_floor, "onset_floor")))
    per_row = {}
    for name, value in (("min_pps", min_pps), ("sensitivity", sensitivity)):
        per_row[name] = (None, float(value)) if np.ndim(value) == 0 \
            else (_checked(np.reshape(value, -1), np.float64, (n,), name), 0.0)
    outputs = [_writable(a, dtype, (n, classes), name) for a, dtype, name in
               ((cap, np.float64, "cap"), (warm, np.bool_, "warm"), (threshold, np.float64, "threshold"),
                (deviation, np.float64, "deviation"), (anomalous, np.bool_, "anomalous"))]
    (min_rows, min_all), (sens_rows, sens_all) = per_row["min_pps"], per_row["sensitivity"]
    library().sw_detect_rows(n, classes, _at(slots), _at(mean), _at(var), _at(learned), _at(pps), k_sigma, margin,
                             warmup_s, partial_s, _at(floor), _at(onset_floor), _at(min_rows), min_all,
                             _at(sens_rows), sens_all, *(_at(a) for a in outputs))


def learn_rows(rows: np.ndarray | slice, mean: np.ndarray, var: np.ndarray, learned: np.ndarray, pps: np.ndarray,
               cap: np.ndarray, deviation: np.ndarray | None, learn: np.ndarray, *, dt: float, ewma: float,
               warmup_s: float) -> None:
    """One tick of learning of `pps` (N, C) into baseline rows `rows` (N,) (or a slice of step 1) of the
    (S, C) state arrays, in place, where `learn` (N, C) is True (see native.c). `deviation`: `pps - mean`
    of these rows when the caller has it (only read)."""
    n, classes = pps.shape
    state = mean.shape
    if state[1:] != (classes,):
        raise ValueError(f"baseline rows of {state[1:]} classes, rates of {classes}")
    first = 0
    if isinstance(rows, slice):
        start, stop, step = rows.indices(state[0])
        if step != 1 or stop - start != n:
            raise ValueError(f"rows {rows}: {len(range(start, stop, step))} rows for {n} rates")
        first, rows = start, None
    else:
        rows = _checked(rows, np.int64, (n,), "rows")
        if n and (int(rows.min()) < 0 or int(rows.max()) >= state[0]):
            raise ValueError(f"rows outside the baseline's {state[0]} rows")
    for a, name in ((mean, "mean"), (var, "var"), (learned, "learned_s")):
        _writable(a, np.float64, state, name)
    pps = _checked(pps, np.float64, (n, classes), "pps")
    cap = _checked(cap, np.float64, (n, classes), "cap")
    if deviation is not None:
        deviation = _checked(deviation, np.float64, (n, classes), "deviation")
    learn = _checked(np.broadcast_to(learn, (n, classes)), np.bool_, (n, classes), "learn")
    library().sw_learn_rows(n, classes, _at(rows), first, _at(mean), _at(var), _at(learned), _at(pps), _at(cap),
                            _at(deviation), _at(learn), dt, ewma, warmup_s)


def counter_rates(current: np.ndarray, prev: np.ndarray, prev_rows: np.ndarray, classes: int, dt: float,
                  pps: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, bool]:
    """Rates of the rows of `current` (N, W) uint64 counters against rows `prev_rows` (N,) of `prev`
    (P, W): `pps` (N, classes) float64 and `rest` (N, W - classes) uint32 or uint64 deltas, written
    (see native.c). Returns the rows not computed (no previous row, or a counter below its previous
    value: the caller settles them) and whether a delta did not fit a uint32 `rest`."""
    n, words = current.shape
    current = _checked(current, np.uint64, (n, words), "current")
    prev = _checked(prev, np.uint64, (len(prev), words), "prev")
    prev_rows = _checked(prev_rows, np.int32, (n,), "prev_rows")
    if n and int(prev_rows.max()) >= len(prev):
        raise ValueError(f"previous rows beyond the {len(prev)} of the previous read")
    _writable(pps, np.float64, (n, classes), "pps")
    wide = rest.dtype == np.uint64
    _writable(rest, np.uint64 if wide else np.uint32, (n, words - classes), "rest")
    special = np.empty(n, np.int64)
    overflow = ctypes.c_int32(0)
    count = library().sw_counter_rates(n, words, classes, _at(current), _at(prev), _at(prev_rows), 1.0 / dt,
                                       _at(pps), None if wide else _at(rest), _at(rest) if wide else None,
                                       _at(special), ctypes.addressof(overflow))
    return special[:count].copy(), bool(overflow.value)
