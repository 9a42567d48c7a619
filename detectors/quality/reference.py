"""``quality.rouge_l``, ``quality.bleu``, ``quality.chrf``: answers against references.

A reference answer arrives as feedback (``reference``: a reviewer's
correction, or the expected answer of a golden set) and is joined onto the
inference it rates; each response with a reference is scored with the
field's libraries, not a re-implementation:

* ROUGE-L F1 as ``rouge-score`` computes it (``RougeScorer(["rougeL"])``; its
  default tokenizer lower-cases and keeps ASCII letters and digits only, so it
  is meant for English text): its tokenizer and its F-measure, with the length
  of the longest common subsequence counted bit-parallel (:func:`lcs_length`)
  instead of in the library's table, which costs time and memory in the product
  of the two lengths (two texts of 8,000 words took 13 s; of 40,000 words, the
  shim's limit, gigabytes). A test compares the two on generated and real pairs;
* BLEU from ``sacrebleu.sentence_bleu`` (with ``effective_order``, the
  sentence-level setting) and chrF from ``sacrebleu.sentence_chrf``, both
  divided by 100 so that all three read 0..1.

The value is the mean over the window's scored responses; ``detail`` has the
10th percentile, the count per feedback ``source`` and the ``top_k`` worst
examples (ids, score and the start of both texts). At most ``max_scored``
pairs are scored per window (the first ones in event time), and at most
``max_chars`` characters of responses and references (a pair that would go past
them is left unscored and counted in ``detail.skipped_for_size``).

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
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Signal

__all__ = ["ReferenceOverlap", "lcs_length", "reference_scores", "rouge_l"]

_SNIPPET = 160


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """The length of the longest common subsequence of ``a`` and ``b``.

    Bit-parallel (Allison and Dix; Hyyrö): one bit per item of ``a``, a few
    big-integer operations per item of ``b``, so time in ``len(a) * len(b)`` /
    the machine word and memory in ``len(a)``.

    >>> lcs_length("the cat sat on the mat".split(), "the cat sat on a mat".split())
    5
    >>> lcs_length("ABCBDAB", "BDCABA"), lcs_length("", "abc"), lcs_length("abc", "abc")
    (4, 0, 3)
    """
    if not a or not b:
        return 0
    masks: dict[Hashable, int] = {}
    for i, item in enumerate(a):
        masks[item] = masks.get(item, 0) | 1 << i
    full = (1 << len(a)) - 1
    v = full  # a zero bit per item of a matched so far
    for item in b:
        m = masks.get(item)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(reference: str, response: str, tokenizer: Any = None) -> float:
    """ROUGE-L F1 of ``response`` against ``reference``, as ``rouge-score``'s
    ``RougeScorer(["rougeL"]).score(reference, response)`` gives it.

    >>> round(rouge_l("the cat sat on a mat", "the cat sat on the mat"), 3)
    0.833
    """
    from rouge_score import scoring, tokenizers

    tok = tokenizer if tokenizer is not None else tokenizers.DefaultTokenizer(use_stemmer=False)
    target, prediction = tok.tokenize(reference), tok.tokenize(response)
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    return float(scoring.fmeasure(lcs / len(prediction), lcs / len(target)))


def reference_scores(response: str, reference: str, tokenizer: Any = None) -> tuple[float, float, float]:
    """(ROUGE-L F1, BLEU, chrF) of one response against one reference, all 0..1.

    >>> [round(x, 3) for x in reference_scores("the cat sat on the mat", "the cat sat on a mat")]
    [0.833, 0.537, 0.721]
    """
    import sacrebleu

    rouge = rouge_l(reference, response, tokenizer)
    bleu = float(sacrebleu.sentence_bleu(response, [reference], smooth_method="exp").score) / 100.0
    chrf = float(sacrebleu.sentence_chrf(response, [reference]).score) / 100.0
    return rouge, bleu, chrf


class ReferenceOverlap(Detector):
    """ROUGE-L, BLEU and chrF of the window's responses that have a reference."""

    signals = ("quality.rouge_l", "quality.bleu", "quality.chrf")

    def __init__(self, *, max_scored: int = 500, top_k: int = 5, max_chars: int = 2_000_000) -> None:
        self.max_scored = int(max_scored)
        self.top_k = int(top_k)
        self.max_chars = int(max_chars)

    def snapshot(self) -> dict[str, Any]:
        return {"max_scored": self.max_scored, "top_k": self.top_k, "max_chars": self.max_chars}

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
        # the characters read per window are bounded (scoring is linear in them): a
        # pair that would take the window past the budget is left unscored, counted
        fitting: list[int] = []
        spent = too_large = 0
        for i in rows:
            size = len(resps[i]) + len(refs[i])
            if fitting and spent + size > self.max_chars:
                too_large += 1
                continue
            spent += size
            fitting.append(i)
        rows = fitting
        from rouge_score import tokenizers

        tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
        scores = np.array([reference_scores(resps[i], refs[i], tokenizer) for i in rows])
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
                "skipped_for_size": too_large,
            }
            out.append(batch.signal(name, float(vals.mean()), n=len(rows), detail=detail))
        return out


def _round(x: float) -> float:
    return round(float(x), 6) if not math.isnan(x) else 0.0
