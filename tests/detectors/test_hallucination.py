"""Expected results for the hallucination family."""

from __future__ import annotations

import json
import math
import pickle
from importlib import resources

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors.base import Batch
from detectors.hallucination import (
    GroundednessScorer,
    HallucinationSignals,
    auroc,
    evalset,
    logprob_stats,
    train,
    window_logprob_stats,
)
from detectors.hallucination import text as tx
from detectors.hallucination.evaluation import evaluate
from detectors.hallucination.model import LogisticModel, default_model
from detectors.testing import synthetic_batch, synthetic_events

CTX = [
    "Refunds are issued within 14 days of receiving the return. Gift cards are not refundable. "
    "Support is open Monday to Friday from 9:00 to 17:00, and premium members get at least 3 free returns."
]


# -- specifics ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("30 days", "thirty days"),
        ("$1,200", "1200 dollars"),
        ("14 days", "two weeks"),
        ("2024-03-05", "March 5, 2024"),
        ("2024-03-05", "the 5th of March 2024"),
        ("5 pm", "17:00"),
        ("15%", "fifteen percent"),
        ("12 months", "a year"),
        ("monthly", "per month"),
    ],
)
def test_equivalent_specifics_match(a: str, b: str) -> None:
    sa = tx.specifics("within " + a if a[0].isdigit() and "day" in a or "month" in a else a)
    sb = tx.specifics("within " + b if "year" in b else b)
    assert sa and sb
    assert tx.supports(sa[0], sb[0]) and tx.supports(sb[0], sa[0])


@pytest.mark.parametrize(
    ("a", "b"),
    [("30 days", "31 days"), ("$1,200", "$1,300"), ("14 days", "14 weeks"),
     ("2024-03-05", "March 6, 2024"), ("5 pm", "5 am"), ("15%", "50%"), ("$6", "6%")],
)
def test_different_specifics_do_not_match(a: str, b: str) -> None:
    assert not tx.supports(tx.specifics(a)[0], tx.specifics(b)[0])


def test_conditions_and_negations() -> None:
    assert tx.conditions("at least 3") == ["at_least"]
    assert tx.conditions("no more than 3") == ["at_most"]
    assert tx.conditions("15 days after the invoice") == []
    assert tx.negated("Refunds are not available.")
    assert not tx.negated("No-shows are charged in full.")


# -- scorer ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("Refunds are issued within 30 days of receiving the return.", "unsupported: '30 days'"),
        ("Gift cards are refundable.", "negation differs"),
        ("Support is open Monday to Saturday from 9:00 to 17:00.", "Saturday"),
        ("Premium members get at most 3 free returns.", "at_most"),
        ("Refunds are issued within 14 days of receiving the return, with a 10% bonus.", "10%"),
    ],
)
def test_scorer_flags_one_changed_specific_and_says_which(response: str, reason: str) -> None:
    g = GroundednessScorer().score(response, CTX)
    assert not g.grounded
    assert reason in g.explain()


@pytest.mark.parametrize(
    "response",
    [
        "Once we get your return back, you'll have the money in two weeks or less.",
        "You can't get a refund on a gift card.",
        "Our support team is there on weekdays between 9 am and 5 pm.",
        "Premium customers receive three or more returns at no cost.",
    ],
)
def test_scorer_accepts_faithful_paraphrases(response: str) -> None:
    g = GroundednessScorer().score(response, CTX)
    assert g.grounded, g.explain()


def test_scorer_without_context_or_response() -> None:
    s = GroundednessScorer()
    assert not s.score("It costs $5.", None).grounded
    empty = s.score("", CTX)
    assert empty.worst is None and "empty" in empty.explain()


# -- evaluation --------------------------------------------------------------

def test_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        y = rng.integers(0, 2, 200)
        s = rng.normal(size=200) + y * rng.uniform(0, 2)
        s[:40] = np.round(s[:40])  # ties
        assert math.isclose(auroc(y, s), roc_auc_score(y, s), rel_tol=1e-12)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def test_evalset_is_large_varied_and_matches_its_source() -> None:
    items = evalset.load()
    assert items == evalset.items()
    assert len(items) >= 300
    assert len({i["domain"] for i in items}) >= 8
    types = {i["type"] for i in items if i["label"] == 1}
    assert {"number", "amount", "date_time", "entity", "condition", "negation", "added_claim"} <= types


def test_eval_contexts_disjoint_from_training_contexts() -> None:
    train_sents = {s for _, c, _, _ in train.training_pairs() for s in tx.sentences(c)}
    eval_sents = {s for i in evalset.load() for c in i["context"] for s in tx.sentences(c)}
    assert not train_sents & eval_sents


def test_combined_auroc_reaches_goal_on_eval_set() -> None:
    result = evaluate(evalset.load())
    assert result["auroc"]["groundedness"] >= 0.85
    assert result["auroc"]["specifics"] >= 0.8


