"""Training of the groundedness model: public human-annotated sets plus generated perturbations.

:class:`~llmpulse.detectors.hallucination.model.GroundingModel` has two parts, each a
logistic regression over features of :mod:`llmpulse.detectors.hallucination.groundedness`:

* **overlap** (:data:`OVERLAP_FEATURES`): fitted on the *training split* of
  public faithfulness sets (``label`` 1 = not grounded), split by source
  document with :func:`~llmpulse.detectors.hallucination.datasets.held_out`; the held-out
  documents are never trained or tuned on. Each set, and each class within a
  set, gets the same total weight, so the probability is calibrated for a
  balanced mix and no set dominates. The features were chosen by forward
  selection with 5-fold cross-validation grouped by document *within the
  training split* (mean AUROC over the sets).
* **specifics** (:data:`SPECIFICS_FEATURES`): fitted on pairs generated from
  templates (:func:`training_pairs`), where each hallucination changes one
  detail of a context sentence: a number, amount, date, weekday or name
  swapped, a negation flipped, a condition replaced, a content word swapped,
  or one plausible claim appended. Faithful answers are copies, subsets and
  automatic rewrites (numbers as words, units converted, synonyms, filler).
  Overlap features are left out of this part: in generated data copying is
  what faithful answers do, which real paraphrases contradict.

Everything is deterministic, so ::

    python -m llmpulse.detectors.hallucination.train --data ../shared/data/faithfulness/

rewrites ``data/grounding_model.json`` identically (a test checks it when the
data is present).

>>> pairs = training_pairs(seed=3, n_contexts=4)
>>> len(pairs), sorted({p[2] for p in pairs})
(35, [0, 1])
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmpulse.detectors.hallucination.datasets import held_out, load_sets
from llmpulse.detectors.hallucination.groundedness import (
    FEATURES,
    GroundednessScorer,
    response_features,
)
from llmpulse.detectors.hallucination.model import MODEL_FILE, GroundingModel, LogisticModel

__all__ = [
    "OVERLAP_FEATURES",
    "SEED",
    "SPECIFICS_FEATURES",
    "SPECIFICS_WEIGHT",
    "TEMPLATES",
    "feature_matrix",
    "select_features",
    "set_weights",
    "train",
    "training_pairs",
]

OVERLAP_FEATURES: tuple[str, ...] = ("min_context_recall", "min_alignment", "unsupported_specifics")
"""Read by the part fitted on public data, chosen by forward selection with
grouped CV on its training split from every feature, the specifics ones
included (``--select``): the count of unsupported specifics is what the
public sets reward most after sentence coverage."""

SPECIFICS_FEATURES: tuple[str, ...] = (
    "unsupported_specifics", "misplaced_specifics", "negation_mismatch", "opposite_conditions",
    "unsupported_conditions", "unsupported_numbers", "unsupported_entities", "contradictions",
)
"""Read by the part fitted on generated perturbations."""

SPECIFICS_WEIGHT = 0.5
"""Scale of the specifics logit. A judgement, not a fitted value: at 0 the
model ignores changed details (public summary sets barely reward them); at 1
it gives up about 0.05 AUROC on QAGS and CLIFF. Both ends are reported by
the benchmark's ablation."""

SEED = 20240611
N_CONTEXTS = 240

_NAMES = ["Marta Silva", "Kofi Mensah", "Lena Vogel", "Ravi Iyer", "Sofia Conti", "Tomas Novak",
          "Aiko Sato", "Omar Farouk", "Ingrid Berg", "Diego Ramos", "Hana Kim", "Peter Quinn"]
_CITIES = ["Oslo", "Madrid", "Dublin", "Prague", "Nairobi", "Lyon", "Denver", "Osaka", "Tallinn", "Bergen"]
_BRANDS = ["Zenlo", "Parkwise", "Fitora", "Rentaro", "Petsure", "Medix", "Taxly", "Cloudnest"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]

