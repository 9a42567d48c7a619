"""C heap settings for the long-running processes (``llmpulse up``, the signal engines).

glibc's malloc raises its mmap threshold each time a large block it mapped is
freed (up to 32 MiB), so that later large blocks come from the heap instead. A
worker allocates and frees buffers of that size all the time (fetched batches,
JSON lines for the store, forwarded messages), and the heap they leave behind is
fragmented: freed, yet not given back. Measured on ``llmpulse up`` under 400
events/s: the heap's in-use bytes stayed at 56-58 MB while its free bytes grew from
15 to 66 MB in 15 minutes, and the RSS with them (507 to 593 MB). A fixed threshold keeps large
blocks in their own mappings, returned to the system when freed.

Only glibc has ``mallopt``; elsewhere (musl, macOS) nothing changes. An operator's
own ``MALLOC_MMAP_THRESHOLD_`` wins: it is left as it is, and ``LLMPULSE_MALLOC=default``
leaves glibc's own behaviour (to compare: ``LLMPULSE_MALLOC=default python -m
llmpulse.bench.soak ...``; the stack's processes inherit it).

>>> tune_malloc(env={"MALLOC_MMAP_THRESHOLD_": "65536"})
'left to MALLOC_MMAP_THRESHOLD_'
>>> tune_malloc(env={"LLMPULSE_MALLOC": "default"})
'left to glibc (LLMPULSE_MALLOC=default)'
>>> tune_malloc(env={"LLMPULSE_MALLOC": "defualt"})  # warned about, then tuned
'malloc: mmap threshold fixed at 262144 bytes'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

__all__ = ["MMAP_THRESHOLD", "tune_malloc"]

log = logging.getLogger("llmpulse.up")

MMAP_THRESHOLD = 256 * 1024
"""Blocks of this size or more get mappings of their own (glibc's initial default is
128 KiB; fixing it also stops the dynamic raise)."""

_M_MMAP_THRESHOLD = -3  # from malloc.h


def tune_malloc(threshold: int = MMAP_THRESHOLD, env: Mapping[str, str] | None = None) -> str:
    """Fix glibc malloc's mmap threshold at ``threshold`` bytes in this process; what was
    done, in words (logged at debug level)."""
    env = os.environ if env is None else env
    if "MALLOC_MMAP_THRESHOLD_" in env:
        return _said("left to MALLOC_MMAP_THRESHOLD_")
    asked = env.get("LLMPULSE_MALLOC", "tuned")
    if asked == "default":
        return _said("left to glibc (LLMPULSE_MALLOC=default)")
    if asked != "tuned":
        log.warning("LLMPULSE_MALLOC=%r: expected 'tuned' or 'default'; tuning malloc", asked)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return _said("no mallopt here: malloc left as it is")
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, int(threshold)) != 1:
        return _said(f"mallopt refused an mmap threshold of {threshold} bytes")
    return _said(f"malloc: mmap threshold fixed at {threshold} bytes")


def _said(what: str) -> str:
    log.debug("%s", what)
    return what
