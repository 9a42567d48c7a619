"""Shared wrapper: a river drift detector behind :class:`~llmpulse.detectors.base.ChangeDetector`.

Values are standardised with ``mean``/``sd`` before river sees them, so
thresholds calibrated in sd units hold for any feature. State is the river
object itself, pickled (base64) into the snapshot so it stays JSON-able.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from llmpulse.detectors.base import ChangeDetector

__all__ = ["RiverChangeDetector"]


class RiverChangeDetector(ChangeDetector):
    """Base of the river wrappers; subclasses build ``self._river`` in ``__init__``."""

    _river: Any

    def __init__(self, *, mean: float = 0.0, sd: float = 1.0) -> None:
        if sd <= 0:
            raise ValueError(f"sd: must be > 0, got {sd}")
        self.mean = float(mean)
        self.sd = float(sd)
        self.drift_detected = False

    def update(self, x: float) -> None:
        self._river.update((x - self.mean) / self.sd)
        self.drift_detected = bool(self._river.drift_detected)

    def update_many(self, xs: Iterable[float]) -> list[int]:
        z = ((np.asarray(xs if isinstance(xs, np.ndarray) else list(xs), dtype=np.float64) - self.mean) / self.sd).tolist()
        river = self._river
        hits = []
        # river is per value by design; keep the loop as tight as it gets.
        for i, v in enumerate(z):
            river.update(v)
            if river.drift_detected:
                hits.append(i)
        self.drift_detected = bool(river.drift_detected)
        return hits

    def snapshot(self) -> dict[str, Any]:
        """Standardisation and the pickled river detector (JSON-serialisable)."""
        return {
            "mean": self.mean,
            "sd": self.sd,
            "river": base64.b64encode(pickle.dumps(self._river)).decode("ascii"),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`snapshot` wrote."""
        self.mean = float(state["mean"])
        self.sd = float(state["sd"])
        self._river = pickle.loads(base64.b64decode(state["river"]))
