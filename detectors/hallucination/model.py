"""A small logistic regression in numpy, with weights stored as JSON.

The groundedness features are few (a dozen) and the decision is close to
linear once they are standardised, so a logistic regression fitted by
Newton's method (IRLS) with an L2 penalty is enough. It is deterministic:
the same data gives the same weights bit for bit, which is what makes the
shipped ``data/model.json`` reproducible from :mod:`detectors.hallucination.train`.

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
from typing import Any

import numpy as np

__all__ = ["LogisticModel", "default_model"]

MODEL_FILE = "model.json"


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
    ) -> LogisticModel:
        """Penalised maximum likelihood by Newton steps (the bias is not penalised)."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-9] = 1.0
        Z = np.hstack([np.ones((len(X), 1)), (X - mean) / scale])
        beta = np.zeros(Z.shape[1])
        penalty = np.full(Z.shape[1], l2)
        penalty[0] = 0.0
        for _ in range(iterations):
            p = 1.0 / (1.0 + np.exp(-(Z @ beta)))
            grad = Z.T @ (p - y) + penalty * beta
            hess = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(penalty) + 1e-9 * np.eye(len(beta))
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


@lru_cache(maxsize=1)
def default_model() -> LogisticModel:
    """The weights shipped in ``detectors/hallucination/data/model.json``."""
    path = resources.files("detectors.hallucination").joinpath("data", MODEL_FILE)
    return LogisticModel.from_json(path.read_text(encoding="utf-8"))
