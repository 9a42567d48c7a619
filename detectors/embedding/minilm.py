"""all-MiniLM-L6-v2 sentence embeddings through ONNX Runtime.

:class:`MiniLMEmbedder` runs the graph written by
:func:`~llmpulse.detectors.embedding.export.export_minilm` (mean pooling and L2
normalisation are inside it) with the fast ``tokenizers`` tokenizer read from
the model package's ``tokenizer.json``. No torch at run time.

Defaults and why:

* providers: ``CUDAExecutionProvider`` first when the onnxruntime build has it
  *and* a CUDA driver is loadable, then ``CPUExecutionProvider``. Asking ONNX
  Runtime for CUDA on a machine without a driver works but prints an error,
  so the driver check keeps the CPU fallback quiet. The provider that actually
  runs is logged and exposed as :attr:`MiniLMEmbedder.provider`.
* ``max_length=256``: the model's ``max_seq_length`` (longer texts are
  truncated, as sentence-transformers does).
* ``batch_size=32``: texts are tokenised once, sorted by token count and run
  in batches padded to the longest text of the batch, so short prompts do
  not pay for long ones. Identical texts in one call are embedded once.
* threads: one intra-op thread per available core, at most 4, with spinning
  off; a detector shares its worker with the stream and should not burn idle
  cores waiting for work.

>>> emb = MiniLMEmbedder.default()
>>> vecs = emb.embed(["Why was I charged twice?", "My card was billed two times", "Send bitcoin to my wallet"])
>>> vecs.shape, vecs.dtype
((3, 384), dtype('float32'))
>>> [round(float(v), 2) for v in (vecs @ vecs.T)[0]]
[1.0, 0.66, 0.09]
>>> emb.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
True
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llmpulse.detectors.embedding.export import INPUT_NAMES, OUTPUT_NAME, export_minilm, minilm_dir

__all__ = ["EMBEDDING_DIM", "MiniLMEmbedder", "default_threads"]

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384
"""Width of an all-MiniLM-L6-v2 sentence embedding."""

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def default_threads() -> int:
    """Intra-op threads: one per core this process may use, at most 4.

    >>> 1 <= default_threads() <= 4
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _cuda_driver_present() -> bool:
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers to ask for: CUDA when built in *and* a driver loads, then CPU.

    >>> choose_providers(["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = list(requested) if requested is not None else [_CUDA, _CPU]
    chosen = [p for p in wanted if p in available]
    if _CUDA in chosen and not _cuda_driver_present():
        log.debug("onnxruntime has %s but no CUDA driver is loadable; using CPU", _CUDA)
        chosen.remove(_CUDA)
    if _CPU not in chosen:
        chosen.append(_CPU)
    return chosen


_choose_providers = choose_providers


def open_session(path: Path | str, *, threads: int, providers: Sequence[str] | None = None,
                 sequential: bool = False) -> Any:
    """An ONNX Runtime session on ``path``: CUDA first where it works, else the CPU,
    ``threads`` intra-op threads, no spinning; a session that fails to start on
    the GPU is retried on the CPU (logged). Used by the embedder and by the model
    server, so both pick providers the same way."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    if sequential:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    chosen = choose_providers(providers)
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:
        if chosen == [_CPU]:
            raise
        log.warning("could not start ONNX Runtime with %s (%s); falling back to CPU", chosen, exc)
        return ort.InferenceSession(str(path), options, providers=[_CPU])


class MiniLMEmbedder:
    """Sentence embeddings (float32, 384 wide, unit length) from all-MiniLM-L6-v2 on ONNX Runtime.

    ``model_path`` defaults to :func:`export_minilm` in the default cache
    (exported on first use; that one time needs torch). ``tokenizer_path``
    defaults to the package's ``tokenizer.json``.

    >>> emb = MiniLMEmbedder.default()
    >>> emb.embed([]).shape
    (0, 384)
    >>> v = emb.embed(["a refund for my last invoice", "a refund for my last invoice"])
    >>> bool(np.allclose(v[0], v[1])), round(float(np.linalg.norm(v[0])), 4)
    (True, 1.0)
    """

    _default: ClassVar[MiniLMEmbedder | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        tokenizer_path: str | os.PathLike[str] | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model_path = Path(model_path) if model_path is not None else export_minilm()
        self.tokenizer_path = (
            Path(tokenizer_path) if tokenizer_path is not None else minilm_dir() / "tokenizer.json"
        )
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.intra_op_threads = int(intra_op_threads or default_threads())

        tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        # tokenizer.json ships fixed padding to 128; we pad per batch ourselves.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        self._tokenizer = tokenizer

        session = open_session(self.model_path, threads=self.intra_op_threads,
                               providers=providers, sequential=True)
        self._session = session
        self.provider: str = session.get_providers()[0]
        """The execution provider that runs the model."""
        log.info(
            "MiniLM embedder: %s, %d intra-op threads, model %s",
            self.provider,
            self.intra_op_threads,
            self.model_path.name,
        )

    def __repr__(self) -> str:
        return (
            f"MiniLMEmbedder(provider={self.provider!r}, max_length={self.max_length}, "
            f"batch_size={self.batch_size}, threads={self.intra_op_threads})"
        )

    @property
    def dim(self) -> int:
        return EMBEDDING_DIM

    @classmethod
    def default(cls) -> MiniLMEmbedder:
        """The process-wide embedder with default settings, built on first use."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    def embed(self, texts: Sequence[str | None]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text (``None`` counts as ``""``)."""
        clean = ["" if t is None else str(t) for t in texts]
        if not clean:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        positions: dict[str, int] = {}
        inverse = np.fromiter(
            (positions.setdefault(t, len(positions)) for t in clean),
            dtype=np.intp,
            count=len(clean),
        )
        unique = list(positions)
        encodings = self._tokenizer.encode_batch(unique)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.intp, count=len(unique))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(unique), EMBEDDING_DIM), dtype=np.float32)
        for start in range(0, len(unique), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._run([encodings[i] for i in rows], int(lengths[rows].max()))
        return out[inverse]

    def _run(self, encodings: Sequence[Any], width: int) -> np.ndarray:
        n = len(encodings)
        ids = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            k = len(enc.ids)
            ids[row, :k] = enc.ids
            types[row, :k] = enc.type_ids
            mask[row, :k] = 1
        feeds = dict(zip(INPUT_NAMES, (ids, mask, types), strict=True))
        result = self._session.run([OUTPUT_NAME], feeds)[0]
        return np.asarray(result, dtype=np.float32)
