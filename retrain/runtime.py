"""One model version in an ONNX Runtime session: what serving and the gates both run.

:class:`LoadedModel` asks for ``CUDAExecutionProvider`` first (with I/O
binding on the GPU) and falls back to the CPU; the provider that runs is
logged and reported. The gates (:mod:`llmpulse.retrain.gates`) load candidates with
it, so a candidate is measured on the same runtime that will serve it
(:mod:`llmpulse.retrain.serving`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmpulse.detectors.embedding.minilm import choose_providers as _embedder_choose_providers
from llmpulse.retrain.model import (
    MAX_LENGTH_KEY,
    OUTPUT_NAME,
    TokenBatch,
    TokenEncoder,
    read_metadata,
)

__all__ = ["CPU", "CUDA", "LoadedModel", "choose_providers"]

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# provider choice and session set-up are the embedder's: one policy for every session
choose_providers = _embedder_choose_providers


class LoadedModel:
    """One model version in an ONNX Runtime session, ready to predict.

    ``io_binding`` defaults to on when the session runs on CUDA (inputs are
    copied once, the output is bound on the device and copied back after the
    run); it can be forced on the CPU too. ``provider`` is the execution
    provider that runs the graph.

    >>> from llmpulse.detectors.embedding import export_minilm
    >>> from llmpulse.retrain.model import HeadClassifier, build_classifier_graph
    >>> import tempfile
    >>> head = HeadClassifier(np.zeros((384, 2)), np.array([1.0, 0.0]), ("a", "b"))
    >>> m = LoadedModel(build_classifier_graph(export_minilm(), head, tempfile.mkdtemp() + "/m.onnx"), "7")
    >>> probs, n_tokens = m.predict_proba(["hello world"])
    >>> [round(float(x), 4) for x in probs[0]], n_tokens.tolist(), m.labels
    ([0.7311, 0.2689], [4], ('a', 'b'))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        version: str,
        *,
        providers: Sequence[str] | None = None,
        io_binding: bool | None = None,
        intra_op_threads: int | None = None,
        tokenizer: TokenEncoder | None = None,
    ) -> None:
        from llmpulse.detectors.embedding.minilm import default_threads, open_session

        self.path = Path(path)
        self.version = str(version)
        meta = read_metadata(self.path)
        self.labels: tuple[str, ...] = tuple(json.loads(meta["llmpulse.labels"]))
        self.max_length = int(meta.get(MAX_LENGTH_KEY, 256))
        self.tokenizer = tokenizer or TokenEncoder(max_length=self.max_length)
        session = open_session(self.path, threads=int(intra_op_threads or default_threads()),
                               providers=providers)
        self._session: Any = session
        self.provider: str = session.get_providers()[0]
        self.io_binding = self.provider == CUDA if io_binding is None else bool(io_binding)
        self._device = "cuda" if self.provider == CUDA else "cpu"
        self.inflight = 0
        """Batches cut for this version and not finished (owned by the event loop)."""
        log.info(
            "model %s version %s on %s%s", self.path.name, self.version, self.provider,
            " with I/O binding" if self.io_binding else "",
        )

    def __repr__(self) -> str:
        return f"LoadedModel(version={self.version!r}, provider={self.provider!r}, path={str(self.path)!r})"

    def run(self, batch: TokenBatch) -> np.ndarray:
        """Class probabilities for a tokenised batch."""
        if self.io_binding:
            binding = self._session.io_binding()
            for name, arr in batch.feeds().items():
                binding.bind_cpu_input(name, arr)
            binding.bind_output(OUTPUT_NAME, self._device)
            self._session.run_with_iobinding(binding)
            return np.asarray(binding.copy_outputs_to_cpu()[0])
        return np.asarray(self._session.run([OUTPUT_NAME], batch.feeds())[0])

    def predict_proba(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, tokens per text)``."""
        batch = self.tokenizer(texts)
        return self.run(batch), batch.n_tokens

    def warm_up(self, batch_sizes: Sequence[int] = (1, 8)) -> None:
        """Run a few batches so the first real request does not pay for allocation."""
        for n in batch_sizes:
            self.predict_proba(["warm up the session with a short support question"] * n)

    def close(self) -> None:
        self._session = None
