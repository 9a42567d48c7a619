"""Outcome, quality and reliability gaps across segments (``segment.<attr>``).

For every segment attribute in the window (``region``, ``language``,
``tier`` ...) and every metric below, :class:`SegmentBias` emits

* one signal with ``dimension = "<attr>"``: the between-group gap, equal to
  fairlearn's on the same rows (``max - min`` of the group values, or
  ``min / max`` for the ratio);
* one signal per segment with ``dimension = "<attr>=<value>"``: the signed
  gap of that segment to the overall value, ``by_group[value] - overall`` in
  fairlearn's ``MetricFrame`` terms (for equalized odds, the larger of the
  absolute TPR and FPR gaps).

=========================================  ======================================================
signal                                     per group, on rows where it is defined
=========================================  ======================================================
``bias.demographic_parity_difference``     share of ``outcome == positive_label`` (selection rate)
``bias.disparate_impact_ratio``            min / max selection rate (attribute level only)
``bias.accuracy_gap``                      ``prediction.label == feedback.label``
``bias.equalized_odds_difference``         TPR and FPR of ``outcome == positive_label`` against
                                           ``feedback.label == positive_label``
``bias.error_rate_gap``                    share of ``status != "ok"``
``bias.feedback_score_gap``                mean ``feedback.score``
``bias.hallucination_rate_gap``            share of ``feedback.hallucination``
=========================================  ======================================================

The outcome is configurable: ``outcome="prediction.label",
positive_label="refusal"`` (default) watches refusals of a classifier or
guard model; ``outcome="status", positive_label="error"`` watches failures;
any categorical column works.

Guards, so that small segments page nobody:

* **minimum n**: a segment takes part in a metric only with at least
  ``min_n`` (default 30) rows where that metric is defined (for equalized
  odds: ``min_n`` label-positive *and* label-negative rows); smaller
  segments get no signal and are left out of the overall value, so the
  attribute-level gap is fairlearn's on the rows of the eligible segments.
  An attribute needs two eligible segments. Rows with no value for the
  attribute are not a segment.
* **tests**: each segment is compared with the rest of the eligible rows,
  exactly for rates (two-sided Fisher test; for equalized odds the smaller of
  the TPR and FPR p-values, doubled) and by Welch's t-test for the feedback
  score. Intervals: Wilson for each group's rate, Newcombe for the gap of
  rates, Welch for the gap of means (scaled from "segment minus rest" to
  "segment minus overall", which is the same test).
* **multiple comparisons**: all segment x metric p-values of a window form
  one family, adjusted by Holm (default, family-wise error) or
  Benjamini-Hochberg (``correction="bh"``); ``detail["significant"]`` is
  ``p_adjusted < alpha``. An attribute-level signal is significant when one
  of its segments is (its ``p_adjusted`` is their minimum), which keeps the
  family-wise guarantee. ``alpha`` defaults to 0.01, not 0.05: with Holm it
  bounds the share of *windows* with any false signal, and windows come by
  the thousand a day. Measured on 400 seeded windows of 3-7 random segments
  of 20-120 events with no real disparity: 16 windows (4 %) had a false
  significant signal at 0.05, 3 (0.75 %) at 0.01; rules add persistence
  across windows on top.

State is per-group counts and sums, so partial windows merge exactly
(:meth:`SegmentBias.merge`).

>>> from llmpulse.detectors.testing import synthetic_batch
>>> sigs = SegmentBias(outcome="status", positive_label="error").update(synthetic_batch(3000, seed=1))
>>> s = next(x for x in sigs if x.signal == "bias.demographic_parity_difference" and x.dimension == "region")
>>> round(s.value, 4), s.n, s.detail["significant"]
(0.0249, 3000, False)
>>> sorted({x.dimension for x in sigs if x.signal == "bias.accuracy_gap"})[:3]
['language', 'language=de', 'language=en']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from llmpulse.detectors.base import Batch, Detector, Mergeable, Signal
from llmpulse.detectors.bias.stats import (
    adjust_pvalues,
    fisher_pvalues,
    newcombe_interval,
    welch_test,
    wilson_interval,
)

__all__ = ["SegmentBias"]

# Columns of the per-group statistics table.
_COLS = (
    "n",
    "n_out",
    "n_pos",
    "n_status",
    "n_err",
    "n_lab",
    "n_correct",
    "n_ypos",
    "n_tp",
    "n_yneg",
    "n_fp",
    "n_score",
    "sum_score",
    "sumsq_score",
    "n_hal",
    "n_hal_true",
)
_C = {name: i for i, name in enumerate(_COLS)}

# metric -> (signal, numerator column, denominator column) for rate metrics.
_RATES: dict[str, tuple[str, str, str]] = {
    "demographic_parity": ("bias.demographic_parity_difference", "n_pos", "n_out"),
    "accuracy": ("bias.accuracy_gap", "n_correct", "n_lab"),
    "error_rate": ("bias.error_rate_gap", "n_err", "n_status"),
    "hallucination_rate": ("bias.hallucination_rate_gap", "n_hal_true", "n_hal"),
}
METRICS: tuple[str, ...] = (
    "demographic_parity",
    "accuracy",
    "equalized_odds",
    "error_rate",
    "feedback_score",
    "hallucination_rate",
)


# Below these sizes the plain-Python factorize and one ``np.add.at`` beat pandas'
# factorize and a bincount per column: a window of a small group holds a few
# dozen events, and the fixed cost of those calls was most of its update.
_SMALL_FACTORIZE = 500
_SMALL_SUMS = 100


def _factorize(col: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes into the sorted distinct values of a string column, and those values.

    >>> inv, values = _factorize(np.array(["fr", "de", "fr"], dtype=object))
    >>> inv.tolist(), values
    ([1, 0, 1], ['de', 'fr'])
    """
    if len(col) > _SMALL_FACTORIZE:
        # Hash-based factorize: several times faster than np.unique on object arrays.
        codes, uniques = pd.factorize(col, sort=True)
        return codes, [str(v) for v in uniques]
    items = col.tolist()
    values = sorted(set(items))
    pos = {v: i for i, v in enumerate(values)}
    return np.fromiter((pos[v] for v in items), dtype=np.intp, count=len(items)), values


