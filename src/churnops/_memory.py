"""Keeping freed memory for reuse while the features are computed (glibc's malloc only).

The folds allocate and free many arrays of a few MB to some hundreds of MB. glibc hands a freed
block above its mmap threshold (128 KB, rising up to 32 MB as large blocks are freed) back to
the system at once, and trims the top of its heap beyond twice that; the next array of that size
then faults in fresh pages. On machines where the first touch of a page is dear (virtual machines
whose host backs memory lazily and takes freed pages back), that was 0.5-1.5 s of system time per
10M-order snapshot. Inside `retained_memory()` blocks up to 32 MB come from the heap and freed
memory stays there for the next array; on leaving, the threshold stays at 32 MB (the ceiling
glibc's own adjustment reaches), the trim threshold returns to twice that, and the free memory
goes back to the system. Elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its own threshold (64-bit)
HELD_TRIM_THRESHOLD = 2**31 - 1  # the largest mallopt takes: nothing is trimmed inside
HELD_TOP_PAD = 256 << 20  # grow the heap in steps of this much (address space, not pages)
RELEASED_TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
RELEASED_TOP_PAD = 128 << 10

_lock = threading.Lock()
_depth = 0
_libc: Any = None


def _glibc() -> Any:
    """glibc's handle, or None when the C library is another."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c") if platform.libc_ver()[0] == "glibc" else None
        _libc = ctypes.CDLL(name) if name else False
    return _libc or None


@contextmanager
def retained_memory() -> Iterator[None]:
    """Inside, freed memory stays in the process for reuse; it is released on leaving the
    outermost block (blocks nest, across threads too)."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, HELD_TRIM_THRESHOLD)
            libc.mallopt(_M_TOP_PAD, HELD_TOP_PAD)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, RELEASED_TRIM_THRESHOLD)
                libc.mallopt(_M_TOP_PAD, RELEASED_TOP_PAD)
                libc.malloc_trim(0)
