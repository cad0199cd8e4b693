"""The C heap of a process that handles megabyte strings: large blocks go back to the system when freed."""

from __future__ import annotations

import ctypes
import sys

#: glibc's ``mallopt`` parameter number of the mmap threshold.
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping, returned to the system when freed.
LARGE_BLOCK = 1 << 20


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Make glibc give every allocation of ``threshold`` bytes or more its own mapping, unmapped when freed.

    By default glibc raises that threshold each time a large block is freed (up to 32 MB), after which
    large blocks come from the heap, and freed ones stay in the process: with megabyte fields (a
    detection's RESULTS) the RSS then kept the strings of pages long committed (bench/memory.py, 30 events
    with 8 MB RESULTS: 258 MB, 154 MB with this). Fixing the threshold stops that. ``False`` (nothing done)
    without glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
