"""Experiment: does soft lexical alignment (:mod:`.soft_alignment`) beat the shipped model's features?

Not used by :class:`~llmpulse.detectors.hallucination.groundedness.GroundednessScorer`.
Result: no. The soft features are about as good as lexical novelty on their own
(they rank a little better on QAGS), but no head that reads them beats the
shipped overlap features on leave-one-set-out evaluation: added to them they
change held-out and leave-one-set-out AUROC by 0.003 or less, and the larger
heads (all features, gradient-boosted trees, forward selection) gain on
held-out documents of QAGS and lose on the sets they were not trained on
(CLIFF most). The figures are in ``data/MODEL_CARD.md``.

Every head is compared the same way, on the public faithfulness sets:

* **held-out**: fitted on the training split of all sets
  (:func:`~llmpulse.detectors.hallucination.cross_encoder.held_out_split`), scored on the
  held-out documents of each set;
* **leave one set out**: fitted on the other sets without leaks
  (:func:`~llmpulse.detectors.hallucination.cross_encoder.leave_one_set_out`: shared
  documents and 20-word sequences removed), scored on every record of the left-out set.

A head is a logistic regression over one feature group, with the shipped
specifics logit added unchanged (as the shipped model does) or left out
(``-spec``), or a small gradient-boosted tree model (scikit-learn), or a
logistic regression over the features forward selection picks. The penalty,
the selected features and the flag threshold reported as
``flag_accuracy_tuned`` are chosen by 5-fold CV grouped by document on the
training side only. Features are cached in a JSON file, so reruns take a few
minutes (forward selection is most of it)::

    python -m llmpulse.detectors.hallucination.soft_experiment --data ../shared/data/faithfulness/ --json out.json
    python -m llmpulse.detectors.hallucination.soft_experiment --data ../shared/data/faithfulness/ --speed

``--vectors FILE.npy`` replaces the word-embedding matrix with another
``(30522, 384)`` token-vector matrix (for example MiniLM's sentence embedding of
each vocabulary token alone, which gave the same conclusion).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmpulse.detectors.hallucination.cross_encoder import (
    held_out_split,
    leave_one_set_out,
    lexical_novelty,
)
from llmpulse.detectors.hallucination.datasets import document_key, load_sets
from llmpulse.detectors.hallucination.evaluation import auroc
from llmpulse.detectors.hallucination.model import LogisticModel, default_model
from llmpulse.detectors.hallucination.soft_alignment import (
    IDF_FEATURES,
    SOFT_FEATURES,
    StaticVectors,
    content_words,
    soft_features,
    static_vectors,
)

__all__ = ["GROUPS", "extract", "fit_selected", "format_table", "run", "speed"]

Record = dict[str, Any]
L2_GRID = (0.3, 3.0, 30.0)


def _groups() -> dict[str, tuple[str, ...]]:
    from llmpulse.detectors.hallucination.groundedness import FEATURES
    from llmpulse.detectors.hallucination.train import OVERLAP_FEATURES

    return {
        "shipped (overlap features)": OVERLAP_FEATURES,
        "novelty only": ("lexical_novelty",),
        "soft only": SOFT_FEATURES,
        "overlap + soft": OVERLAP_FEATURES + SOFT_FEATURES,
        "overlap + soft (no length)": OVERLAP_FEATURES + tuple(f for f in SOFT_FEATURES if f != "log_answer_words"),
        "all + soft": FEATURES + SOFT_FEATURES,
        # the soft feature that forward selection on the held-out protocol's training split picks first
        "overlap + worst-sentence soft novelty": (*OVERLAP_FEATURES, "worst_sentence_soft_novelty"),
        "overlap + soft novelty": (*OVERLAP_FEATURES, "soft_novelty"),
        "overlap + idf soft": (*OVERLAP_FEATURES, *IDF_FEATURES),
        "idf soft only": IDF_FEATURES,
    }


GROUPS = _groups()


def _rid(r: Record) -> str:
    return hashlib.sha1((r["answer"] + "\x00" + "\x00".join(r["context"])).encode()).hexdigest()


def extract(records: Sequence[Record], cache: Path, vectors: str | None = None) -> dict[str, dict[str, float]]:
    """Named features of each record (rule features, the specifics logit, soft features), cached by record id."""
    from llmpulse.detectors.hallucination.groundedness import (
        FEATURES,
        GroundednessScorer,
        response_features,
    )

    store: dict[str, dict[str, float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    todo = [r for r in records if r["_rid"] not in store or IDF_FEATURES[0] not in store[r["_rid"]]]
    idf = document_frequencies(records)
    if todo:
        scorer = GroundednessScorer(model=None)
        model = default_model()
        vecs = static_vectors() if vectors is None else StaticVectors(matrix=np.load(vectors))
        t0 = time.time()
        for n, r in enumerate(todo, 1):
            feats = dict(zip(FEATURES, response_features(scorer.check(r["answer"], r["context"])), strict=True))
            spec = 0.0
            if model is not None:
                xs = np.asarray([[feats[k] for k in model.specifics.names]])
                spec = float(model.specifics_weight * (model.specifics.decision(xs)[0]
                                                       - model.specifics.decision(np.zeros_like(xs))[0]))
            soft = soft_features(r["answer"], r["context"], vecs, idf)
            store[r["_rid"]] = {**feats, **soft, "_specifics": spec}
            if n % 500 == 0:
                print(f"features {n}/{len(todo)} ({time.time() - t0:.0f} s)", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(store))
    return store


_INDEX: dict[str, int] = {}
_TABLE: dict[str, np.ndarray] = {}


def document_frequencies(records: Sequence[Record]) -> dict[str, float]:
    """IDF of content words over the contexts of the training split (``held_out`` false; labels unused).

    >>> idf = document_frequencies([{"context": ["a bridge closed today"]}, {"context": ["the bridge opened"]},
    ...                             {"context": ["a bridge closed"]}])  # the last one is held out
    >>> round(idf["bridge"], 3), round(idf["closed"], 3), "a" in idf
    (0.0, 0.693, False)
    """
    from llmpulse.detectors.hallucination import text as tx
    from llmpulse.detectors.hallucination.datasets import held_out

    docs: dict[str, set[str]] = {}
    for r in records:
        if held_out(r):
            continue
        key = "\n".join(r["context"])
        if key not in docs:
            docs[key] = {w for p in r["context"] for s in tx.sentences(p) for w, _ in content_words(s)}
    df: dict[str, int] = {}
    for words in docs.values():
        for w in words:
            df[w] = df.get(w, 0) + 1
    n = max(len(docs), 1)
    return {w: float(np.log(n / c)) for w, c in df.items()}


def _index(records: Sequence[Record], store: dict[str, dict[str, float]]) -> None:
    """One float table of every feature, so that heads slice arrays instead of dicts."""
    names = sorted({k for v in store.values() for k in v})
    ids = sorted(store)
    _INDEX.clear()
    _INDEX.update({rid: i for i, rid in enumerate(ids)})
    _TABLE.clear()
    _TABLE.update({n: np.asarray([store[rid].get(n, 0.0) for rid in ids]) for n in names})


def _rows(records: Sequence[Record]) -> np.ndarray:
    return np.asarray([_INDEX[r["_rid"]] for r in records])


def _matrix(records: Sequence[Record], names: Sequence[str]) -> np.ndarray:
    rows = _rows(records)
    return np.stack([_TABLE[n][rows] for n in names], axis=1)


def _weights(records: Sequence[Record]) -> np.ndarray:
    from llmpulse.detectors.hallucination.train import set_weights

    return set_weights([r["_set"] for r in records], np.asarray([r["label"] for r in records], dtype=np.float64))


class _Head:
    def __init__(self, kind: str, names: tuple[str, ...], l2: float, offset: bool) -> None:
        self.kind, self.names, self.l2, self.offset = kind, names, l2, offset
        self.model: Any = None

    def fit(self, records: Sequence[Record]) -> _Head:
        X = _matrix(records, self.names)
        y = np.asarray([r["label"] for r in records], dtype=np.float64)
        if self.kind == "logistic":
            self.model = LogisticModel.fit(X, y, names=self.names, l2=self.l2, sample_weight=_weights(records))
        else:
            from sklearn.ensemble import HistGradientBoostingClassifier

            self.model = HistGradientBoostingClassifier(
                max_depth=3, max_iter=150, learning_rate=0.05, l2_regularization=self.l2, min_samples_leaf=40,
                random_state=0).fit(X, y, sample_weight=_weights(records))
        return self

    def logit(self, records: Sequence[Record]) -> np.ndarray:
        X = _matrix(records, self.names)
        if self.kind == "logistic":
            z = np.asarray(self.model.decision(X))
        else:
            p = np.clip(self.model.predict_proba(X)[:, 1], 1e-6, 1 - 1e-6)
            z = np.asarray(np.log(p / (1 - p)))
        if self.offset:
            z = z + _TABLE["_specifics"][_rows(records)]
        return z


def _folds(records: Sequence[Record], folds: int = 5) -> np.ndarray:
    return np.asarray([int(r["_doc"][8:16], 16) % folds for r in records])


def _cv_logits(kind: str, names: tuple[str, ...], l2: float, offset: bool, records: Sequence[Record],
               fold: np.ndarray) -> np.ndarray:
    out = np.zeros(len(records))
    for k in sorted(set(fold.tolist())):
        tr = [r for r, f in zip(records, fold, strict=True) if f != k]
        te_idx = np.nonzero(fold == k)[0]
        head = _Head(kind, names, l2, offset).fit(tr)
        out[te_idx] = head.logit([records[int(i)] for i in te_idx])
    return out


def _per_set_auroc(records: Sequence[Record], z: np.ndarray) -> float:
    y = np.asarray([r["label"] for r in records])
    sets = np.asarray([r["_set"] for r in records])
    return float(np.mean([auroc(y[sets == s], z[sets == s]) for s in sorted(set(sets.tolist()))
                          if len(set(y[sets == s].tolist())) == 2]))


def _threshold(records: Sequence[Record], z: np.ndarray) -> float:
    """The logit threshold maximising set- and class-weighted accuracy of out-of-fold logits."""
    y = np.asarray([r["label"] for r in records])
    w = _weights(records)
    grid = np.quantile(z, np.linspace(0.02, 0.98, 97))
    acc = [float((w * ((z >= t) == y)).sum()) for t in grid]
    return float(grid[int(np.argmax(acc))])


def _forward(train: Sequence[Record], fold: np.ndarray, candidates: Sequence[str], offset: bool,
             l2: float = 3.0, min_gain: float = 0.002) -> tuple[str, ...]:
    chosen: list[str] = []
    best = 0.0
    while True:
        trials = {c: _per_set_auroc(train, _cv_logits("logistic", (*chosen, c), l2, offset, train, fold))
                  for c in candidates if c not in chosen}
        if not trials:
            break
        c, sc = max(trials.items(), key=lambda t: t[1])
        if sc < best + min_gain:
            break
        chosen.append(c)
        best = sc
    return tuple(chosen)


def fit_selected(kind: str, names: tuple[str, ...], offset: bool,
                 train: Sequence[Record]) -> tuple[_Head, dict[str, Any]]:
    """The head with the penalty chosen by grouped CV on ``train``, and its CV figures."""
    fold = _folds(train)
    if kind == "forward":
        names = _forward(train, fold, names, offset)
        kind = "logistic"
    grid = L2_GRID if kind == "logistic" else (0.0, 1.0)
    cv = {l2: _cv_logits(kind, names, l2, offset, train, fold) for l2 in grid}
    scores = {l2: _per_set_auroc(train, z) for l2, z in cv.items()}
    l2 = max(scores, key=lambda k: scores[k])
    head = _Head(kind, names, l2, offset).fit(train)
    return head, {"l2": l2, "cv_auroc": round(scores[l2], 4), "threshold": _threshold(train, cv[l2]),
                  "features": list(names)}


def _evaluate(head: _Head, info: dict[str, Any], recs: Sequence[Record]) -> dict[str, float]:
    y = np.asarray([r["label"] for r in recs])
    z = head.logit(recs)
    t = info["threshold"]
    return {
        "auroc": round(auroc(y, z), 4),
        "flag_accuracy": round(float(((z >= 0) == y).mean()), 4),
        "flag_accuracy_tuned": round(float(((z >= t) == y).mean()), 4),
        "flag_balanced_tuned": round(float(np.mean([((z >= t) == y)[y == c].mean() for c in (0, 1)])), 4),
    }


def _heads(only: str | None) -> list[tuple[str, str, tuple[str, ...], bool]]:
    from llmpulse.detectors.hallucination.groundedness import FEATURES

    heads: list[tuple[str, str, tuple[str, ...], bool]] = []
    for name, names in GROUPS.items():
        for offset in (True, False):
            heads.append(("logistic", f"{name}{'' if offset else ' -spec'}", names, offset))
    heads.append(("gbm", "GBM all + soft -spec", GROUPS["all + soft"], False))
    heads.append(("forward", "forward all + soft -spec", FEATURES + SOFT_FEATURES, False))
    heads.append(("forward", "forward all + soft", FEATURES + SOFT_FEATURES, True))
    return [h for h in heads if only is None or only in h[1]]


def run(data: str | os.PathLike[str], cache: Path, only: str | None = None,
        vectors: str | None = None) -> dict[str, Any]:
    sets = load_sets(data)
    all_records = [r for rows in sets.values() for r in rows]
    for r in all_records:
        r["_rid"] = _rid(r)
        r["_doc"] = document_key(r)
    store = extract(all_records, cache, vectors)
    _index(all_records, store)
    heads = _heads(only)
    out: dict[str, Any] = {"held_out": {}, "leave_one_set_out": {}}
    train, evaluation = held_out_split(sets)
    for kind, label, names, offset in heads:
        head, info = fit_selected(kind, names, offset, train)
        out["held_out"][label] = {"fit": info, **{s: _evaluate(head, info, recs) for s, recs in evaluation.items()}}
        print("held-out", label, info["l2"], info["cv_auroc"], info["features"] if kind == "forward" else "",
              {s: out["held_out"][label][s]["auroc"] for s in evaluation}, flush=True)
    out["held_out"]["novelty baseline"] = {
        s: {"auroc": round(auroc([r["label"] for r in recs], [lexical_novelty(r["answer"], r["context"]) for r in recs]), 4)}
        for s, recs in evaluation.items()}
    print("held-out novelty", out["held_out"]["novelty baseline"], flush=True)
    for name in sets:
        tr, ev = leave_one_set_out(sets, name)
        row: dict[str, Any] = {"n_train": len(tr), "novelty": round(auroc(
            [r["label"] for r in ev], [lexical_novelty(r["answer"], r["context"]) for r in ev]), 4)}
        for kind, label, names, offset in heads:
            head, info = fit_selected(kind, names, offset, tr)
            row[label] = {**_evaluate(head, info, ev), "fit": info}
        out["leave_one_set_out"][name] = row
        print("loso", name, {k: (v["auroc"] if isinstance(v, dict) else v) for k, v in row.items()}, flush=True)
    return out


def speed(pairs: Sequence[tuple[str, list[str]]], vecs: StaticVectors) -> dict[str, float]:
    """Pairs per CPU second of the shipped scorer alone and with the soft features added.

    The scorer's context caches are cleared first (every context new, as the
    benchmark does); the word-vector table is warm (a vocabulary, not a per-context cache).
    """
    from llmpulse.detectors.hallucination import groundedness
    from llmpulse.detectors.hallucination import text as tx
    from llmpulse.detectors.hallucination.groundedness import GroundednessScorer

    scorer = GroundednessScorer()
    for a, c in pairs:
        vecs.vectors([w for s in tx.sentences(a + " " + " ".join(c)) for w, _ in content_words(s)])

    def clear() -> None:
        groundedness.clear_caches()

    clear()
    t0 = time.process_time()
    for a, c in pairs:
        scorer.score(a, c)
    t_scorer = time.process_time() - t0
    clear()
    t0 = time.process_time()
    for a, c in pairs:
        scorer.score(a, c)
        soft_features(a, c, vecs)
    t_both = time.process_time() - t0
    return {"scorer": round(len(pairs) / t_scorer, 1), "scorer_plus_soft": round(len(pairs) / t_both, 1)}


def format_table(result: dict[str, Any]) -> str:
    """AUROC (flag accuracy at p >= 0.5) of every head, held out and leave one set out, next to novelty."""
    sets = list(result["leave_one_set_out"])
    lines = ["head".ljust(46) + "".join(f"{s[:12] + ' held':>20}" for s in sets)
             + "".join(f"{s[:12] + ' LOSO':>20}" for s in sets)]
    heads = [h for h in result["held_out"] if h != "novelty baseline"]
    for h in heads:
        held = [result["held_out"][h][s] for s in sets]
        loso = [result["leave_one_set_out"][s][h] for s in sets]
        lines.append(h.ljust(46) + "".join(f"{b['auroc']:>13.3f} ({b['flag_accuracy']:.2f})" for b in held + loso))
    lines.append("lexical novelty".ljust(46)
                 + "".join(f"{result['held_out']['novelty baseline'][s]['auroc']:>20.3f}" for s in sets)
                 + "".join(f"{result['leave_one_set_out'][s]['novelty']:>20.3f}" for s in sets))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "llmpulse" / "soft_features.json"))
    ap.add_argument("--json")
    ap.add_argument("--vectors", help="a .npy token-vector matrix to use instead of the word-embedding matrix")
    ap.add_argument("--speed", action="store_true", help="measure pairs per CPU second only")
    ap.add_argument("--regression", default=str(Path(__file__).resolve().parents[2] / "tests" / "data"
                                                  / "hallucination_regression.jsonl"),
                    help="short RAG pairs for the speed figure")
    ap.add_argument("--only", help="run only the heads whose label contains this text")
    args = ap.parse_args(argv)
    if args.speed:
        from llmpulse.detectors.hallucination.cross_encoder import long_pairs
        from llmpulse.detectors.hallucination.datasets import load_file

        vecs = static_vectors() if args.vectors is None else StaticVectors(matrix=np.load(args.vectors))
        short = [(r["answer"], r["context"]) for r in load_file(args.regression)][:400]
        print("short contexts:", speed(short, vecs))
        print("500-word contexts, 100-word answers:", speed(long_pairs(load_sets(args.data), 400), vecs))
        return
    result = run(args.data, Path(args.cache), args.only, args.vectors)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
