"""Streaming change detection on window columns: ``drift.change``.

:class:`StreamingChange` feeds each numeric feature of every window, value by
value in event order, to an online :class:`~llmpulse.detectors.base.ChangeDetector`
and emits ``drift.change`` (dimension = feature) for a window in which the
detector fired; the value is the number of change points found in it. The
window tests (PSI, KS ...) say "this window differs from the reference"
once per window; this says "the stream changed *here*", typically within a
hundred values of a 0.5 sd shift.

How it runs, per feature:

1. the first ``reference_size`` values (2,000) are the reference;
2. later values are standardised against it and fed to the detector.
   ``standardise="rank"`` (default) maps a value to the normal quantile of
   its mid-rank in the reference, ``Phi^-1((rank + 1/2) / (m + 1))``, so the
   detector sees roughly N(0, 1) under no change whatever the feature's
   distribution (latencies and token counts are skewed, and a CUSUM tuned on
   Gaussian values would alarm on their long tail); ``"moments"`` uses
   ``(x - mean) / sd``;
3. with ``rebaseline=True`` (default) a change is taken as the new normal:
   the detector is dropped and the values after the change point build a new
   reference, so a lasting shift is reported once rather than every few
   dozen values.

``method`` picks the detector: ``"cusum"`` (default, :class:`Cusum`),
``"adwin"``, ``"page_hinkley"``, ``"kswin"`` (river), each with its
calibrated defaults; ``params`` overrides them.

>>> import numpy as np
>>> from llmpulse.detectors.base import Batch
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.normal(0, 1, 3000), rng.normal(1, 1, 1000)])
>>> d = StreamingChange(["x"])
>>> out = [s for i in range(0, 4000, 500)
...        for s in d.update(Batch({"x": x[i:i + 500]}, start=i, end=i + 500))]
>>> [(s.signal, s.dimension, s.value, s.ts, s.detail["positions"]) for s in out]
[('drift.change', 'x', 1.0, 3500.0, [22])]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import special

from llmpulse.detectors.base import Batch, ChangeDetector, Detector, Signal
from llmpulse.detectors.drift.adwin import Adwin
from llmpulse.detectors.drift.base import DEFAULT_NUMERIC, feature_column
from llmpulse.detectors.drift.cusum import Cusum
from llmpulse.detectors.drift.kswin import Kswin
from llmpulse.detectors.drift.page_hinkley import PageHinkley

__all__ = ["METHODS", "StreamingChange"]

METHODS: dict[str, Callable[..., ChangeDetector]] = {
    "cusum": Cusum,
    "adwin": Adwin,
    "page_hinkley": PageHinkley,
    "kswin": Kswin,
}
"""Online detectors by name; each takes ``mean``/``sd`` plus its own settings."""

_MAX_POSITIONS = 10


class _Feature:
    """One feature's state: the reference being collected, or the detector."""

    __slots__ = ("buffer", "sorted", "mean", "sd", "detector")

    def __init__(self) -> None:
        self.buffer: list[np.ndarray] = []
        self.sorted: np.ndarray | None = None
        self.mean = 0.0
        self.sd = 1.0
        # Any: the snapshot/restore pair is ours, not part of ChangeDetector.
        self.detector: Any = None


