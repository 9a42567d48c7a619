"""The reference model: one ONNX graph from token ids to probabilities, parity, accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from llmpulse.retrain.model import (
    INTENTS,
    PARITY_TOLERANCE,
    HeadClassifier,
    TokenEncoder,
    read_labels,
)
from llmpulse.retrain.trainer import Artifact, Dataset, MemoEmbedder


def test_graph_maps_token_ids_to_probabilities(artifact: Artifact) -> None:
    model = onnx.load(str(artifact.path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert read_labels(artifact.path) == INTENTS
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    tok = TokenEncoder()
    for texts in (["hello"], ["refund my order please", "", "x " * 400, "Straße 東京 🙂", "ok"]):
        batch = tok(texts)
        probs = session.run(["probabilities"], batch.feeds())[0]
        assert probs.shape == (len(texts), len(INTENTS))
        assert probs.dtype == np.float32
        assert (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_onnx_matches_framework_within_tolerance(
    artifact: Artifact, split: tuple[Dataset, Dataset], loaded: object
) -> None:
    texts = list(split[1].texts[:64])
    onnx_probs = loaded.predict_proba(texts)[0]  # type: ignore[attr-defined]
    assert artifact.reference is not None
    ref = artifact.reference(texts)
    diff = np.abs(onnx_probs - ref).max()
    assert diff <= PARITY_TOLERANCE, diff


def test_head_matches_sklearn_predict_proba(split: tuple[Dataset, Dataset], embedder: MemoEmbedder) -> None:
    from sklearn.linear_model import LogisticRegression

    train = split[0]
    x = embedder.embed(list(train.texts)).astype(np.float64)
    head = HeadClassifier.fit(x, train.labels, c=20.0, max_iter=1000)
    clf = LogisticRegression(C=20.0, max_iter=1000, random_state=0).fit(x, np.asarray(train.labels))
    ref = clf.predict_proba(x)
    cols = [list(head.labels).index(c) for c in clf.classes_]
    np.testing.assert_allclose(head.predict_proba(x)[:, cols], ref, atol=1e-5)


def test_reference_model_is_accurate_on_held_out_prompts(
    loaded: object, split: tuple[Dataset, Dataset]
) -> None:
    test = split[1]
    assert not set(test.texts) & set(split[0].texts)
    probs = loaded.predict_proba(list(test.texts))[0]  # type: ignore[attr-defined]
    pred = np.asarray(INTENTS)[probs.argmax(axis=1)]
    acc = float((pred == np.asarray(test.labels)).mean())
    majority = max(test.labels.count(c) for c in set(test.labels)) / len(test)
    assert acc >= 0.85, acc
    assert acc > majority + 0.4


def test_head_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="do not match 3 labels"):
        HeadClassifier(np.zeros((384, 2)), np.zeros(2), ("a", "b", "c"))
    with pytest.raises(ValueError, match="outside"):
        HeadClassifier.fit(np.zeros((2, 3)), ["a", "zzz"], labels=("a", "b"))
