"""SemanticSimilarity with the real MiniLM encoder, against numpy on the same embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from llmpulse.detectors.base import Batch
from llmpulse.detectors.embedding.minilm import MiniLMEmbedder
from llmpulse.detectors.quality import ReferenceOverlap, SemanticSimilarity

PAIRS = [
    ("Your money comes back in about a week.", "Refunds arrive within five working days."),
    ("Refunds arrive within five working days.", "Refunds arrive within five working days."),
    ("Please call our support line.", "Change your plan under Settings, then Billing."),
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder.default()


def _batch() -> Batch:
    return Batch.from_events(
        [{"ts": 1_000 * (i + 1), "event_id": f"e{i}", "response": resp,
          "feedback": {"reference": ref}} for i, (resp, ref) in enumerate(PAIRS)],
        start=0.0, end=60.0)


def test_cosine_matches_the_embeddings(embedder: MiniLMEmbedder) -> None:
    s = SemanticSimilarity(embedder=embedder).update(_batch())[0]
    a = embedder.embed([p[0] for p in PAIRS]).astype(np.float64)
    b = embedder.embed([p[1] for p in PAIRS]).astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert s.value == pytest.approx(cos.mean(), abs=1e-6)
    assert s.n == 3 and s.detail["worst"][0]["event_id"] == "e2"


def test_paraphrase_scores_high_where_word_overlap_scores_low(embedder: MiniLMEmbedder) -> None:
    only = _batch().select(np.array([True, False, False]))
    para = SemanticSimilarity(embedder=embedder).update(only)[0].value
    rouge = {s.signal: s.value for s in ReferenceOverlap().update(only)}["quality.rouge_l"]
    unrelated = SemanticSimilarity(embedder=embedder).update(
        _batch().select(np.array([False, False, True])))[0].value
    assert rouge < 0.2 and para > 0.4 and para > unrelated + 0.1
