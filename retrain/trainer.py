"""Trainers: ``fit(dataset, out_dir) -> Artifact``, pluggable.

A :class:`Trainer` turns a labelled :class:`Dataset` into an
:class:`Artifact`: one ONNX file from token ids to class probabilities plus,
for the parity gate, the training framework's own prediction function. The
built-in :class:`HeadTrainer` fits a logistic-regression head on frozen
all-MiniLM-L6-v2 embeddings; with ``fine_tune_encoder=True`` (needs torch and
sentence-transformers) it first fine-tunes the encoder for a few epochs with
a cross-entropy loss on the same head, then exports the tuned encoder and
fits the head on it.

Other trainers are found by :func:`load_trainer`, from a dotted path
``package.module:Class`` or by name in the entry-point group
``llmpulse.trainers`` (``head`` is built in).

>>> ds = Dataset(("refund please", "refund please", "where is my parcel", "card declined"),
...              ("refund", "refund", "shipping", "billing"))
>>> train, test = ds.split(test_share=0.34, seed=0)
>>> len(train), len(test), set(train.texts) & set(test.texts)
(3, 1, set())
>>> type(load_trainer("head")).__name__
'HeadTrainer'
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llmpulse.retrain.model import INTENTS, HeadClassifier, build_classifier_graph

__all__ = [
    "ENTRY_POINT_GROUP",
    "Artifact",
    "Dataset",
    "Embedder",
    "HeadTrainer",
    "MemoEmbedder",
    "Trainer",
    "load_artifact",
    "load_trainer",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "llmpulse.trainers"
MODEL_FILE = "model.onnx"
HEAD_FILE = "head.npz"
CARD_FILE = "card.json"


@dataclass(frozen=True)
class Dataset:
    """Texts with their true label and segment attributes (region, language, tier).

    ``window`` is the event-time span the examples come from (epoch seconds),
    recorded as lineage. ``weights`` are optional per-example training weights
    (class balance, segment reweighting: :mod:`llmpulse.retrain.dataset`); empty means
    all 1. Trainers that cannot weight examples may ignore them.
    """

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    segments: tuple[Mapping[str, str], ...] = ()
    window: tuple[float, float] | None = None
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        segs = tuple(dict(s) for s in self.segments) or tuple({} for _ in self.texts)
        object.__setattr__(self, "segments", segs)
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not len(self.texts) == len(self.labels) == len(self.segments):
            raise ValueError(
                f"texts, labels and segments differ in length: "
                f"{len(self.texts)}, {len(self.labels)}, {len(self.segments)}"
            )
        if self.weights and len(self.weights) != len(self.texts):
            raise ValueError(f"{len(self.weights)} weights for {len(self.texts)} examples")

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, Any]], *, window: tuple[float, float] | None = None
    ) -> Dataset:
        """From dicts with ``prompt`` (or ``text``), ``label`` and optional ``segment``.

        That is the shape of a join of ``inference_events`` with the ground-truth
        ``label`` of ``feedback_events``; rows without a label are skipped.

        >>> Dataset.from_rows([{"prompt": "refund?", "label": "refund", "segment": {"tier": "pro"}},
        ...                    {"prompt": "x", "label": None}]).labels
        ('refund',)
        """
        texts, labels, segs = [], [], []
        for r in rows:
            label = r.get("label")
            if label is None or label == "":
                continue
            texts.append(str(r.get("prompt", r.get("text", ""))))
            labels.append(str(label))
            segs.append({str(k): str(v) for k, v in dict(r.get("segment") or {}).items()})
        return cls(tuple(texts), tuple(labels), tuple(segs), window)

    def subset(self, index: Sequence[int] | np.ndarray) -> Dataset:
        idx = [int(i) for i in index]
        return Dataset(
            tuple(self.texts[i] for i in idx),
            tuple(self.labels[i] for i in idx),
            tuple(self.segments[i] for i in idx),
            self.window,
            tuple(self.weights[i] for i in idx) if self.weights else (),
        )

    def split(self, test_share: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Train and test parts; all copies of one text land on the same side."""
        if not 0.0 < test_share < 1.0:
            raise ValueError(f"test_share must be within (0, 1), got {test_share}")
        unique = sorted(set(self.texts))
        rng = np.random.default_rng(seed)
        n_test = max(1, int(round(test_share * len(unique))))
        test_texts = {unique[i] for i in rng.permutation(len(unique))[:n_test]}
        test = [i for i, t in enumerate(self.texts) if t in test_texts]
        train = [i for i, t in enumerate(self.texts) if t not in test_texts]
        return self.subset(train), self.subset(test)

    def segment_index(self) -> dict[str, np.ndarray]:
        """Row indices per ``attribute=value`` segment.

        >>> Dataset(("a", "b"), ("x", "y"), ({"tier": "pro"}, {"tier": "free"})).segment_index()
        {'tier=free': array([1]), 'tier=pro': array([0])}
        """
        groups: dict[str, list[int]] = {}
        for i, seg in enumerate(self.segments):
            for k, v in seg.items():
                groups.setdefault(f"{k}={v}", []).append(i)
        return {k: np.asarray(groups[k]) for k in sorted(groups)}


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into a ``(n, dim)`` array."""

    def embed(self, texts: Sequence[str | None]) -> np.ndarray: ...


class MemoEmbedder:
    """Remembers embeddings per text: evaluation and parity embed the same texts again.

    >>> class Count:
    ...     calls = 0
    ...     def embed(self, texts):
    ...         Count.calls += len(texts); return np.ones((len(texts), 2))
    >>> m = MemoEmbedder(Count())
    >>> m.embed(["a", "b", "a"]).shape, m.embed(["b"]).shape, Count.calls
    ((3, 2), (1, 2), 2)
    """

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._memo: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str | None]) -> np.ndarray:
        clean = ["" if t is None else str(t) for t in texts]
        missing = list(dict.fromkeys(t for t in clean if t not in self._memo))
        if missing:
            self._memo.update(zip(missing, np.asarray(self.inner.embed(missing)), strict=True))
        if not clean:
            return np.asarray(self.inner.embed([]))
        return np.stack([self._memo[t] for t in clean])


@dataclass
class Artifact:
    """What a trainer produced: the ONNX file and how the framework itself predicts.

    ``reference(texts)`` returns the training framework's class probabilities
    (columns in ``labels`` order) for the parity gate; ``None`` when the
    framework is not available in this process.
    """

    path: Path
    labels: tuple[str, ...]
    framework: str
    reference: Callable[[Sequence[str]], np.ndarray] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


class Trainer(Protocol):
    """Fits a model on a dataset and writes its artifact under ``out_dir``."""

    name: str

    def fit(self, dataset: Dataset, out_dir: str | os.PathLike[str]) -> Artifact: ...


class HeadTrainer:
    """Logistic-regression head on all-MiniLM-L6-v2 embeddings, appended to the encoder graph.

    ``encoder_path`` defaults to :func:`llmpulse.detectors.embedding.export_minilm`;
    ``embedder`` (for the features) to a :class:`MiniLMEmbedder` on that file.
    ``fine_tune_encoder=True`` first fine-tunes the encoder with torch
    (``epochs`` passes, batch 16, AdamW at ``learning_rate``) and exports it
    to ``out_dir/encoder.onnx``; the head is then fitted on the tuned
    embeddings, as without fine-tuning.

    ``label_noise`` (0..1) is a fault injection for drills and demos: that
    share of the training examples (seeded) gets the next label of ``labels``
    instead of its own, a systematic mislabelling that the accuracy gates
    must catch.
    """

    name = "head"

    def __init__(
        self,
        *,
        encoder_path: str | os.PathLike[str] | None = None,
        embedder: Embedder | None = None,
        c: float = 20.0,
        max_iter: int = 1000,
        seed: int = 0,
        labels: Sequence[str] = INTENTS,
        fine_tune_encoder: bool = False,
        epochs: int = 1,
        learning_rate: float = 2e-5,
        label_noise: float = 0.0,
    ) -> None:
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"label_noise must be within 0..1, got {label_noise}")
        self.label_noise = float(label_noise)
        self.encoder_path = Path(encoder_path) if encoder_path is not None else None
        self.embedder = embedder
        self.c = float(c)
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self.labels = tuple(labels)
        self.fine_tune_encoder = bool(fine_tune_encoder)
        self.epochs = int(epochs)
        self.learning_rate = float(learning_rate)

    def _encoder(self) -> Path:
        if self.encoder_path is None:
            from llmpulse.detectors.embedding import export_minilm

            self.encoder_path = export_minilm()
        return self.encoder_path

    def _embedder(self) -> Embedder:
        if self.embedder is None:
            from llmpulse.detectors.embedding import MiniLMEmbedder

            self.embedder = MemoEmbedder(MiniLMEmbedder(self._encoder()))
        return self.embedder

    def _corrupt(self, labels: Sequence[str]) -> list[str]:
        out = list(labels)
        if self.label_noise <= 0.0 or not out:
            return out
        rng = np.random.default_rng(self.seed)
        pos = {lab: i for i, lab in enumerate(self.labels)}
        for i in np.flatnonzero(rng.random(len(out)) < self.label_noise).tolist():
            j = pos.get(out[i])
            if j is not None:
                out[i] = self.labels[(j + 1) % len(self.labels)]
        return out

    def fit(self, dataset: Dataset, out_dir: str | os.PathLike[str]) -> Artifact:
        """Embed, fit the head, write ``model.onnx``, ``head.npz`` and ``card.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if len(dataset) == 0:
            raise ValueError("cannot train on an empty dataset")
        t0 = time.perf_counter()
        encoder = self._encoder()
        embedder = self._embedder()
        if self.fine_tune_encoder:
            from llmpulse.retrain.finetune import fine_tune_encoder

            encoder = fine_tune_encoder(
                dataset.texts,
                dataset.labels,
                out / "encoder.onnx",
                labels=self.labels,
                epochs=self.epochs,
                learning_rate=self.learning_rate,
                seed=self.seed,
            )
            from llmpulse.detectors.embedding import MiniLMEmbedder

            embedder = MemoEmbedder(MiniLMEmbedder(encoder))
        x = embedder.embed(list(dataset.texts))
        t_embed = time.perf_counter() - t0
        targets = self._corrupt(dataset.labels)
        head = HeadClassifier.fit(
            x, targets, labels=self.labels, c=self.c, max_iter=self.max_iter, seed=self.seed,
            sample_weight=np.asarray(dataset.weights) if dataset.weights else None,
        )
        train_acc = float((head.predict(x) == np.asarray(targets)).mean())
        path = build_classifier_graph(
            encoder, head, out / MODEL_FILE, metadata={"llmpulse.trainer": self.name}
        )
        head.save(out / HEAD_FILE)
        if self.fine_tune_encoder:
            (out / "encoder.onnx").unlink(missing_ok=True)  # the graph holds the weights now
        metrics = {
            "train_accuracy": train_acc,
            "n_train": float(len(dataset)),
            "embed_s": round(t_embed, 3),
            "fit_s": round(time.perf_counter() - t0 - t_embed, 3),
        }
        params = {
            "trainer": self.name,
            "c": self.c,
            "max_iter": self.max_iter,
            "seed": self.seed,
            "fine_tune_encoder": self.fine_tune_encoder,
            "encoder": Path(encoder).name,
            "label_noise": self.label_noise,
        }
        _write_json(out / CARD_FILE, {"labels": list(head.labels), "framework": "scikit-learn",
                                      "metrics": metrics, "params": params,
                                      "data_window": list(dataset.window) if dataset.window else None})

        def reference(texts: Sequence[str]) -> np.ndarray:
            return head.predict_proba(embedder.embed(list(texts)))

        return Artifact(path, head.labels, "scikit-learn", reference, metrics, params)


