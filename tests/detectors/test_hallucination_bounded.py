"""Groundedness work grows with the text, not with the product of its parts.

A response of 5,000 numbers against a context of 25,000 took 85 s to score, a
response of 10,000 company names 34 s, and one 200,000-character word 54 s and
gigabytes of memory: one such answer stalled the window. The context's specifics
are now indexed (:class:`_Evidence`), the antonym check reads only prefixes as long
as its patterns, and very long responses and contexts are cut, with a note. These
tests check that the index answers exactly as the pairwise check did, and that
scoring hostile pairs never falls back to comparing pairs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmpulse.detectors.hallucination import GroundednessScorer
from llmpulse.detectors.hallucination import groundedness as gd
from llmpulse.detectors.hallucination import text as tx

_UNITS = ["on March {d}", "on 2024-0{m}-{d:02d}", "in {mon} {y}", "on {mon} {d}, {y}", "${a}", "EUR {a}", "{a} euros",
          "{a} days", "{a} hours", "{a} weeks", "{a} months", "a year", "two weeks", "{a}%", "the {d}th",
          "at {h}:30", "{h} pm", "Acme {n} Corp", "Dr. Name{n}", "{a}", "in {y}", "{a} per month", "{a} minutes",
          "twenty-five", "a quarter of an hour", "Name{n}", "CET", "Central European Time"]
_MONTHS = ["January", "March", "May", "December"]


@st.composite
def _text(draw: st.DrawFn) -> str:
    rng = random.Random(draw(st.integers(0, 10**9)))
    parts = [rng.choice(_UNITS).format(d=rng.randrange(1, 29), m=rng.randrange(1, 9), mon=rng.choice(_MONTHS),
                                       a=rng.choice([1, 2, 5, 12, 14, 30, 31, 45, 52, 365, 1.5, 336]),
                                       h=rng.randrange(1, 12), n=rng.randrange(4), y=rng.choice([2023, 2024]))
             for _ in range(draw(st.integers(1, 8)))]
    return ", ".join(parts) + "."


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_text(), _text())
def test_the_index_answers_as_the_pairwise_check(claims, evidence):
    specs_c, specs_e = tx.specifics(claims), tx.specifics(evidence)
    index = gd._Evidence(specs_e)
    for c in specs_c:
        assert index.backs(c) == any(tx.supports(c, e) for e in specs_e), (c, specs_e)
        if c.kind == "entity":
            parts = gd._name_words(str(c.key[1]))[0]
            if len(parts) == 1:
                assert (parts[0] in index.initials) == any(
                    e.kind == "entity" and gd._name_words(str(e.key[1]))[2] == parts[0] for e in specs_e)


def test_the_index_covers_every_kind_of_specific():
    kinds = {s.kind for t in ["on March 5, 2024 at 9:30 pay $45 or 20% within 14 days per month, the 5th",
                              "Acme Corp refunds twenty-five guests in 2024"] for s in tx.specifics(t)}
    assert {"date", "money", "percent", "duration", "time", "entity", "number"} <= kinds


def _naive_poles(words: frozenset[str]) -> frozenset[str]:
    prefixes = {w[:k] for w in words for k in range(2, len(w) + 1)}
    return frozenset(p for p in tx._POLE_PATTERNS if (p[1:] in words if p.startswith("=") else p in prefixes))


@pytest.mark.parametrize("words", [
    {"the", "clinic", "is", "closed"}, {"unused", "optional", "maximum"}, {"x" * 5000, "opened"},
    {"increasingly", "decreased", "downgraded", "in-person", "online"}, {"mandatory" + "y" * 300}])
def test_antonym_poles_read_only_as_far_as_their_patterns(words):
    assert tx._poles(frozenset(words)) == _naive_poles(frozenset(words))
    assert max(map(len, tx._POLE_PATTERNS)) == tx._LONGEST_POLE


@pytest.fixture
def pairwise(monkeypatch):
    calls = [0]
    real = tx.supports

    def counting(claim, evidence):
        calls[0] += 1
        return real(claim, evidence)

    monkeypatch.setattr(tx, "supports", counting)
    gd.clear_caches()
    yield calls
    gd.clear_caches()


@pytest.mark.parametrize("answer, context", [
    (" ".join(str(i) for i in range(2000)), " ".join(str(i) for i in range(2000, 12000))),
    (" ".join(f"on 2024-03-{i % 28 + 1:02d} and ${i}" for i in range(1000)),
     " ".join(f"on 2023-04-{i % 28 + 1:02d} and EUR {i}" for i in range(4000))),
    (" ".join(f"Name{i} Corp and Name{i}" for i in range(2000)), " ".join(f"Name{i} Inc" for i in range(4000))),
])
def test_hostile_pairs_are_scored_without_comparing_pairs(answer, context, pairwise):
    result = GroundednessScorer().score(answer, [context])
    assert pairwise[0] == 0
    assert 0.0 <= result.score <= 1.0 and result.explain()
    assert result.worst is not None and result.worst.unsupported  # the specifics were checked


def test_a_long_response_is_checked_on_its_first_sentences():
    answer = " ".join(f"Refunds take {i} days." for i in range(1, 500))
    g = GroundednessScorer(max_answer_sentences=50)
    result = g.score(answer, ["Refunds take 3 days."])
    assert len(result.sentences) == 50
    assert "response truncated to its first 50 of 499 sentences" in result.explain()
    assert len(g.check(answer, ["Refunds take 3 days."])) == 50
    with pytest.raises(ValueError, match="max_answer_sentences"):
        GroundednessScorer(max_answer_sentences=0)


def test_a_huge_context_is_cut_by_characters_then_by_relevance():
    passage = "Refunds take 14 days. " * 30_000  # 660,000 characters
    result = GroundednessScorer().score("Refunds take 14 days.", [passage, passage])
    notes = " ".join(result.notes)
    assert "context cut to its first 1,000,000 of 1,320,000 characters" in notes
    assert "context truncated by relevance" in notes
    assert result.grounded


# -- the window's budget of characters ---------------------------------------------------


def _batch(events):
    from llmpulse.detectors.base import Batch

    return Batch.from_events(events, start=0.0, end=60.0)


def _answer_events(n, answer, context, start=0):
    return [{"ts": 1_000 + start + i, "event_id": f"e{start + i}", "request_id": f"r{start + i}",
             "response": answer, "context": context} for i in range(n)]


def test_answers_past_the_windows_budget_are_left_unscored_and_counted():
    from llmpulse.detectors.hallucination import HallucinationSignals

    small = _answer_events(30, "Refunds take 14 days.", ["Refunds take 14 days."])
    huge = _answer_events(5, " ".join(str(i) for i in range(20_000)), [" ".join(str(i) for i in range(20_000))],
                          start=100)
    signals = {s.signal: s for s in HallucinationSignals(max_chars=300_000).update(_batch(small + huge))}
    detail = signals["hallucination.groundedness_mean"].detail
    assert detail["available"] == 35 and detail["skipped_for_size"] == 4
    assert detail["scored"] == 31  # every small answer, and the one huge answer that fits
    unbounded = {s.signal: s for s in HallucinationSignals().update(_batch(small + huge))}
    assert unbounded["hallucination.groundedness_mean"].detail["skipped_for_size"] == 0
    with pytest.raises(ValueError, match="max_chars"):
        HallucinationSignals(max_chars=0)


def test_a_context_shared_by_answers_counts_once():
    from llmpulse.detectors.hallucination import HallucinationSignals

    shared = ["Refunds take 14 days. " * 5_000]  # 110,000 characters, read once
    events = _answer_events(40, "Refunds take 14 days.", shared)
    detail = HallucinationSignals(max_chars=120_000).update(_batch(events))[0].detail
    assert detail["scored"] == 40 and detail["skipped_for_size"] == 0
    distinct = [e | {"context": [f"Case {i}. " + shared[0]]} for i, e in enumerate(events)]
    detail = HallucinationSignals(max_chars=120_000).update(_batch(distinct))[0].detail
    assert detail["scored"] == 1 and detail["skipped_for_size"] == 39