def _sums_by(inv: np.ndarray, groups: int, rows: np.ndarray) -> np.ndarray:
    """Per group (``inv``'s codes), the column sums of ``rows``; both ways add
    the rows in order, so the sums are the same to the last bit.

    >>> _sums_by(np.array([1, 0, 1]), 2, np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])).tolist()
    [[3.0, 4.0], [6.0, 8.0]]
    """
    if len(inv) < _SMALL_SUMS:
        table = np.zeros((groups, rows.shape[1]), dtype=np.float64)
        np.add.at(table, inv, rows)
        return table
    table = np.empty((groups, rows.shape[1]), dtype=np.float64)
    for j in range(rows.shape[1]):
        table[:, j] = np.bincount(inv, weights=rows[:, j], minlength=groups)
    return table


class SegmentBias(Detector, Mergeable):
    """Fairness gaps of outcomes, quality and reliability across segments.

    ``attributes=None`` watches every ``segment.*`` column of the window.

    >>> from llmpulse.detectors.testing import synthetic_events
    >>> events = synthetic_events(2000, seed=4)
    >>> for i, e in enumerate(events):  # refusals: 30 % for language=de, 10 % elsewhere
    ...     share = 0.3 if e["segment"]["language"] == "de" else 0.1
    ...     e["prediction"]["label"] = "refusal" if (i * 7919) % 1000 < share * 1000 else "answer"
    >>> sigs = SegmentBias(attributes=["language"]).update(Batch.from_events(events))
    >>> for s in sigs:
    ...     if s.signal == "bias.demographic_parity_difference":
    ...         print(s.dimension, round(s.value, 3), s.n, s.detail["significant"])
    language 0.165 2000 True
    language=de 0.122 514 True
    language=en -0.043 475 False
    language=es -0.041 501 False
    language=fr -0.043 510 False
    """

    signals = (
        "bias.demographic_parity_difference",
        "bias.disparate_impact_ratio",
        "bias.accuracy_gap",
        "bias.equalized_odds_difference",
        "bias.error_rate_gap",
        "bias.feedback_score_gap",
        "bias.hallucination_rate_gap",
    )

    def __init__(
        self,
        attributes: Sequence[str] | None = None,
        *,
        outcome: str = "prediction.label",
        positive_label: str = "refusal",
        metrics: Sequence[str] = METRICS,
        min_n: int = 30,
        confidence: float = 0.95,
        alpha: float = 0.01,
        correction: str = "holm",
    ) -> None:
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"metrics: unknown {sorted(unknown)}; choose from {list(METRICS)}")
        if correction not in ("holm", "bh"):
            raise ValueError(f"correction: expected 'holm' or 'bh', got {correction!r}")
        if min_n < 2:
            raise ValueError(f"min_n: need at least 2, got {min_n}")
        self.attributes = None if attributes is None else tuple(attributes)
        self.outcome = outcome
        self.positive_label = positive_label
        self.metrics = tuple(m for m in METRICS if m in set(metrics))
        self.min_n = int(min_n)
        self.confidence = float(confidence)
        self.alpha = float(alpha)
        self.correction = correction
        self._groups: dict[str, tuple[list[str], np.ndarray]] = {}
        self._start = math.inf
        self._end = -math.inf

    # -- window state -------------------------------------------------------

    def update(self, batch: Batch) -> list[Signal]:
        self._groups = {}
        attrs = self.attributes if self.attributes is not None else tuple(batch.prefixed("segment"))
        if attrs:
            rows = self._row_indicators(batch)
            for attr in attrs:
                col = batch.strings(f"segment.{attr}")
                has = col != ""
                if not has.any():
                    continue
                sub = rows if has.all() else rows[has]
                inv, values = _factorize(col[has])
                self._groups[attr] = (values, _sums_by(inv, len(values), sub))
        self._start, self._end = batch.start, batch.end
        return self.emit()

    def _row_indicators(self, batch: Batch) -> np.ndarray:
        """One row per event, one column per entry of ``_COLS`` (0/1 or value)."""
        n = len(batch)
        # Column-major so each bincount reads a contiguous column.
        out = np.zeros((n, len(_COLS)), dtype=np.float64, order="F")
        pred = batch.strings(self.outcome)
        has_out = pred != ""
        pos = has_out & (pred == self.positive_label)
        status = batch.strings("status")
        has_status = status != ""
        plabel = batch.strings("prediction.label")
        flabel = batch.strings("feedback.label")
        labelled = (plabel != "") & (flabel != "")
        eo = (pred != "") & (flabel != "")
        ypos = eo & (flabel == self.positive_label)
        yneg = eo & (flabel != self.positive_label)
        score = batch.numeric("feedback.score")
        has_score = ~np.isnan(score)
        hal = batch.numeric("feedback.hallucination")
        has_hal = ~np.isnan(hal)
        s0 = np.where(has_score, score, 0.0)
        cols = {
            "n": np.ones(n),
            "n_out": has_out,
            "n_pos": pos,
            "n_status": has_status,
            "n_err": has_status & (status != "ok"),
            "n_lab": labelled,
            "n_correct": labelled & (plabel == flabel),
            "n_ypos": ypos,
            "n_tp": ypos & pos,
            "n_yneg": yneg,
            "n_fp": yneg & pos,
            "n_score": has_score,
            "sum_score": s0,
            "sumsq_score": s0 * s0,
            "n_hal": has_hal,
            "n_hal_true": has_hal & (hal > 0.5),
        }
        for name, arr in cols.items():
            out[:, _C[name]] = arr
        return out

    def merge(self, other: SegmentBias) -> None:
        """Fold in the per-group counts and sums of ``other``'s window."""
        for attr, (values, table) in other._groups.items():
            if attr not in self._groups:
                self._groups[attr] = (list(values), table.copy())
                continue
            mine_values, mine = self._groups[attr]
            merged_values = sorted(set(mine_values) | set(values))
            out = np.zeros((len(merged_values), len(_COLS)))
            pos = {v: i for i, v in enumerate(merged_values)}
            out[[pos[v] for v in mine_values]] += mine
            out[[pos[v] for v in values]] += table
            self._groups[attr] = (merged_values, out)
        self._start = min(self._start, other._start)
        self._end = max(self._end, other._end)

    # -- signals ------------------------------------------------------------

    def emit(self, *, start: float | None = None, end: float | None = None) -> list[Signal]:
        """Signals of the counts currently held, with p-values adjusted across the window."""
        window = Batch(
            {},
            start=self._start if start is None else start,
            end=self._end if end is None else end,
        )
        # Pending signals: (name, value, n, dimension, detail, p or None, group key).
        pending: list[
            tuple[str, float, int, str, dict[str, Any], float | None, tuple[str, str]]
        ] = []
        for attr, (values, table) in self._groups.items():
            for metric in self.metrics:
                if metric in _RATES:
                    pending.extend(self._rate_metric(attr, values, table, metric))
                elif metric == "equalized_odds":
                    pending.extend(self._equalized_odds(attr, values, table))
                else:
                    pending.extend(self._feedback_score(attr, values, table))
        seg_idx = [i for i, p in enumerate(pending) if p[5] is not None]
        pvals = np.array([pending[i][5] for i in seg_idx], dtype=np.float64)
        adjusted = adjust_pvalues(pvals, self.correction) if pvals.size else pvals
        adj_by_index = dict(zip(seg_idx, adjusted.tolist(), strict=True))
        family = int(np.count_nonzero(~np.isnan(pvals)))
        # Attribute-level p_adjusted: the smallest among its segments for that metric.
        best: dict[tuple[str, str], float] = {}
        for i in seg_idx:
            key, a = pending[i][6], adj_by_index[i]
            if not math.isnan(a):
                best[key] = min(best.get(key, 1.0), a)
        out: list[Signal] = []
        for i, (name, value, n, dim, detail, p, key) in enumerate(pending):
            adj = adj_by_index[i] if p is not None else best.get(key, 1.0)
            adj_f = None if adj is None or math.isnan(adj) else float(adj)
            detail.update(
                {
                    "p_adjusted": adj_f,
                    "significant": bool(adj_f is not None and adj_f < self.alpha),
                    "correction": self.correction,
                    "family_size": family,
                    "alpha": self.alpha,
                    "min_n": self.min_n,
                }
            )
            out.append(window.signal(name, value, n=n, dimension=dim, detail=detail))
        return out

    def _rate_metric(
        self, attr: str, values: list[str], table: np.ndarray, metric: str
    ) -> list[tuple[str, float, int, str, dict[str, Any], float | None, tuple[str, str]]]:
        signal, num, den = _RATES[metric]
        k_all, n_all = table[:, _C[num]], table[:, _C[den]]
        keep = np.flatnonzero(n_all >= self.min_n)
        if keep.size < 2:
            return []
        k, n = k_all[keep], n_all[keep]
        names = [values[i] for i in keep]
        rates = k / n
        K, N = float(k.sum()), float(n.sum())
        overall = K / N
        key = (attr, metric)
        lo, hi = wilson_interval(k, n, self.confidence)
        by_group = {
            v: {"rate": float(r), "n": int(c), "ci_low": float(a), "ci_high": float(b)}
            for v, r, c, a, b in zip(names, rates, n, lo, hi, strict=True)
        }
        base = {
            "metric": metric,
            "overall": overall,
            "groups": len(names),
            "excluded_small": int(np.count_nonzero((n_all > 0) & (n_all < self.min_n))),
        }
        out: list[tuple[str, float, int, str, dict[str, Any], float | None, tuple[str, str]]] = [
            (
                signal,
                float(rates.max() - rates.min()),
                int(N),
                attr,
                {**base, "by_group": by_group},
                None,
                key,
            )
        ]
        if metric == "demographic_parity" and rates.max() > 0:
            out.append(
                (
                    "bias.disparate_impact_ratio",
                    float(rates.min() / rates.max()),
                    int(N),
                    attr,
                    {**base, "by_group": by_group},
                    None,
                    key,
                )
            )
        p = fisher_pvalues(k, n, K - k, N - n)
        dlo, dhi = newcombe_interval(k, n, K - k, N - n, self.confidence)
        share_rest = (N - n) / N
        for j, v in enumerate(names):
            detail = {
                **base,
                "rate": float(rates[j]),
                "rate_ci_low": float(lo[j]),
                "rate_ci_high": float(hi[j]),
                "n_rest": int(N - n[j]),
                "ci_low": float(dlo[j] * share_rest[j]),
                "ci_high": float(dhi[j] * share_rest[j]),
                "p_value": float(p[j]),
                "test": "fisher_exact",
            }
            out.append(
                (
                    signal,
                    float(rates[j] - overall),
                    int(n[j]),
                    f"{attr}={v}",
                    detail,
                    float(p[j]),
                    key,
                )
            )
        return out

    def _equalized_odds(
        self, attr: str, values: list[str], table: np.ndarray
    ) -> list[tuple[str, float, int, str, dict[str, Any], float | None, tuple[str, str]]]:
        npos, nneg = table[:, _C["n_ypos"]], table[:, _C["n_yneg"]]
        keep = np.flatnonzero((npos >= self.min_n) & (nneg >= self.min_n))
        if keep.size < 2:
            return []
        names = [values[i] for i in keep]
        tp, fp = table[keep, _C["n_tp"]], table[keep, _C["n_fp"]]
        P, Q = npos[keep], nneg[keep]
        tpr, fpr = tp / P, fp / Q
        TP, FP, PP, QQ = float(tp.sum()), float(fp.sum()), float(P.sum()), float(Q.sum())
        tpr_o, fpr_o = TP / PP, FP / QQ
        key = (attr, "equalized_odds")
        n_rows = P + Q
        base = {
            "metric": "equalized_odds",
            "tpr_overall": tpr_o,
            "fpr_overall": fpr_o,
            "groups": len(names),
        }
        value = max(float(tpr.max() - tpr.min()), float(fpr.max() - fpr.min()))
        by_group = {
            v: {"tpr": float(a), "fpr": float(b), "n_positive": int(c), "n_negative": int(d)}
            for v, a, b, c, d in zip(names, tpr, fpr, P, Q, strict=True)
        }
        out: list[tuple[str, float, int, str, dict[str, Any], float | None, tuple[str, str]]] = [
            (
                "bias.equalized_odds_difference",
                value,
                int(n_rows.sum()),
                attr,
                {**base, "by_group": by_group},
                None,
                key,
            )
        ]
        p_t = fisher_pvalues(tp, P, TP - tp, PP - P)
        p_f = fisher_pvalues(fp, Q, FP - fp, QQ - Q)
        p = np.minimum(1.0, 2.0 * np.minimum(p_t, p_f))
        for j, v in enumerate(names):
            detail = {
                **base,
                "tpr": float(tpr[j]),
                "fpr": float(fpr[j]),
                "tpr_gap": float(tpr[j] - tpr_o),
                "fpr_gap": float(fpr[j] - fpr_o),
                "n_positive": int(P[j]),
                "n_negative": int(Q[j]),
                "p_value": float(p[j]),
                "test": "fisher_exact (min of TPR, FPR, Bonferroni x2)",
            }
            gap = max(abs(float(tpr[j] - tpr_o)), abs(float(fpr[j] - fpr_o)))
            out.append(
                (
                    "bias.equalized_odds_difference",
                    gap,
                    int(n_rows[j]),
                    f"{attr}={v}",
                    detail,
                    float(p[j]),
                    key,
                )
            )
        return out

    def _feedback_score(
        self, attr: str, values: list[str], table: np.ndarray
    ) -> list[tuple[str, float, int, str, dict[str, Any], float | None, tuple[str, str]]]:
        n_all = table[:, _C["n_score"]]
        keep = np.flatnonzero(n_all >= self.min_n)
        if keep.size < 2:
            return []
        names = [values[i] for i in keep]
        n = n_all[keep]
        s, ss = table[keep, _C["sum_score"]], table[keep, _C["sumsq_score"]]
        means = s / n
        N, S, SS = float(n.sum()), float(s.sum()), float(ss.sum())
        overall = S / N
        var = np.maximum((ss - s * s / n) / (n - 1.0), 0.0)
        nr, sr, ssr = N - n, S - s, SS - ss
        mean_r = sr / nr
        var_r = np.maximum((ssr - sr * sr / nr) / (nr - 1.0), 0.0)
        p, lo, hi = welch_test(means, var, n, mean_r, var_r, nr, self.confidence)
        key = (attr, "feedback_score")
        base = {"metric": "feedback_score", "overall": overall, "groups": len(names)}
        by_group = {
            v: {"mean": float(m), "n": int(c)} for v, m, c in zip(names, means, n, strict=True)
        }
        out: list[tuple[str, float, int, str, dict[str, Any], float | None, tuple[str, str]]] = [
            (
                "bias.feedback_score_gap",
                float(means.max() - means.min()),
                int(N),
                attr,
                {**base, "by_group": by_group},
                None,
                key,
            )
        ]
        share_rest = nr / N
        for j, v in enumerate(names):
            pj = None if math.isnan(p[j]) else float(p[j])
            detail = {
                **base,
                "mean": float(means[j]),
                "std": float(math.sqrt(var[j])),
                "n_rest": int(nr[j]),
                "ci_low": None if math.isnan(lo[j]) else float(lo[j] * share_rest[j]),
                "ci_high": None if math.isnan(hi[j]) else float(hi[j] * share_rest[j]),
                "p_value": pj,
                "test": "welch_t",
            }
            out.append(
                (
                    "bias.feedback_score_gap",
                    float(means[j] - overall),
                    int(n[j]),
                    f"{attr}={v}",
                    detail,
                    float("nan") if pj is None else pj,
                    key,
                )
            )
        return out

    # -- persistence --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "config": {
                "attributes": None if self.attributes is None else list(self.attributes),
                "outcome": self.outcome,
                "positive_label": self.positive_label,
                "metrics": list(self.metrics),
                "min_n": self.min_n,
                "confidence": self.confidence,
                "alpha": self.alpha,
                "correction": self.correction,
            },
            "groups": {a: {"values": v, "table": t.tolist()} for a, (v, t) in self._groups.items()},
            "start": None if math.isinf(self._start) else self._start,
            "end": None if math.isinf(self._end) else self._end,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        cfg = state["config"]
        self.__init__(  # type: ignore[misc]
            cfg["attributes"],
            outcome=cfg["outcome"],
            positive_label=cfg["positive_label"],
            metrics=cfg["metrics"],
            min_n=cfg["min_n"],
            confidence=cfg["confidence"],
            alpha=cfg["alpha"],
            correction=cfg["correction"],
        )
        self._groups = {
            a: (list(g["values"]), np.asarray(g["table"], dtype=np.float64).reshape(-1, len(_COLS)))
            for a, g in state["groups"].items()
        }
        self._start = math.inf if state["start"] is None else float(state["start"])
        self._end = -math.inf if state["end"] is None else float(state["end"])
