"""Groundedness of a response against its retrieved context, with the reason.

Embedding similarity alone cannot see a hallucination that copies the
context and changes one number, because the copy is *more* similar than an
honest paraphrase. So each answer sentence is checked in three steps:

1. **alignment**: the sentence, and each of its clauses, is matched to its
   best context sentence by the share of its content-word stems and
   specifics found there (clause by clause, so an answer merging two
   context sentences is judged fairly);
2. **specifics**: every number, amount, percentage, duration, date, time,
   weekday, frequency and name in the sentence must be backed by the aligned
   span (normalised: "thirty" = "30", "two weeks" = "14 days"); one found
   only elsewhere in the context is *misplaced* (a swap with another value
   of the context), one found nowhere is *unsupported*;
3. **polarity and conditions**: each clause must agree in negation with the
   context clause it matches, and condition words ("only", "unless", "at
   least", "within" ...) must appear in the span, never their opposite.

Each sentence gets a rule score in [0, 1]: a mild factor for words the
context lacks (paraphrases are allowed), and strong factors for every
unsupported specific (x0.2), misplaced specific (x0.5), negation mismatch
(x0.25), contradicted condition (x0.3) or unsupported condition (x0.7). The
response's ``rule_score`` is that of its weakest sentence: one invented
detail is enough to mislead a user.

A small logistic model (:mod:`detectors.hallucination.model`) reads the
specifics, polarity and novelty features (not the raw word-overlap ones:
its self-supervised training data would teach it that copying is
suspicious) and gives ``probability`` that the response is hallucinated.
``score``, the groundedness the detector reports, is the mean of
``rule_score``, ``specifics_score`` (share of specifics, negations and
conditions backed by the context) and ``1 - probability``. The defaults are the
weights shipped in ``data/model.json``; no embedding and no LLM call is
needed, so the scorer runs at thousands of pairs per second on one core.

>>> scorer = GroundednessScorer()
>>> ctx = ["Refunds are issued within 14 days of receiving the return. Gift cards are not refundable."]
>>> good = scorer.score("Once we get the item back, you'll have your money within two weeks.", ctx)
>>> bad = scorer.score("Refunds are issued within 30 days of receiving the return.", ctx)
>>> good.grounded, bad.grounded
(True, False)
>>> print(bad.explain())
groundedness 0.23: 'Refunds are issued within 30 days of receiving the return.' unsupported: '30 days'
>>> scorer.score("Gift cards are refundable.", ctx).worst.negation_mismatch
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from detectors.hallucination import text as tx
from detectors.hallucination.model import LogisticModel, default_model

__all__ = [
    "FEATURES",
    "Groundedness",
    "GroundednessScorer",
    "SentenceCheck",
]

FEATURES: tuple[str, ...] = (
    "min_alignment",
    "mean_alignment",
    "min_context_recall",
    "unsupported_specifics",
    "misplaced_specifics",
    "negation_mismatch",
    "opposite_conditions",
    "unsupported_conditions",
    "unsupported_entities",
    "unsupported_numbers",
    "specifics_support",
    "novel_words_worst",
    "min_bigram_support",
    "min_clause_recall",
    "near_copy_novel_words",
    "contradictions",
    "rule_score",
)
"""Per-response features, in the order the learned model reads them."""

_UNSUPPORTED = 0.2
_MISPLACED = 0.35
_NEGATION = 0.25
_OPPOSITE = 0.3
_CONDITION = 0.55
_NEGATION_OVERLAP = 0.6


@dataclass(frozen=True, slots=True)
class SentenceCheck:
    """What was checked for one answer sentence, and what failed."""

    sentence: str
    span: str
    alignment: float
    context_recall: float
    unsupported: tuple[str, ...] = ()
    misplaced: tuple[str, ...] = ()
    unsupported_entities: int = 0
    negation_mismatch: bool = False
    opposite_conditions: tuple[str, ...] = ()
    unsupported_conditions: tuple[str, ...] = ()
    n_specifics: int = 0
    novel_words: int = 0
    bigram_support: float = 1.0
    clause_recall: float = 1.0
    score: float = 1.0

    @property
    def problems(self) -> list[str]:
        """Human-readable reasons, most serious first."""
        out = [f"unsupported: {s!r}" for s in self.unsupported]
        out += [f"not in the matching passage: {s!r}" for s in self.misplaced]
        if self.negation_mismatch:
            out.append("negation differs from the context")
        out += [f"contradicts the context: {c}" for c in self.opposite_conditions]
        out += [f"condition not in the context: {c}" for c in self.unsupported_conditions]
        return out


@dataclass(frozen=True, slots=True)
class Groundedness:
    """The verdict on one (response, context) pair.

    ``score`` is the groundedness in [0, 1] (higher = better supported);
    ``rule_score`` and ``specifics_score`` are its interpretable parts,
    ``probability`` the learned model's probability of a hallucination.
    """

    score: float
    rule_score: float
    specifics_score: float
    probability: float
    threshold: float
    sentences: tuple[SentenceCheck, ...]
    features: tuple[float, ...] = field(repr=False, default=())

    @property
    def grounded(self) -> bool:
        return self.score >= self.threshold

    @property
    def worst(self) -> SentenceCheck | None:
        """The least supported answer sentence (``None`` for an empty response)."""
        if not self.sentences:
            return None
        return min(self.sentences, key=lambda s: s.score)

    def explain(self) -> str:
        """One line an operator can read: score, weakest sentence, why."""
        w = self.worst
        if w is None:
            return f"groundedness {self.score:.2f}: empty response"
        reasons = w.problems or [f"{w.novel_words} words not in the context"]
        return f"groundedness {self.score:.2f}: {w.sentence!r} " + "; ".join(reasons)

    def to_detail(self) -> dict[str, Any]:
        """JSON-able summary for a signal's ``detail``."""
        w = self.worst
        return {
            "score": round(self.score, 4),
            "sentence": w.sentence if w else "",
            "span": w.span if w else "",
            "problems": w.problems if w else [],
        }


