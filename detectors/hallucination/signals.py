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
* ``hallucination.ungrounded_excess``: that share minus the group's own
  trailing baseline (the pooled share of up to ``baseline_windows``
  previous windows), emitted once ``baseline_min_windows`` windows are in
  the baseline. ``detail.significant`` is a one-sided test of the excess
  against the baseline's sampling error *and* its spread from one window to
  the next (a healthy app's share moves with what its users ask; a slow
  trend is not counted as spread), at ``alpha``.
  Windows significantly above the baseline do not enter it, so an incident
  does not become the new normal; after ``max_excluded`` such windows in a
  row the level is accepted as the new baseline. Because the score's false
  positive rate depends on the domain (free paraphrases of a help centre
  read as less grounded than news summaries), an alert on this excess
  means "more ungrounded than this app usually is", which an absolute
  share cannot say without tuning per app;
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
``detail.scored`` says how many were and ``detail.sampling_rate`` which
share of the available ones that is. The work is linear in the text, so the
characters read per window are bounded as well (``max_chars``, 2 million, a
context shared by several answers counted once: a few seconds): an answer that would take the window past them is left
unscored and counted in ``detail.skipped_for_size``.

>>> from llmpulse.detectors.testing import synthetic_batch
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

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Signal
from llmpulse.detectors.hallucination.groundedness import GroundednessScorer
from llmpulse.detectors.hallucination.uncertainty import LOW_LOGPROB, window_logprob_stats

__all__ = ["HallucinationSignals"]


class HallucinationSignals(Detector):
    """Hallucination signals for one window of events (stateless between windows)."""

    signals = (
        "hallucination.groundedness_mean",
        "hallucination.ungrounded_share",
        "hallucination.ungrounded_excess",
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
        baseline_windows: int = 12,
        baseline_min_windows: int = 3,
        alpha: float = 0.01,
        max_excluded: int = 10,
        max_chars: int = 2_000_000,
    ) -> None:
        if baseline_windows < 1 or not 1 <= baseline_min_windows <= baseline_windows:
            raise ValueError(
                "baseline_min_windows must be within 1..baseline_windows, got "
                f"{baseline_min_windows!r} and {baseline_windows!r}"
            )
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be within (0, 1), got {alpha!r}")
        if max_excluded < 1:
            raise ValueError(f"max_excluded must be >= 1, got {max_excluded!r}")
        self.threshold = threshold
        self.model = model
        self.min_n = min_n
        self.max_scored = max_scored
        self.top_k = top_k
        self.logprob_threshold = logprob_threshold
        self.baseline_windows = baseline_windows
        self.baseline_min_windows = baseline_min_windows
        self.alpha = alpha
        self.max_excluded = max_excluded
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars!r}")
        self.max_chars = max_chars
        # the baseline: [window end, ungrounded, scored] of recent windows
        self._history: list[list[float]] = []
        self._excluded = 0
        self._last_end = -math.inf
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
            "baseline_windows": self.baseline_windows,
            "baseline_min_windows": self.baseline_min_windows,
            "alpha": self.alpha,
            "max_excluded": self.max_excluded,
            "max_chars": self.max_chars,
        }

    def snapshot(self) -> dict[str, Any]:
        """The configuration and the baseline (plain numbers: JSON-able)."""
        return {
            **self._config(),
            "baseline": {
                "history": [list(h) for h in self._history],
                "excluded": self._excluded,
                "last_end": self._last_end if math.isfinite(self._last_end) else None,
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        config = dict(state)
        baseline = config.pop("baseline", None) or {}
        self.__init__(**config)  # type: ignore[misc]
        self._history = [[float(x) for x in h] for h in baseline.get("history", [])]
        self._excluded = int(baseline.get("excluded", 0))
        last = baseline.get("last_end")
        self._last_end = -math.inf if last is None else float(last)

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
        # the characters read per window are bounded too: scoring is linear in the
        # text, and one answer may carry megabytes; an answer that would take the
        # window past the budget is left unscored (counted), the others still are
        # (a context shared by several answers is read once: it counts once)
        kept: list[int] = []
        seen: set[object] = set()
        spent = too_large = 0
        for i in idx:
            ctx = contexts[i]
            key = ctx if isinstance(ctx, str) else tuple(map(str, ctx))
            size = len(str(responses[i]))
            if key not in seen:
                size += len(ctx) if isinstance(ctx, str) else sum(map(len, key))
            if kept and spent + size > self.max_chars:
                too_large += 1
                continue
            spent += size
            seen.add(key)
            kept.append(int(i))
        idx = np.asarray(kept, dtype=np.int64)
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
            "sampling_rate": round(n / available, 4), "skipped_for_size": too_large,
            # "rules" when the learned model file is missing: the score is the rule-based fallback
            "method": "learned" if self._scorer.model is not None else "rules",
            "model": self._scorer.model_source,
        }
        ungrounded = int((scores < self.threshold).sum())
        out = [
            batch.signal("hallucination.groundedness_mean", float(scores.mean()), n=n, detail=common),
            batch.signal(
                "hallucination.ungrounded_share",
                ungrounded / n,
                n=n,
                detail={**common, "threshold": self.threshold, "worst": worst},
            ),
        ]
        excess = self._excess(batch.end, ungrounded, n)
        if excess is not None:
            value, detail = excess
            out.append(batch.signal(
                "hallucination.ungrounded_excess", value, n=n,
                detail={**common, **detail, "threshold": self.threshold, "worst": worst},
            ))
        return out

    def _excess(self, end: float, k: int, n: int) -> tuple[float, dict[str, Any]] | None:
        """The window's ungrounded share against the trailing baseline, then the
        baseline updated with this window (unless it is an outlier above it).

        A window seen before (same or earlier end, e.g. a replay) is compared
        but does not enter the baseline twice.
        """
        hist = self._history[-self.baseline_windows:]
        result: tuple[float, dict[str, Any]] | None = None
        significant = False
        if len(hist) >= self.baseline_min_windows:
            k0 = sum(h[1] for h in hist)
            n0 = sum(h[2] for h in hist)
            p0 = k0 / n0 if n0 else 0.0
            share = k / n
            shares = np.asarray([h[1] / h[2] for h in hist if h[2] > 0])
            # spread from one window to the next beyond what sampling explains,
            # from successive differences (von Neumann), so that a slow trend
            # in the baseline does not count as noise
            binomial = float(np.mean([p0 * (1 - p0) / h[2] for h in hist if h[2] > 0]))
            succ = float(np.mean(np.diff(shares) ** 2) / 2) if shares.size > 1 else 0.0
            between = max(0.0, succ - binomial)
            se = math.sqrt(max(p0 * (1 - p0), 1.0 / n0 if n0 else 1.0) * (1 / n + 1 / max(n0, 1)) + between)
            z = (share - p0) / se if se > 0 else 0.0
            p_value = 0.5 * math.erfc(z / math.sqrt(2))
            significant = bool(p_value < self.alpha) and n >= self.min_n
            result = (share - p0, {
                **self._small(n),
                "baseline_share": round(p0, 4),
                "baseline_n": int(n0),
                "baseline_windows": len(hist),
                "between_window_sd": round(math.sqrt(between), 4),
                "p_value": float(f"{p_value:.4g}"),
                "alpha": self.alpha,
                "significant": significant,
            })
        if end > self._last_end:
            self._last_end = end
            if significant and self._excluded < self.max_excluded:
                self._excluded += 1
            else:
                if not significant:
                    self._excluded = 0
                self._history.append([end, float(k), float(n)])
                del self._history[: -self.baseline_windows]
        return result

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
