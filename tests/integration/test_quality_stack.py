"""Prompt-version A/B and reference metrics through the running stack: real broker,
real store, real worker; the A/B rule pages on the worse variant."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llmpulse.monitor import Monitor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 2400  # 40 requests per event-time second over a minute


def _send(bootstrap: str, start_ms: int) -> None:
    with Monitor(app="ab-app", bootstrap=bootstrap, model="chat", model_version="1") as mon:
        for i in range(N):
            arm = "B" if i % 2 else "A"
            ts = start_ms + i * 25
            rid = mon.inference(
                ts=ts, latency_ms=400.0 + (i * 37) % 300, status="ok", input_tokens=20,
                output_tokens=30, cost_usd=0.0004, experiment="tone", variant=arm,
                prompt_version="v2" if arm == "B" else "v1",
                response=f"The refund for order {i} takes five working days.",
            )
            # variant B (prompt v2) is rated worse: 40 % thumbs-up against 80 %
            good = (i * 7919) % 10 < (4 if arm == "B" else 8)
            fb: dict[str, Any] = {"ts": ts + 200, "score": 1.0 if good else -1.0}
            if i % 5 == 0:  # both arms
                fb["reference"] = (f"The refund for order {i} takes five working days."
                                   if arm == "A" else "Contact support by phone.")
                fb["source"] = "reviewer"
            mon.feedback(request_id=rid, **fb)
        assert mon.flush(30)


def test_worse_prompt_version_is_caught_and_references_scored(stack_factory, tmp_path) -> None:
    d = tmp_path / "quality"
    d.mkdir()
    (d / "llmpulse.yaml").write_text(
        "signals:\n  latency_window_s: 5\n  window_s: 10\n  poll_s: 0.5\n  snapshot_s: 0\n")
    sp = stack_factory(d).start(timeout=120)
    # the minute of traffic straddles a minute boundary, half on each side: the A/B
    # family's windows are 60 s and its rule wants two in a row (traffic that started
    # on a boundary filled one window and could never page)
    start_ms = int((time.time() - 150) * 1000)
    start_ms += 30_000 - start_ms % 60_000
    _send(sp.endpoints["kafka"], start_ms)
    sp.wait_stored("llmpulse.inference", N, timeout=120)
    sp.wait_stored("llmpulse.feedback", N, timeout=120)

    deadline = time.monotonic() + 150
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerts = sp.sql("SELECT rule, dimension, state FROM alerts FINAL "
                        "WHERE rule = 'experiment-variant-worse'")
        if alerts:
            break
        time.sleep(1.0)
    assert alerts, sp.log()
    assert alerts[0]["dimension"] == "experiment=tone"

    rows = sp.sql("SELECT value, n, detail FROM signals FINAL WHERE app = 'ab-app' "
                  "AND signal = 'ab.feedback_score' ORDER BY ts")
    assert rows and all(r["value"] < 0 for r in rows)
    assert '"verdict":"worse"' in rows[0]["detail"].replace(" ", "")
    rouge = sp.sql("SELECT avg(value) AS v, sum(n) AS n FROM signals FINAL WHERE app = 'ab-app' "
                   "AND signal = 'quality.rouge_l'")[0]
    assert 0.4 < rouge["v"] < 0.7 and rouge["n"] == N // 5
    versions = sp.sql("SELECT prompt_version, experiment, variant, count() AS c "
                      "FROM inference_events FINAL WHERE app = 'ab-app' "
                      "GROUP BY prompt_version, experiment, variant ORDER BY prompt_version")
    assert [(r["prompt_version"], r["variant"], r["c"]) for r in versions] == [
        ("v1", "A", N // 2), ("v2", "B", N // 2)]
    refs = sp.sql("SELECT count() AS c FROM feedback_events FINAL "
                  "WHERE source = 'reviewer' AND reference != ''")
    assert refs[0]["c"] == N // 5