@dataclass(frozen=True, slots=True)
class _Unit:
    """A context sentence (or two adjacent ones), preprocessed once."""

    text: str
    stems: frozenset[str]
    words: frozenset[str]
    specifics: tuple[tx.Specific, ...]
    conditions: frozenset[str]
    clauses: tuple[tuple[frozenset[str], bool], ...]


@dataclass(frozen=True, slots=True)
class _Context:
    units: tuple[_Unit, ...]
    stems: frozenset[str]
    bigrams: frozenset[tuple[str, str]]
    words: frozenset[str]
    specifics: tuple[tx.Specific, ...]


_WORDS = __import__("re").compile(r"[a-z0-9]+")


def _unit(text: str) -> _Unit:
    return _Unit(
        text=text,
        stems=frozenset(tx.content_stems(text)),
        words=frozenset(_WORDS.findall(tx.normalise(text).lower())),
        specifics=tuple(tx.specifics(text)),
        conditions=frozenset(tx.conditions(text)),
        clauses=tuple(
            (frozenset(tx.content_stems(c)), tx.negated(c)) for c in tx.clauses(text)
        ),
    )


@lru_cache(maxsize=1024)
def _context(passages: tuple[str, ...]) -> _Context:
    units = [_unit(s) for passage in passages for s in tx.sentences(passage)]
    bigrams: set[tuple[str, str]] = set()
    for passage in passages:
        stems = tx.content_stems(passage)
        bigrams.update(zip(stems, stems[1:], strict=False))
    return _Context(
        units=tuple(units),
        stems=frozenset().union(*(u.stems for u in units)) if units else frozenset(),
        bigrams=frozenset(bigrams),
        words=frozenset().union(*(u.words for u in units)) if units else frozenset(),
        specifics=tuple(s for u in units for s in u.specifics),
    )


def _backed(spec: tx.Specific, evidence: Sequence[tx.Specific], words: frozenset[str]) -> bool:
    if spec.kind == "entity":
        parts = _WORDS.findall(str(spec.key[1]))
        if set(parts) <= words:
            return True
        # "CET" and "Central European Time", "US" and "United States"
        if len(parts) > 1 and "".join(p[0] for p in parts) in words:
            return True
        return any(
            e.kind == "entity" and "".join(p[0] for p in _WORDS.findall(str(e.key[1]))) == parts[0]
            for e in evidence
        ) if len(parts) == 1 else False
    return any(tx.supports(spec, e) for e in evidence)


