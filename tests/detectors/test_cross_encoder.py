"""The cross-encoder experiment: its splits do not leak, and its features read the evidence."""

from __future__ import annotations

import numpy as np
import pytest

from llmpulse.detectors.hallucination.cross_encoder import (
    ANSWER_SCALARS,
    CrossEncoderFeatures,
    held_out_split,
    leave_one_set_out,
    long_pairs,
    shared_ngram_records,
)
from llmpulse.detectors.hallucination.datasets import document_key, held_out, load_sets
from tests.detectors.faithfulness import faithfulness_data

_ARTICLE = ("The council voted on Tuesday to close the old bridge over the river for repairs that will last "
            "until the end of next year, and traffic will be sent through the town centre instead. ")


def _record(context: str, answer: str = "a summary", label: int = 0) -> dict[str, object]:
    return {"context": [context], "answer": answer, "label": label}


def test_leave_one_set_out_drops_shared_documents_and_near_copies() -> None:
    other = "A completely different article about a football match that ended two goals to one in the rain. " * 2
    sets = {
        "a": [_record(_ARTICLE, "The bridge closes."), _record(_ARTICLE, "The bridge opens.", 1)],
        # the same article (other casing: the same document key), the same article with a new first
        # sentence (another key, but a shared 20-word run), and an unrelated article
        "b": [_record(_ARTICLE.upper()), _record("Breaking news from our reporter. " + _ARTICLE), _record(other)],
    }
    assert document_key(sets["b"][0]) == document_key(sets["a"][0])
    assert document_key(sets["b"][1]) != document_key(sets["a"][0])
    train, evaluation = leave_one_set_out(sets, "a")
    assert evaluation == sets["a"]
    assert [r["context"] for r in train] == [[other]]
    assert train[0]["_set"] == "b"
    assert shared_ngram_records(train, evaluation) == 0
    # without the n-gram check the near copy would have leaked
    assert shared_ngram_records([{**sets["b"][1]}], evaluation) == 2


def test_held_out_split_is_by_document() -> None:
    rows = [_record(f"Article number {i} about topic {i % 7}. " * 3, f"summary {j}") for i in range(60) for j in range(3)]
    train, evaluation = held_out_split({"s": rows})
    train_docs = {document_key(r) for r in train}
    eval_docs = {document_key(r) for r in evaluation["s"]}
    assert train_docs and eval_docs and not train_docs & eval_docs
    assert len(train) + len(evaluation["s"]) == len(rows)
    assert all(held_out(r) for r in evaluation["s"]) and not any(held_out(r) for r in train)


def test_public_sets_leave_one_out_has_no_shared_long_ngrams() -> None:
    data = faithfulness_data()
    assert data is not None
    sets = load_sets(data)
    for name in sets:
        train, evaluation = leave_one_set_out(sets, name)
        assert train, name
        assert {r["_set"] for r in train} == set(sets) - {name}
        assert shared_ngram_records(train, evaluation) == 0, name
    train_split, held_split = held_out_split(sets)
    held = [r for rows in held_split.values() for r in rows]
    assert shared_ngram_records(train_split, held) / len(held) < 0.02


def test_long_pairs_are_about_500_word_contexts_and_100_word_answers() -> None:
    words = " ".join(f"Sentence {i} has exactly six words." for i in range(120))
    pairs = long_pairs({"s": [_record(words, "Short answer.")]}, n=5)
    assert len(pairs) == 1
    answer, ctx = pairs[0]
    assert len(ctx[0].split()) == 500
    assert 100 <= len(answer.split()) < 110 and answer.startswith("Short answer.")


@pytest.fixture(scope="module")
def encoder() -> CrossEncoderFeatures:
    pytest.importorskip("torch", reason="the first hidden-state export needs torch (llmpulse[retrain])")
    return CrossEncoderFeatures(threads=1, providers=["CPUExecutionProvider"])


def test_a_copied_claim_aligns_better_than_an_invented_one(encoder: CrossEncoderFeatures) -> None:
    context = [_ARTICLE + "The mayor said the work would cost four million pounds."]
    copied, _, _ = encoder.answer_features("The council voted to close the old bridge for repairs.", context)
    invented, _, _ = encoder.answer_features("Scientists found a new species of frog in the rainforest.", context)
    align = ANSWER_SCALARS.index("worst_align_mean")
    embed = ANSWER_SCALARS.index("worst_embed_best")
    assert copied[align] > invented[align] + 0.1
    assert copied[embed] > invented[embed] + 0.2
    assert encoder.provider == "CPUExecutionProvider"


def test_the_weakest_claim_is_the_invented_one(encoder: CrossEncoderFeatures) -> None:
    context = [_ARTICLE]
    _, vec, worst = encoder.answer_features(
        "The council voted to close the old bridge. Scientists found a new species of frog.", context)
    assert worst == 1
    assert vec.shape == (768,) and np.isfinite(vec).all()


@pytest.mark.parametrize("answer,context", [("", []), ("", ["Some text."]), ("An answer.", []),
                                            ("Ein Satz auf Deutsch.", ["Der Satz ist kurz."])])
def test_empty_and_odd_inputs_give_finite_features(encoder: CrossEncoderFeatures, answer: str,
                                                   context: list[str]) -> None:
    scal, vec, _ = encoder.answer_features(answer, context)
    assert scal.shape == (len(ANSWER_SCALARS),) and np.isfinite(scal).all() and np.isfinite(vec).all()
