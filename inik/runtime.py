"""Process-wide settings that make CPU inference and training faster.

The command line applies them, and so does the model's first forward on a CPU
(``INIK_MALLOC=system`` opts out).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

from . import settings

log = logging.getLogger("inik")

_M_TRIM_THRESHOLD = -1  # mallopt parameters, glibc <malloc.h>
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    A forward pass frees and re-allocates dozens of activation buffers of tens
    to hundreds of megabytes. glibc serves every allocation above its mmap
    threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it on free, so
    the kernel zero-fills every page again on first touch: a large share of a
    CPU forward's time goes to page faults. With mmap disabled for malloc and
    the heap never trimmed, those page faults go, for a larger peak resident
    set (freed memory stays with the process until it exits). Figures:
    ``benchmarks/RESULTS.md``.

    Process-wide and irreversible. A no-op (returning False) off Linux/glibc or
    when the environment sets ``INIK_MALLOC=system``; True once applied.
    """
    global _applied
    system = settings.get("INIK_MALLOC") == "system"  # read (and checked) on every call
    if _applied:
        return True
    if not sys.platform.startswith("linux") or system:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        # gnu_get_libc_version exists only in glibc (musl has mallopt as a stub).
        libc.gnu_get_libc_version  # noqa: B018 (the lookup is the check)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = ok
    log.debug("inik: glibc malloc keeps freed memory: %s", ok)
    return ok
