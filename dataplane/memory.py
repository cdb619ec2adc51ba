"""Giving freed heap back to the system.

glibc keeps memory that a process frees resident for reuse, and grows the threshold above
which it maps large blocks separately each time one is freed, so a process that allocates
and frees large numpy temporaries every second keeps its peak resident for good. The
appliance returns it where a burst of allocation ends: after compiling the XDP program
(bcc's clang and LLVM free about 80 MiB) and after each policy tick (its temporaries).
"""

from __future__ import annotations

import ctypes

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):   # not glibc: nothing to trim
    _malloc_trim = None


def release_freed_heap() -> None:
    """Return the process's free heap pages to the system (glibc's malloc_trim)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
