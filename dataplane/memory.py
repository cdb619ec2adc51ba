"""Giving memory the appliance no longer needs back to the system after the compile.

bcc compiles the XDP program once, at start, with clang and LLVM in this process. Afterwards
two things stay resident for good although nothing uses them again: the heap the compiler
freed (glibc keeps freed memory for reuse; ~80 MiB) and the code pages of the compiler's
shared libraries that the compile touched (libLLVM and libclang-cpp: ~70 MiB). Both are
returned here. Code pages are file-backed and never written, so dropping them only means
that a later compile (a benchmark's second program) reads them back from the page cache.
"""

from __future__ import annotations

import ctypes
import mmap
import pathlib

_libc = ctypes.CDLL(None, use_errno=True)
MADV_DONTNEED = 4                    # <sys/mman.h>
COMPILER_LIBRARIES = ("libLLVM", "libclang")


def release_freed_heap() -> None:
    """Return the process's free heap pages to the system (glibc's malloc_trim; a no-op elsewhere)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def release_compiler_code(maps: str | None = None) -> int:
    """Drop this process's resident code pages of the compiler's libraries; returns the bytes of
    the mappings released. Only executable, never-written mappings (r-xp) are touched: data
    pages the dynamic linker relocated must stay. `maps`: the text of /proc/self/maps (tests)."""
    text = maps if maps is not None else pathlib.Path("/proc/self/maps").read_text()
    released = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "r-xp" or not any(lib in fields[5] for lib in COMPILER_LIBRARIES):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start % mmap.PAGESIZE or end <= start:
            continue
        if maps is None and _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) != 0:
            continue                 # not ours to drop after all: leave it resident
        released += end - start
    return released
