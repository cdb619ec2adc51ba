"""Keeping the tick's large arrays' memory in the process from tick to tick (glibc's malloc).

A tick at a million destinations makes about a dozen arrays of 48 to 100 MB (counter blocks,
rates, thresholds, baseline rows) and frees them by the next tick. glibc serves a request above
its mmap threshold (at most 32 MiB by default) with a fresh mapping and unmaps it on free, so
every tick the kernel faulted ~700 MB of fresh pages in again (numpy asks for huge pages, and
a fault that has to compact memory for one stalls for tens of milliseconds). Measured with
`seawall bench policy --real --destinations 1000000` on a 2-vCPU Intel Xeon VM: rates 347 ms and
detection 398 ms a tick with fresh mappings, 117 ms and 103 ms with the memory kept; the
arithmetic is the same, so are the results.

`keep_freed_arrays()` raises the mmap and trim thresholds, so freed arrays stay in the heap
and the next tick's arrays of about the same size reuse their pages, and keeps the process to
one malloc arena: a thread's own arena cannot hold a block larger than 64 MiB and would map
those afresh each tick (the engine ticks in a worker thread). The cost is resident memory: the
heap holds the tick's high-water mark between ticks instead of giving it back.
"""

from __future__ import annotations

import ctypes

import structlog

log = structlog.get_logger("policy")

# <malloc.h> mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
KEEP_BYTES = 1 << 30          # bytes: blocks up to 1 GiB come from the heap; free space up to it is kept


def keep_freed_arrays() -> bool:
    """Set glibc's malloc to keep freed large blocks for reuse (see the module docstring); False where
    there is no glibc mallopt (the engine works the same, with fresh mappings each tick)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    done = all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, KEEP_BYTES), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_ARENA_MAX, 1)))
    if not done:
        log.warning("policy.heap_settings_refused")
    return done


__all__ = ["keep_freed_arrays"]
