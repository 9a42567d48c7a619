"""``judge.agreement_auroc`` and ``judge.agreement_spearman``: does the cheap signal
still agree with the expensive one?

An LLM judge (``llmpulse judge``) scores a sample of answers and stores its
scores as feedback with ``source=judge``: ``judge.groundedness`` (the
judge's, 0..1) next to ``judge.groundedness_free`` (llmpulse's own
judge-free groundedness score of the same answer, computed by the judge
service at the same time). Per window:

* AUROC of the judge-free score for telling the answers the judge calls
  grounded (judge groundedness >= ``threshold``) from the others: 1 is
  perfect, 0.5 is chance. Computed as the Mann-Whitney U statistic over
  n_grounded x n_ungrounded (``sklearn.metrics.roc_auc_score`` gives the
  same, checked in the tests); only when both classes have an answer.
* Spearman's rank correlation of the two scores (``scipy.stats.spearmanr``).

A drop means the judge-free groundedness no longer tracks the judge on this
traffic: its alerts have become less trustworthy.

>>> rows = [(0.9, 0.8), (0.8, 0.9), (0.2, 0.3), (0.1, 0.4), (0.7, 0.2)]
>>> b = Batch.from_events([{"ts": 1000 * i, "feedback": {"judge_groundedness": j,
...     "judge_groundedness_free": f}} for i, (j, f) in enumerate(rows)], start=0.0, end=60.0)
>>> [(s.signal, round(s.value, 3), s.n) for s in JudgeAgreement(min_n=5).update(b)]
[('judge.agreement_auroc', 0.667, 5), ('judge.agreement_spearman', 0.5, 5)]
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from llmpulse.detectors.base import Batch, Detector, Signal

__all__ = ["JudgeAgreement"]


class JudgeAgreement(Detector):
    """Agreement of the judge-free groundedness score with the judge's, per window."""

    signals = ("judge.agreement_auroc", "judge.agreement_spearman")

    def __init__(self, *, threshold: float = 0.5, min_n: int = 10) -> None:
        self.threshold = float(threshold)
        self.min_n = int(min_n)

    def update(self, batch: Batch) -> list[Signal]:
        if len(batch) == 0 or not batch.has("feedback.judge_groundedness"):
            return []
        judge = batch.numeric("feedback.judge_groundedness")
        free = batch.numeric("feedback.judge_groundedness_free")
        ok = ~np.isnan(judge) & ~np.isnan(free)
        j, f = judge[ok], free[ok]
        n = int(j.size)
        if n < self.min_n:
            return []
        out: list[Signal] = []
        pos = j >= self.threshold
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        detail = {"grounded": n_pos, "ungrounded": n_neg, "threshold": self.threshold,
                  "judge_mean": float(j.mean()), "free_mean": float(f.mean())}
        if n_pos and n_neg:
            u = stats.mannwhitneyu(f[pos], f[~pos], alternative="two-sided").statistic
            out.append(batch.signal("judge.agreement_auroc", float(u) / (n_pos * n_neg), n=n,
                                    detail=detail))
        if np.ptp(j) > 0 and np.ptp(f) > 0:
            rho = stats.spearmanr(j, f)
            out.append(batch.signal("judge.agreement_spearman", float(rho.statistic), n=n,
                                    detail={**detail, "p_value": float(rho.pvalue)}))
        return out
