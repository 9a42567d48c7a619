"""Benchmark: segment bias detector.

Figures:

* throughput (events/s, one core) of :class:`~llmpulse.detectors.bias.SegmentBias`
  on windows of 10,000 events with three segment attributes, and as a ratio
  to a baseline in the same process: fairlearn's ``MetricFrame`` computing
  only the selection rate by group for the same attributes;
* the largest absolute difference between the detector's values and
  fairlearn's (``demographic_parity_difference``, ``demographic_parity_ratio``,
  ``equalized_odds_difference``, ``MetricFrame`` difference and
  by-group-minus-overall) over seeded windows;
* false signals on streams with no real disparity: many seeded windows of
  3-7 random segments of 20-120 events, counting segment signals flagged
  ``significant`` (goal 0) and windows with any.

Run: ``python -m llmpulse.bench.detectors_bias [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
)
from sklearn.metrics import accuracy_score

from llmpulse.detectors.base import Batch
from llmpulse.detectors.bias import SegmentBias

__all__ = ["format_table", "run"]

WINDOW = 10_000


def _window(seed: int, sizes: dict[str, dict[str, int]] | None = None, n: int = WINDOW) -> Batch:
    """Fair traffic (every outcome independent of segments) unless ``sizes`` says otherwise."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    if sizes is None:
        attrs = {
            "region": ["eu", "us", "apac"],
            "language": ["en", "de", "fr", "es"],
            "tier": ["free", "pro"],
        }
        for a, vals in attrs.items():
            cols[f"segment.{a}"] = rng.choice(np.array(vals, dtype=object), n)
    else:
        for a, groups in sizes.items():
            cols[f"segment.{a}"] = np.concatenate(
                [np.full(c, v, dtype=object) for v, c in groups.items()]
            )
        n = len(next(iter(cols.values())))
    truth = rng.random(n) < 0.2
    pred = truth ^ (rng.random(n) < 0.15)
    flabel = np.where(truth, "refusal", "answer").astype(object)
    flabel[rng.random(n) < 0.3] = ""
    cols.update(
        {
            "ts": np.arange(n, dtype=float),
            "prediction.label": np.where(pred, "refusal", "answer").astype(object),
            "feedback.label": flabel,
            "status": rng.choice(
                np.array(["ok", "error", "timeout"], dtype=object), n, p=[0.9, 0.07, 0.03]
            ),
            "feedback.score": np.where(rng.random(n) < 0.6, rng.uniform(-1, 1, n), np.nan),
            "feedback.hallucination": np.where(
                rng.random(n) < 0.5, (rng.random(n) < 0.1) * 1.0, np.nan
            ),
        }
    )
    return Batch(cols, start=0.0, end=float(n))


def _mean(yt: np.ndarray, yp: np.ndarray) -> float:
    return float(np.mean(yt))


