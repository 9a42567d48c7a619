"""``llmpulse demo`` with its closed loop (llmpulse.closed_loop.run_demo_loop) in the real
embedded stack: retrain, gates, canary, promotion, a refused worse model, figures on
held-out tickets, and no retrain that ends in a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmpulse.broker_record import stop_recorded_broker
from tests.conftest import stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_closes_the_loop_on_held_out_tickets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "llmpulse.cli", "demo", "--duration", "40", "--rate", "150",
             "--seed", "3", "--no-golden"],
            env=stack_env(data), cwd=tmp_path, capture_output=True, text=True, timeout=1200,
        )
    finally:
        stopped = stop_recorded_broker(data)
    assert stopped is None, "the demo ended with its broker still running"
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-4000:]
    loop = out[out.index("llmpulse demo: closed loop on the ticket router"):]
    m = re.search(r"accuracy on (\d+) held-out drifted tickets \(never trained on\): ([\d.]+) "
                  r"\(version (\d+)\) -> ([\d.]+) \(version (\d+)\); majority-intent baseline "
                  r"([\d.]+)", loop)
    assert m is not None, loop
    n, before, v_before, after, v_after, baseline = m.groups()
    assert int(n) >= 100
    assert float(after) > float(before) and float(after) > float(baseline)
    assert v_after != v_before
    assert re.search(r"gates' held-out slice \(\d+ tickets\): candidate [\d.]+, current [\d.]+",
                     loop), loop
    assert "a worse candidate (mislabelled training data): rejected" in loop
    deployments = loop[loop.index("deployments of intent-router:"):].split("  accuracy on")[0]
    stages = re.findall(r"version \S+ +(\w+) +trigger", deployments)
    assert "promoted" in stages and "failed" not in stages, deployments
    assert "there is no canary to promote" not in out + err