# Each template: sentences with {slots}. Slot kinds: n (small number), big,
# money, pct, dur (number of days), day (weekday), month, name, city, brand, hour.
TEMPLATES: list[list[str]] = [
    ["Members of {brand} gyms can freeze their membership for up to {n} months per year.",
     "Personal training sessions cost {money} each and must be booked {n2} hours in advance.",
     "The pool is closed every {day} for cleaning."],
    ["Rental cars from the {city} office must be returned with a full tank.",
     "Drivers must be at least {age} years old and have held a licence for {n} years.",
     "A late return of more than {n2} hours is charged as an extra day at {money}."],
    ["Library fines are {cents} cents per day for each overdue book.",
     "Borrowers with fines above {money} cannot check out new items.",
     "E-books are returned automatically after {dur} days."],
    ["The unlimited plan includes {big} GB of high-speed data per month.",
     "After that, speeds are reduced but data is not cut off.",
     "Roaming in {city} is charged at {money} per day."],
    ["Pet insurance from {brand} covers accidents from day one and illnesses after a {dur}-day waiting period.",
     "Dental treatment is not covered.",
     "Claims are paid within {n} business days once the vet invoice is received."],
    ["Registration for the {city} conference closes on {month} {dom}.",
     "Early-bird tickets cost {money} and include access to all workshops.",
     "Refunds are only possible until {n} weeks before the event."],
    ["Parking permits for residents cost {money} per year.",
     "Each household may hold at most {n} permits.",
     "Visitors can park for free for {n2} hours on {day}s."],
    ["The hotel breakfast is served from {hour}:00 to {hour2}:30.",
     "Children under {n} eat for free.",
     "Late checkout until {hour3} pm costs {money} and must be requested at reception."],
    ["Each {brand} licence covers {n} seats.",
     "Additional seats are billed at {money} per seat per month.",
     "Unused seats are not refunded at renewal."],
    ["Tax returns must be filed by {month} {dom}.",
     "Taxpayers who file online receive their refund within {n} weeks.",
     "Penalties of {pct}% apply to late payments, except for first-time filers."],
    ["Dental check-ups are covered twice a year with no co-payment.",
     "Fillings are reimbursed at {pct}% after a deductible of {money}.",
     "Orthodontic treatment is only covered for patients under {age}."],
    ["The support line is staffed by {name} and the {city} team from {hour}:00 to {hour4}:00.",
     "Urgent tickets receive a reply within {n} hours.",
     "Tickets without an order number cannot be processed."],
]

_CLAIMS = [
    "Loyalty members also receive a {pct}% discount on all purchases.",
    "This benefit is also available to family members.",
    "A confirmation email is sent within {n} minutes.",
    "The service is also available in {city}.",
    "Requests can also be made by phone on {day}s.",
    "An extra fee of {money} applies on public holidays.",
    "The offer ends on {month} {dom}.",
    "{name} approves all exceptions personally.",
    "Students get the same benefit at half price.",
    "This policy was introduced in {year}.",
]

_SYNONYMS = {
    "cost": "are priced at", "costs": "is priced at", "must": "have to", "cannot": "can't",
    "receive": "get", "returned": "brought back", "closed": "shut", "charged": "billed",
    "covers": "includes", "free": "free of charge", "possible": "allowed", "each": "every",
    "requested": "asked for", "booked": "reserved", "reduced": "lowered", "processed": "handled",
    "additional": "extra", "purchase": "buy", "may": "can", "apply": "are charged",
}
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                 "seventeen", "eighteen", "nineteen", "twenty"]
_CONDITION_SWAPS = [("at least", "at most"), ("up to", "at least"), ("more than", "less than"),
                    ("within", "after"), ("until", "after"), ("before", "after"), ("above", "below"),
                    ("under", "over"), ("only ", ""), ("except", "including"), ("at most", "at least")]
_NOUNS = ["deposit", "voucher", "upgrade", "manager", "insurance", "receipt", "contract",
          "warranty", "password", "invoice", "passport", "delivery"]
