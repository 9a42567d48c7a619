"""ONNX export of all-MiniLM-L6-v2 and the ONNX Runtime embedder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmpulse.detectors.embedding import EMBEDDING_DIM, ExportError, MiniLMEmbedder, export_minilm
from llmpulse.detectors.embedding import export as export_mod
from llmpulse.detectors.embedding import minilm as minilm_mod

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIED_TEXTS = [
    "Why was I charged twice for my subscription this month?",
    "hi",
    "",
    "How do I move my bitcoin from the exchange to a hardware wallet?",
    "Crème brûlée, Straße, 東京 — non-ASCII text with punctuation!",
    "def f(x):\n    return x ** 2  # code in a prompt",
    "word " * 400,  # truncated at 256 tokens
    "The quick brown fox jumps over the lazy dog. " * 8,
    "   leading and trailing spaces   ",
    "UPPER CASE SHOUTING ABOUT A REFUND",
    "🙂🚀 emoji only",
    "1 2 3 4 5 6 7 8 9 10",
]


@pytest.fixture(scope="session")
def onnx_path() -> Path:
    """The export in the default cache: made once (the doctests share it), then reused."""
    return export_minilm()


@pytest.fixture(scope="session")
def embedder(onnx_path: Path) -> MiniLMEmbedder:
    return MiniLMEmbedder(onnx_path)


@pytest.fixture(scope="session")
def varied(embedder: MiniLMEmbedder) -> np.ndarray:
    return embedder.embed(VARIED_TEXTS)


@pytest.fixture(scope="session")
def sentence_transformer() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(export_mod.minilm_dir()), device="cpu")


def test_export_has_dynamic_batch_and_sequence_axes(onnx_path: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 14
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert inputs == {
        "input_ids": ["batch", "sequence"],
        "attention_mask": ["batch", "sequence"],
        "token_type_ids": ["batch", "sequence"],
    }
    (out,) = model.graph.output
    assert out.name == "sentence_embedding"
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == [
        "batch",
        EMBEDDING_DIM,
    ]
    assert onnx_path.name == f"all-MiniLM-L6-v2-{export_mod.weights_key()}.onnx"
    assert not list(onnx_path.parent.glob(".export-*"))  # no temp files left behind


def test_onnx_matches_sentence_transformers(varied: np.ndarray, sentence_transformer: Any) -> None:
    expected = sentence_transformer.encode(
        VARIED_TEXTS, convert_to_numpy=True, show_progress_bar=False
    )
    got = varied
    assert got.shape == (len(VARIED_TEXTS), EMBEDDING_DIM) and got.dtype == np.float32
    cosine = (got * expected).sum(1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=2e-4)


def test_tokenizer_matches_sentence_transformers(
    embedder: MiniLMEmbedder, sentence_transformer: Any
) -> None:
    hf = sentence_transformer.tokenizer(VARIED_TEXTS, truncation=True, max_length=256)["input_ids"]
    ours = [e.ids for e in embedder._tokenizer.encode_batch(VARIED_TEXTS)]
    assert ours == hf
    assert max(len(ids) for ids in ours) == 256


def test_export_is_cached_and_not_redone(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(export_mod, "_export_to", boom)
    assert export_minilm(onnx_path.parent) == onnx_path


def test_missing_torch_gives_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ExportError, match=r"torch is not installed.*llmpulse\[retrain\]"):
        export_minilm(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_follows_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMPULSE_DATA_DIR", str(tmp_path))
    assert export_mod.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("LLMPULSE_DATA_DIR")
    assert export_mod.default_cache_dir() == Path.home() / ".cache" / "llmpulse" / "models"


def test_embeddings_are_unit_length_and_order_free(
    embedder: MiniLMEmbedder, varied: np.ndarray
) -> None:
    np.testing.assert_allclose(np.linalg.norm(varied, axis=1), 1.0, atol=1e-5)
    short = [t for t in VARIED_TEXTS if len(t) < 100]
    idx = [VARIED_TEXTS.index(t) for t in short]
    np.testing.assert_allclose(embedder.embed(short[::-1])[::-1], varied[idx], atol=1e-5)
    alone = embedder.embed([VARIED_TEXTS[0]])  # no padding at all
    np.testing.assert_allclose(alone[0], varied[0], atol=1e-5)


def test_duplicates_none_and_empty(embedder: MiniLMEmbedder) -> None:
    v = embedder.embed(["same text", None, "same text", ""])
    np.testing.assert_array_equal(v[0], v[2])
    np.testing.assert_array_equal(v[1], v[3])
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)


def test_batch_size_does_not_change_results(onnx_path: Path, varied: np.ndarray) -> None:
    one = MiniLMEmbedder(onnx_path, batch_size=1)
    np.testing.assert_allclose(one.embed(VARIED_TEXTS), varied, atol=1e-5)


def test_truncation_is_configurable(onnx_path: Path) -> None:
    short = MiniLMEmbedder(onnx_path, max_length=8)
    a, b = short.embed(
        ["one two three four five six seven", "one two three four five six nine ten"]
    )
    np.testing.assert_allclose(a, b, atol=1e-6)  # both cut after six words
    with pytest.raises(ValueError, match="max_length"):
        MiniLMEmbedder(onnx_path, max_length=1)


def test_cuda_is_asked_first_and_cpu_takes_over(
    onnx_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        # pretend a driver is present so onnxruntime really tries CUDA first
        monkeypatch.setattr(minilm_mod, "_cuda_driver_present", lambda: True)
        assert minilm_mod._choose_providers(None)[0] == "CUDAExecutionProvider"
    emb = MiniLMEmbedder(onnx_path)
    assert emb.provider in emb._session.get_providers()
    assert emb.provider in ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert emb.embed(["still works"]).shape == (1, EMBEDDING_DIM)
    monkeypatch.undo()
    if not minilm_mod._cuda_driver_present():
        assert minilm_mod._choose_providers(None) == ["CPUExecutionProvider"]
        assert MiniLMEmbedder(onnx_path).provider == "CPUExecutionProvider"


def test_default_is_one_shared_instance() -> None:
    assert MiniLMEmbedder.default() is MiniLMEmbedder.default()


def test_importing_detectors_does_not_import_torch_or_onnxruntime() -> None:
    code = (
        "import sys, detectors, llmpulse.detectors.embedding, llmpulse.detectors.drift.embedding;"
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