def _fairlearn_diff(b: Batch, attr: str, sigs: dict[tuple[str, str], float]) -> float:
    """Largest |ours - fairlearn| over the metrics of one attribute (all segments eligible)."""
    seg = b.strings(f"segment.{attr}")
    pos = b.strings("prediction.label") == "refusal"
    fl, pl = b.strings("feedback.label"), b.strings("prediction.label")
    lab = fl != ""
    score, hal = b.numeric("feedback.score"), b.numeric("feedback.hallucination")
    hs, hh = ~np.isnan(score), ~np.isnan(hal)
    diffs = [
        abs(
            sigs[("bias.demographic_parity_difference", attr)]
            - demographic_parity_difference(pos, pos, sensitive_features=seg)
        ),
        abs(
            sigs[("bias.disparate_impact_ratio", attr)]
            - demographic_parity_ratio(pos, pos, sensitive_features=seg)
        ),
        abs(
            sigs[("bias.equalized_odds_difference", attr)]
            - equalized_odds_difference(fl[lab] == "refusal", pos[lab], sensitive_features=seg[lab])
        ),
    ]
    frames = {
        "bias.demographic_parity_difference": MetricFrame(
            metrics=_mean, y_true=pos * 1.0, y_pred=pos, sensitive_features=seg
        ),
        "bias.accuracy_gap": MetricFrame(
            metrics=accuracy_score, y_true=fl[lab], y_pred=pl[lab], sensitive_features=seg[lab]
        ),
        "bias.error_rate_gap": MetricFrame(
            metrics=_mean,
            y_true=(b.strings("status") != "ok") * 1.0,
            y_pred=pos,
            sensitive_features=seg,
        ),
        "bias.feedback_score_gap": MetricFrame(
            metrics=_mean, y_true=score[hs], y_pred=score[hs], sensitive_features=seg[hs]
        ),
        "bias.hallucination_rate_gap": MetricFrame(
            metrics=_mean, y_true=hal[hh], y_pred=hal[hh], sensitive_features=seg[hh]
        ),
    }
    for name, mf in frames.items():
        diffs.append(abs(sigs[(name, attr)] - mf.difference()))
        for g, v in mf.by_group.items():
            diffs.append(abs(sigs[(name, f"{attr}={g}")] - (v - mf.overall)))
    return float(max(diffs))


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; ``quick`` shrinks every loop for CI smoke runs."""
    n_windows = 3 if quick else 10
    repeat = 2 if quick else 3
    windows = [_window(s) for s in range(n_windows)]
    attrs = ("region", "language", "tier")

    def baseline(b: Batch) -> None:
        pos = b.strings("prediction.label") == "refusal"
        for a in attrs:
            _ = MetricFrame(
                metrics=_mean,
                y_true=pos * 1.0,
                y_pred=pos,
                sensitive_features=b.strings(f"segment.{a}"),
            ).by_group

    def rate(fn: Any) -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for b in windows:
                fn(b)
            best = min(best, time.perf_counter() - t0)
        return n_windows * WINDOW / best

    base = rate(baseline)
    detector = SegmentBias()
    eps = rate(detector.update)

    max_diff = 0.0
    for s in range(2 if quick else 8):
        b = _window(100 + s, n=4000)
        sigs = {(x.signal, x.dimension): x.value for x in SegmentBias().update(b)}
        for a in attrs:
            max_diff = max(max_diff, _fairlearn_diff(b, a, sigs))

    rng = np.random.default_rng(7)
    null_windows = 50 if quick else 400
    significant = total = segment_signals = windows_with_false = 0
    for w in range(null_windows):
        k = int(rng.integers(3, 8))
        sizes = {"region": {f"s{i}": int(rng.integers(20, 120)) for i in range(k)}}
        null_sigs = SegmentBias().update(_window(5000 + w, sizes))
        seg = [x for x in null_sigs if "=" in x.dimension]
        total += len(null_sigs)
        segment_signals += len(seg)
        flagged = sum(bool(x.detail["significant"]) for x in null_sigs)
        significant += flagged
        windows_with_false += flagged > 0
    return {
        "window_events": WINDOW,
        "windows": n_windows,
        "baseline_fairlearn_selection_rate_events_per_s": base,
        "segment_bias_events_per_s": eps,
        "ratio_to_fairlearn_baseline": eps / base,
        "max_abs_diff_vs_fairlearn": max_diff,
        "null_windows": null_windows,
        "null_signals": total,
        "null_segment_signals": segment_signals,
        "null_significant_signals": significant,
        "null_false_signal_share": significant / total if total else 0.0,
        "null_windows_with_false_signal": windows_with_false,
        "alpha": detector.alpha,
        "min_n": detector.min_n,
    }


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run`'s result."""
    return "\n".join(
        [
            f"windows of {result['window_events']} events, 3 segment attributes",
            f"SegmentBias                  {result['segment_bias_events_per_s']:>14,.0f} events/s",
            f"fairlearn selection rate     {result['baseline_fairlearn_selection_rate_events_per_s']:>14,.0f} events/s"
            f"  (ratio {result['ratio_to_fairlearn_baseline']:.2f})",
            f"max |ours - fairlearn|       {result['max_abs_diff_vs_fairlearn']:.3e}",
            f"no-disparity windows         {result['null_windows']} (segments of 20-120 events, min_n={result['min_n']}, alpha={result['alpha']})",
            f"  signals / significant      {result['null_signals']} / {result['null_significant_signals']}"
            f"  (share {result['null_false_signal_share']:.4f})",
            f"  windows with a false flag  {result['null_windows_with_false_signal']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the result as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    args = parser.parse_args()
    result = run(quick=args.quick)
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
