"""Window detector: groundedness, log-probability uncertainty and user flags.

:class:`HallucinationSignals` turns one window of inference events into

* ``hallucination.groundedness_mean``: mean :class:`GroundednessScorer`
  score of the responses that carry a ``context`` (n = responses scored);
* ``hallucination.ungrounded_share``: share of those below ``threshold``
  (default 0.2, i.e. the model puts the probability of "not grounded"
  above 0.8: its overlap part, learned from news summaries, distrusts the
  free paraphrases common in support answers, so at 0.5 a healthy window
  of them already reads as a quarter or more ungrounded);
  ``detail.worst`` lists the least grounded responses with their event id,
  the weakest sentence and what in it the context does not support;
* ``hallucination.flagged_rate``: share of responses a person flagged as
  hallucinated in feedback (``feedback.hallucination``; n = responses with
  that feedback);
* ``hallucination.logprob_mean``: mean per-token log-probability (average
  of per-response means) and ``hallucination.low_logprob_share``: mean
  share of tokens under ``logprob_threshold`` (default ln 0.1), for
  responses that carry ``token_logprobs``.

A signal is emitted only when its inputs are present in the window. Below
``min_n`` inputs the value is still emitted but ``detail.small_sample`` is
true: a share over a handful of responses swings wildly. Scoring text is
per-response work (about a millisecond each), so at most ``max_scored``
responses are scored per window, evenly spaced and therefore deterministic;
``detail.scored`` says how many were.

>>> from detectors.testing import synthetic_batch
>>> sig = {s.signal: s for s in HallucinationSignals().update(synthetic_batch(400, seed=2))}
>>> sorted(sig)  # doctest: +NORMALIZE_WHITESPACE
['hallucination.flagged_rate', 'hallucination.groundedness_mean', 'hallucination.logprob_mean',
 'hallucination.low_logprob_share', 'hallucination.ungrounded_share']
>>> sig["hallucination.flagged_rate"].n, round(sig["hallucination.flagged_rate"].value, 3)
(200, 0.06)
>>> round(sig["hallucination.logprob_mean"].value, 3)
-0.301
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors.base import Batch, Detector, Signal
from detectors.hallucination.groundedness import GroundednessScorer
from detectors.hallucination.uncertainty import LOW_LOGPROB, window_logprob_stats

__all__ = ["HallucinationSignals"]


class HallucinationSignals(Detector):
    """Hallucination signals for one window of events (stateless between windows)."""

    signals = (
        "hallucination.groundedness_mean",
        "hallucination.ungrounded_share",
        "hallucination.flagged_rate",
        "hallucination.logprob_mean",
        "hallucination.low_logprob_share",
    )

    def __init__(
        self,
        threshold: float = 0.2,
        min_n: int = 20,
        max_scored: int = 2000,
        top_k: int = 5,
        logprob_threshold: float = LOW_LOGPROB,
        model: str = "default",
    ) -> None:
        self.threshold = threshold
        self.model = model
        self.min_n = min_n
        self.max_scored = max_scored
        self.top_k = top_k
        self.logprob_threshold = logprob_threshold
        # "default" = the shipped model; a path = that model file; a missing
        # file falls back to the rule score, and ``detail.method`` says so
        self._scorer = GroundednessScorer(model=model, threshold=threshold)

    def _config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "min_n": self.min_n,
            "max_scored": self.max_scored,
            "top_k": self.top_k,
            "logprob_threshold": self.logprob_threshold,
            "model": self.model,
        }

    def snapshot(self) -> dict[str, Any]:
        """The configuration (no state outlives a window)."""
        return self._config()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.__init__(**dict(state))  # type: ignore[misc]

    def update(self, batch: Batch) -> list[Signal]:
        out: list[Signal] = []
        out += self._groundedness(batch)
        out += self._flags(batch)
        out += self._logprobs(batch)
        return out

    def _small(self, n: int) -> dict[str, Any]:
        return {"min_n": self.min_n, "small_sample": n < self.min_n}

    def _groundedness(self, batch: Batch) -> list[Signal]:
        responses = batch.texts("response")
        contexts = batch.texts("context")
        idx = np.flatnonzero(
            [bool(r) and bool(c) for r, c in zip(responses, contexts, strict=True)]
        )
        if idx.size == 0:
            return []
        available = int(idx.size)
        if idx.size > self.max_scored:
            idx = idx[np.linspace(0, idx.size - 1, self.max_scored).round().astype(np.int64)]
        results = [self._scorer.score(str(responses[i]), contexts[i]) for i in idx]
        scores = np.asarray([g.score for g in results])
        ids = batch.strings("event_id")
        order = np.argsort(scores, kind="stable")[: self.top_k]
        worst = [
            {"event_id": str(ids[idx[j]]), **results[j].to_detail()}
            for j in order
            if scores[j] < self.threshold
        ]
        n = int(idx.size)
        common = {
            **self._small(n), "scored": n, "available": available,
            "sampling_rate": round(n / available, 4),
            # "rules" when the learned model file is missing: the score is the rule-based fallback
            "method": "learned" if self._scorer.model is not None else "rules",
            "model": self._scorer.model_source,
        }
        return [
            batch.signal("hallucination.groundedness_mean", float(scores.mean()), n=n, detail=common),
            batch.signal(
                "hallucination.ungrounded_share",
                float((scores < self.threshold).mean()),
                n=n,
                detail={**common, "threshold": self.threshold, "worst": worst},
            ),
        ]

    def _flags(self, batch: Batch) -> list[Signal]:
        flags = batch.numeric("feedback.hallucination")
        known = np.isfinite(flags)
        n = int(known.sum())
        if n == 0:
            return []
        flagged = np.flatnonzero(known & (flags > 0.5))
        ids = batch.strings("event_id")
        detail = {**self._small(n), "flagged": int(flagged.size),
                  "examples": [str(ids[i]) for i in flagged[: self.top_k]]}
        return [batch.signal("hallucination.flagged_rate", float(flags[known].mean()), n=n, detail=detail)]

    def _logprobs(self, batch: Batch) -> list[Signal]:
        stats = window_logprob_stats(batch.texts("token_logprobs"), self.logprob_threshold)
        has = np.isfinite(stats["mean"])
        n = int(has.sum())
        if n == 0:
            return []
        ids = batch.strings("event_id")
        lowest = np.flatnonzero(has)[np.argsort(stats["mean"][has], kind="stable")[: self.top_k]]
        detail = {
            **self._small(n),
            "min_logprob": float(np.min(stats["min"][has])),
            "surprise_p90_mean": float(np.mean(stats["surprise_p90"][has])),
            "least_confident": [
                {"event_id": str(ids[i]), "logprob_mean": round(float(stats["mean"][i]), 4)}
                for i in lowest
            ],
        }
        return [
            batch.signal("hallucination.logprob_mean", float(np.mean(stats["mean"][has])), n=n, detail=detail),
            batch.signal(
                "hallucination.low_logprob_share",
                float(np.mean(stats["low_share"][has])),
                n=n,
                detail={**self._small(n), "threshold": self.logprob_threshold},
            ),
        ]
