"""JudgeAgreement against scikit-learn's AUROC and scipy's Spearman on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from llmpulse.detectors.base import Batch
from llmpulse.detectors.quality import JudgeAgreement


def _batch(judge: np.ndarray, free: np.ndarray) -> Batch:
    events = [{"ts": 1000 + i, "event_id": f"e{i}",
               "feedback": {"judge_groundedness": float(j), "judge_groundedness_free": float(f)}}
              for i, (j, f) in enumerate(zip(judge, free, strict=True))]
    events.append({"ts": 999, "event_id": "no-judge", "feedback": {"score": 1.0}})
    return Batch.from_events(events, start=0.0, end=60.0)


def test_matches_sklearn_and_scipy() -> None:
    rng = np.random.default_rng(4)
    judge = np.round(rng.uniform(0, 1, 300), 1)  # judges answer in steps: ties
    free = np.clip(judge + rng.normal(0, 0.3, 300), 0, 1)
    out = {s.signal: s for s in JudgeAgreement().update(_batch(judge, free))}
    assert out["judge.agreement_auroc"].value == pytest.approx(
        roc_auc_score(judge >= 0.5, free), rel=1e-12)
    assert out["judge.agreement_spearman"].value == pytest.approx(
        stats.spearmanr(judge, free).statistic, rel=1e-12)
    assert out["judge.agreement_auroc"].n == 300


def test_agreement_falls_when_the_free_score_drifts_away() -> None:
    rng = np.random.default_rng(8)
    judge = rng.uniform(0, 1, 200)
    tracking = JudgeAgreement().update(_batch(judge, np.clip(judge + rng.normal(0, 0.1, 200), 0, 1)))
    unrelated = JudgeAgreement().update(_batch(judge, rng.uniform(0, 1, 200)))
    assert tracking[0].value > 0.9 and 0.35 < unrelated[0].value < 0.65


def test_few_rows_or_one_class_give_no_auroc() -> None:
    assert JudgeAgreement(min_n=10).update(_batch(np.array([0.9] * 5), np.array([0.5] * 5))) == []
    one_class = JudgeAgreement().update(_batch(np.full(20, 0.9), np.linspace(0, 1, 20)))
    assert [s.signal for s in one_class] == []  # no ungrounded answer, constant judge score