def _alignment(stems: frozenset[str], specs: Sequence[tx.Specific], unit: _Unit) -> float:
    total = len(stems) + len(specs)
    if total == 0:
        return 1.0
    hit = len(stems & unit.stems) + sum(_backed(s, unit.specifics, unit.words) for s in specs)
    return hit / total


def _best(stems: frozenset[str], specs: Sequence[tx.Specific], ctx: _Context) -> tuple[_Unit, float]:
    scores = [_alignment(stems, specs, u) for u in ctx.units]
    best = int(np.argmax(scores))
    return ctx.units[best], scores[best]


def _check(sentence: str, ctx: _Context) -> SentenceCheck:
    stems = frozenset(tx.content_stems(sentence))
    specs = tx.specifics(sentence)
    if not ctx.units:
        return SentenceCheck(sentence, "", 0.0, 0.0, tuple(s.text for s in specs),
                             n_specifics=len(specs), novel_words=len(stems), bigram_support=0.0,
                             score=0.0)
    unit, align = _best(stems, specs, ctx)

    unsupported: list[str] = []
    misplaced: list[str] = []
    bad_entities = 0
    negation_mismatch = False
    opposite: list[str] = []
    evidence_conditions = set(unit.conditions)
    min_clause_recall = 1.0
    # Each clause is checked against its own best context sentence, so an
    # answer that merges two context sentences is judged fairly, and a value
    # moved from one context sentence to another is caught.
    parts = tx.clauses(sentence)
    for clause in parts if len(parts) > 1 else [sentence]:
        c_stems = frozenset(tx.content_stems(clause))
        c_specs = tx.specifics(clause)
        if len(c_stems) >= 2:
            c_unit, _ = _best(c_stems, c_specs, ctx)
            min_clause_recall = min(min_clause_recall, len(c_stems & ctx.stems) / len(c_stems))
        else:
            c_unit = unit
        evidence_conditions |= c_unit.conditions
        for s in c_specs:
            if _backed(s, c_unit.specifics, c_unit.words):
                continue
            if _backed(s, ctx.specifics, ctx.words):
                misplaced.append(s.text)
            else:
                unsupported.append(s.text)
                bad_entities += s.kind == "entity"
        c_negated = tx.negated(clause)
        if len(c_stems) >= 2 and not negation_mismatch:
            # overlap relative to the shorter clause: "Alcohol is reimbursed when
            # traveling" matches "alcohol is not reimbursed" fully
            overlap, neg = max(
                (
                    (len(c_stems & cs) / max(2, min(len(c_stems), len(cs))), cneg)
                    for cs, cneg in c_unit.clauses
                ),
                default=(0.0, False),
            )
            negation_mismatch = overlap >= _NEGATION_OVERLAP and neg != c_negated
        if not c_negated:
            # "hasn't been used" against "unused" agrees; antonyms only count unnegated
            c_words = frozenset(_WORDS.findall(tx.normalise(clause).lower()))
            opposite += [f"{x} vs {y}" for x, y in tx.antonyms(c_words, c_unit.words)]

    conds = tx.conditions(sentence)
    evidence_conditions |= {tx.COMPATIBLE[c] for c in evidence_conditions if c in tx.COMPATIBLE}
    opposite += [
        f"{c} vs {tx.OPPOSITE[c]}" for c in conds
        if c not in evidence_conditions and tx.OPPOSITE.get(c) in evidence_conditions
    ]
    unsup_conds = tuple(
        c for c in conds
        if c not in evidence_conditions and tx.OPPOSITE.get(c) not in evidence_conditions
    )

    recall = len(stems & ctx.stems) / len(stems) if stems else 1.0
    seq = tx.content_stems(sentence)
    grams = list(zip(seq, seq[1:], strict=False))
    bigram = sum(g in ctx.bigrams for g in grams) / len(grams) if grams else 1.0
    score = (0.5 + 0.5 * recall) * (
        _UNSUPPORTED ** len(unsupported)
        * _MISPLACED ** len(misplaced)
        * (_NEGATION if negation_mismatch else 1.0)
        * _OPPOSITE ** len(opposite)
        * _CONDITION ** len(unsup_conds)
    )
    return SentenceCheck(
        sentence=sentence,
        span=unit.text,
        alignment=align,
        context_recall=recall,
        unsupported=tuple(unsupported),
        misplaced=tuple(misplaced),
        unsupported_entities=bad_entities,
        negation_mismatch=negation_mismatch,
        opposite_conditions=tuple(opposite),
        unsupported_conditions=unsup_conds,
        n_specifics=len(specs),
        novel_words=len(stems - ctx.stems),
        bigram_support=bigram,
        clause_recall=min_clause_recall,
        score=score,
    )