# -- model -------------------------------------------------------------------

def test_logistic_model_matches_sklearn_without_penalty() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    y = (X @ [1.0, -2.0, 0.5] + rng.logistic(size=500) > 0).astype(float)
    ours = LogisticModel.fit(X, y, names=("a", "b", "c"), l2=1e-8)
    ref = LogisticRegression(C=1e8, tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X)[:, 1], atol=1e-6)


def test_retraining_from_seed_reproduces_shipped_weights() -> None:
    shipped = default_model()
    again = train.train()
    assert again.names == shipped.names
    np.testing.assert_allclose(again.weights, shipped.weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(again.mean, shipped.mean, rtol=1e-9, atol=1e-12)
    assert math.isclose(again.bias, shipped.bias, rel_tol=1e-9)
    text = resources.files("detectors.hallucination").joinpath("data", "model.json").read_text()
    assert json.loads(text)["meta"]["seed"] == train.SEED


# -- uncertainty -------------------------------------------------------------

def test_window_logprob_stats_match_per_response_numpy() -> None:
    rng = np.random.default_rng(3)
    column = [list(-rng.exponential(0.5, int(k))) if k else None for k in rng.integers(0, 30, 50)]
    stats = window_logprob_stats(column)
    for i, lp in enumerate(column):
        if not lp:
            assert math.isnan(stats["mean"][i])
            continue
        a = np.asarray(lp)
        assert math.isclose(stats["mean"][i], a.mean())
        assert stats["min"][i] == a.min()
        assert math.isclose(stats["low_share"][i], (a < math.log(0.1)).mean())
        s = np.sort(-a)
        assert stats["surprise_p90"][i] == s[int(np.floor(0.9 * (len(a) - 1)))]
    assert math.isnan(logprob_stats(None)["mean"])


# -- detector ----------------------------------------------------------------

def _events_with_contexts(n_bad: int, seed: int = 0) -> list[dict]:
    events = synthetic_events(100, seed=seed)
    for i, ev in enumerate(events):
        ev["context"] = CTX
        ev["response"] = (
            "Refunds are issued within 45 days of receiving the return."
            if i < n_bad else "You'll get your refund within two weeks of us receiving the return."
        )
    return events


def test_detector_expected_results() -> None:
    det = HallucinationSignals()
    healthy = {s.signal: s for s in det.update(Batch.from_events(_events_with_contexts(0)))}
    broken = {s.signal: s for s in det.update(Batch.from_events(_events_with_contexts(30)))}
    assert healthy["hallucination.ungrounded_share"].value == 0.0
    assert broken["hallucination.ungrounded_share"].value == pytest.approx(0.30)
    assert broken["hallucination.groundedness_mean"].value < healthy["hallucination.groundedness_mean"].value
    worst = broken["hallucination.ungrounded_share"].detail["worst"]
    assert len(worst) == 5 and worst[0]["event_id"] == "e0-0"
    assert "unsupported: '45 days'" in worst[0]["problems"]
    json.dumps([s.detail for s in broken.values()])


def test_detector_flags_logprobs_and_small_sample_guard() -> None:
    batch = synthetic_batch(30, seed=4)
    sig = {s.signal: s for s in HallucinationSignals(min_n=50).update(batch)}
    flags = batch.numeric("feedback.hallucination")
    assert sig["hallucination.flagged_rate"].value == pytest.approx(np.nanmean(flags))
    assert sig["hallucination.flagged_rate"].n == int(np.isfinite(flags).sum())
    assert sig["hallucination.flagged_rate"].detail["small_sample"] is True
    means = [np.mean(lp) for lp in batch.texts("token_logprobs")]
    assert sig["hallucination.logprob_mean"].value == pytest.approx(np.mean(means))


def test_detector_skips_absent_inputs_and_caps_scoring() -> None:
    events = _events_with_contexts(10)
    for ev in events:
        ev.pop("feedback", None)
        ev.pop("token_logprobs")
    sig = {s.signal: s for s in HallucinationSignals(max_scored=25).update(Batch.from_events(events))}
    assert set(sig) == {"hallucination.groundedness_mean", "hallucination.ungrounded_share"}
    assert sig["hallucination.ungrounded_share"].n == 25
    assert sig["hallucination.ungrounded_share"].detail["available"] == 100


def test_detector_snapshot_round_trip() -> None:
    d = HallucinationSignals(threshold=0.6, top_k=2)
    d.update(synthetic_batch(50, seed=1))
    state = pickle.loads(pickle.dumps(d.snapshot()))
    json.dumps(state)
    fresh = HallucinationSignals()
    fresh.restore(state)
    batch = Batch.from_events(_events_with_contexts(20, seed=3))
    assert fresh.update(batch) == d.update(batch)
