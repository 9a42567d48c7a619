"""``quality.semantic_similarity``: answers against references, by meaning.

Cosine similarity of the all-MiniLM-L6-v2 sentence embeddings
(:class:`~llmpulse.detectors.embedding.minilm.MiniLMEmbedder`, ONNX Runtime; the
embeddings are L2-normalised, so the cosine is a dot product) of each
response and its reference, for the responses whose feedback brought a
``reference``. Word-overlap metrics (ROUGE-L, BLEU) score a correct
paraphrase low; this one does not, so the two together tell "said
differently" from "said something else".

The value is the window mean; ``detail`` has the 10th percentile and the
``top_k`` lowest pairs. At most ``max_scored`` pairs per window are
embedded (two texts each, a few hundred texts per second per core), so the
detector is in the default set only with ``default_detectors(embedding=True)``.

>>> class Letters:
...     def embed(self, texts):
...         import numpy as np
...         v = np.array([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], float)
...         return v / np.linalg.norm(v, axis=1, keepdims=True)
>>> b = Batch.from_events([
...     {"ts": 1_000, "event_id": "e1", "response": "abc", "feedback": {"reference": "abc"}},
...     {"ts": 2_000, "event_id": "e2", "response": "abc", "feedback": {"reference": "xyz"}},
... ], start=0.0, end=60.0)
>>> s = SemanticSimilarity(embedder=Letters()).update(b)[0]
>>> s.signal, round(s.value, 9), s.n, s.detail["worst"][0]["event_id"]
('quality.semantic_similarity', 0.5, 2, 'e2')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Signal

__all__ = ["SemanticSimilarity"]

_SNIPPET = 160


class SemanticSimilarity(Detector):
    """Mean embedding cosine of responses and their references per window."""

    signals = ("quality.semantic_similarity",)

    def __init__(self, *, embedder: Any = None, max_scored: int = 256, top_k: int = 5) -> None:
        self._embedder = embedder
        self.max_scored = int(max_scored)
        self.top_k = int(top_k)

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from llmpulse.detectors.embedding.minilm import MiniLMEmbedder

            self._embedder = MiniLMEmbedder.default()
        return self._embedder

    def snapshot(self) -> dict[str, Any]:
        """Configuration only (the embedder is not state)."""
        return {"max_scored": self.max_scored, "top_k": self.top_k}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.__init__(embedder=self._embedder, **dict(state))  # type: ignore[misc]

    def update(self, batch: Batch) -> list[Signal]:
        if len(batch) == 0:
            return []
        refs = batch.texts("feedback.reference")
        resps = batch.texts("response")
        rows = [i for i in range(len(batch)) if refs[i] and isinstance(resps[i], str)]
        rows = rows[: self.max_scored]
        if not rows:
            return []
        emb = np.asarray(self.embedder.embed([resps[i] for i in rows] + [refs[i] for i in rows]),
                         dtype=np.float64)
        k = len(rows)
        a, b = emb[:k], emb[k:]
        na = np.linalg.norm(a, axis=1)
        nb = np.linalg.norm(b, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = np.einsum("ij,ij->i", a, b) / (na * nb)
        sim = np.nan_to_num(sim, nan=0.0)
        ids = batch.strings("event_id")
        worst = np.argsort(sim, kind="stable")[: self.top_k]
        detail = {
            "p10": float(np.quantile(sim, 0.1)),
            "min": float(sim.min()),
            "worst": [
                {"event_id": str(ids[rows[j]]), "score": round(float(sim[j]), 6),
                 "response": resps[rows[j]][:_SNIPPET], "reference": refs[rows[j]][:_SNIPPET]}
                for j in worst
            ],
            "truncated": k == self.max_scored,
        }
        return [batch.signal("quality.semantic_similarity", float(sim.mean()), n=k, detail=detail)]
