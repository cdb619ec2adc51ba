"""C loops of the control plane, compiled when first used: the counter reader's (`dataplane/native.c`),
and `compile_library`, which `policy.native` uses for the policy tick's.

numpy makes one pass over a whole array per operation; at a million addresses the reader's merge and
the tick's baseline passes were a dozen such passes each. A C loop reads each element once. The
sources are compiled once per process with clang (which `make bootstrap` installs for the XDP
program) into a temporary directory that is removed once the library is loaded: nothing is left on
disk, and a changed source never meets a stale library. ~0.2 s per file, at the first use.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

COMPILER = "clang"
# No fused multiply-add (numpy rounds a product and a sum apart) and no fast-math: the same bits as numpy.
# Built on the box that runs it, so for its own CPU (-march=native): the detection and learning loops
# then take the square roots and divisions of a row's classes in vector registers (-O3 vectorizes
# them): those two stages took 86-96 ms of a tick at a million destinations where the -O2 build took
# 94-149 ms (four alternating pairs of runs, AMD EPYC, 2026-12-07). IEEE square roots and divisions
# round the same in vector and scalar form.
CFLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-std=c11", "-Wall",
          "-Werror")
SOURCE = pathlib.Path(__file__).with_name("native.c")

f64, i64, ptr = ctypes.c_double, ctypes.c_int64, ctypes.c_void_p


class NativeBuildError(RuntimeError):
    """A C source of the control plane could not be compiled or loaded."""


def compile_library(source: pathlib.Path, signatures: Mapping[str, tuple[Any, Sequence[Any]]],
                    defines: Mapping[str, int] | None = None) -> ctypes.CDLL:
    """`source` compiled (with `defines` as -D macros) and loaded, with each function of `signatures`
    (name: (restype, argtypes)) typed."""
    compiler = shutil.which(COMPILER)
    if compiler is None:
        raise NativeBuildError(f"{COMPILER} not found: the control plane compiles {source.name} with it "
                               "(`make bootstrap` installs it)")
    with tempfile.TemporaryDirectory(prefix="seawall-native-") as tmp:
        out = pathlib.Path(tmp) / f"{source.stem}.so"
        macros = [f"-D{name}={int(value)}" for name, value in (defines or {}).items()]
        done = subprocess.run([compiler, *CFLAGS, *macros, "-o", str(out), str(source), "-lm"], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise NativeBuildError(f"compiling {source}: {done.stderr.strip()[-2000:]}")
        lib = ctypes.CDLL(str(out))     # mapped: the file can go
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, list(argtypes)
    return lib


@functools.cache
def library() -> ctypes.CDLL:
    """dataplane/native.c, compiled at the first call in this process."""
    return compile_library(SOURCE, {
        "sw_listed_match": (i64, [i64, ptr, i64, ptr, i64, ptr, i64, ptr, ptr]),
        "sw_merge_index": (i64, [i64, ptr, i64, ptr, i64, ptr, i64, ptr, ptr, ptr]),
        "sw_merge_sources": (i64, [i64, ptr, ptr, i64, ptr, ptr, i64, ptr, ptr, ptr, ptr]),
        "sw_merge_fill": (None, [i64, i64, i64, ptr, ptr, ptr, i64, ptr, ptr]),
        "sw_store_columns": (i64, [i64, ptr, i64, i64, ptr, ptr]),
    })


def at(a: np.ndarray | None) -> int | None:
    """The address of an array's first element (None for None), for a C argument."""
    return None if a is None else a.ctypes.data


def contiguous(a: np.ndarray, dtype: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`a` as a C loop reads it: C contiguous, of `dtype` and `shape` (no copy when it already is)."""
    a = np.ascontiguousarray(a, dtype)
    if a.shape != shape:
        raise ValueError(f"{name}: shape {a.shape}, expected {shape}")
    return a


def writable(a: np.ndarray, dtype: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`a` itself, checked to be what a C loop may write: C contiguous, of `dtype` and `shape`."""
    if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name}: needs a writable C-contiguous {np.dtype(dtype)} array of shape {shape}")
    return a


def _rows_at(rows: np.ndarray, width_bytes: int, name: str) -> tuple[np.ndarray, int]:
    """A 1-D array of fixed-size rows (a strided view is fine: the spill store's rows in place) as the
    array whose memory holds them and the stride in bytes between rows."""
    if rows.ndim != 1 or rows.itemsize < width_bytes or (len(rows) > 1 and rows.strides[0] < width_bytes):
        raise ValueError(f"{name}: needs rows of at least {width_bytes} bytes")
    return rows, rows.strides[0] if len(rows) > 1 else width_bytes


