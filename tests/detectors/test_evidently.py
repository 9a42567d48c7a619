"""Agreement with Evidently 0.7 on the same data, and the drift report artifacts.

Tolerance: PSI, Jensen-Shannon and normalised Wasserstein agree with
Evidently's ``ValueDrift`` to 1e-9 relative (floating-point rounding; the
binning is the same code path), the KS p-value to 1e-12 relative (both call
``scipy.stats.ks_2samp``).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift

from llmpulse.detectors.base import Batch
from llmpulse.detectors.drift import (
    EvidentlyDriftReport,
    JensenShannonDistance,
    KolmogorovSmirnov,
    PopulationStabilityIndex,
    ReferencePolicy,
    WassersteinDistance,
)

TOL = 1e-9


def _evidently(ref: np.ndarray, cur: np.ndarray, methods: list[str], kind: str) -> list[float]:
    if kind == "numeric":
        definition = DataDefinition(numerical_columns=["x"])
    else:
        definition = DataDefinition(categorical_columns=["x"])
    snap = Report([ValueDrift(column="x", method=m) for m in methods]).run(
        Dataset.from_pandas(pd.DataFrame({"x": cur}), data_definition=definition),
        Dataset.from_pandas(pd.DataFrame({"x": ref}), data_definition=definition),
    )
    return [float(m["value"]) for m in snap.dict()["metrics"]]


def _ours(cls, ref: np.ndarray, cur: np.ndarray) -> dict:
    d = cls(["x"], reference=ReferencePolicy.fixed(ref.size))
    d.update(Batch({"x": ref}, start=0, end=60))
    [sig] = d.update(Batch({"x": cur}, start=60, end=120))
    return {"value": sig.value, **sig.detail}


CASES = {
    "lognormal-shifted": lambda rng: (rng.lognormal(6, 0.5, 2000), rng.lognormal(6.2, 0.5, 500)),
    "normal-stationary": lambda rng: (rng.normal(0, 1, 3000), rng.normal(0, 1, 400)),
    "wider-window": lambda rng: (rng.normal(0, 1, 1000), rng.normal(0, 3, 600)),
    "integers-few-values": lambda rng: (
        rng.integers(0, 8, 2000).astype(float), rng.integers(2, 12, 500).astype(float)
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_numeric_psi_ks_js_wasserstein_agree_with_evidently(case):
    ref, cur = CASES[case](np.random.default_rng(sorted(CASES).index(case)))
    psi, ks_p, js, wd = _evidently(ref, cur, ["psi", "ks", "jensenshannon", "wasserstein"], "numeric")
    assert _ours(PopulationStabilityIndex, ref, cur)["value"] == pytest.approx(psi, rel=TOL)
    assert _ours(KolmogorovSmirnov, ref, cur)["p_value"] == pytest.approx(ks_p, rel=1e-12)
    assert _ours(JensenShannonDistance, ref, cur)["value"] == pytest.approx(js, rel=TOL)
    assert _ours(WassersteinDistance, ref, cur)["value"] == pytest.approx(wd, rel=TOL)


def test_categorical_psi_and_js_agree_with_evidently():
    rng = np.random.default_rng(5)
    ref = rng.choice(["billing", "refund", "shipping", "account"], 2000).astype(object)
    cur = rng.choice(["billing", "refund", "shipping", "technical"], 500, p=[0.4, 0.2, 0.2, 0.2]).astype(object)
    psi, js = _evidently(ref, cur, ["psi", "jensenshannon"], "categorical")
    assert _ours(PopulationStabilityIndex, ref, cur)["value"] == pytest.approx(psi, rel=TOL)
    assert _ours(JensenShannonDistance, ref, cur)["value"] == pytest.approx(js, rel=TOL)


# -- reports ----------------------------------------------------------------------------------


def _shifted_detector(tmp_path, cls=PopulationStabilityIndex, **kw):
    rng = np.random.default_rng(0)
    d = cls(["latency_ms"], reporter=EvidentlyDriftReport(tmp_path, **kw))
    d.set_reference({"latency_ms": rng.normal(600, 100, 2000)})
    return d, rng


def test_report_is_saved_on_a_crossing_with_html_and_metrics_json(tmp_path):
    d, rng = _shifted_detector(tmp_path)
    cur = rng.normal(720, 100, 500)
    [sig] = d.update(Batch({"latency_ms": cur}, start=1_700_000_000, end=1_700_000_060))
    path = tmp_path / "reports" / "20231114T221420Z-drift.psi-latency_ms.html"
    assert sig.detail["drift"] and sig.detail["report"] == str(path)
    assert path.stat().st_size > 10_000 and "<html" in path.read_text()[:2000].lower()
    metrics = json.loads(path.with_suffix(".json").read_text())["metrics"]
    [drift] = [m for m in metrics if m["metric_name"].startswith("ValueDrift")]
    assert "PSI" in drift["metric_name"] or "psi" in drift["metric_name"]
    assert drift["value"] == pytest.approx(sig.value, rel=TOL)


def test_no_report_below_the_threshold(tmp_path):
    d, rng = _shifted_detector(tmp_path, KolmogorovSmirnov)
    [sig] = d.update(Batch({"latency_ms": rng.normal(600, 100, 500)}, start=0, end=60))
    assert not sig.detail["drift"] and "report" not in sig.detail
    assert not (tmp_path / "reports").exists()


def test_reports_are_rate_limited_per_signal_and_feature_by_event_time(tmp_path):
    d, rng = _shifted_detector(tmp_path, min_interval_s=600)
    made = []
    for i in range(4):  # windows ending at 60, 360, 660, 960 s
        b = Batch({"latency_ms": rng.normal(720, 100, 300)}, start=300 * i, end=300 * i + 60)
        [sig] = d.update(b)
        made.append("report" in sig.detail)
    assert made == [True, False, True, False]
    assert len(list((tmp_path / "reports").glob("*.html"))) == 2


def test_rate_limit_survives_a_restart(tmp_path):
    d, rng = _shifted_detector(tmp_path)
    d.update(Batch({"latency_ms": rng.normal(720, 100, 300)}, start=0, end=60))
    state = json.loads(json.dumps(d.snapshot()))
    fresh = PopulationStabilityIndex(reporter=EvidentlyDriftReport(tmp_path))
    fresh.restore(state)
    [sig] = fresh.update(Batch({"latency_ms": rng.normal(720, 100, 300)}, start=60, end=120))
    assert sig.detail["drift"] and "report" not in sig.detail


def test_a_failing_report_is_logged_and_the_signal_still_goes_out(tmp_path, caplog):
    (tmp_path / "reports").write_text("a file where the directory should be")
    d, rng = _shifted_detector(tmp_path)
    with caplog.at_level(logging.ERROR):
        [sig] = d.update(Batch({"latency_ms": rng.normal(720, 100, 300)}, start=0, end=60))
    assert sig.detail["drift"] and "report" not in sig.detail
    assert "could not build the Evidently report" in caplog.text


def test_categorical_report_uses_chi_square(tmp_path):
    from llmpulse.detectors.drift import ChiSquare

    rng = np.random.default_rng(1)
    d = ChiSquare(["segment.language"], reporter=EvidentlyDriftReport(tmp_path))
    d.set_reference({"segment.language": rng.choice(["en", "de", "fr"], 2000)})
    cur = rng.choice(["en", "de", "fr"], 500, p=[0.6, 0.2, 0.2]).astype(object)
    [sig] = d.update(Batch({"segment.language": cur}, start=0, end=60))
    assert sig.detail["report"].endswith("19700101T000100Z-drift.chi_square-segment.language.html")
    metrics = json.loads((tmp_path / "reports" / "19700101T000100Z-drift.chi_square-segment.language.json").read_text())
    assert any("chi" in m["metric_name"].lower() for m in metrics["metrics"])
