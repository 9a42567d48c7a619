"""Benchmark: groundedness on external human-annotated sets, next to trivial baselines, and speed.

For each labelled set (a ``.jsonl[.gz]`` file of ``{"context": [...],
"answer": str, "label": 0|1}``, or every such file in a directory; default
``../shared/data/faithfulness/`` next to the checkout, or
``$LLMPULSE_FAITHFULNESS_DATA``) it reports, separately per set and per task:

* AUROC of ``1 - score`` (the shipped model) on the held-out documents
  (:func:`~llmpulse.detectors.hallucination.datasets.held_out`, never trained or tuned
  on) and on the whole set, next to two trivial baselines measured on the same
  items: answer length in words and lexical novelty (the share of answer
  words absent from the context);
* the ``grounded`` flag's accuracy, balanced accuracy, and precision and
  recall for "not grounded";
* leave-one-set-out: the overlap part refitted on the other sets (documents
  shared with the left-out set removed) and scored on the left-out set;
* an ablation of the specifics weight (0 and 1);
* pairs per CPU second (one core) with cold caches, at short contexts and at contexts of
  about 500 words;
* CPU milliseconds for each of :func:`hostile_pairs`, pairs built to be slow.

Run: ``python -m llmpulse.bench.detectors_hallucination [--data PATH] [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["default_data_path", "format_table", "hostile_pairs", "lexical_novelty", "run"]

_WORD = re.compile(r"[^\W_]+")


def default_data_path() -> Path:
    """``$LLMPULSE_FAITHFULNESS_DATA``, else ``../shared/data/faithfulness/`` beside the checkout."""
    env = os.environ.get("LLMPULSE_FAITHFULNESS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "faithfulness"


def lexical_novelty(answer: str, context: list[str]) -> float:
    """Share of the answer's words that do not occur in the context.

    >>> lexical_novelty("The fee is 30 dollars", ["The fee is 25 dollars."])
    0.2
    """
    ctx = set(_WORD.findall(" ".join(context).lower()))
    words = _WORD.findall(answer.lower())
    return sum(w not in ctx for w in words) / len(words) if words else 0.0


def _flag_stats(y: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    tp = float((flagged & (y == 1)).sum())
    fp = float((flagged & (y == 0)).sum())
    fn = float((~flagged & (y == 1)).sum())
    tn = float((~flagged & (y == 0)).sum())
    rec = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "accuracy": round((tp + tn) / len(y), 4),
        "balanced_accuracy": round((rec + spec) / 2, 4),
        "precision": round(tp / (tp + fp), 4) if tp + fp else float("nan"),
        "recall": round(rec, 4),
    }


def _block(y: np.ndarray, score: np.ndarray, length: np.ndarray, novelty: np.ndarray,
           flagged: np.ndarray) -> dict[str, Any]:
    from llmpulse.detectors.hallucination.evaluation import auroc

    return {
        "n": int(len(y)),
        "n_not_grounded": int(y.sum()),
        "auroc": round(auroc(y, score), 4),
        "auroc_length": round(auroc(y, length), 4),
        "auroc_novelty": round(auroc(y, novelty), 4),
        "flag": _flag_stats(y, flagged),
    }


def _speed(pairs: list[tuple[str, list[str]]]) -> float:
    """Pairs per CPU second with cold caches (every context new, as in a fresh window).

    The scorer is single-threaded Python, so CPU time is one core's time; it
    is used rather than wall time so that other load on the machine does not
    count against the figure.
    """
    from llmpulse.detectors.hallucination.groundedness import GroundednessScorer, clear_caches

    scorer = GroundednessScorer()
    clear_caches()
    t0 = time.process_time()
    for answer, context in pairs:
        scorer.score(answer, context)
    return len(pairs) / max(time.process_time() - t0, 1e-9)


def _regression_set() -> Path:
    return Path(__file__).resolve().parents[2] / "tests" / "data" / "hallucination_regression.jsonl"


def run(quick: bool = False, data: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Figures as a JSON-able dict."""
    from llmpulse.detectors.hallucination.datasets import (
        document_key,
        held_out,
        load_file,
        load_sets,
    )
    from llmpulse.detectors.hallucination.evaluation import auroc
    from llmpulse.detectors.hallucination.groundedness import FEATURES, GroundednessScorer
    from llmpulse.detectors.hallucination.model import GroundingModel, LogisticModel
    from llmpulse.detectors.hallucination.train import OVERLAP_FEATURES, set_weights

    path = Path(data) if data is not None else default_data_path()
    sets = load_sets(path)
    scorer = GroundednessScorer()
    model = scorer.model
    out: dict[str, Any] = {"data": str(path), "model": scorer.model_source, "sets": {}}
    cache: dict[str, dict[str, np.ndarray]] = {}
    for name, rows in sets.items():
        if quick:
            rows = rows[:300]
            sets[name] = rows
        results = [scorer.score(r["answer"], r["context"]) for r in rows]
        y = np.asarray([r["label"] for r in rows])
        score = np.asarray([1.0 - g.score for g in results])
        length = np.asarray([len(r["answer"].split()) for r in rows], dtype=np.float64)
        novelty = np.asarray([lexical_novelty(r["answer"], r["context"]) for r in rows])
        flagged = np.asarray([not g.grounded for g in results])
        held = np.asarray([held_out(r) for r in rows])
        tasks = np.asarray([str(r.get("task") or "") for r in rows])
        entry: dict[str, Any] = {"all": _block(y, score, length, novelty, flagged)}
        if held.any() and len(set(y[held].tolist())) == 2:
            entry["held_out"] = _block(y[held], score[held], length[held], novelty[held], flagged[held])
        if len(set(tasks.tolist())) > 1:
            entry["by_task"] = {
                t: _block(y[tasks == t], score[tasks == t], length[tasks == t], novelty[tasks == t],
                          flagged[tasks == t])
                for t in sorted(set(tasks.tolist())) if len(set(y[tasks == t].tolist())) == 2
            }
        out["sets"][name] = entry
        cache[name] = {"y": y, "held": held, "X": np.asarray([g.features for g in results]),
                       "docs": np.asarray([document_key(r) for r in rows]), "novelty": novelty}

    if model is not None:
        cols = [FEATURES.index(f) for f in OVERLAP_FEATURES]
        # leave one set out: refit the overlap part on the others
        if len(sets) > 1:
            out["leave_one_set_out"] = {}
            for name, c in cache.items():
                shared = set(c["docs"].tolist())
                Xs, ys, gs = [], [], []
                for other, o in cache.items():
                    if other == name:
                        continue
                    keep = np.asarray([d not in shared for d in o["docs"]])
                    Xs.append(o["X"][keep][:, cols])
                    ys.append(o["y"][keep])
                    gs += [other] * int(keep.sum())
                X, yy = np.vstack(Xs), np.concatenate(ys).astype(np.float64)
                part = LogisticModel.fit(X, yy, names=OVERLAP_FEATURES, sample_weight=set_weights(gs, yy))
                refit = GroundingModel(part, model.specifics, model.specifics_weight)
                p = np.asarray([refit.probability(dict(zip(FEATURES, row, strict=True))) for row in c["X"]])
                out["leave_one_set_out"][name] = {
                    "auroc": round(auroc(c["y"], p), 4),
                    "auroc_novelty": round(auroc(c["y"], c["novelty"]), 4),
                    "flag": _flag_stats(c["y"], p >= 0.5),
                }
        out["specifics_weight_ablation"] = {}
        for w in (0.0, model.specifics_weight, 1.0):
            m = GroundingModel(model.overlap, model.specifics, w)
            row: dict[str, float] = {}
            for name, c in cache.items():
                h = c["held"]
                p = np.asarray([m.probability(dict(zip(FEATURES, x, strict=True))) for x in c["X"][h]])
                row[name] = round(auroc(c["y"][h], p), 4)
            out["specifics_weight_ablation"][str(w)] = row

    reg_path = _regression_set()
    if reg_path.exists():
        reg = load_file(reg_path)
        g = [scorer.score(r["answer"], r["context"]) for r in reg]
        y = np.asarray([r["label"] for r in reg])
        out["regression_set"] = {
            "n": len(reg),
            "auroc": round(auroc(y, np.asarray([1 - x.score for x in g])), 4),
            "auroc_novelty": round(auroc(y, np.asarray([lexical_novelty(r["answer"], r["context"]) for r in reg])), 4),
            "flag": _flag_stats(y, np.asarray([not x.grounded for x in g])),
            "note": "hand-written with the rules; a regression check, not a measure of generalisation",
        }
        short = [(r["answer"], r["context"]) for r in reg]
    else:
        short = []
    long: list[tuple[str, list[str]]] = []
    for rows in sets.values():
        for r in rows:
            words = " ".join(r["context"]).split()
            if len(words) >= 450:
                long.append((r["answer"], [" ".join(words[:500])]))
    n = 100 if quick else 400
    ctx_words = [sum(len(c.split()) for c in ctx) for _, ctx in long[:n]]
    long100 = [(_long_answer(a, ctx[0]), ctx) for a, ctx in long[:n]]
    out["speed"] = {
        "pairs_per_s_short": round(_speed(short[:n]), 1) if short else None,
        "short_context_words_median": float(np.median([sum(len(c.split()) for c in ctx) for _, ctx in short[:n]]))
        if short else None,
        "pairs_per_s_500_words": round(_speed(long[:n]), 1) if long else None,
        "long_context_words_median": float(np.median(ctx_words)) if ctx_words else None,
        "long_answer_words_median": float(np.median([len(a.split()) for a, _ in long[:n]])) if long else None,
        "pairs_per_s_500_words_100_word_answers": round(_speed(long100), 1) if long100 else None,
        "answer_words_median_100": float(np.median([len(a.split()) for a, _ in long100])) if long100 else None,
        "goal_pairs_per_s_500_words": 100,
    }
    out["hostile_ms"] = _hostile(quick)
    return out


