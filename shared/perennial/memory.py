"""Giving evicted state's memory back to the operating system (both services evict).

glibc's allocator keeps freed memory in its arenas (one per thread that allocated it) for
reuse, and raises its mmap threshold after large frees, so large arrays (FSA's 8 MB float64
statistics) are later allocated on the heap too. After evictions RSS then stays near its
high-water mark, however little remains resident: a memory bound per tenant that only holds
on the allocator's luck.
`malloc_trim(0)` returns every arena's free pages. Through ctypes: no library wraps it; on a C
library without it (musl) nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_freed_memory() -> bool:
    """Return the allocator's free memory to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
