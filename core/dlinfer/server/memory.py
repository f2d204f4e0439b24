"""Keep freed request buffers in the process instead of returning them to the OS.

glibc serves allocations above its mmap threshold (128 KiB at first, raised
as large blocks are freed) with fresh pages, and trims the heap top back to the
OS when it is freed. A server that receives a 600 KB tensor per request then
page-faults and zeroes every body's memory again on each request: about a third
of dlinfer's own CPU per request in ``benchmarks/serving.py``. Raising both
thresholds lets freed bodies be reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("dlinfer.server")

#: mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds raised: %s", ok)
    return ok
