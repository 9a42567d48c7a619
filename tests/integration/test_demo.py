"""``llmpulse demo`` end to end: the real embedded stack in a subprocess,
a short run with every incident kind, summary checked line by line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmpulse.broker_record import stop_recorded_broker
from llmpulse.demo import default_incidents
from llmpulse.demo_quality import GOLDEN
from tests.conftest import stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DURATION = 120
"""The default length: in a 40 s run the incidents found through user feedback
(segment quality drop, prompt rollout) end before enough feedback arrives
(users rate answers about 20 s later), and are missed."""


def test_short_demo_summarises_every_incident_and_counts_add_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "llmpulse.cli", "demo", "--no-closed-loop", "--duration",
             str(DURATION), "--rate", "200", "--seed", "3", "--judge"],
            env=stack_env(data), cwd=tmp_path, capture_output=True, text=True, timeout=900,
        )
    finally:
        # stopped by pid if the demo left it running (or was killed by the timeout)
        stopped = stop_recorded_broker(data)
    assert stopped is None, "the demo ended with its broker still running"
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # the run's windows are a twelfth of it (5 s floor) and latency half that
    assert "windows: latency 5 s, drift/bias/hallucination/quality 10 s" in out

    summary = out[out.index("llmpulse demo: done in"):]
    kinds = [spec.split(":")[0] for spec in default_incidents(DURATION)]
    incident_lines = [ln.strip() for ln in summary.splitlines()
                      if ln.strip().split(" ")[0] in kinds]
    assert [ln.split()[0] for ln in incident_lines] == kinds
    # every scripted incident is detected: a "missed" line fails the test
    for ln in incident_lines:
        assert re.search(r"detected after +[\d.]+ s by \S+ \(", ln), ln
        assert "missed" not in ln, ln
    m = re.search(r"incidents: (\d) of (\d) detected", summary)
    assert m is not None and int(m.group(2)) == len(kinds)
    assert int(m.group(1)) == len(kinds), m.group(0)
    # and nothing fires that no incident explains (healthy traffic stays quiet)
    assert "alerts no incident explains: none" in summary, summary[-3000:]
    # every incident's start and end were announced live
    for kind in kinds:
        assert f"incident {kind} starts" in out and f"incident {kind} ends" in out

    sent = {t: int(n) for t, n in re.findall(r"(llmpulse\.\w+) +sent +(\d+)", summary)}
    stored = {t: int(n) for t, n in re.findall(r"(llmpulse\.\w+) +sent +\d+ +stored +(\d+)", summary)}
    dead = {t: int(n) for t, n in re.findall(r"(llmpulse\.\w+) .*dead-lettered (\d+)", summary)}
    assert sent and sent == {t: stored[t] + dead[t] for t in sent}
    rows = dict(re.findall(r"^ {4}(\w+) +(\d+)$", summary, re.M))
    assert int(rows["inference_events"]) == stored["llmpulse.inference"]
    assert int(rows["feedback_events"]) == stored["llmpulse.feedback"]
    shim = re.search(r"shim +sent (\d+) +delivered (\d+) +dropped (\d+)", summary)
    assert shim is not None and int(shim.group(1)) == sum(sent.values()) == int(shim.group(2))
    run = re.search(r"this run: (\d+) signals, (\d+) alerts fired, (\d+) resolved", summary)
    assert run is not None and int(run.group(1)) > 0
    assert int(rows["alerts"]) >= int(run.group(2)) >= int(run.group(3))
    assert int(rows["signals"]) >= int(run.group(1))
    assert "WARNING" not in out

    # the answer-quality part: a golden set asked of a good and a regressed
    # version, scored by the pipeline and read back from the signals table
    golden = re.search(r"golden set faq on faq-assistant: quality\.rouge_l v1 ([\d.]+) -> "
                       r"v2 ([\d.]+) \(drop [\d.]+; (\d+) and (\d+) answers scored\)", summary)
    assert golden is not None, summary[-2000:]
    v1, v2 = float(golden.group(1)), float(golden.group(2))
    assert v1 > 0.7 and v2 < 0.4 and v1 - v2 > 0.3, golden.group(0)
    assert int(golden.group(3)) == int(golden.group(4)) == len(GOLDEN)
    # the judge graded a sample, sent every grade back and its agreement was measured
    judge = re.search(r"judge \(.*\): seen (\d+), sampled (\d+), graded (\d+), failed (\d+), "
                      r"timeouts (\d+), over budget (\d+), queue full (\d+); (\d+) grades sent "
                      r"as feedback source=judge", summary)
    assert judge is not None, summary[-2000:]
    seen, sampled, graded, failed, timeouts = (int(judge.group(i)) for i in range(1, 6))
    assert seen > sampled >= graded > 0 and int(judge.group(8)) == graded
    assert failed == timeouts == 0
    agreement = re.findall(r"(judge\.agreement_\w+) +mean (-?[\d.]+) over (\d+) windows", summary)
    assert {name for name, _, _ in agreement} >= {"judge.agreement_spearman"}, summary[-2000:]
    for name, mean, windows in agreement:
        assert int(windows) >= 1 and -1.0 <= float(mean) <= 1.0, (name, mean)
    # both grade grounding from the same context: the stand-in judge and the
    # judge-free score rank answers alike
    assert float(dict((n, m) for n, m, _ in agreement)["judge.agreement_spearman"]) > 0.0
