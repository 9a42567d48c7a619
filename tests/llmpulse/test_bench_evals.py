"""The evals benchmark runs end to end (short) and reports every figure it promises."""

from __future__ import annotations

from llmpulse.bench import evals
from llmpulse.detectors.quality.ab import METRICS


def test_quick_run_reports_calibration_power_and_throughput() -> None:
    r = evals.run(quick=True)
    assert [row["n_per_arm"] for row in r["aa"]] == [50, 200]
    for row in r["aa"] + r["ab"]:
        assert set(row["worse_rate"]) == set(METRICS)
        assert all(0.0 <= v <= 1.0 for v in row["significant_rate"].values())
    # power grows with the sample (same effect, 4x the requests)
    assert sum(r["ab"][1]["worse_rate"].values()) > sum(r["ab"][0]["worse_rate"].values())
    assert r["reference"]["pairs"] == 100 and r["reference"]["pairs_per_s"] > 0
    assert r["judge"]["grades"] == 49 and not r["judge"]["failures"]
    table = evals.format_table(r)
    assert "A/A false positives" in table and "grades/s" in table
