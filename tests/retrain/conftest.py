"""Shared fixtures: the encoder exported once, a dataset and a trained reference model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmpulse.retrain.model import HeadClassifier, build_classifier_graph
from llmpulse.retrain.serving import LoadedModel
from llmpulse.retrain.trainer import Artifact, Dataset, HeadTrainer, MemoEmbedder, load_artifact
from llmpulse.router_data import router_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def encoder_path() -> Path:
    """The MiniLM export in the default cache: made once, then reused."""
    from llmpulse.detectors.embedding import export_minilm

    return export_minilm()


@pytest.fixture(scope="session")
def embedder(encoder_path: Path) -> MemoEmbedder:
    from llmpulse.detectors.embedding import MiniLMEmbedder

    return MemoEmbedder(MiniLMEmbedder(encoder_path))


@pytest.fixture(scope="session")
def dataset() -> Dataset:
    return router_dataset(seed=0, duration_s=60, rate=10, start_ts=1_700_000_000.0)


@pytest.fixture(scope="session")
def split(dataset: Dataset) -> tuple[Dataset, Dataset]:
    return dataset.split(test_share=0.3, seed=0)


@pytest.fixture(scope="session")
def artifact(
    split: tuple[Dataset, Dataset], encoder_path: Path, embedder: MemoEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Artifact:
    trainer = HeadTrainer(encoder_path=encoder_path, embedder=embedder)
    return trainer.fit(split[0], tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="session")
def bad_artifact(
    artifact: Artifact, encoder_path: Path, embedder: MemoEmbedder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Artifact:
    """The trained head with its label columns shuffled: a worse model of the same shape."""
    head = HeadClassifier.load(Path(artifact.path).parent / "head.npz").shuffled(seed=3)
    out = tmp_path_factory.mktemp("bad")
    build_classifier_graph(encoder_path, head, out / "model.onnx")
    head.save(out / "head.npz")
    return load_artifact(out, embedder=embedder)


@pytest.fixture(scope="session")
def loaded(artifact: Artifact) -> LoadedModel:
    return LoadedModel(artifact.path, "1", providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def loaded_bad(bad_artifact: Artifact) -> LoadedModel:
    return LoadedModel(bad_artifact.path, "2", providers=["CPUExecutionProvider"])
