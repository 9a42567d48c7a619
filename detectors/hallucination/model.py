"""The learned groundedness model: two small logistic regressions, stored as JSON.

The groundedness features are few and the decision is close to linear once
they are standardised, so a logistic regression fitted by Newton's method
(IRLS) with an L2 penalty is enough. It is deterministic: the same data gives
the same weights bit for bit, which is what makes the shipped
``data/grounding_model.json`` reproducible from :mod:`llmpulse.detectors.hallucination.train`.

:class:`GroundingModel` adds two logits:

* ``overlap``: how well each answer sentence is covered by its best context
  sentence, fitted on public human-annotated faithfulness sets;
* ``specifics``: unsupported numbers, names, negations and conditions,
  fitted on generated perturbations (where overlap is held fixed, so the
  model learns what a changed detail costs). Its logit is taken relative to
  an answer with no such finding, so it only ever adds evidence, and it is
  scaled by ``specifics_weight``.

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 2))
>>> y = (X[:, 0] - X[:, 1] + rng.normal(scale=0.5, size=200) > 0).astype(float)
>>> m = LogisticModel.fit(X, y, names=("a", "b"))
>>> [round(w, 2) for w in m.weights], round(m.bias, 2)
([2.54, -2.4], -0.26)
>>> m.predict_proba(np.array([[2.0, -2.0]])).round(3).tolist()
[1.0]
>>> LogisticModel.from_json(m.to_json()) == m
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GroundingModel", "LogisticModel", "default_model", "load_model"]

MODEL_FILE = "grounding_model.json"


@dataclass(frozen=True)
class LogisticModel:
    """``p = sigmoid(bias + weights . (x - mean) / scale)``."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    meta: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        *,
        names: tuple[str, ...],
        l2: float = 1.0,
        iterations: int = 50,
        meta: dict[str, Any] | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> LogisticModel:
        """Penalised maximum likelihood by Newton steps (the bias is not penalised).

        ``sample_weight`` (default all ones) weighs each row's log-likelihood.
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        mean = (X * w[:, None]).sum(axis=0) / w.sum()
        scale = np.sqrt((((X - mean) ** 2) * w[:, None]).sum(axis=0) / w.sum())
        scale[scale < 1e-9] = 1.0
        Z = np.hstack([np.ones((len(X), 1)), (X - mean) / scale])
        beta = np.zeros(Z.shape[1])
        penalty = np.full(Z.shape[1], l2)
        penalty[0] = 0.0
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(Z @ beta)))
            grad = Z.T @ (w * (p - y)) + penalty * beta
            hess = (Z * (w * p * (1 - p))[:, None]).T @ Z + np.diag(penalty) + 1e-9 * np.eye(len(beta))
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        return cls(
            names=tuple(names),
            mean=tuple(float(v) for v in mean),
            scale=tuple(float(v) for v in scale),
            weights=tuple(float(v) for v in beta[1:]),
            bias=float(beta[0]),
            meta=tuple(sorted((meta or {}).items())),
        )

    def decision(self, X: np.ndarray) -> np.ndarray:
        """The logit for each row of ``X``."""
        Z = (np.asarray(X, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.asarray(Z @ np.asarray(self.weights) + self.bias)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of the positive class (a hallucination) for each row."""
        return np.asarray(1.0 / (1.0 + np.exp(-self.decision(X))))

    def to_json(self) -> str:
        """Weights as JSON text, floats written exactly (``repr`` round-trips)."""
        return json.dumps(
            {
                "names": list(self.names),
                "mean": list(self.mean),
                "scale": list(self.scale),
                "weights": list(self.weights),
                "bias": self.bias,
                "meta": dict(self.meta),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> LogisticModel:
        d = json.loads(text)
        return cls(
            names=tuple(d["names"]),
            mean=tuple(d["mean"]),
            scale=tuple(d["scale"]),
            weights=tuple(d["weights"]),
            bias=float(d["bias"]),
            meta=tuple(sorted(d.get("meta", {}).items())),
        )


@dataclass(frozen=True)
class GroundingModel:
    """``p = sigmoid(overlap(x) + specifics_weight * (specifics(x) - specifics(0)))``.

    >>> o = LogisticModel(("a",), (0.0,), (1.0,), (2.0,), -1.0)
    >>> s = LogisticModel(("b",), (0.0,), (1.0,), (3.0,), -2.0)
    >>> m = GroundingModel(o, s, 0.5)
    >>> round(m.probability({"a": 0.5, "b": 0.0}), 3), round(m.probability({"a": 0.5, "b": 1.0}), 3)
    (0.5, 0.818)
    >>> GroundingModel.from_json(m.to_json()) == m
    True
    """

    overlap: LogisticModel
    specifics: LogisticModel
    specifics_weight: float
    meta: tuple[tuple[str, Any], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every feature either part reads."""
        return tuple(dict.fromkeys(self.overlap.names + self.specifics.names))

    def logit(self, features: dict[str, float]) -> float:
        """The log-odds of a hallucination for one response's named features."""
        xo = np.asarray([[features[n] for n in self.overlap.names]])
        xs = np.asarray([[features[n] for n in self.specifics.names]])
        zs = self.specifics.decision(xs)[0] - self.specifics.decision(np.zeros_like(xs))[0]
        return float(self.overlap.decision(xo)[0] + self.specifics_weight * zs)

    def probability(self, features: dict[str, float]) -> float:
        """Probability that the response is not grounded."""
        return float(1.0 / (1.0 + np.exp(-self.logit(features))))

    def to_json(self) -> str:
        return json.dumps(
            {
                "overlap": json.loads(self.overlap.to_json()),
                "specifics": json.loads(self.specifics.to_json()),
                "specifics_weight": self.specifics_weight,
                "meta": dict(self.meta),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> GroundingModel:
        d = json.loads(text)
        return cls(
            overlap=LogisticModel.from_json(json.dumps(d["overlap"])),
            specifics=LogisticModel.from_json(json.dumps(d["specifics"])),
            specifics_weight=float(d["specifics_weight"]),
            meta=tuple(sorted(d.get("meta", {}).items())),
        )


def load_model(path: str | Path | None = None) -> tuple[GroundingModel | None, str]:
    """The model at ``path`` (default: the shipped file) and a note on where it came from.

    A missing or unreadable file gives ``(None, reason)``: the scorer then
    falls back to the rule score and says so.
    """
    try:
        if path is None:
            text = resources.files("llmpulse.detectors.hallucination").joinpath("data", MODEL_FILE).read_text(
                encoding="utf-8"
            )
            where = f"shipped {MODEL_FILE}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
        return GroundingModel.from_json(text), where
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"model unavailable ({type(exc).__name__}: {exc}); rule-based fallback"


@lru_cache(maxsize=1)
def default_model() -> GroundingModel | None:
    """The shipped ``detectors/hallucination/data/grounding_model.json``, or ``None``."""
    return load_model()[0]
