"""``quality.rouge_l``, ``quality.bleu``, ``quality.chrf``: answers against references.

A reference answer arrives as feedback (``reference``: a reviewer's
correction, or the expected answer of a golden set) and is joined onto the
inference it rates; each response with a reference is scored with the
field's libraries, not a re-implementation:

* ROUGE-L F1 from ``rouge-score`` (``RougeScorer(["rougeL"])``; its default
  tokenizer lower-cases and keeps ASCII letters and digits only, so it is
  meant for English text);
* BLEU from ``sacrebleu.sentence_bleu`` (with ``effective_order``, the
  sentence-level setting) and chrF from ``sacrebleu.sentence_chrf``, both
  divided by 100 so that all three read 0..1.

The value is the mean over the window's scored responses; ``detail`` has the
10th percentile, the count per feedback ``source`` and the ``top_k`` worst
examples (ids, score and the start of both texts). At most ``max_scored``
pairs are scored per window (the first ones in event time).

>>> b = Batch.from_events([
...     {"ts": 1_000, "event_id": "e1", "response": "The refund takes five days.",
...      "feedback": {"reference": "The refund takes five days.", "source": "reviewer"}},
...     {"ts": 2_000, "event_id": "e2", "response": "Call us.",
...      "feedback": {"reference": "Refunds take five working days.", "source": "golden"}},
... ], start=0.0, end=60.0)
>>> [(s.signal, round(s.value, 3), s.n) for s in ReferenceOverlap().update(b)]
[('quality.rouge_l', 0.5, 2), ('quality.bleu', 0.551, 2), ('quality.chrf', 0.518, 2)]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Signal

__all__ = ["ReferenceOverlap", "reference_scores"]

_SNIPPET = 160


def reference_scores(response: str, reference: str, scorer: Any = None) -> tuple[float, float, float]:
    """(ROUGE-L F1, BLEU, chrF) of one response against one reference, all 0..1.

    >>> [round(x, 3) for x in reference_scores("the cat sat on the mat", "the cat sat on a mat")]
    [0.833, 0.537, 0.721]
    """
    import sacrebleu

    if scorer is None:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = float(scorer.score(reference, response)["rougeL"].fmeasure)
    bleu = float(sacrebleu.sentence_bleu(response, [reference], smooth_method="exp").score) / 100.0
    chrf = float(sacrebleu.sentence_chrf(response, [reference]).score) / 100.0
    return rouge, bleu, chrf


class ReferenceOverlap(Detector):
    """ROUGE-L, BLEU and chrF of the window's responses that have a reference."""

    signals = ("quality.rouge_l", "quality.bleu", "quality.chrf")

    def __init__(self, *, max_scored: int = 500, top_k: int = 5) -> None:
        self.max_scored = int(max_scored)
        self.top_k = int(top_k)

    def snapshot(self) -> dict[str, Any]:
        return {"max_scored": self.max_scored, "top_k": self.top_k}

    def restore(self, state: Any) -> None:
        self.__init__(**dict(state))  # type: ignore[misc]

    def update(self, batch: Batch) -> list[Signal]:
        if len(batch) == 0:
            return []
        refs = batch.texts("feedback.reference")
        resps = batch.texts("response")
        rows = [i for i in range(len(batch)) if refs[i] and isinstance(resps[i], str)]
        if not rows:
            return []
        rows = rows[: self.max_scored]
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
        scores = np.array([reference_scores(resps[i], refs[i], scorer) for i in rows])
        ids = batch.strings("event_id")
        rids = batch.strings("request_id")
        sources = batch.strings("feedback.source")
        by_source: dict[str, int] = {}
        for i in rows:
            key = str(sources[i]) or "unknown"
            by_source[key] = by_source.get(key, 0) + 1
        out: list[Signal] = []
        for col, name in enumerate(self.signals):
            vals = scores[:, col]
            worst = np.argsort(vals, kind="stable")[: self.top_k]
            detail = {
                "p10": float(np.quantile(vals, 0.1)),
                "min": float(vals.min()),
                "by_source": by_source,
                "worst": [
                    {
                        "event_id": str(ids[rows[j]]),
                        "request_id": str(rids[rows[j]]),
                        "score": _round(vals[j]),
                        "response": resps[rows[j]][:_SNIPPET],
                        "reference": refs[rows[j]][:_SNIPPET],
                    }
                    for j in worst
                ],
                "truncated": len(rows) == self.max_scored,
            }
            out.append(batch.signal(name, float(vals.mean()), n=len(rows), detail=detail))
        return out


def _round(x: float) -> float:
    return round(float(x), 6) if not math.isnan(x) else 0.0