def hostile_pairs(scale: float = 1.0) -> dict[str, tuple[str, list[str]]]:
    """Pairs built to be slow to score, each within the shim's limits: numbers,
    dates or names by the thousand on both sides, one word of 200,000
    characters, 20,000 sentences, 256 passages. ``scale`` shrinks them."""
    import random

    rng = random.Random(1)
    words = ["the", "refund", "policy", "covers", "orders", "within", "thirty", "days", "of", "delivery", "and", "excludes", "gift", "cards"]

    def prose(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, int(n * scale))))

    def k(n: int) -> int:
        return max(1, int(n * scale))

    return {
        "ordinary (80 against 400 words)": (prose(80), [prose(400)]),
        "answer of 50,000 words": (prose(50_000), [prose(400)]),
        "context of 50,000 words": (prose(80), [prose(50_000)]),
        "5,000 numbers against 25,000": (" ".join(str(i) for i in range(k(5000))),
                                         [" ".join(str(i) for i in range(k(5000), k(30000)))]),
        "10,000 names against 10,000": (" ".join(f"Name{i} Corp" for i in range(k(10_000))),
                                        [" ".join(f"Name{i} Inc" for i in range(k(10_000)))]),
        "5,000 dates": (" ".join(f"on 2024-05-{d % 28 + 1:02d}" for d in range(k(5000))), [prose(400)]),
        "one word of 200,000 characters": ("a" * k(200_000), ["b " * k(100_000)]),
        "20,000 sentences on each side": (". ".join(prose(3) for _ in range(k(20_000))),
                                          [". ".join(prose(3) for _ in range(k(20_000)))]),
        "256 passages of 1,000 words": (prose(80), [prose(1000) for _ in range(256)]),
    }


