"""Soft lexical alignment: static MiniLM word vectors, and the features read from them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from llmpulse.detectors.hallucination.soft_alignment import (
    SOFT_FEATURES,
    StaticVectors,
    content_words,
    soft_features,
    static_vectors,
)

_CONTEXT = ["The city council voted on Tuesday to close the old bridge for repairs.",
            "Traffic will go through the town centre until the work ends in March.",
            "The repairs will cost 4 million pounds, paid by the regional government."]


@pytest.fixture(scope="module")
def vecs() -> StaticVectors:
    return static_vectors()


def test_vectors_are_unit_length_and_the_same_word_matches_itself(vecs: StaticVectors) -> None:
    v = vecs.vectors(["bridge", "council", "zzqxv"])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert vecs.similarity("bridge", "bridge") == pytest.approx(1.0, abs=1e-5)
    assert vecs.pieces(["bridge", "zzqxv"]).tolist()[0] == 1
    assert vecs.pieces(["zzqxv"]).tolist()[0] > 1


def test_related_words_are_closer_than_unrelated_ones(vecs: StaticVectors) -> None:
    assert vecs.similarity("car", "vehicle") > vecs.similarity("car", "sermon") + 0.2
    assert vecs.similarity("company", "firm") > vecs.similarity("company", "banana") + 0.2


def test_a_copy_has_no_novelty_and_a_neutral_window(vecs: StaticVectors) -> None:
    f = soft_features(_CONTEXT[0], _CONTEXT, vecs)
    assert set(f) == set(SOFT_FEATURES)
    assert f["lexical_novelty"] == 0.0
    assert f["soft_novelty"] == pytest.approx(0.0, abs=1e-6)
    assert f["soft_unmatched"] == 0.0
    assert f["worst_window_support"] == pytest.approx(1.0, abs=1e-6)


def test_a_paraphrase_is_softer_than_an_unrelated_claim(vecs: StaticVectors) -> None:
    para = soft_features("The town's council decided on Tuesday to shut the bridge for repair work.", _CONTEXT, vecs)
    other = soft_features("A famous singer cancelled her concert because of a sore throat.", _CONTEXT, vecs)
    assert para["soft_novelty"] < other["soft_novelty"]
    assert para["soft_novelty"] < para["lexical_novelty"]
    assert other["worst_sentence_unmatched"] > para["worst_sentence_unmatched"]


def test_numbers_match_only_exactly_and_names_are_split_out(vecs: StaticVectors) -> None:
    right = soft_features("The repairs will cost 4 million pounds.", _CONTEXT, vecs)
    wrong = soft_features("The repairs will cost 9 million pounds.", _CONTEXT, vecs)
    assert right["number_novelty"] == 0.0
    assert wrong["number_novelty"] == 1.0
    assert wrong["soft_min"] == 0.0
    named = soft_features("The repairs were approved by Mayor Hopkins.", _CONTEXT, vecs)
    assert named["name_novelty"] == 1.0


def test_support_scattered_over_the_context_shows_in_the_window_gap(vecs: StaticVectors) -> None:
    far = [_CONTEXT[0], *[f"Filler sentence number {i} talks about weather and sport." for i in range(8)],
           "The bridge repairs will cost 4 million pounds."]
    conflated = soft_features("The council voted on Tuesday that the repairs will cost 4 million pounds.", far, vecs)
    local = soft_features("The council voted on Tuesday to close the old bridge.", far, vecs)
    assert conflated["window_gap"] > local["window_gap"] >= 0.0


def test_odd_inputs_have_defined_results(vecs: StaticVectors) -> None:
    neutral = soft_features("", _CONTEXT, vecs)
    assert neutral["soft_novelty"] == 0.0 and neutral["worst_window_support"] == 1.0
    assert soft_features("The bridge is closed.", [], vecs) == neutral
    # non-English text, code and a table are compared word by word without error
    f = soft_features("Die Brücke ist geschlossen.", ["Die Brücke über den Fluss ist seit Dienstag geschlossen."], vecs)
    assert f["lexical_novelty"] == 0.0
    code = soft_features("| a | b |\n|---|---|\n| 1 | 2 |", ["def f(x):\n    return x + 1"], vecs)
    assert all(np.isfinite(v) for v in code.values())
    # a 50,000-word context is cut to a bounded number of words
    huge = ["word " * 50_000]
    assert np.isfinite(soft_features("word word", huge, vecs)["soft_novelty"])


def test_content_words_drop_function_words_and_mark_names() -> None:
    assert content_words("The council met Anna Berg in Paris.") == [
        ("council", False), ("met", False), ("anna", True), ("berg", True), ("paris", True)]


def test_the_experiment_selects_on_the_training_side_and_scores_the_other_set() -> None:
    from llmpulse.detectors.hallucination import soft_experiment as ex

    rng = np.random.default_rng(7)
    records, store = [], {}
    for i in range(400):
        label = int(rng.random() < 0.5)
        rid, doc = f"r{i}", hashlib.sha1(str(i).encode()).hexdigest()
        store[rid] = {"signal": label + rng.normal(scale=0.7), "noise": rng.normal(), "_specifics": 0.0}
        records.append({"_rid": rid, "_doc": doc, "_set": "a" if i < 200 else "b", "label": label})
    ex._index(records, store)
    train, other = records[:200], records[200:]
    head, info = ex.fit_selected("forward", ("noise", "signal"), False, train)
    assert info["features"][0] == "signal"
    assert info["l2"] in ex.L2_GRID
    result = ex._evaluate(head, info, other)
    assert result["auroc"] > 0.8
    assert 0.6 < result["flag_accuracy"] <= 1.0
