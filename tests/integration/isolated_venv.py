"""A virtualenv of its own for a client whose pins conflict with the project's.

OpenLIT requires ``openai<3``; the project's environment has ``openai`` 3. Rather
than leave its auto-instrumentation untested, the test installs it from PyPI into
a separate virtualenv and runs the client there as a subprocess. The virtualenv is
built once per requirement set and Python version under the cache directory
(``LLMPULSE_TEST_CACHE``, default ``~/.cache/llmpulse-tests``) and reused; a file
lock keeps two test processes from building it at once. When it cannot be built,
the test fails with pip's error under ``CI=true`` and is skipped with it elsewhere
(a laptop without network).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["OPENLIT_REQUIREMENTS", "isolated_python"]

OPENLIT_REQUIREMENTS = ("openlit==1.45.0", "openai>=1.92,<3")
"""OpenLIT and the newest ``openai`` it accepts; it brings its OTLP exporters."""


def cache_root() -> Path:
    return Path(os.environ.get("LLMPULSE_TEST_CACHE") or Path.home() / ".cache" / "llmpulse-tests")


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def isolated_python(name: str, requirements: Sequence[str], *, imports: Sequence[str] = (),
                    timeout_s: float = 1200.0) -> Path:
    """The Python of a cached virtualenv holding ``requirements`` (built now if missing;
    ``imports`` are checked after the install)."""
    key = hashlib.sha256("\n".join([sys.version, *requirements]).encode()).hexdigest()[:12]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    env_dir = root / f"{name}-{key}"
    python = env_dir / "bin" / "python"
    ready = env_dir / ".ready"
    with open(root / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return python
        building = root / f"{name}-{key}.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(env_dir, ignore_errors=True)
        t0 = time.monotonic()
        bpy = building / "bin" / "python"
        steps = [
            [sys.executable, "-m", "venv", str(building)],
            # the pip bundled with venv can backtrack for many minutes on OpenLIT's pins
            [str(bpy), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [str(bpy), "-m", "pip", "install", "-q", *requirements],
            [str(bpy), "-c", "; ".join(f"import {m}" for m in imports) or "pass"],
        ]
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _unavailable(f"building the {name} virtualenv: {cmd[2:5]} took over "
                             f"{timeout_s:g} s")
                raise  # not reached: _unavailable raises
            if done.returncode != 0:
                err = "\n".join(line for line in done.stderr.splitlines()
                                if "is ignored" not in line)  # local index warnings
                _unavailable(f"building the {name} virtualenv failed ({' '.join(cmd[2:6])}, "
                             f"exit {done.returncode}):\n{err[-3000:]}")
        # built under another name and moved when complete: a killed build is never
        # taken for a ready one (only bin/python is used, which finds its pyvenv.cfg
        # next to it; the console scripts' shebangs keep the old path)
        building.rename(env_dir)
        ready.write_text(f"{time.monotonic() - t0:.1f} s\n")
        return python