_FILLERS = ["Sure, happy to help.", "Good question!", "Here is what our policy says.",
            "Let me know if you need anything else.", "I hope this helps."]


def _fill(template: str, rng: np.random.Generator) -> str:
    values = {
        "n": int(rng.integers(2, 10)), "n2": int(rng.integers(2, 48)),
        "big": int(rng.choice([20, 30, 50, 100])), "age": int(rng.choice([16, 18, 21, 25])),
        "money": f"${int(rng.choice([5, 9, 12, 15, 20, 29, 45, 60, 99, 120, 250]))}",
        "pct": int(rng.choice([5, 10, 15, 20, 25, 40, 60, 80])),
        "cents": int(rng.choice([10, 20, 25, 50])), "dur": int(rng.choice([7, 14, 21, 30, 60])),
        "day": str(rng.choice(_DAYS)), "month": str(rng.choice(_MONTHS)),
        "dom": int(rng.integers(1, 29)), "name": str(rng.choice(_NAMES)),
        "city": str(rng.choice(_CITIES)), "brand": str(rng.choice(_BRANDS)),
        "hour": int(rng.integers(6, 10)), "hour2": int(rng.integers(10, 12)),
        "hour3": int(rng.integers(1, 5)), "hour4": int(rng.integers(17, 22)),
        "year": int(rng.integers(2015, 2024)),
    }
    return template.format(**values)


_NUMBER = re.compile(r"(?<![\w.:])(\$?)(\d+)(?![\w:])")


def _swap_number(s: str, rng: np.random.Generator) -> str | None:
    hits = list(_NUMBER.finditer(s))
    if not hits:
        return None
    m = hits[int(rng.integers(len(hits)))]
    v = int(m.group(2))
    new = v + int(rng.choice([-1, 1])) * max(1, int(round(v * float(rng.choice([0.2, 0.5, 1.0])))))
    if new <= 0 or new == v:
        new = v * 2
    return s[: m.start(2)] + str(new) + s[m.end(2):]


def _swap_from(pool: list[str], s: str, rng: np.random.Generator) -> str | None:
    present = [p for p in pool if p in s]
    if not present:
        return None
    old = present[int(rng.integers(len(present)))]
    new = str(rng.choice([p for p in pool if p != old]))
    return s.replace(old, new, 1)


def _flip_negation(s: str, rng: np.random.Generator) -> str | None:
    for a, b in ((" cannot ", " can "), (" is not ", " is "), (" are not ", " are "),
                 (" not ", " "), (" no ", " a ")):
        if a in s:
            return s.replace(a, b, 1)
    for a, b in ((" must ", " must not "), (" is ", " is not "), (" are ", " are not "),
                 (" can ", " cannot "), (" covers ", " does not cover ")):
        if a in s:
            return s.replace(a, b, 1)
    return None


def _swap_condition(s: str, rng: np.random.Generator) -> str | None:
    options = [(a, b) for a, b in _CONDITION_SWAPS if a in s]
    if not options:
        return None
    a, b = options[int(rng.integers(len(options)))]
    return s.replace(a, b, 1)


def _swap_noun(s: str, rng: np.random.Generator) -> str | None:
    words = [w for w in re.findall(r"\b[a-z]{5,}\b", s) if w not in _SYNONYMS]
    if not words:
        return None
    old = words[int(rng.integers(len(words)))]
    return re.sub(rf"\b{old}\b", str(rng.choice(_NOUNS)), s, count=1)


def _paraphrase(s: str, rng: np.random.Generator) -> str:
    out = s
    for word, syn in _SYNONYMS.items():
        if rng.random() < 0.6:
            out = re.sub(rf"\b{word}\b", syn, out)

    def number_words(m: re.Match[str]) -> str:
        v = int(m.group(2))
        if m.group(1) or v >= len(_NUMBER_WORDS) or rng.random() < 0.5:
            return m.group(0)
        return _NUMBER_WORDS[v]

    out = _NUMBER.sub(number_words, out)
    out = re.sub(r"\b(7|14|21) days\b", lambda m: f"{int(m.group(1)) // 7} weeks" if rng.random() < 0.5 else m.group(0), out)
    out = re.sub(r"\$(\d+)\b", lambda m: f"{m.group(1)} dollars" if rng.random() < 0.4 else m.group(0), out)
    if "," in out and rng.random() < 0.3:
        out = out.split(",")[0].rstrip() + "."
    return out


