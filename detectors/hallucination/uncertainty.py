"""Uncertainty of a generation from its token log-probabilities.

A model that invents a detail is often less sure of the tokens it invents,
so low and uneven token log-probabilities are a cheap hallucination hint
when the serving layer returns them (``token_logprobs`` in ``inference/v1``).
Per response:

* ``mean``: mean log-probability (higher = more confident);
* ``min``: the least likely token;
* ``low_share``: share of tokens below ``threshold`` (default ln 0.1 ~ -2.3,
  a token the model gave under a 10 % chance);
* ``surprise_p90``: 90th percentile of the surprisal ``-logprob``, an
  entropy proxy robust to one odd token.

Windows are vectorised: ragged lists become one flat array and
``np.add.reduceat`` per-response sums, no Python loop over tokens.

>>> s = logprob_stats([-0.1, -0.2, -3.0, -0.05])
>>> round(s["mean"], 4), s["min"], s["low_share"]
(-0.8375, -3.0, 0.25)
>>> m = window_logprob_stats([[-0.1, -0.3], None, [-2.5]])
>>> [round(float(v), 3) for v in m["mean"]]
[-0.2, nan, -2.5]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["LOW_LOGPROB", "logprob_stats", "window_logprob_stats"]

LOW_LOGPROB = math.log(0.1)


def logprob_stats(logprobs: Sequence[float] | None, threshold: float = LOW_LOGPROB) -> dict[str, float]:
    """Uncertainty statistics of one response (NaN when there are no log-probs)."""
    stats = window_logprob_stats([logprobs], threshold)
    return {k: float(v[0]) for k, v in stats.items()}


def window_logprob_stats(
    column: Sequence[Sequence[float] | None], threshold: float = LOW_LOGPROB
) -> dict[str, np.ndarray]:
    """Per-response ``mean``, ``min``, ``low_share``, ``surprise_p90`` for a window."""
    n = len(column)
    lengths = np.fromiter((len(x) if x else 0 for x in column), dtype=np.int64, count=n)
    out = {k: np.full(n, np.nan) for k in ("mean", "min", "low_share", "surprise_p90")}
    has = lengths > 0
    if not has.any():
        return out
    flat = np.fromiter(
        (float(v) for x in column if x for v in x), dtype=np.float64, count=int(lengths.sum())
    )
    starts = np.concatenate([[0], np.cumsum(lengths[has])[:-1]])
    counts = lengths[has]
    out["mean"][has] = np.add.reduceat(flat, starts) / counts
    out["min"][has] = np.minimum.reduceat(flat, starts)
    out["low_share"][has] = np.add.reduceat((flat < threshold).astype(np.float64), starts) / counts
    # Percentile per response needs sorting within each group: sort by
    # (group, -value) once, then index the 90th-percentile position.
    group = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((-flat, group))
    surprisal = -flat[order]
    pos = starts + np.floor(0.9 * (counts - 1)).astype(np.int64)
    out["surprise_p90"][has] = surprisal[pos]
    return out
