"""Headless Chromium for the browser tests: found, installed, or a clear verdict.

Chromium comes from Debian's ``chromium`` package. When it is missing,
:func:`ensure_chromium` installs it with apt-get. When that fails too, the
test is skipped with the reason on a developer's machine, and fails under
``CI=true``: a CI run that silently skipped every browser test would pass
without having looked at a single page.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

__all__ = ["CHROMIUM", "INSTALL", "in_ci", "ensure_chromium"]

CHROMIUM = Path("/usr/bin/chromium")
INSTALL: tuple[str, ...] = ("sh", "-c", "apt-get update -q && apt-get install -y -q chromium")


def in_ci(env: Mapping[str, str] | None = None) -> bool:
    """Whether this is a CI run (``CI`` set to true, 1 or yes, as CI services do).

    >>> in_ci({"CI": "true"}), in_ci({"CI": "1"}), in_ci({"CI": "false"}), in_ci({})
    (True, True, False, False)
    """
    value = (os.environ if env is None else env).get("CI", "")
    return value.strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str, env: Mapping[str, str] | None) -> None:
    if in_ci(env):
        pytest.fail(f"CI=true and the browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def ensure_chromium(
    binary: Path = CHROMIUM,
    install: Sequence[str] = INSTALL,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 900.0,
) -> str:
    """The Chromium binary's path; installs it when missing (see the module docstring)."""
    if not binary.exists():
        try:
            subprocess.run(list(install), check=True, capture_output=True, timeout=timeout_s)
        except (subprocess.SubprocessError, OSError) as exc:
            out = getattr(exc, "stderr", b"") or b""
            _unavailable(f"{binary} is missing and `{' '.join(install)}` failed: {exc} "
                         f"{out.decode(errors='replace')[-300:]}", env)
        if not binary.exists():
            _unavailable(f"`{' '.join(install)}` ran but {binary} is still missing", env)
    return str(binary)