_POSITIVE_OPS = ("number", "entity", "weekday", "month", "negation", "condition", "noun", "claim")


def training_pairs(seed: int = SEED, n_contexts: int = N_CONTEXTS) -> list[tuple[str, str, int, str]]:
    """``(response, context, label, kind)`` pairs generated from ``seed``."""
    rng = np.random.default_rng(seed)
    pairs: list[tuple[str, str, int, str]] = []
    for _ in range(n_contexts):
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        sents = [_fill(t, rng) for t in template]
        context = " ".join(sents)
        # faithful answers
        for _ in range(3):
            k = int(rng.integers(1, len(sents) + 1))
            idx = sorted(rng.choice(len(sents), size=k, replace=False).tolist())
            chosen = [sents[i] for i in idx]
            kind = str(rng.choice(["copy", "paraphrase", "paraphrase"]))
            if kind == "paraphrase":
                chosen = [_paraphrase(s, rng) for s in chosen]
            if rng.random() < 0.3:
                chosen = [str(rng.choice(_FILLERS)), *chosen]
            pairs.append((" ".join(chosen), context, 0, kind))
        # hallucinated answers: one perturbation each
        for op in _POSITIVE_OPS:
            order = rng.permutation(len(sents)).tolist()
            for i in order:
                s = sents[i]
                if op == "number":
                    new = _swap_number(s, rng)
                elif op == "entity":
                    new = _swap_from(_NAMES + _CITIES + _BRANDS, s, rng)
                elif op == "weekday":
                    new = _swap_from(_DAYS, s, rng)
                elif op == "month":
                    new = _swap_from(_MONTHS, s, rng)
                elif op == "negation":
                    new = _flip_negation(s, rng)
                elif op == "condition":
                    new = _swap_condition(s, rng)
                elif op == "noun":
                    new = _swap_noun(s, rng)
                else:
                    claim = _fill(_CLAIMS[int(rng.integers(len(_CLAIMS)))], rng)
                    new = s + " " + claim
                if new is None or new == s:
                    continue
                if rng.random() < 0.3:
                    new = _paraphrase(new, rng) if op not in ("negation", "condition") else new
                others = [sents[j] for j in range(len(sents)) if j != i and rng.random() < 0.3]
                pairs.append((" ".join([new, *others]), context, 1, op))
                break
    return pairs


