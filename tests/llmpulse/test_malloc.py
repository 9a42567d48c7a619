"""A fixed mmap threshold keeps large blocks out of the heap after one was freed.

glibc raises its threshold when a mapped block is freed, so the next blocks of that
size come from the heap, where they fragment it (llmpulse/malloc.py). Each case runs
in a process of its own: the setting is process-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmpulse.malloc import tune_malloc

PROBE = r"""
import ctypes, json, sys
from llmpulse.malloc import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
said = tune_malloc(env={}) if sys.argv[1] == "tuned" else "default"
first = bytearray(4 << 20)   # mapped (above any threshold yet), then freed
del first
before = libc.mallinfo2().hblks
held = bytearray(1 << 20)    # 1 MiB: mapped, or from the heap once the threshold rose
print(json.dumps({"said": said, "mapped_blocks": libc.mallinfo2().hblks - before}))
"""


def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_a_large_block_after_a_freed_one_is_mapped_only_with_the_fixed_threshold() -> None:
    default = _probe("default")
    tuned = _probe("tuned")
    assert tuned["said"] == "malloc: mmap threshold fixed at 262144 bytes"
    assert default["mapped_blocks"] == 0, default  # the heap took it: the threshold rose
    assert tuned["mapped_blocks"] == 1, tuned


def test_an_operators_own_threshold_is_left_alone() -> None:
    assert tune_malloc(env={"MALLOC_MMAP_THRESHOLD_": "1048576"}) == \
        "left to MALLOC_MMAP_THRESHOLD_"