def _as_passages(context: str | Sequence[str] | None) -> tuple[str, ...]:
    if context is None:
        return ()
    if isinstance(context, str):
        return (context,)
    return tuple(str(p) for p in context if p)


def response_features(checks: Sequence[SentenceCheck]) -> tuple[float, ...]:
    """The :data:`FEATURES` of a response from its sentence checks."""
    if not checks:
        return (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0)
    n_spec = sum(c.n_specifics for c in checks)
    n_unsup = sum(len(c.unsupported) for c in checks)
    n_mis = sum(len(c.misplaced) for c in checks)
    n_ent = sum(c.unsupported_entities for c in checks)
    worst = min(checks, key=lambda c: c.score)
    return (
        min(c.alignment for c in checks),
        float(np.mean([c.alignment for c in checks])),
        min(c.context_recall for c in checks),
        float(np.log1p(n_unsup)),
        float(np.log1p(n_mis)),
        float(any(c.negation_mismatch for c in checks)),
        float(any(c.opposite_conditions for c in checks)),
        float(sum(len(c.unsupported_conditions) for c in checks)),
        float(n_ent),
        float(n_unsup - n_ent),
        (n_spec - n_unsup - n_mis) / n_spec if n_spec else 1.0,
        float(np.log1p(worst.novel_words)),
        min(c.bigram_support for c in checks),
        min(c.clause_recall for c in checks),
        # one or two new words in an otherwise copied sentence: a swap
        float(max((c.novel_words for c in checks if c.context_recall >= 0.6), default=0) in (1, 2)),
        float(sum(len(c.opposite_conditions) for c in checks)),
        worst.score,
    )


class GroundednessScorer:
    """Scores how well a response is supported by its context, and says why.

    ``model`` is the learned combiner (default: the shipped weights);
    ``threshold`` is the groundedness below which a response counts as
    ungrounded. Contexts are preprocessed once and cached, since many
    responses in a window share retrieved passages.

    >>> s = GroundednessScorer().score(
    ...     "Dr. Amara Lee sees patients on Tuesdays.",
    ...     "Dr. Amara Osei sees patients on Tuesdays and Fridays.")
    >>> s.worst.unsupported, s.grounded
    (('Dr. Amara Lee',), False)
    """

    def __init__(self, model: LogisticModel | None = None, threshold: float = 0.5) -> None:
        self.model = model if model is not None else default_model()
        self.threshold = threshold

    def check(self, response: str, context: str | Sequence[str] | None) -> list[SentenceCheck]:
        """One :class:`SentenceCheck` per answer sentence."""
        ctx = _context(_as_passages(context))
        return [_check(s, ctx) for s in tx.sentences(response or "")]

    def score(self, response: str, context: str | Sequence[str] | None) -> Groundedness:
        """The :class:`Groundedness` of ``response`` against ``context``."""
        checks = tuple(self.check(response, context))
        feats = response_features(checks)
        named = dict(zip(FEATURES, feats, strict=True))
        prob = float(self.model.predict_proba(np.asarray([[named[n] for n in self.model.names]]))[0])
        rule = feats[FEATURES.index("rule_score")]
        n_spec = sum(c.n_specifics for c in checks)
        bad = sum(
            len(c.unsupported) + len(c.misplaced) + c.negation_mismatch
            + len(c.opposite_conditions) + len(c.unsupported_conditions)
            for c in checks
        )
        spec_score = 1.0 - bad / (n_spec + bad) if bad else 1.0
        return Groundedness(
            score=(rule + spec_score + 1.0 - prob) / 3.0,
            rule_score=rule,
            specifics_score=spec_score,
            probability=prob,
            threshold=self.threshold,
            sentences=checks,
            features=feats,
        )

    def score_many(
        self, responses: Sequence[str], contexts: Sequence[str | Sequence[str] | None]
    ) -> list[Groundedness]:
        """:meth:`score` for aligned lists of responses and contexts."""
        return [self.score(r, c) for r, c in zip(responses, contexts, strict=True)]
