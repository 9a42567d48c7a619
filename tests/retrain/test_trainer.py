"""Trainer protocol: loading by dotted path and entry point, datasets, artifacts."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmpulse.retrain import trainer as trainer_mod
from llmpulse.retrain.trainer import Artifact, Dataset, HeadTrainer, load_artifact, load_trainer


class ConstantTrainer:
    """A third-party trainer: reuses a prepared artifact (the protocol is all it needs)."""

    name = "constant"

    def __init__(self, artifact: Artifact | None = None) -> None:
        self.artifact = artifact

    def fit(self, dataset: Dataset, out_dir: Any) -> Artifact:
        assert self.artifact is not None
        return self.artifact


def test_load_trainer_by_path_name_and_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(load_trainer("head"), HeadTrainer)
    assert isinstance(load_trainer(f"{__name__}:ConstantTrainer"), ConstantTrainer)
    ep = EntryPoint("const", f"{__name__}:ConstantTrainer", trainer_mod.ENTRY_POINT_GROUP)
    monkeypatch.setattr(trainer_mod, "entry_points", lambda group: [ep] if group == ep.group else [])
    assert isinstance(load_trainer("const"), ConstantTrainer)
    with pytest.raises(ValueError, match="cannot load trainer"):
        load_trainer("llmpulse.retrain.trainer:Nope")
    with pytest.raises(ValueError, match="no fit"):
        load_trainer("builtins:dict")


def test_split_never_leaks_a_text(dataset: Dataset) -> None:
    doubled = Dataset(dataset.texts * 2, dataset.labels * 2, dataset.segments * 2)
    train, test = doubled.split(test_share=0.3, seed=1)
    assert not set(train.texts) & set(test.texts)
    assert len(train) + len(test) == len(doubled)
    assert abs(len(set(test.texts)) / len(set(doubled.texts)) - 0.3) < 0.01


def test_artifact_round_trips_from_disk(artifact: Artifact, embedder: Any, split: tuple[Dataset, Dataset]) -> None:
    folder = Path(artifact.path).parent
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "head.npz", "card.json"}
    again = load_artifact(folder, embedder=embedder)
    assert again.labels == artifact.labels and again.framework == "scikit-learn"
    assert again.metrics["train_accuracy"] == artifact.metrics["train_accuracy"] > 0.9
    assert again.reference is not None and artifact.reference is not None
    texts = list(split[1].texts[:8])
    np.testing.assert_allclose(again.reference(texts), artifact.reference(texts), atol=1e-12)


def test_empty_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        HeadTrainer().fit(Dataset((), ()), tmp_path)
