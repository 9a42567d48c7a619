"""Expected results for the hallucination family."""

from __future__ import annotations

import json
import math
import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from llmpulse.detectors.base import Batch, Signal
from llmpulse.detectors.hallucination import (
    GroundednessScorer,
    HallucinationSignals,
    auroc,
    logprob_stats,
    train,
    window_logprob_stats,
)
from llmpulse.detectors.hallucination import text as tx
from llmpulse.detectors.hallucination.datasets import (
    DatasetError,
    document_key,
    held_out,
    load_file,
    load_sets,
)
from llmpulse.detectors.hallucination.evaluation import evaluate
from llmpulse.detectors.hallucination.model import (
    MODEL_FILE,
    GroundingModel,
    LogisticModel,
    default_model,
)
from llmpulse.detectors.testing import synthetic_batch, synthetic_events
from tests.detectors.faithfulness import faithfulness_data

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
        "Refunds are issued within two weeks of receiving the return.",
        "You can't get a refund on a gift card.",
        "Support is open Monday to Friday from 9 am to 5 pm.",
        "Premium members get at least three free returns.",
    ],
)
def test_scorer_accepts_faithful_close_paraphrases(response: str) -> None:
    g = GroundednessScorer().score(response, CTX)
    assert g.grounded, g.explain()


@pytest.mark.parametrize(
    ("faithful", "changed"),
    [
        ("Once we get your return back, you'll have the money in two weeks or less.",
         "Once we get your return back, you'll have the money in three weeks or less."),
        ("Our support team is there on weekdays between 9 am and 5 pm.",
         "Our support team is there on weekdays between 9 am and 8 pm."),
        ("Premium customers receive three or more returns at no cost.",
         "Premium customers receive five or more returns at no cost."),
    ],
)
def test_free_paraphrase_ranks_above_the_same_words_with_one_detail_changed(faithful: str, changed: str) -> None:
    # Free paraphrases share few words with the context, and the overlap part,
    # learned from news summaries, distrusts that (a known limit); the ranking
    # against a changed detail must still hold.
    s = GroundednessScorer()
    assert s.score(faithful, CTX).score > s.score(changed, CTX).score


def test_scorer_without_context_or_response() -> None:
    s = GroundednessScorer()
    no_ctx = s.score("It costs $5.", None)
    assert not no_ctx.grounded and no_ctx.score == 0.0
    assert "no context to check against" in no_ctx.explain()
    empty = s.score("", CTX)
    assert empty.worst is None and "empty" in empty.explain() and empty.grounded and empty.score == 1.0


# -- odd and hostile inputs --------------------------------------------------

def test_refusal_is_grounded_with_or_without_context() -> None:
    s = GroundednessScorer()
    for ctx in (CTX, None, []):
        g = s.score("I can't find that in the documents.", ctx)
        assert g.grounded and g.score == 1.0
        assert "declines to answer" in g.explain()
    # a refusal next to a claim: the claim is still checked
    g = s.score("The documents don't say whether pets are allowed. Refunds take 30 days.", CTX)
    assert not g.grounded and "30 days" in g.explain()


def test_pleasantries_and_questions_are_not_claims_but_a_lone_new_claim_is() -> None:
    s = GroundednessScorer()
    answer = "Refunds are issued within two weeks of receiving the return."
    plain = s.score(answer, CTX)
    polite = s.score(f"Good question. {answer} If anything is unclear, just reply here and I'll explain further.", CTX)
    assert polite.grounded and polite.score == pytest.approx(plain.score)
    asks = s.score("Could you share your order number?", CTX)
    assert asks.grounded and asks.score == 1.0
    lone = s.score("Shipping is free.", CTX)
    assert not lone.grounded, lone.explain()
    added = s.score(f"{answer} Shipping is free for loyalty members in Canada.", CTX)
    assert not added.grounded, added.explain()


def test_verbatim_quote_is_grounded() -> None:
    s = GroundednessScorer()
    g = s.score(CTX[0], CTX)
    assert g.grounded and g.rule_score == 1.0 and g.worst is not None and not g.worst.problems, g.explain()
    # nothing scores higher than a copy: full coverage is the model's best case
    assert g.score >= s.score("Refunds are issued within two weeks of receiving the return.", CTX).score
    assert g.score == pytest.approx(s.score(CTX[0].split(". ")[1] + ".", CTX).score)