def feature_matrix(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """:data:`~llmpulse.detectors.hallucination.groundedness.FEATURES` of each record, one row each."""
    scorer = GroundednessScorer(model=None)
    return np.asarray(
        [response_features(scorer.check(r["answer"], r["context"])) for r in records], dtype=np.float64
    )


def set_weights(groups: Sequence[str], y: np.ndarray) -> np.ndarray:
    """Weights giving each (group, class) cell the same total, normalised to mean 1.

    >>> set_weights(["a", "a", "a", "b"], np.array([0, 1, 1, 1])).round(2).tolist()
    [1.33, 0.67, 0.67, 1.33]
    """
    g = np.asarray(groups)
    w = np.zeros(len(y))
    cells = [(k, c) for k in sorted(set(g.tolist())) for c in (0, 1) if ((g == k) & (y == c)).any()]
    for k, c in cells:
        mask = (g == k) & (y == c)
        w[mask] = 1.0 / mask.sum()
    return w * len(w) / w.sum()


def _features(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return X[:, [FEATURES.index(n) for n in names]]


def select_features(
    X: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str],
    documents: Sequence[str],
    candidates: Sequence[str],
    folds: int = 5,
    min_gain: float = 0.002,
) -> list[str]:
    """Forward selection by cross-validation grouped by document: mean AUROC over the groups.

    Run on the training split only; each step adds the candidate that raises
    the mean per-set AUROC most, until no candidate adds ``min_gain``.
    """
    from llmpulse.detectors.hallucination.evaluation import auroc

    g = np.asarray(groups)
    fold = np.asarray([int(d[8:16], 16) % folds for d in documents])
    chosen: list[str] = []
    best = 0.0

    def cv(names: list[str]) -> float:
        Z = _features(X, names)
        scores = []
        for k in range(folds):
            tr, te = fold != k, fold == k
            m = LogisticModel.fit(Z[tr], y[tr], names=tuple(names),
                                  sample_weight=set_weights(g[tr].tolist(), y[tr]))
            p = m.predict_proba(Z[te])
            scores += [auroc(y[te][g[te] == s], p[g[te] == s]) for s in sorted(set(g[te].tolist()))]
        return float(np.nanmean(scores))

    while True:
        trials = {c: cv([*chosen, c]) for c in candidates if c not in chosen}
        if not trials:
            return chosen
        c, s = max(trials.items(), key=lambda t: t[1])
        if s < best + min_gain:
            return chosen
        chosen.append(c)
        best = s


def train(
    data: str | os.PathLike[str],
    seed: int = SEED,
    n_contexts: int = N_CONTEXTS,
    l2: float = 1.0,
    specifics_weight: float = SPECIFICS_WEIGHT,
) -> GroundingModel:
    """Fit both parts: overlap on the training split of the sets at ``data``, specifics on generated pairs."""
    sets = load_sets(data)
    records = [(name, r) for name, rows in sets.items() for r in rows if not held_out(r)]
    X = feature_matrix([r for _, r in records])
    y = np.asarray([r["label"] for _, r in records], dtype=np.float64)
    groups = [name for name, _ in records]
    overlap = LogisticModel.fit(
        _features(X, OVERLAP_FEATURES), y, names=OVERLAP_FEATURES, l2=l2,
        sample_weight=set_weights(groups, y),
    )
    pairs = training_pairs(seed, n_contexts)
    scorer = GroundednessScorer(model=None)
    Xs = np.asarray([response_features(scorer.check(r, c)) for r, c, _, _ in pairs])
    ys = np.asarray([label for _, _, label, _ in pairs], dtype=np.float64)
    specifics = LogisticModel.fit(_features(Xs, SPECIFICS_FEATURES), ys, names=SPECIFICS_FEATURES, l2=l2)
    return GroundingModel(
        overlap=overlap,
        specifics=specifics,
        specifics_weight=specifics_weight,
        meta=tuple(sorted({
            "public_sets": {name: sum(1 for n, _ in records if n == name) for name in sets},
            "split": "documents with datasets.held_out(record) false",
            "generated_pairs": len(pairs), "seed": seed, "n_contexts": n_contexts, "l2": l2,
        }.items())),
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the groundedness model (data/grounding_model.json).")
    ap.add_argument("--data", required=True, help="a labelled set (.jsonl[.gz]) or a directory of them")
    ap.add_argument("--out", default=str(Path(__file__).with_name("data") / MODEL_FILE))
    ap.add_argument("--specifics-weight", type=float, default=SPECIFICS_WEIGHT)
    ap.add_argument("--select", action="store_true",
                    help="rerun the feature selection for the overlap part on the training split and print it")
    args = ap.parse_args(argv)
    if args.select:
        from llmpulse.detectors.hallucination.datasets import document_key

        sets = load_sets(args.data)
        records = [(name, r) for name, rows in sets.items() for r in rows if not held_out(r)]
        X = feature_matrix([r for _, r in records])
        y = np.asarray([r["label"] for _, r in records], dtype=np.float64)
        chosen = select_features(X, y, [n for n, _ in records], [document_key(r) for _, r in records],
                                 list(FEATURES))
        print("overlap features:", ", ".join(chosen))
        return 0
    model = train(args.data, specifics_weight=args.specifics_weight)
    Path(args.out).write_text(model.to_json() + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
