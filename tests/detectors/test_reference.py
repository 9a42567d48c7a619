"""ReferenceOverlap against rouge-score and sacrebleu called directly on the same pairs."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from llmpulse.detectors.base import Batch
from llmpulse.detectors.quality import ReferenceOverlap
from llmpulse.detectors.quality.reference import lcs_length, rouge_l

PAIRS = [
    ("Your refund will arrive within five working days.",
     "Refunds arrive within five working days."),
    ("Please restart the router and try again.",
     "Restart the router, then try again."),
    ("I cannot help with that.",
     "You can change your plan under Settings > Billing."),
    ("Das Paket kommt morgen an.", "Das Paket wird morgen geliefert."),
    ("Reset your password from the login page.",
     "Reset your password from the login page."),
]


def _batch(pairs: list[tuple[str, str]], source: str = "reviewer") -> Batch:
    events = [
        {"ts": 1_000 * (i + 1), "event_id": f"e{i}", "request_id": f"r{i}", "response": resp,
         "feedback": {"reference": ref, "source": source}}
        for i, (resp, ref) in enumerate(pairs)
    ]
    events.append({"ts": 9_000, "event_id": "nofb", "response": "no reference here",
                   "feedback": {"score": 1.0}})
    return Batch.from_events(events, start=0.0, end=60.0)


def test_matches_reference_libraries() -> None:
    out = {s.signal: s for s in ReferenceOverlap().update(_batch(PAIRS))}
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, resp)["rougeL"].fmeasure for resp, ref in PAIRS]
    bleu = [sacrebleu.sentence_bleu(resp, [ref]).score / 100 for resp, ref in PAIRS]
    chrf = [sacrebleu.sentence_chrf(resp, [ref]).score / 100 for resp, ref in PAIRS]
    assert out["quality.rouge_l"].value == pytest.approx(np.mean(rouge), rel=1e-12)
    assert out["quality.bleu"].value == pytest.approx(np.mean(bleu), rel=1e-12)
    assert out["quality.chrf"].value == pytest.approx(np.mean(chrf), rel=1e-12)
    assert {s.n for s in out.values()} == {len(PAIRS)}  # the row without a reference is left out


def test_worst_examples_are_the_lowest_scores() -> None:
    s = {s.signal: s for s in ReferenceOverlap(top_k=2).update(_batch(PAIRS))}["quality.rouge_l"]
    worst = s.detail["worst"]
    assert [w["event_id"] for w in worst][0] == "e2"  # the refusal shares almost nothing
    assert worst[0]["score"] <= worst[1]["score"]
    assert worst[0]["reference"].startswith("You can change")
    assert s.detail["by_source"] == {"reviewer": len(PAIRS)}


def test_identical_answers_score_one_and_cap_is_kept() -> None:
    same = [("a b c d e f", "a b c d e f")] * 6
    out = ReferenceOverlap(max_scored=4).update(_batch(same, source="golden"))
    assert [round(s.value, 9) for s in out] == [1.0, 1.0, 1.0]
    assert {s.n for s in out} == {4} and out[0].detail["truncated"] is True


def test_no_reference_no_signal() -> None:
    b = Batch.from_events([{"ts": 1_000, "event_id": "e", "response": "x",
                            "feedback": {"score": 0.5}}], start=0.0, end=60.0)
    assert ReferenceOverlap().update(b) == []


# -- ROUGE-L's longest common subsequence, counted bit-parallel --------------------------
#
# Two texts of 8,000 words took 13 s in rouge-score's table (and 40,000 words, the
# shim's limit, would take gigabytes); the scorer now counts the subsequence
# bit-parallel. It must agree with the library exactly.

_SCORER = rouge_scorer.RougeScorer(["rougeL"])
_tokens = st.lists(st.sampled_from(["a", "b", "c", "refund", "days", "7", "Ünïcode", "x1"]), max_size=60)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(_tokens, _tokens)
def test_lcs_length_equals_the_librarys_table(a, b):
    table = rouge_scorer._lcs_table(a, b)
    assert lcs_length(a, b) == (table[-1][-1] if a and b else 0)
    assert lcs_length(b, a) == lcs_length(a, b)


_texts = st.text(alphabet="abc xyz.,!?-'ÄÖ0123\n", max_size=120)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(_texts, _texts)
def test_rouge_l_equals_rouge_score(reference, response):
    assert rouge_l(reference, response) == _SCORER.score(reference, response)["rougeL"].fmeasure


def test_rouge_l_equals_rouge_score_on_long_answers():
    import random

    rng = random.Random(3)
    words = ["the", "refund", "policy", "covers", "orders", "within", "thirty", "days", "of", "delivery", "and", "excludes", "gift", "cards"]
    for n, m in ((300, 500), (1200, 800), (50, 2000)):
        ref = " ".join(rng.choice(words) for _ in range(n))
        resp = " ".join(rng.choice(words) for _ in range(m))
        assert rouge_l(ref, resp) == _SCORER.score(ref, resp)["rougeL"].fmeasure


def test_texts_at_the_shims_limit_are_scored():
    words = ["the", "refund", "policy", "covers", "orders", "within", "thirty", "days"]
    ref = " ".join(words[i % 8] for i in range(40_000))
    resp = " ".join(words[(i * 3) % 8] for i in range(40_000))
    # the library's table would hold 1.6 billion cells; the bit-parallel count holds 40,000 bits
    assert 0.0 < rouge_l(ref, resp) < 1.0
    assert rouge_l(ref, ref) == 1.0


def test_pairs_past_the_windows_budget_are_left_unscored_and_counted():
    long = " ".join(["refund"] * 10_000)  # 70,000 characters, twice
    pairs = [*PAIRS, (long, long), *PAIRS]
    signals = ReferenceOverlap(max_chars=200_000).update(_batch(pairs))
    assert {s.n for s in signals} == {len(PAIRS) * 2 + 1}
    assert signals[0].detail["skipped_for_size"] == 0
    signals = ReferenceOverlap(max_chars=100_000).update(_batch(pairs))
    assert {s.n for s in signals} == {len(PAIRS) * 2}
    assert signals[0].detail["skipped_for_size"] == 1
