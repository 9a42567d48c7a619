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
unsupported specific (x0.2), misplaced specific (x0.35), negation mismatch
(x0.25), contradicted condition (x0.3) or unsupported condition (x0.55). The
response's ``rule_score`` is that of its weakest sentence: one invented
detail is enough to mislead a user.

The learned model (:class:`~llmpulse.detectors.hallucination.model.GroundingModel`,
built by :mod:`llmpulse.detectors.hallucination.train`) turns the features of all
sentences into ``probability``, the probability that the response is not
grounded; ``score = 1 - probability``. Its overlap part was fitted on public
human-annotated faithfulness sets, its specifics part on generated
perturbations. When the model file is missing the scorer falls back to
``score = rule_score`` and says so in :meth:`Groundedness.explain` and
``method``. No embedding and no LLM call is needed.

Odd inputs have defined results: an empty response is grounded (score 1,
nothing claimed); a response with claims but no context scores 0; a sentence
that declines to answer ("I can't find that in the documents") makes no claim
and is skipped (a response made only of them scores 1); a context longer than
:data:`MAX_CONTEXT_SENTENCES` sentences is cut to the sentences that share
most words with the response, and the explanation says so; a response longer
than :data:`MAX_ANSWER_SENTENCES` sentences is checked on its first ones, and
the explanation says so too. The work per pair grows with the text, never with
the product of the answer's and the context's numbers, dates or names (an
index of the context's specifics), so no answer stalls the window. Words of any
script count, so non-English text is compared word by word (the specifics
checks understand English only).

>>> scorer = GroundednessScorer()
>>> ctx = ["Refunds are issued within 14 days of receiving the return. Gift cards are not refundable."]
>>> good = scorer.score("Refunds are issued within two weeks of receiving the return.", ctx)
>>> bad = scorer.score("Refunds are issued within 30 days of receiving the return.", ctx)
>>> good.grounded, bad.grounded
(True, False)
>>> print(bad.explain())
groundedness 0.04: 'Refunds are issued within 30 days of receiving the return.' unsupported: '30 days'
>>> scorer.score("Gift cards are refundable.", ctx).worst.negation_mismatch
True
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from llmpulse.detectors.hallucination import text as tx
from llmpulse.detectors.hallucination.model import GroundingModel, load_model

__all__ = [
    "FEATURES",
    "MAX_ANSWER_SENTENCES",
    "MAX_CONTEXT_CHARS",
    "MAX_CONTEXT_SENTENCES",
    "Groundedness",
    "GroundednessScorer",
    "SentenceCheck",
    "clear_caches",
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
    "mean_context_recall",
    "mean_bigram_support",
    "mean_clause_recall",
    "novelty_share",
)
"""Per-response features, in the order the learned model reads them."""

_UNSUPPORTED = 0.2
_MISPLACED = 0.35
_NEGATION = 0.25
_OPPOSITE = 0.3
_CONDITION = 0.55
_NEGATION_OVERLAP = 0.6

MAX_CONTEXT_SENTENCES = 200
"""Longer contexts are cut to the sentences most relevant to the response."""
MAX_ANSWER_SENTENCES = 200
"""Longer responses are checked on their first this many sentences."""
MAX_CONTEXT_CHARS = 1_000_000
"""A context is read up to this many characters (about 170,000 words), then cut
by relevance to :data:`MAX_CONTEXT_SENTENCES` sentences: events of foreign
producers may carry megabytes."""
_CANDIDATES = 8
"""Context sentences (by shared words) fully aligned with each answer clause."""
_CONVERSATIONAL_WORDS = 3
"""At most this many content words, no specifics and none in the context: a pleasantry."""


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
    refusal: bool = False
    n_content: int = 0
    conversational: bool = False

    @property
    def problems(self) -> list[str]:
        """Human-readable reasons, most serious first."""
        if self.refusal:
            return ["declines to answer or asks: no claim to check"]
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
    ``probability`` the learned model's probability that the response is not
    grounded (with ``method == "rules"``, when no model is available, it is
    ``1 - score``); ``rule_score`` and ``specifics_score`` are the
    interpretable parts; ``notes`` say what was done to the input
    (truncation, fallback).
    """

    score: float
    rule_score: float
    specifics_score: float
    probability: float
    threshold: float
    sentences: tuple[SentenceCheck, ...]
    features: tuple[float, ...] = field(repr=False, default=())
    method: str = "learned"
    notes: tuple[str, ...] = ()

    @property
    def grounded(self) -> bool:
        return self.score >= self.threshold

    @property
    def worst(self) -> SentenceCheck | None:
        """The least supported answer sentence (``None`` for an empty response)."""
        claims = _claims(self.sentences) or list(self.sentences)
        if not claims:
            return None
        return min(claims, key=lambda s: s.score)

    def explain(self) -> str:
        """One line an operator can read: score, weakest sentence, why, and any notes."""
        w = self.worst
        if w is None:
            text = f"groundedness {self.score:.2f}: empty response"
        else:
            reasons = w.problems or [f"{w.novel_words} words not in the context"]
            if not w.span and not w.refusal:
                reasons = ["no context to check against", *reasons]
            text = f"groundedness {self.score:.2f}: {w.sentence!r} " + "; ".join(reasons)
        return "; ".join([text, *self.notes])

    def to_detail(self) -> dict[str, Any]:
        """JSON-able summary for a signal's ``detail``."""
        w = self.worst
        return {
            "score": round(self.score, 4),
            "sentence": w.sentence if w else "",
            "span": w.span if w else "",
            "problems": w.problems if w else [],
            "method": self.method,
            "notes": list(self.notes),
        }


_DATE_FIELDS = tuple(tuple(i for i in range(3) if mask >> i & 1) for mask in range(8))
_PAIRWISE = 12
"""Evidence with at most this many specifics is compared pairwise, not indexed."""


class _Evidence:
    """The specifics of a context sentence (or of the whole context), indexed so
    that whether one of them backs an answer's specific is a few lookups, not a
    pass over all of them: the same answer as ``any(tx.supports(claim, e) for e in
    specifics)`` (a test compares the two), without the cost that grew with the
    product of the answer's and the context's specifics (5,000 numbers against
    25,000 took 85 s). A sentence with few specifics is read pairwise, which costs
    less than building the index."""

    __slots__ = ("dates", "durations", "entities", "initials", "keys", "money_all", "money_bare", "small",
                 "values")

    def __init__(self, specs: Sequence[tx.Specific]) -> None:
        self.initials = {_name_words(str(e.key[1]))[2] for e in specs if e.kind == "entity"}
        if len(specs) <= _PAIRWISE:
            self.small: tuple[tx.Specific, ...] | None = tuple(specs)
            return
        self.small = None
        self.keys: set[tuple[object, ...]] = set()
        self.values: set[float] = set()  # what a plain number matches (tx._raw_value)
        self.dates: list[set[tuple[object, ...]]] = [set() for _ in _DATE_FIELDS]
        self.money_all: set[object] = set()
        self.money_bare: set[object] = set()  # amounts without a currency
        self.entities: list[tx.Specific] = []
        self.durations: list[float] = []
        for e in specs:
            self.keys.add(e.key)
            v = tx._raw_value(e)
            if v is not None:
                self.values.add(v)
            if e.kind == "date":
                ymd = e.key[1:4]
                for f, fields in enumerate(_DATE_FIELDS):
                    self.dates[f].add(tuple(ymd[i] for i in fields))
            elif e.kind == "money":
                self.money_all.add(e.key[1])
                if not e.key[2]:
                    self.money_bare.add(e.key[1])
            elif e.kind == "duration":
                self.durations.append(float(e.key[1]))  # type: ignore[arg-type]
            elif e.kind == "entity":
                self.entities.append(e)
        self.durations.sort()

    def backs(self, claim: tx.Specific) -> bool:
        """Whether some indexed specific backs ``claim`` (:func:`tx.supports`)."""
        if self.small is not None:
            return any(tx.supports(claim, e) for e in self.small)
        a = claim.key
        if a in self.keys:
            return True
        kind = claim.kind
        if kind == "number":
            return float(a[1]) in self.values  # type: ignore[arg-type]
        if kind == "ordinal":  # the day of a date
            return (a[1],) in self.dates[4]
        if kind == "date":
            ymd = a[1:4]
            given = tuple(i for i in range(3) if ymd[i] is not None)
            index = self.dates[sum(1 << i for i in given)]
            # a field backs when it is missing on either side or equal
            options: list[tuple[object, object]] = [(None, ymd[i]) for i in given]
            return any(tuple(pick) in index for pick in _product(options))
        if kind == "money":
            return a[1] in (self.money_bare if a[2] else self.money_all)
        if kind == "duration":
            return self._near_duration(float(a[1]))  # type: ignore[arg-type]
        if kind == "entity":
            return any(tx.supports(claim, e) for e in self.entities)
        return False

    def _near_duration(self, x: float) -> bool:
        ds = self.durations
        if not ds:
            return False
        if x < 0 or ds[0] < 0:  # the nearest-neighbour argument needs values >= 0
            return any(abs(x - d) <= 0.03 * max(x, d) for d in ds)
        k = bisect.bisect_left(ds, x)
        # within 3 % of the larger: if any value above x is, the nearest above is;
        # likewise below
        return any(abs(x - d) <= 0.03 * max(x, d) for d in ds[max(0, k - 1):k + 1])


def _product(options: list[tuple[object, object]]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [()]
    for opt in options:
        out = [t + (o,) for t in out for o in opt]
    return out


class _Unit:
    """A context sentence. Words are read at once; specifics, conditions and
    clauses only when the sentence is a candidate for some answer clause
    (they cost most of the preprocessing, and most sentences never are)."""

    __slots__ = ("_clauses", "_conditions", "_evidence", "_specifics", "stems", "text", "words")

    def __init__(self, text: str) -> None:
        self.text = text
        self.stems = frozenset(tx.content_stems(text))
        self.words = frozenset(_WORDS.findall(tx.normalise(text).lower()))
        self._specifics: tuple[tx.Specific, ...] | None = None
        self._evidence: _Evidence | None = None
        self._conditions: frozenset[str] | None = None
        self._clauses: tuple[tuple[frozenset[str], bool], ...] | None = None

    # each read once per unit, kept: a context sentence is aligned with every
    # answer sentence and clause, so the same unit is read many times per answer

    @property
    def specifics(self) -> tuple[tx.Specific, ...]:
        if self._specifics is None:
            self._specifics = tuple(tx.specifics(self.text))
        return self._specifics

    @property
    def evidence(self) -> _Evidence:
        if self._evidence is None:
            self._evidence = _Evidence(self.specifics)
        return self._evidence

    @property
    def conditions(self) -> frozenset[str]:
        if self._conditions is None:
            self._conditions = frozenset(tx.conditions(self.text))
        return self._conditions

    @property
    def clauses(self) -> tuple[tuple[frozenset[str], bool], ...]:
        if self._clauses is None:
            self._clauses = _clauses(self.text)
        return self._clauses


@lru_cache(maxsize=16384)
def _clauses(text: str) -> tuple[tuple[frozenset[str], bool], ...]:
    return tuple((frozenset(tx.content_stems(c)), tx.negated(c)) for c in tx.clauses(text))


class _Context:
    """The context's sentences and word sets; all its specifics on first use."""

    __slots__ = ("_evidence", "_specifics", "bigrams", "stems", "units", "words")

    def __init__(self, units: tuple[_Unit, ...], bigrams: frozenset[tuple[str, str]]) -> None:
        self.units = units
        self.bigrams = bigrams
        self.stems: frozenset[str] = frozenset().union(*(u.stems for u in units)) if units else frozenset()
        self.words: frozenset[str] = frozenset().union(*(u.words for u in units)) if units else frozenset()
        self._specifics: tuple[tx.Specific, ...] | None = None
        self._evidence: _Evidence | None = None

    @property
    def specifics(self) -> tuple[tx.Specific, ...]:
        if self._specifics is None:
            self._specifics = tuple(s for u in self.units for s in u.specifics)
        return self._specifics

    @property
    def evidence(self) -> _Evidence:
        if self._evidence is None:
            self._evidence = _Evidence(self.specifics)
        return self._evidence


_WORDS = __import__("re").compile(r"[^\W_]+")


@lru_cache(maxsize=1024)
def _context(sents: tuple[str, ...]) -> _Context:
    bigrams: set[tuple[str, str]] = set()
    for sent in sents:
        stems = tx.content_stems(sent)
        bigrams.update(zip(stems, stems[1:], strict=False))
    return _Context(tuple(_Unit(s) for s in sents), frozenset(bigrams))


@lru_cache(maxsize=256)
def _context_sentences(passages: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for passage in passages for s in tx.sentences(passage))


def _select(sents: tuple[str, ...], response: str, limit: int) -> tuple[str, ...]:
    """The ``limit`` sentences sharing most content words with ``response``, in context order."""
    wanted = set(tx.content_stems(response))
    overlap = [len(wanted.intersection(tx.content_stems(s))) for s in sents]
    keep = sorted(np.argsort(-np.asarray(overlap), kind="stable")[:limit].tolist())
    return tuple(sents[i] for i in keep)


@lru_cache(maxsize=16384)
def _name_words(name: str) -> tuple[tuple[str, ...], frozenset[str], str]:
    """An entity name's words, as a set, and their initials ("united states": "us")."""
    parts = tuple(_WORDS.findall(name))
    return parts, frozenset(parts), "".join(p[0] for p in parts)


def clear_caches() -> None:
    """Forget every cached piece of text analysis (a cold start: the speed
    benchmark measures scoring with contexts never seen)."""
    for f in (_context, _context_sentences, _clauses, _name_words, tx._sentences, tx._content,
              tx._specifics, tx._conditions, tx._poles, tx._negated_roots):
        f.cache_clear()


def _backed(spec: tx.Specific, evidence: _Evidence, words: frozenset[str]) -> bool:
    if spec.kind == "entity":
        parts, part_set, initials = _name_words(str(spec.key[1]))
        if part_set <= words:
            return True
        # "CET" and "Central European Time", "US" and "United States"
        if len(parts) > 1 and initials in words:
            return True
        return len(parts) == 1 and parts[0] in evidence.initials
    return evidence.backs(spec)


def _best(stems: frozenset[str], specs: Sequence[tx.Specific], ctx: _Context) -> tuple[_Unit, float]:
    """The context sentence that best backs an answer clause (the first of the best),
    and its alignment: the share of the clause's content words it holds plus the share
    of its specifics it backs."""
    units = ctx.units
    total = len(stems) + len(specs)
    if total == 0:
        return units[0], 1.0
    shared = [len(stems & u.stems) for u in units]
    order: Sequence[int] = range(len(units))
    if len(units) > _CANDIDATES and stems:
        # only the sentences sharing most words are aligned in full: the
        # alignment checks every specific, the pre-selection one set operation
        # (plain Python: a few dozen numbers, where numpy's per-call cost dominates)
        order = sorted(order, key=lambda i: -shared[i])[:_CANDIDATES]  # stable
    # a sentence backs at most every specific, so one whose shared words plus all the
    # specifics fall short of the best so far cannot be the best: aligned by shared
    # words first, the rest is skipped (equal bounds are aligned: the first of equal
    # alignments in ``order`` wins, as when every sentence was aligned)
    n_specs = len(specs)
    best_hit, best_pos = -1, 0
    for pos in sorted(range(len(order)), key=lambda k: -shared[order[k]]):
        unit = units[order[pos]]
        hit = shared[order[pos]]
        if hit + n_specs < best_hit:
            break
        if specs:
            evidence, words = unit.evidence, unit.words
            hit += sum(_backed(s, evidence, words) for s in specs)
        if hit > best_hit or (hit == best_hit and pos < best_pos):
            best_hit, best_pos = hit, pos
    return units[order[best_pos]], best_hit / total


def _check(sentence: str, ctx: _Context) -> SentenceCheck:
    if tx.refusal(sentence) or sentence.rstrip().endswith("?"):
        return SentenceCheck(sentence, "", 1.0, 1.0, refusal=True)
    stems = frozenset(tx.content_stems(sentence))
    specs = tx.specifics(sentence)
    if not ctx.units:
        return SentenceCheck(sentence, "", 0.0, 0.0, tuple(s.text for s in specs),
                             n_specifics=len(specs), novel_words=len(stems), n_content=len(stems),
                             bigram_support=0.0,
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
        whole = clause == sentence
        c_stems = stems if whole else frozenset(tx.content_stems(clause))
        c_specs = specs if whole else tx.specifics(clause)
        if len(c_stems) >= 2:
            # the whole sentence's best sentence is already known
            c_unit = unit if whole else _best(c_stems, c_specs, ctx)[0]
            min_clause_recall = min(min_clause_recall, len(c_stems & ctx.stems) / len(c_stems))
        else:
            c_unit = unit
        evidence_conditions |= c_unit.conditions
        for s in c_specs:
            if _backed(s, c_unit.evidence, c_unit.words):
                continue
            if _backed(s, ctx.evidence, ctx.words):
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
        n_content=len(stems),
        conversational=_conversational(sentence, stems, specs, recall, ctx),
        bigram_support=bigram,
        clause_recall=min_clause_recall,
        score=score,
    )


def _capped(passages: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The passages within :data:`MAX_CONTEXT_CHARS` characters (the last one cut),
    and a note when any were cut."""
    total = sum(map(len, passages))
    if total <= MAX_CONTEXT_CHARS:
        return passages, ()
    kept: list[str] = []
    left = MAX_CONTEXT_CHARS
    for p in passages:
        if left <= 0:
            break
        kept.append(p[:left])
        left -= len(p)
    return tuple(kept), (f"context cut to its first {MAX_CONTEXT_CHARS:,} of {total:,} characters",)


def _as_passages(context: str | Sequence[str] | None) -> tuple[str, ...]:
    if context is None:
        return ()
    if isinstance(context, str):
        return (context,)
    return tuple(str(p) for p in context if p)


_PERSONAL = frozenset(
    ["i", "i'm", "i've", "i'll", "i'd", "me", "my", "we", "we're", "we've", "we'll", "us", "our",
     "you", "you're", "you've", "you'll", "you'd", "your"]
)
"""First and second person pronouns: a sentence addressing the reader."""


def _conversational(
    sentence: str, stems: frozenset[str], specs: Sequence[tx.Specific], recall: float, ctx: _Context
) -> bool:
    """A pleasantry rather than a claim: no specifics, and either a few words none
    of which the context has ("Sorry for the trouble.") or a sentence addressing
    the reader that shares at most a third of its words with the context ("If
    anything is unclear, just reply here and I'll explain further.")."""
    if specs or not ctx.units:
        return False
    if len(stems) <= _CONVERSATIONAL_WORDS and not stems & ctx.stems:
        return True
    words = set(_WORDS.findall(tx.normalise(sentence).lower())) | set(
        tx._WORD.findall(tx.normalise(sentence).lower())
    )
    return recall <= 1 / 3 and bool(words & _PERSONAL)


def _claims(checks: Sequence[SentenceCheck]) -> list[SentenceCheck]:
    """Sentences that claim something: not refusals or questions, and not short
    conversational ones unless nothing else is left (so "Shipping is free." alone
    is still checked)."""
    claims = [c for c in checks if not c.refusal]
    return [c for c in claims if not c.conversational] or claims


def response_features(checks: Sequence[SentenceCheck]) -> tuple[float, ...]:
    """The :data:`FEATURES` of a response from its sentence checks (only sentences that claim something)."""
    checks = _claims(checks)
    if not checks:
        return (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0,
                1.0, 1.0, 1.0, 0.0)
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
        float(np.mean([c.context_recall for c in checks])),
        float(np.mean([c.bigram_support for c in checks])),
        float(np.mean([c.clause_recall for c in checks])),
        sum(c.novel_words for c in checks) / max(1, sum(c.n_content for c in checks)),
    )


_DEFAULT = "default"


class GroundednessScorer:
    """Scores how well a response is supported by its context, and says why.

    ``model`` is the learned model: ``"default"`` loads the shipped
    ``data/grounding_model.json``, a path loads that file, a
    :class:`GroundingModel` is used as is, and ``None`` means rules only.
    A model that cannot be loaded gives the rule-based score, with a note.
    ``threshold`` is the groundedness below which a response counts as
    ungrounded. Contexts are preprocessed once and cached, since many
    responses in a window share retrieved passages.

    >>> s = GroundednessScorer().score(
    ...     "Dr. Amara Lee sees patients on Tuesdays.",
    ...     "Dr. Amara Osei sees patients on Tuesdays and Fridays.")
    >>> s.worst.unsupported, s.grounded
    (('Dr. Amara Lee',), False)
    >>> GroundednessScorer(model="/nonexistent.json").score("Hi.", "Hi.").method
    'rules'
    """

    def __init__(
        self,
        model: GroundingModel | str | None = _DEFAULT,
        threshold: float = 0.5,
        max_context_sentences: int = MAX_CONTEXT_SENTENCES,
        max_answer_sentences: int = MAX_ANSWER_SENTENCES,
    ) -> None:
        if isinstance(model, GroundingModel) or model is None:
            self.model, self.model_source = model, "given" if model else "rules only"
        elif model == _DEFAULT:
            self.model, self.model_source = _shipped()
        else:
            self.model, self.model_source = load_model(model)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        if max_context_sentences < 1:
            raise ValueError(f"max_context_sentences must be >= 1, got {max_context_sentences!r}")
        if max_answer_sentences < 1:
            raise ValueError(f"max_answer_sentences must be >= 1, got {max_answer_sentences!r}")
        self.threshold = threshold
        self.max_context_sentences = max_context_sentences
        self.max_answer_sentences = max_answer_sentences

    def _sentences(self, response: str) -> tuple[list[str], tuple[str, ...]]:
        """The response's sentences to check, and a note when it was cut."""
        sents = tx.sentences(response)
        cap = self.max_answer_sentences
        if len(sents) <= cap:
            return sents, ()
        return sents[:cap], (f"response truncated to its first {cap} of {len(sents)} sentences",)

    def _prepare(self, response: str, context: str | Sequence[str] | None) -> tuple[_Context, tuple[str, ...]]:
        passages, notes = _capped(_as_passages(context))
        sents = _context_sentences(passages)
        if len(sents) <= self.max_context_sentences:
            return _context(sents), notes
        kept = _select(sents, response, self.max_context_sentences)
        note = (f"context truncated by relevance to {len(kept)} of {len(sents)} sentences")
        return _context(kept), (*notes, note)

    def check(self, response: str, context: str | Sequence[str] | None) -> list[SentenceCheck]:
        """One :class:`SentenceCheck` per answer sentence."""
        ctx, _ = self._prepare(response or "", context)
        return [_check(s, ctx) for s in self._sentences(response or "")[0]]

    def score(self, response: str, context: str | Sequence[str] | None) -> Groundedness:
        """The :class:`Groundedness` of ``response`` against ``context``."""
        response = response if isinstance(response, str) else ""
        ctx, notes = self._prepare(response, context)
        sents, cut = self._sentences(response)
        notes = (*notes, *cut)
        checks = tuple(_check(s, ctx) for s in sents)
        claims = _claims(checks)
        feats = response_features(checks)
        rule = feats[FEATURES.index("rule_score")]
        n_spec = sum(c.n_specifics for c in claims)
        bad = sum(
            len(c.unsupported) + len(c.misplaced) + c.negation_mismatch
            + len(c.opposite_conditions) + len(c.unsupported_conditions)
            for c in claims
        )
        spec_score = 1.0 - bad / (n_spec + bad) if bad else 1.0
        method = "learned" if self.model is not None else "rules"
        if self.model is None:
            notes = (*notes, f"rule-based score ({self.model_source})")
        if not claims:
            # nothing claimed (empty, or only declining to answer): nothing to contradict
            score, prob = 1.0, 0.0
        elif not ctx.units:
            score, prob = 0.0, 1.0
        elif self.model is not None:
            prob = self.model.probability(dict(zip(FEATURES, feats, strict=True)))
            score = 1.0 - prob
        else:
            score = rule
            prob = 1.0 - rule
        return Groundedness(
            score=float(score),
            rule_score=rule,
            specifics_score=spec_score,
            probability=float(prob),
            threshold=self.threshold,
            sentences=checks,
            features=feats,
            method=method,
            notes=tuple(notes),
        )

    def score_many(
        self, responses: Sequence[str], contexts: Sequence[str | Sequence[str] | None]
    ) -> list[Groundedness]:
        """:meth:`score` for aligned lists of responses and contexts."""
        return [self.score(r, c) for r, c in zip(responses, contexts, strict=True)]


@lru_cache(maxsize=1)
def _shipped() -> tuple[GroundingModel | None, str]:
    return load_model()