class StreamingChange(Detector):
    """``drift.change`` per numeric feature from an online change detector."""

    signals = ("drift.change",)

    def __init__(
        self,
        features: Sequence[str] | None = None,
        *,
        method: str = "cusum",
        params: Mapping[str, Any] | None = None,
        reference_size: int = 2000,
        standardise: Literal["rank", "moments"] = "rank",
        rebaseline: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
        if standardise not in ("rank", "moments"):
            raise ValueError(f"standardise: expected 'rank' or 'moments', got {standardise!r}")
        self.features = tuple(features) if features is not None else None
        self.method = method
        self.params = dict(params or {})
        self.reference_size = int(reference_size)
        self.standardise = standardise
        self.rebaseline = bool(rebaseline)
        self._state: dict[str, _Feature] = {}

    def _names(self, batch: Batch) -> list[str]:
        if self.features is not None:
            return list(self.features)
        return list(DEFAULT_NUMERIC) + [f"feature.{k}" for k in batch.prefixed("feature")]

    def update(self, batch: Batch) -> list[Signal]:
        out: list[Signal] = []
        ts = batch.numeric("ts") if "ts" in batch.columns else None
        for name in self._names(batch):
            col = feature_column(batch, name)
            if col is None or col.dtype != np.float64:
                continue
            idx = np.flatnonzero(np.isfinite(col))
            if not idx.size:
                continue
            values = col[idx]
            state = self._state.setdefault(name, _Feature())
            hits, reference_n = self._run(state, values)
            if hits:
                first = int(idx[hits[0]])
                detail: dict[str, Any] = {
                    "method": self.method,
                    "params": self._params(),
                    "standardise": self.standardise,
                    "positions": [int(idx[h]) for h in hits[:_MAX_POSITIONS]],
                    "reference_n": reference_n,
                    "window_n": int(values.size),
                    "rebaselined": self.rebaseline,
                }
                if ts is not None and np.isfinite(ts[first]):
                    detail["change_ts"] = float(ts[first])
                out.append(
                    batch.signal("drift.change", len(hits), n=int(values.size), dimension=name, detail=detail)
                )
        return out

    def _params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if isinstance(v, (int, float, str, bool))}

    def _run(self, state: _Feature, values: np.ndarray) -> tuple[list[int], int]:
        hits: list[int] = []
        reference_n = self.reference_size
        pos = 0
        while pos < values.size:
            if state.detector is None:
                have = sum(b.size for b in state.buffer)
                take = values[pos : pos + self.reference_size - have]
                state.buffer.append(take)
                pos += take.size
                if have + take.size >= self.reference_size:
                    self._start(state)
                continue
            found = state.detector.update_many(self._z(state, values[pos:]))
            if not found:
                break
            if not self.rebaseline:
                hits += [pos + h for h in found]
                break
            hits.append(pos + found[0])
            pos += found[0] + 1
            state.detector = None
            state.sorted = None
            state.buffer = []
        return hits, reference_n

    def _start(self, state: _Feature) -> None:
        ref = np.concatenate(state.buffer)
        state.buffer = []
        if self.standardise == "rank":
            state.sorted = np.sort(ref)
            state.mean, state.sd = 0.0, 1.0
        else:
            state.mean = float(ref.mean())
            state.sd = max(float(ref.std()), 1e-12)
        state.detector = METHODS[self.method](**self.params, mean=state.mean, sd=state.sd)

    def _z(self, state: _Feature, x: np.ndarray) -> np.ndarray:
        if state.sorted is None:
            return x
        s = state.sorted
        lo = np.searchsorted(s, x, "left")
        hi = np.searchsorted(s, x, "right")
        return special.ndtri((lo + hi + 1) / (2.0 * (s.size + 1)))

    # -- state ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Configuration and per-feature state, JSON-serialisable."""
        features: dict[str, Any] = {}
        for name, st in self._state.items():
            features[name] = {
                "buffer": np.concatenate(st.buffer).tolist() if st.buffer else [],
                "sorted": st.sorted.tolist() if st.sorted is not None else None,
                "mean": st.mean,
                "sd": st.sd,
                "detector": st.detector.snapshot() if st.detector is not None else None,
            }
        return {
            "features": list(self.features) if self.features is not None else None,
            "method": self.method,
            "params": dict(self.params),
            "reference_size": self.reference_size,
            "standardise": self.standardise,
            "rebaseline": self.rebaseline,
            "state": features,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        features = state["features"]
        self.features = tuple(features) if features is not None else None
        self.method = state["method"]
        self.params = dict(state["params"])
        self.reference_size = int(state["reference_size"])
        self.standardise = state["standardise"]
        self.rebaseline = bool(state["rebaseline"])
        self._state = {}
        for name, saved in state["state"].items():
            st = _Feature()
            st.buffer = [np.asarray(saved["buffer"], dtype=np.float64)] if saved["buffer"] else []
            st.sorted = np.asarray(saved["sorted"], dtype=np.float64) if saved["sorted"] is not None else None
            st.mean, st.sd = float(saved["mean"]), float(saved["sd"])
            if saved["detector"] is not None:
                st.detector = METHODS[self.method](**self.params, mean=st.mean, sd=st.sd)
                st.detector.restore(saved["detector"])
            self._state[name] = st