def load_artifact(
    path: str | os.PathLike[str], *, embedder: Embedder | None = None
) -> Artifact:
    """An artifact from its directory (or its ``model.onnx``), with the numpy reference
    of the head when ``head.npz`` is there, on the embeddings of ``embedder`` (default:
    the stock encoder; right for heads trained without fine-tuning)."""
    p = Path(path)
    model = p / MODEL_FILE if p.is_dir() else p
    folder = model.parent
    card: dict[str, Any] = {}
    if (folder / CARD_FILE).is_file():
        card = json.loads((folder / CARD_FILE).read_text())
    from llmpulse.retrain.model import read_labels

    labels = read_labels(model)
    reference: Callable[[Sequence[str]], np.ndarray] | None = None
    if (folder / HEAD_FILE).is_file() and not card.get("params", {}).get("fine_tune_encoder"):
        head = HeadClassifier.load(folder / HEAD_FILE)
        state: dict[str, Embedder] = {}

        def reference(texts: Sequence[str]) -> np.ndarray:
            if "e" not in state:
                if embedder is not None:
                    state["e"] = embedder
                else:
                    from llmpulse.detectors.embedding import MiniLMEmbedder

                    state["e"] = MiniLMEmbedder()
            return head.predict_proba(state["e"].embed(list(texts)))

    return Artifact(
        model,
        labels,
        str(card.get("framework", "unknown")),
        reference,
        dict(card.get("metrics", {})),
        dict(card.get("params", {})),
    )


_BUILTIN: dict[str, Callable[..., Any]] = {"head": HeadTrainer}


def load_trainer(spec: str, **kwargs: Any) -> Trainer:
    """A trainer from ``package.module:Class``, a built-in name or an entry point name.

    >>> load_trainer("llmpulse.retrain.trainer:HeadTrainer", c=5.0).c
    5.0
    >>> load_trainer("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown trainer 'nope': not built in (head) and no entry point in group llmpulse.trainers
    """
    factory: Callable[..., Any] | None = None
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load trainer {spec!r}: {exc}") from exc
        factory = obj
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if found:
            factory = found[0].load()
        elif spec in _BUILTIN:
            factory = _BUILTIN[spec]
    if factory is None:
        raise ValueError(
            f"unknown trainer {spec!r}: not built in ({', '.join(_BUILTIN)}) "
            f"and no entry point in group {ENTRY_POINT_GROUP}"
        )
    trainer = factory(**kwargs) if callable(factory) else factory
    if not callable(getattr(trainer, "fit", None)):
        raise ValueError(f"trainer {spec!r} has no fit(dataset, out_dir) method")
    return trainer


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