def listed_match(keys: np.ndarray, prev_ids: np.ndarray, id_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """`keys` (N, 2) uint64 (rows may be strided: the mapped store's) copied out once, and each one's id
    from `prev_ids` where the id at the same position there is of the same key (`id_keys`: (I, 2) uint64,
    the key of each id), else -1. Returns the copy, the ids and how many are -1."""
    n = len(keys)
    if keys.ndim != 2 or keys.shape[1] != 2 or keys.dtype != np.uint64 or keys.strides[1] != 8:
        keys = contiguous(keys, np.uint64, (n, 2), "keys")
    stride = keys.strides[0] if n > 1 else 16
    prev_ids = contiguous(prev_ids, np.int64, (len(prev_ids),), "previous ids")
    id_keys = contiguous(id_keys, np.uint64, (len(id_keys), 2), "keys of the ids")
    out_keys = np.empty((n, 2), np.uint64)
    ids = np.empty(n, np.int64)
    unmatched = library().sw_listed_match(n, at(keys) if n else None, stride, at(prev_ids), len(prev_ids),
                                          at(id_keys), len(id_keys), at(out_keys), at(ids))
    return out_keys, ids, int(unmatched)


def store_columns(words: np.ndarray, tenant_at: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Of the spill store's slots `words` ((n, row words) uint64, C contiguous: the mapped store), in one
    pass (see native.c): their (n,) uint32 tenants and (n,) bool claimed flags, and how many are claimed."""
    n, row_words = words.shape
    if words.dtype != np.uint64 or not words.flags.c_contiguous:
        raise ValueError("store columns: needs the store's C-contiguous uint64 words")
    if not 0 <= tenant_at < row_words:
        raise ValueError(f"store columns: word {tenant_at} outside a {row_words}-word slot")
    tenants, claimed = np.empty(n, np.uint32), np.empty(n, np.bool_)
    count = library().sw_store_columns(n, at(words) if n else None, row_words, tenant_at, at(tenants), at(claimed))
    return tenants, claimed, int(count)


def merge_index(n_ids: int, *id_lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a merge by id: ascending ids present in any of three lists (ids below 0 skipped), and
    each id's row ((n_ids,) int64, meaningful where present)."""
    a, b, c = (contiguous(ids, np.int64, (len(ids),), "ids") for ids in id_lists)
    row_of = np.empty(n_ids, np.int64)
    ids_out = np.empty(n_ids, np.int64)
    present = np.empty(n_ids, np.uint8)
    rows = library().sw_merge_index(n_ids, at(a), len(a), at(b), len(b), at(c), len(c), at(present), at(row_of),
                                    at(ids_out))
    if rows < 0:
        raise ValueError(f"merge: an id outside 0..{n_ids - 1}")
    return ids_out[:rows].copy(), row_of


def merge_sources(n_rows: int, row_of: np.ndarray, spilled: tuple[np.ndarray, np.ndarray],
                  cached: tuple[np.ndarray, np.ndarray], tenants: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Where each of `n_rows` merge rows comes from (see native.c): (n_rows,) int32 spilled row and cached row
    of each (-1: none) of spilled then cached (ids, tenants) at rows `row_of[id]` (spilled ids of -1 skipped),
    with each row's tenant written into `tenants` (n_rows,) uint32; and how many spilled rows repeat an id."""
    writable(tenants, np.uint32, (n_rows,), "tenants")
    s_ids, s_tenants = spilled
    s_ids = contiguous(s_ids, np.int64, (len(s_ids),), "spilled ids")
    s_tenants = contiguous(s_tenants, np.uint32, (len(s_ids),), "spilled tenants")   # tenant_idx: 32 bits
    c_ids, c_tenants = cached
    c_ids = contiguous(c_ids, np.int64, (len(c_ids),), "cached ids")
    c_tenants = contiguous(c_tenants, np.uint32, (len(c_ids),), "cached tenants")
    if max(len(s_ids), len(c_ids)) > np.iinfo(np.int32).max:
        raise ValueError("merge: more source rows than int32 row numbers hold")
    row_of = contiguous(row_of, np.int64, (len(row_of),), "row of each id")
    spill_src = np.empty(n_rows, np.int32)
    cache_src = np.empty(n_rows, np.int32)
    repeats = library().sw_merge_sources(n_rows, at(row_of), at(s_ids), len(s_ids), at(s_tenants), at(c_ids),
                                         len(c_ids), at(c_tenants), at(spill_src), at(cache_src), at(tenants))
    return spill_src, cache_src, int(repeats)


def merge_fill(lo: int, hi: int, out: np.ndarray, spill_src: np.ndarray, spilled_rows: np.ndarray,
               cache_src: np.ndarray, cached_rows: np.ndarray) -> None:
    """Rows lo..hi-1 of a merge into `out` (hi - lo, W) uint64: each row's spilled row (of the (S,) void rows
    of at least W words `spilled_rows`, strided or not) plus its cached row (of (K, W) uint64
    `cached_rows`), as `merge_sources` listed them (see native.c)."""
    width = out.shape[1] if out.ndim == 2 else 0
    writable(out, np.uint64, (hi - lo, width), "merge rows")
    if not 0 <= lo <= hi <= len(spill_src) or len(cache_src) != len(spill_src):
        raise ValueError(f"merge rows {lo}..{hi} outside the merge's {len(spill_src)}")
    s_rows, s_stride = _rows_at(spilled_rows, 8 * width, "spilled counters")
    c_rows = contiguous(cached_rows, np.uint64, (len(cached_rows), width), "cached counters")
    # Every source row named in lo..hi is within its array (merge_sources numbered them).
    library().sw_merge_fill(lo, hi, width, at(out), at(spill_src), at(s_rows) if len(s_rows) else None, s_stride,
                            at(cache_src), at(c_rows) if len(c_rows) else None)