def test_huge_context_is_truncated_by_relevance_and_noted() -> None:
    filler = " ".join(f"Item {i} of the archive lists shelf code {i * 7} in hall {i % 13}." for i in range(5000))
    ctx = [filler[: len(filler) // 2], CTX[0], filler[len(filler) // 2:]]
    assert sum(len(c.split()) for c in ctx) > 50_000
    s = GroundednessScorer()
    good = s.score("Gift cards are not refundable.", ctx)
    bad = s.score("Gift cards are refundable.", ctx)
    assert "context truncated by relevance" in good.explain()
    assert good.grounded and not bad.grounded, (good.explain(), bad.explain())


def test_non_english_text_is_compared_word_by_word() -> None:
    s = GroundednessScorer()
    ctx = ["Die Rückerstattung erfolgt innerhalb von 14 Tagen. Gutscheine sind nicht erstattungsfähig."]
    same = s.score("Die Rückerstattung erfolgt innerhalb von 14 Tagen.", ctx)
    other = s.score("Die Lieferung kostet morgen nichts für Studenten.", ctx)
    assert same.grounded and same.score > other.score
    zh = ["退款将在十四天内处理。礼品卡不可退款。"]
    copy = s.score("退款将在十四天内处理。", zh)
    assert 0.0 <= copy.score <= 1.0 and copy.worst is not None


def test_code_and_markdown_tables() -> None:
    s = GroundednessScorer()
    table = "| plan | price |\n|---|---|\n| basic | $5 |\n| pro | $20 |"
    row, wrong_row = s.score("| pro | $20 |", [table]), s.score("| pro | $45 |", [table])
    assert row.grounded and not wrong_row.grounded
    assert "unsupported: '$45'" in wrong_row.explain()
    assert not s.score("The pro plan costs $45.", [table]).grounded
    code = "def refund(order):\n    return order.total * 0.5  # 50% back\n"
    same = s.score("```python\ndef refund(order): return order.total * 0.5\n```", [code])
    changed = s.score("```python\ndef refund(order): return order.total * 0.9\n```", [code])
    assert same.grounded and not changed.grounded and "unsupported: '0.9'" in changed.explain()


@pytest.mark.parametrize("context", [None, "", [], [""], ["   "]])
def test_empty_context_leaves_a_claim_unsupported(context: object) -> None:
    g = GroundednessScorer().score("Refunds take 14 days.", context)  # type: ignore[arg-type]
    assert g.score == 0.0 and g.probability == 1.0 and not g.grounded
    assert "no context to check against" in g.explain()


@pytest.mark.parametrize("answer", ["", "   ", "\n\n", None, 42])
def test_empty_or_non_text_answer_claims_nothing(answer: object) -> None:
    g = GroundednessScorer().score(answer, CTX)  # type: ignore[arg-type]
    assert g.score == 1.0 and g.grounded and g.explain() == "groundedness 1.00: empty response"


def test_window_of_odd_inputs_scores_every_answer_without_failing() -> None:
    filler = " ".join(f"Item {i} of the archive lists shelf code {i * 7} in hall {i % 13}." for i in range(5000))
    odd = [
        ("Refunds take 14 days.", []),
        ("", CTX),
        ("Refunds are issued within 14 days of receiving the return.", [filler, CTX[0]]),
        ("Die Rückerstattung erfolgt innerhalb von 14 Tagen.", ["Die Rückerstattung erfolgt innerhalb von 14 Tagen."]),
        ("| pro | $45 |", ["| plan | price |\n|---|---|\n| pro | $20 |"]),
        ("I can't find that in the documents.", CTX),
        (CTX[0], CTX),
    ]
    events = [
        {"event_id": f"o{i}", "ts": 1_700_000_000.0 + i, "status": "ok", "response": r, "context": c}
        for i, (r, c) in enumerate(odd * 5)
    ]
    sig = {s.signal: s for s in HallucinationSignals(threshold=0.5).update(Batch.from_events(events))}
    share = sig["hallucination.ungrounded_share"]
    # the empty answer and the empty context are not scored (nothing to compare)
    assert share.n == 25 and share.detail["available"] == 25 and share.detail["sampling_rate"] == 1.0
    assert share.value == pytest.approx(5 / 25)
    assert {w["sentence"] for w in share.detail["worst"]} == {"| pro | $45 |"}


def test_missing_model_falls_back_to_rules_and_says_so(tmp_path: Path) -> None:
    s = GroundednessScorer(model=str(tmp_path / "absent.json"))
    g = s.score("Refunds are issued within 30 days of receiving the return.", CTX)
    assert g.method == "rules" and s.model is None
    assert "rule-based score" in g.explain() and not g.grounded
    assert g.score == g.rule_score
    det = HallucinationSignals(model=str(tmp_path / "absent.json"))
    sig = {x.signal: x for x in det.update(Batch.from_events(_events_with_contexts(10)))}
    assert sig["hallucination.ungrounded_share"].detail["method"] == "rules"


def test_bad_labelled_sets_are_rejected_with_the_line(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text('{"context": ["a"], "answer": "b", "label": 0}\n{"context": "a", "answer": "b", "label": 2}\n')
    with pytest.raises(DatasetError, match=r"x.jsonl:2: field 'label'"):
        load_file(f)
    f.write_text("[1, 2]\n")
    with pytest.raises(DatasetError, match="expected an object"):
        load_file(f)
    with pytest.raises(DatasetError, match="no such file"):
        load_sets(tmp_path / "nope")


# -- evaluation --------------------------------------------------------------

def test_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        y = rng.integers(0, 2, 200)
        s = rng.normal(size=200) + y * rng.uniform(0, 2)
        s[:40] = np.round(s[:40])  # ties
        assert math.isclose(auroc(y, s), roc_auc_score(y, s), rel_tol=1e-12)
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


REGRESSION = Path(__file__).resolve().parents[1] / "data" / "hallucination_regression.jsonl"


def test_regression_set_still_scored_well() -> None:
    # The set was written together with the rules: a regression guard only.
    items = load_file(REGRESSION)
    assert len(items) == 440
    result = evaluate(items)
    assert result["auroc"]["groundedness"] >= 0.8
    assert result["auroc"]["specifics"] >= 0.75


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_no_long_ngram_shared_between_generated_training_and_regression_contexts() -> None:
    train_grams = set().union(*(_ngrams(c, 8) for c in {c for _, c, _, _ in train.training_pairs()}))
    for item in load_file(REGRESSION):
        for c in item["context"]:
            assert not _ngrams(c, 8) & train_grams, c


def test_public_split_is_by_document_and_held_out_documents_do_not_leak() -> None:
    data = faithfulness_data()
    assert data is not None
    sets = load_sets(data)
    records = [r for rows in sets.values() for r in rows]
    train_docs = {document_key(r) for r in records if not held_out(r)}
    test_docs = {document_key(r) for r in records if held_out(r)}
    assert not train_docs & test_docs
    assert 0.2 < len(test_docs) / (len(train_docs) + len(test_docs)) < 0.4
    # near-duplicates (the same article with other casing or whitespace) land on one side:
    # no held-out context shares a 20-word sequence with a training context
    train_grams: set[tuple[str, ...]] = set()
    for r in records:
        if not held_out(r):
            train_grams |= _ngrams(" ".join(r["context"]), 20)
    leaked = sum(bool(_ngrams(" ".join(r["context"]), 20) & train_grams) for r in records if held_out(r))
    assert leaked / sum(held_out(r) for r in records) < 0.02


# -- model -------------------------------------------------------------------

def test_logistic_model_matches_sklearn_without_penalty() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    y = (X @ [1.0, -2.0, 0.5] + rng.logistic(size=500) > 0).astype(float)
    ours = LogisticModel.fit(X, y, names=("a", "b", "c"), l2=1e-8)
    ref = LogisticRegression(C=1e8, tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X)[:, 1], atol=1e-6)


def test_retraining_reproduces_shipped_model_and_it_beats_novelty_on_held_out_documents() -> None:
    data = faithfulness_data()
    assert data is not None
    shipped = default_model()
    assert shipped is not None
    again = train.train(data)
    for a, b in ((again.overlap, shipped.overlap), (again.specifics, shipped.specifics)):
        assert a.names == b.names
        np.testing.assert_allclose(a.weights, b.weights, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-12)
        assert math.isclose(a.bias, b.bias, rel_tol=1e-9)
    assert again.specifics_weight == shipped.specifics_weight
    text = resources.files("llmpulse.detectors.hallucination").joinpath("data", MODEL_FILE).read_text()
    assert json.loads(text)["meta"]["seed"] == train.SEED
    assert len(text) < 10_000


def test_grounding_model_adds_specifics_evidence_only_when_found() -> None:
    m = default_model()
    assert isinstance(m, GroundingModel)
    clean = dict.fromkeys(m.names, 0.0) | {"min_alignment": 0.9, "min_clause_recall": 0.9,
                                           "rule_score": 0.9, "min_bigram_support": 0.8}
    assert m.probability(clean | {"unsupported_specifics": 0.7, "unsupported_numbers": 1.0}) > m.probability(clean)
    assert m.probability(clean | {"negation_mismatch": 1.0}) > m.probability(clean)


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
            if i < n_bad else "Refunds are issued within two weeks of receiving the return."
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
    assert sig["hallucination.ungrounded_share"].detail["sampling_rate"] == 0.25
    assert sig["hallucination.groundedness_mean"].detail["scored"] == 25
    # the sample is spread evenly over the window: half the answers are bad, so half the sample
    mixed = {s.signal: s for s in HallucinationSignals(max_scored=10).update(
        Batch.from_events(_events_with_contexts(50)))}
    assert mixed["hallucination.ungrounded_share"].value == pytest.approx(0.5)
    assert mixed["hallucination.ungrounded_share"].detail["sampling_rate"] == 0.1


def test_detector_snapshot_round_trip() -> None:
    d = HallucinationSignals(threshold=0.6, top_k=2)
    d.update(synthetic_batch(50, seed=1))
    state = pickle.loads(pickle.dumps(d.snapshot()))
    json.dumps(state)
    fresh = HallucinationSignals()
    fresh.restore(state)
    batch = Batch.from_events(_events_with_contexts(20, seed=3))
    assert fresh.update(batch) == d.update(batch)


# -- benchmark ---------------------------------------------------------------

def test_bench_reports_each_external_set_next_to_baselines(tmp_path: Path) -> None:
    from llmpulse.bench import detectors_hallucination as bench

    rows = []
    for i in range(20):
        ctx = [f"Order {i} ships within {i + 2} days. Returns cost ${i + 5}. Support answers on Fridays."]
        task = ("QA", "Summary")[i % 2]
        rows.append({"context": ctx, "answer": f"Order {i} ships within {i + 2} days.", "label": 0, "task": task})
        rows.append({"context": ctx, "answer": f"Order {i} ships within {i + 5} days.", "label": 1, "task": task})
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = bench.run(quick=True, data=tmp_path)
    block = result["sets"]["mine"]["all"]
    assert block["n"] == 40 and block["n_not_grounded"] == 20
    assert block["auroc"] > 0.95 and block["auroc"] > block["auroc_novelty"]
    assert block["flag"]["recall"] == 1.0 and block["flag"]["precision"] == 1.0
    assert set(result["sets"]["mine"]["by_task"]) == {"QA", "Summary"}
    assert result["speed"]["pairs_per_s_short"] > 0
    assert "mine" in bench.format_table(result)


# -- baseline-relative ungrounded share ------------------------------------------

_GOOD = "Refunds are issued within two weeks of receiving the return."
_BAD = "Refunds are issued within 45 days of receiving the return."


def _window(k: int, n_bad: int, n: int = 200) -> Batch:
    """Window ``k`` (60 s) of ``n`` answers, ``n_bad`` of them with a changed detail."""
    start = 1_700_000_000.0 + 60.0 * k
    events = [
        {"event_id": f"w{k}-{i}", "ts": start + 0.1 * i, "status": "ok", "context": CTX,
         "response": _BAD if i < n_bad else _GOOD}
        for i in range(n)
    ]
    return Batch.from_events(events, start=start, end=start + 60.0)


def _run(det: HallucinationSignals, bad: list[int]) -> list[dict[str, Signal]]:
    return [{s.signal: s for s in det.update(_window(k, b))} for k, b in enumerate(bad)]


def test_excess_needs_a_warm_baseline_then_compares_with_it() -> None:
    det = HallucinationSignals(baseline_min_windows=3)
    # an app whose healthy share is high (30 %), then a burst to 60 %
    out = _run(det, [60, 62, 58, 61, 120, 59])
    assert ["hallucination.ungrounded_excess" in w for w in out] == [False] * 3 + [True] * 3
    steady, burst, after = (w["hallucination.ungrounded_excess"] for w in out[3:])
    assert steady.value == pytest.approx(61 / 200 - 180 / 600)
    assert steady.detail["baseline_share"] == pytest.approx(0.3) and steady.detail["baseline_windows"] == 3
    assert steady.detail["significant"] is False
    assert burst.value == pytest.approx(0.6 - 241 / 800) and burst.detail["significant"] is True
    assert burst.detail["worst"][0]["problems"] == ["unsupported: '45 days'"]
    # the burst did not enter the baseline
    assert after.detail["baseline_windows"] == 4 and after.detail["baseline_share"] == pytest.approx(241 / 800, abs=1e-4)
    # the absolute share alone cannot tell the healthy 30 % from trouble
    assert out[3]["hallucination.ungrounded_share"].value == pytest.approx(0.305)


def test_excess_allows_for_the_baseline_spread_between_windows() -> None:
    # healthy windows swing between 20 % and 40 %: 45 % is within that spread,
    # though far outside a single window's sampling error
    det = HallucinationSignals(baseline_min_windows=4)
    out = _run(det, [40, 80, 40, 80, 90])
    last = out[-1]["hallucination.ungrounded_excess"]
    assert last.value == pytest.approx(0.15) and last.detail["between_window_sd"] > 0.1
    assert last.detail["significant"] is False
    steady = HallucinationSignals(baseline_min_windows=4)
    assert _run(steady, [60, 60, 60, 60, 90])[-1]["hallucination.ungrounded_excess"].detail["significant"]


def test_excess_baseline_adapts_after_a_long_shift_and_ignores_replays() -> None:
    det = HallucinationSignals(baseline_min_windows=2, max_excluded=2)
    out = _run(det, [20, 20, 100, 100, 100, 100])
    sig = [w["hallucination.ungrounded_excess"].detail["significant"] for w in out[2:]]
    # two windows are kept out of the baseline, then the new level is accepted
    assert sig[:3] == [True, True, True]
    assert [w["hallucination.ungrounded_excess"].detail["baseline_windows"] for w in out[2:]] == [2, 2, 2, 3]
    assert out[-1]["hallucination.ungrounded_excess"].detail["baseline_share"] == pytest.approx(140 / 600, abs=1e-4)
    replay = HallucinationSignals(baseline_min_windows=2)
    for _ in range(3):
        replay.update(_window(0, 20))
    assert "hallucination.ungrounded_excess" not in {s.signal for s in replay.update(_window(0, 20))}


def test_excess_baseline_survives_snapshot_and_restore() -> None:
    det = HallucinationSignals(baseline_min_windows=2)
    _run(det, [60, 50])
    state = json.loads(json.dumps(det.snapshot()))
    fresh = HallucinationSignals()
    fresh.restore(state)
    assert fresh.update(_window(2, 120)) == det.update(_window(2, 120))
    with pytest.raises(ValueError, match="baseline_min_windows"):
        HallucinationSignals(baseline_windows=2, baseline_min_windows=3)


def test_default_rule_fires_on_excess_over_baseline_not_on_a_high_healthy_share() -> None:
    from llmpulse.streams.rules import Rules, Verdict

    rule = Rules.default(env={})["ungrounded-answers"]
    det = HallucinationSignals(baseline_min_windows=3)
    out = _run(det, [60, 62, 58, 61, 120])
    steady, burst = out[3], out[4]
    assert not rule.matches(steady["hallucination.ungrounded_share"])
    assert rule.evaluate(steady["hallucination.ungrounded_excess"]) is Verdict.HEALTHY
    assert rule.evaluate(burst["hallucination.ungrounded_excess"]) is Verdict.BREACH


def test_default_backstop_rule_fires_on_a_majority_without_baseline() -> None:
    from llmpulse.streams.rules import Rules, Verdict

    rule = Rules.default(env={})["ungrounded-answers-majority"]
    first = {s.signal: s for s in HallucinationSignals().update(_window(0, 120))}
    assert "hallucination.ungrounded_excess" not in first  # no baseline yet
    assert rule.evaluate(first["hallucination.ungrounded_share"]) is Verdict.BREACH
    healthy = {s.signal: s for s in HallucinationSignals().update(_window(0, 60))}
    assert rule.evaluate(healthy["hallucination.ungrounded_share"]) is Verdict.HEALTHY


def _antonyms_plainly(claim: frozenset[str], evidence: frozenset[str]) -> list[tuple[str, str]]:
    """:func:`tx.antonyms` as its docstring states it, with no shortcut: every
    antonym pair both ways, then every claim word against every negating prefix."""
    pc, pe = tx._poles(claim), tx._poles(evidence)
    found = [(x.lstrip("="), y.lstrip("=")) for a, b in tx._ANTONYMS for x, y in ((a, b), (b, a))
             if x in pc and y in pe and y not in pc and x not in pe]
    for w in claim - evidence:
        for p in tx._NEG_PREFIXES if len(w) >= 4 else ():
            if (p + w in evidence and p + w not in claim) or (
                    w.startswith(p) and len(w) - len(p) >= 4 and w[len(p):] in evidence):
                found.append((w, p + w if p + w in evidence else w[len(p):]))
                break
    return found


def test_antonyms_shortcuts_find_what_checking_every_pair_finds() -> None:
    # the pole and negated-root shortcuts skip work, never a finding: random word sets
    # rich in opposites and negated forms, against the rule spelled out in full
    rng = np.random.default_rng(5)
    vocab = ["open", "closed", "used", "unused", "available", "unavailable", "include",
             "excluded", "with", "without", "more", "less", "free", "paid", "unpaid", "legal",
             "illegal", "possible", "impossible", "regular", "irregular", "connect",
             "disconnect", "able", "unable", "profit", "nonprofit", "non-profit", "first",
             "last", "online", "offline", "in-person", "high", "lower", "secure", "insecure",
             "direct", "indirect", "refund", "the"]
    found = 0
    for _ in range(5_000):
        claim = frozenset(rng.choice(vocab, rng.integers(0, 8), replace=False).tolist())
        evidence = frozenset(rng.choice(vocab, rng.integers(0, 8), replace=False).tolist())
        want = _antonyms_plainly(claim, evidence)
        assert tx.antonyms(claim, evidence) == want, (claim, evidence)
        found += bool(want)
    assert found > 500  # the sets do exercise both rules


def _backed_plainly(spec: tx.Specific, evidence: tuple, words: frozenset[str]) -> bool:
    """Whether a context sentence backs a specific, every pair compared (what the
    scorer's index of the context's specifics must answer)."""
    from llmpulse.detectors.hallucination.groundedness import _name_words

    if spec.kind == "entity":
        parts, part_set, initials = _name_words(str(spec.key[1]))
        if part_set <= words or (len(parts) > 1 and initials in words):
            return True
        return len(parts) == 1 and any(
            e.kind == "entity" and _name_words(str(e.key[1]))[2] == parts[0] for e in evidence)
    return any(tx.supports(spec, e) for e in evidence)


def _best_plainly(stems: frozenset[str], specs: list, ctx: object) -> tuple[object, float]:
    """Every candidate sentence aligned in full, the first of the best taken."""
    from llmpulse.detectors.hallucination.groundedness import _CANDIDATES

    units = ctx.units  # type: ignore[attr-defined]
    if len(units) > _CANDIDATES and stems:
        shared = [len(stems & u.stems) for u in units]
        units = tuple(units[i] for i in sorted(range(len(units)),
                                               key=lambda i: -shared[i])[:_CANDIDATES])
    total = len(stems) + len(specs)
    scores = [1.0 if total == 0 else
              (len(stems & u.stems) + sum(_backed_plainly(s, u.specifics, u.words) for s in specs))
              / total for u in units]
    best = max(range(len(scores)), key=scores.__getitem__)
    return units[best], scores[best]


def test_the_best_sentence_skips_only_sentences_that_cannot_be_it() -> None:
    # _best stops aligning once no further sentence can reach the best: the same sentence
    # and alignment as aligning every candidate, on random contexts of 1-14 sentences
    # whose words, numbers, dates and names overlap the clause's in part
    from llmpulse.detectors.hallucination.groundedness import _best, _context

    rng = np.random.default_rng(11)
    pieces = ["the refund takes 14 days", "orders ship from Berlin", "Anna Schmidt approved it",
              "the fee is $25", "support opens at 9 am", "returns need a receipt",
              "the plan costs 30 euros a month", "refunds go to the original card",
              "shipping is free over $50", "the office in Paris closes on Friday",
              "Mark Lee leads support", "it started in 2019", "the fee is waived in May",
              "orders over 100 units ship in 3 days", "the warranty lasts 2 years"]
    contested = 0  # contexts with several sentences to choose from, one backing the clause
    for _ in range(1_500):
        sents = tuple(" and ".join(rng.choice(pieces, rng.integers(1, 3), replace=False))
                      .capitalize() + "." for _ in range(rng.integers(1, 15)))
        ctx = _context(sents)
        clause = " and ".join(rng.choice(pieces, rng.integers(1, 4), replace=False))
        stems = frozenset(tx.content_stems(clause))
        specs = tx.specifics(clause)
        unit, score = _best(stems, specs, ctx)
        want_unit, want_score = _best_plainly(stems, specs, ctx)
        assert (unit.text, score) == (want_unit.text, want_score), (clause, sents)
        assert unit is want_unit  # the same sentence, not an equal one elsewhere
        contested += len(sents) > 1 and score > 0
    assert contested > 500
