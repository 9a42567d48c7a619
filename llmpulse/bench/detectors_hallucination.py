"""Benchmark: hallucination scores on the hand-written evaluation set, and speed.

AUROC of every score (groundedness = the combination, rule, specifics,
token overlap, learned model; log-probabilities when the set has them),
overall and per hallucination type; throughput of the lexical scorer in
(response, context) pairs per second on one core, and of the window
detector in events per second. As the baseline in the same process, the
plain word-overlap score (share of answer words found in the context) is
evaluated on the same items: the figure the specifics checks improve on.

Run: ``python -m llmpulse.bench.detectors_hallucination [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

__all__ = ["format_table", "run"]


def _throughput(items: list[dict[str, Any]], repeats: int) -> dict[str, float]:
    from detectors.hallucination import groundedness
    from detectors.hallucination.groundedness import GroundednessScorer

    scorer = GroundednessScorer()
    pairs = [(i["response"], i["context"]) for i in items]
    # Cold: contexts not cached yet (each window brings new retrieved passages).
    best_cold = float("inf")
    for _ in range(repeats):
        groundedness._context.cache_clear()
        from detectors.hallucination import text as tx

        for f in (tx._sentences, tx._content, tx._specifics, tx._conditions):
            f.cache_clear()
        t0 = time.perf_counter()
        for r, c in pairs:
            scorer.score(r, c)
        best_cold = min(best_cold, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for r, c in pairs:
        scorer.score(r, c)
    warm = time.perf_counter() - t0
    return {"pairs_per_s_cold": len(pairs) / best_cold, "pairs_per_s_warm": len(pairs) / warm}


def _detector_rate(n: int) -> float:
    from detectors.base import Batch
    from detectors.hallucination import HallucinationSignals
    from detectors.hallucination.evalset import load
    from detectors.testing import synthetic_events

    items = load()
    events = synthetic_events(n, seed=11)
    for k, ev in enumerate(events):
        item = items[k % len(items)]
        ev["response"], ev["context"] = item["response"], item["context"]
    batch = Batch.from_events(events)
    det = HallucinationSignals(max_scored=n)
    t0 = time.perf_counter()
    det.update(batch)
    return n / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict[str, Any]:
    """Figures as a JSON-able dict."""
    import numpy as np

    from detectors.hallucination import text as tx
    from detectors.hallucination.evalset import load
    from detectors.hallucination.evaluation import auroc, evaluate

    items = load()
    result = evaluate(items)
    y = np.asarray([i["label"] for i in items])
    overlap = []
    for i in items:
        ctx = {w for c in i["context"] for w in tx.content_stems(c)}
        words = tx.content_stems(i["response"])
        overlap.append(1.0 - (sum(w in ctx for w in words) / len(words) if words else 1.0))
    baseline = auroc(y, np.asarray(overlap))
    # Without the quoted extracts, faithful answers are all paraphrases: the
    # harder half of the set for a lexical scorer.
    paraphrase_only = evaluate([i for i in items if "-x" not in i["id"]])["auroc"]
    speed = _throughput(items, repeats=1 if quick else 3)
    combined = result["auroc"]["groundedness"]
    return {
        "n_items": result["n"],
        "n_hallucinated": result["n_hallucinated"],
        "auroc": result["auroc"],
        "by_type": result["by_type"],
        "auroc_paraphrase_negatives_only": paraphrase_only,
        "baseline_word_overlap_auroc": round(baseline, 4),
        "inverted_word_overlap_auroc": round(1.0 - baseline, 4),
        "combined_vs_baseline": round(combined / baseline, 3) if baseline else None,
        "goal_auroc": 0.85,
        "goal_met": combined >= 0.85,
        "pairs_per_s_cold": round(speed["pairs_per_s_cold"], 1),
        "pairs_per_s_warm": round(speed["pairs_per_s_warm"], 1),
        "detector_events_per_s": round(_detector_rate(500 if quick else 2000), 1),
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run`'s figures."""
    scores = [k for k, v in result["auroc"].items() if v is not None]
    lines = [
        f"hallucination eval set: {result['n_items']} items, {result['n_hallucinated']} hallucinated",
        "",
        f"{'type':<14}{'n':>5}" + "".join(f"{s:>15}" for s in scores),
        f"{'all':<14}{result['n_items']:>5}" + "".join(f"{result['auroc'][s]:>15.3f}" for s in scores),
    ]
    for t, row in result["by_type"].items():
        lines.append(f"{t:<14}{row['n']:>5}" + "".join(f"{row.get(s, float('nan')):>15.3f}" for s in scores))
    missing = [k for k, v in result["auroc"].items() if v is None]
    lines += [
        "",
        "paraphrase negatives only: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["auroc_paraphrase_negatives_only"].items() if v is not None),
        f"baseline (word overlap) AUROC {result['baseline_word_overlap_auroc']:.3f} "
        f"(inverted, i.e. 'copying is suspicious': {result['inverted_word_overlap_auroc']:.3f}); "
        f"combined/baseline {result['combined_vs_baseline']}",
        f"goal AUROC >= {result['goal_auroc']}: {'met' if result['goal_met'] else 'NOT met'}",
        f"scorer: {result['pairs_per_s_cold']:.0f} pairs/s cold, {result['pairs_per_s_warm']:.0f} pairs/s warm (one core)",
        f"detector: {result['detector_events_per_s']:.0f} events/s with every response scored",
    ]
    if missing:
        lines.append(f"not in this set: {', '.join(missing)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    result = run(quick=args.quick)
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
