"""Quality detectors against references: sklearn accuracy, scipy t-interval,
statsmodels Wilson intervals; exact merges; guards."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score
from statsmodels.stats.proportion import proportion_confint

from llmpulse.detectors.base import Batch
from llmpulse.detectors.quality import FeedbackScore, LabelAccuracy, UserFlaggedRate
from llmpulse.detectors.testing import synthetic_batch, synthetic_events


def labelled(n: int, seed: int, accuracy: float) -> tuple[Batch, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.array(["billing", "refund", "shipping"])
    true = rng.choice(labels, n)
    pred = np.where(rng.random(n) < accuracy, true, rng.choice(labels, n))
    events = [
        {"ts": 1_700_000_000_000 + i, "event_id": f"e{i}", "prediction": {"label": str(p)},
         "feedback": {"label": str(t)} if i % 3 else {}}
        for i, (p, t) in enumerate(zip(pred, true, strict=True))
    ]
    keep = np.arange(n) % 3 != 0
    return Batch.from_events(events, start=1_700_000_000.0, end=1_700_000_060.0), pred[keep], true[keep]


@pytest.mark.parametrize("accuracy", [0.3, 0.9])
def test_label_accuracy_matches_sklearn_and_statsmodels(accuracy: float) -> None:
    batch, pred, true = labelled(3000, seed=4, accuracy=accuracy)
    [s] = LabelAccuracy().update(batch)
    assert s.signal == "quality.accuracy"
    assert s.n == len(true) == 2000
    assert s.value == pytest.approx(accuracy_score(true, pred), abs=1e-12)
    lo, hi = proportion_confint(s.detail["correct"], s.n, alpha=0.05, method="wilson")
    assert (s.detail["ci_low"], s.detail["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert s.ts == 1_700_000_060.0 and s.window_s == 60.0
    # wrong draws hit the true label a third of the time
    assert s.value == pytest.approx(accuracy + (1 - accuracy) / 3, abs=0.03)
    assert s.detail["ci_low"] < s.value < s.detail["ci_high"]


def test_label_accuracy_small_sample_and_no_labels() -> None:
    batch, _, _ = labelled(12, seed=1, accuracy=0.8)
    [s] = LabelAccuracy(min_n=20).update(batch)
    assert s.n == 8 and s.detail["small_sample"] is True
    assert LabelAccuracy().update(synthetic_batch(100, seed=1, with_feedback=False)) == []


def test_feedback_score_matches_scipy() -> None:
    batch = synthetic_batch(2000, seed=6)
    x = batch.numeric("feedback.score")
    x = x[~np.isnan(x)]
    [s] = FeedbackScore().update(batch)
    assert (s.signal, s.n) == ("quality.feedback_score", x.size)
    assert s.value == pytest.approx(float(x.mean()), abs=1e-12)
    assert s.detail["std"] == pytest.approx(float(x.std(ddof=1)), rel=1e-9)
    lo, hi = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    assert (s.detail["ci_low"], s.detail["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
    assert s.detail["negative_share"] == pytest.approx(float((x < 0).mean()))


def test_feedback_score_single_value_has_no_interval() -> None:
    events = synthetic_events(2, seed=0)
    [s] = FeedbackScore().update(Batch.from_events(events))
    assert s.n == 1 and s.detail["ci_low"] is None and s.detail["small_sample"]


def test_user_flagged_rate_matches_counts_and_hallucination_signals() -> None:
    from llmpulse.detectors.hallucination import HallucinationSignals

    batch = synthetic_batch(1500, seed=8)
    flags = batch.numeric("feedback.hallucination")
    known = flags[~np.isnan(flags)]
    [s] = UserFlaggedRate().update(batch)
    assert (s.n, s.detail["flagged"]) == (known.size, int(known.sum()))
    assert s.value == pytest.approx(float(known.mean()))
    lo, hi = proportion_confint(int(known.sum()), known.size, alpha=0.05, method="wilson")
    assert (s.detail["ci_low"], s.detail["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    other = {x.signal: x for x in HallucinationSignals(max_scored=10).update(batch)}
    assert other["hallucination.flagged_rate"].value == pytest.approx(s.value)
    assert len(s.detail["examples"]) == 5


@pytest.mark.parametrize("cls", [LabelAccuracy, FeedbackScore, UserFlaggedRate])
def test_merge_of_parts_equals_the_whole(cls: type) -> None:
    batch = synthetic_batch(900, seed=9)
    idx = np.arange(900)
    parts = [cls() for _ in range(3)]
    for k, d in enumerate(parts):
        d.update(batch.select(idx % 3 == k))
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    [m] = parts[0].emit()
    [w] = cls().update(batch)
    assert (m.signal, m.n, m.ts, m.window_s) == (w.signal, w.n, w.ts, w.window_s)
    assert m.value == pytest.approx(w.value, abs=1e-12)
    restored = cls()
    restored.restore(parts[0].snapshot())
    assert restored.emit()[0].value == m.value
    with pytest.raises(TypeError):
        parts[0].merge(object())
