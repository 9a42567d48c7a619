"""AUROC and the evaluation of groundedness scores on a labelled set.

:func:`auroc` is the Mann-Whitney form (ties count one half), computed from
ranks in O(n log n); a test checks it against scikit-learn.

>>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> auroc([0, 1, 1], [0.5, 0.5, 0.9])
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = ["SCORES", "auroc", "evaluate", "score_items"]


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative).

    NaN when only one class is present.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


SCORES: tuple[str, ...] = ("groundedness", "rule", "specifics", "token_support", "learned", "logprob")
"""Scores evaluated, each oriented so that higher means "more likely hallucinated"."""


def score_items(items: Sequence[dict[str, Any]], scorer: Any = None) -> dict[str, np.ndarray]:
    """Every score of :data:`SCORES` for each item (``logprob`` NaN without ``token_logprobs``)."""
    from llmpulse.detectors.hallucination.groundedness import GroundednessScorer
    from llmpulse.detectors.hallucination.uncertainty import logprob_stats

    scorer = scorer or GroundednessScorer()
    out: dict[str, list[float]] = {k: [] for k in SCORES}
    for item in items:
        g = scorer.score(item.get("response", item.get("answer", "")), item.get("context"))
        out["groundedness"].append(1.0 - g.score)
        out["rule"].append(1.0 - g.rule_score)
        out["specifics"].append(1.0 - g.specifics_score)
        out["token_support"].append(1.0 - min((c.context_recall for c in g.sentences), default=1.0))
        out["learned"].append(g.probability)
        lp = item.get("token_logprobs")
        out["logprob"].append(-logprob_stats(lp)["mean"] if lp else float("nan"))
    return {k: np.asarray(v) for k, v in out.items()}


def evaluate(items: Sequence[dict[str, Any]], scorer: Any = None) -> dict[str, Any]:
    """AUROC of each score overall and per hallucination ``type`` (vs all faithful items).

    >>> items = [{"response": "Fees are $6.", "context": ["Fees are $5."], "label": 1, "type": "amount"},
    ...          {"response": "Fees are five dollars.", "context": ["Fees are $5."], "label": 0}]
    >>> r = evaluate(items)
    >>> r["n"], r["auroc"]["groundedness"]
    (2, 1.0)
    """
    y = np.asarray([int(i["label"]) for i in items])
    types = np.asarray([str(i.get("type", "")) for i in items])
    scores = score_items(items, scorer)
    result: dict[str, Any] = {"n": len(items), "n_hallucinated": int(y.sum()), "auroc": {}, "by_type": {}}
    for name, s in scores.items():
        ok = np.isfinite(s)
        if ok.sum() == 0:
            result["auroc"][name] = None
            continue
        result["auroc"][name] = round(auroc(y[ok], s[ok]), 4)
    for t in sorted(set(types[y == 1])):
        mask = (types == t) | (y == 0)
        result["by_type"][t] = {
            "n": int(((types == t) & (y == 1)).sum()),
            **{name: round(auroc(y[mask], s[mask]), 4) for name, s in scores.items() if np.isfinite(s).all()},
        }
    return result