def _hostile(quick: bool) -> dict[str, float]:
    """Milliseconds to score each of :func:`hostile_pairs`, caches cold."""
    from llmpulse.detectors.hallucination import GroundednessScorer
    from llmpulse.detectors.hallucination.groundedness import clear_caches

    scorer = GroundednessScorer()
    out = {}
    for name, (answer, context) in hostile_pairs(0.2 if quick else 1.0).items():
        clear_caches()
        t = time.process_time()
        scorer.score(answer, context)
        out[name] = round((time.process_time() - t) * 1000, 1)
    return out


def _long_answer(answer: str, context: str, words: int = 100) -> str:
    """``answer`` followed by every second context sentence until it has about
    ``words`` words: an answer as long as a RAG answer, against the same context.

    >>> _long_answer("A b.", "One two three. Four five. Six seven eight nine.", words=6)
    'A b. One two three. Six seven eight nine.'
    """
    from llmpulse.detectors.hallucination import text as tx

    out = [answer]
    n = len(answer.split())
    for i, sent in enumerate(tx.sentences(context)):
        if n >= words:
            break
        if i % 2 == 0:
            out.append(sent)
            n += len(sent.split())
    return " ".join(out)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run`'s figures."""
    lines = [f"groundedness on {result['data']} ({result['model']})", "",
             f"{'set':<26}{'split':<10}{'n':>6}{'AUROC':>8}{'length':>8}{'novelty':>9}"
             f"{'acc':>7}{'bacc':>7}{'prec':>7}{'recall':>7}"]

    def row(label: str, split: str, b: dict[str, Any]) -> str:
        f = b["flag"]
        return (f"{label:<26}{split:<10}{b['n']:>6}{b['auroc']:>8.3f}{b['auroc_length']:>8.3f}"
                f"{b['auroc_novelty']:>9.3f}{f['accuracy']:>7.3f}{f['balanced_accuracy']:>7.3f}"
                f"{f['precision']:>7.3f}{f['recall']:>7.3f}")

    for name, entry in result["sets"].items():
        if "held_out" in entry:
            lines.append(row(name, "held-out", entry["held_out"]))
        lines.append(row(name, "all", entry["all"]))
        for task, b in entry.get("by_task", {}).items():
            lines.append(row(f"  {task}", "all", b))
    if "leave_one_set_out" in result:
        lines += ["", "leave one set out (overlap part refitted on the other sets):"]
        for name, b in result["leave_one_set_out"].items():
            lines.append(f"  {name:<24} AUROC {b['auroc']:.3f} (novelty {b['auroc_novelty']:.3f}), "
                         f"flag accuracy {b['flag']['accuracy']:.3f}, balanced {b['flag']['balanced_accuracy']:.3f}")
    if "specifics_weight_ablation" in result:
        lines += ["", "held-out AUROC by specifics weight:"]
        for w, r in result["specifics_weight_ablation"].items():
            lines.append(f"  {w:<6}" + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    if "regression_set" in result:
        r = result["regression_set"]
        lines += ["", f"regression set ({r['n']}, {r['note']}): AUROC {r['auroc']:.3f}, novelty "
                  f"{r['auroc_novelty']:.3f}, flag accuracy {r['flag']['accuracy']:.3f}"]
    s = result["speed"]
    lines += ["", f"speed, one core, cold caches: {s['pairs_per_s_short']} pairs/s at short contexts "
              f"(median {s['short_context_words_median']} words), {s['pairs_per_s_500_words']} pairs/s at "
              f"~500-word contexts with {s.get('long_answer_words_median')}-word answers, "
              f"{s.get('pairs_per_s_500_words_100_word_answers')} pairs/s with "
              f"{s.get('answer_words_median_100')}-word answers (goal {s['goal_pairs_per_s_500_words']})"]
    if "hostile_ms" in result:
        lines += ["", "pairs built to be slow, CPU ms each (one pair, caches cold):"]
        lines += [f"  {name:<34}{ms:>10.1f}" for name, ms in result["hostile_ms"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", help="a labelled .jsonl[.gz] file or a directory of them")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="first 300 items per set, fewer speed pairs")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, data=args.data)
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
