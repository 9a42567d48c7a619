"""Where the public faithfulness sets are (``LLMPULSE_FAITHFULNESS_DATA``, else the
shared data folder beside the checkout); a test that needs them fails under CI
when they are missing, and is skipped elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def faithfulness_data() -> Path:
    env = os.environ.get("LLMPULSE_FAITHFULNESS_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data" / "faithfulness"
    if path.exists():
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"public faithfulness sets not found at {path} (set LLMPULSE_FAITHFULNESS_DATA)")
    pytest.skip(f"public faithfulness sets not found at {path}")
