"""What every drift test shares: the reference policy, feature columns, binning.

A drift test compares the values of one feature in the current window with a
*reference* sample of the same feature. :class:`ReferencePolicy` says where
the reference comes from:

* ``fixed`` (default): the first ``size`` values seen (2,000) become the
  baseline and stay frozen; a baseline can also be given explicitly with
  :meth:`WindowDriftTest.set_reference`. Windows that help fill the baseline
  are not tested.
* ``rolling``: the previous ``windows`` windows (4) are the reference, so a
  slow drift is absorbed and only a change from one window to the next shows.

Features are batch columns plus three derived from texts:
``prompt_chars`` / ``response_chars`` (length in characters) and
``context_passages`` (number of retrieved passages). Float columns are
numeric, string columns categorical; NaN and ``""`` (missing) are dropped.

Numeric values are binned as Evidently 0.7 bins them (``get_binned_data``),
so PSI and Jensen-Shannon agree with Evidently's ``ValueDrift`` on the same
data: when the reference has more than 20 distinct values, Sturges edges over
reference and window together (``numpy.histogram_bin_edges(..., "sturges")``);
otherwise one bin per distinct value, as for categories.

>>> import numpy as np
>>> ref = np.random.default_rng(0).normal(size=2000)
>>> cur = np.random.default_rng(1).normal(0.5, 1.0, 500)
>>> p, q = binned_percents(ref, cur, "numeric", fill_zeroes=False)
>>> len(p), round(float(p.sum()), 6), round(float(q.sum()), 6)
(13, 1.0, 1.0)
>>> ReferencePolicy.rolling(3)
ReferencePolicy(mode='rolling', size=2000, windows=3)
"""

from __future__ import annotations

import abc
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from llmpulse.detectors.base import Batch, Detector, Signal

__all__ = [
    "DEFAULT_CATEGORICAL",
    "DEFAULT_NUMERIC",
    "DERIVED_FEATURES",
    "ReferencePolicy",
    "WindowDriftTest",
    "binned_percents",
    "default_features",
    "feature_column",
    "feature_values",
    "present",
    "value_counts",
]

Kind = Literal["numeric", "categorical"]

DERIVED_FEATURES: tuple[str, ...] = ("prompt_chars", "response_chars", "context_passages")
"""Numeric features computed from the text columns of a window."""

DEFAULT_NUMERIC: tuple[str, ...] = (
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "prompt_chars",
    "response_chars",
    "context_passages",
)
"""Numeric features tested when none are named; every ``feature.*`` column is added."""

DEFAULT_CATEGORICAL: tuple[str, ...] = ("model", "prediction.label")
"""Categorical features tested when none are named; every ``segment.*`` column is added."""


@dataclass(frozen=True, slots=True)
class ReferencePolicy:
    """Where the reference sample comes from (see the module docstring).

    ``size`` is the baseline length in values for ``fixed``; ``windows`` the
    number of previous windows for ``rolling``.

    >>> ReferencePolicy()
    ReferencePolicy(mode='fixed', size=2000, windows=4)
    >>> ReferencePolicy.fixed(500).size
    500
    """

    mode: Literal["fixed", "rolling"] = "fixed"
    size: int = 2000
    windows: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "rolling"):
            raise ValueError(f"mode: expected 'fixed' or 'rolling', got {self.mode!r}")
        if self.size < 1 or self.windows < 1:
            raise ValueError("size and windows must be >= 1")

    @classmethod
    def fixed(cls, size: int = 2000) -> ReferencePolicy:
        """The first ``size`` values seen, then frozen."""
        return cls("fixed", size=size)

    @classmethod
    def rolling(cls, windows: int = 4) -> ReferencePolicy:
        """The previous ``windows`` windows."""
        return cls("rolling", windows=windows)


# -- feature columns -----------------------------------------------------------

# Several detectors read the same window one after the other: what they read of
# the last batch (its derived text features, the only per-event Python work, and
# its features' present values) is kept, by the batch's identity.
_last_batch: tuple[Batch | None, dict[tuple[str, str], Any]] = (None, {})


def _read_of(batch: Batch) -> dict[tuple[str, str], Any]:
    """What has been read of ``batch``, if it is the last batch read; else a new record."""
    global _last_batch
    if _last_batch[0] is not batch:
        _last_batch = (batch, {})
    return _last_batch[1]


def _derived(batch: Batch, name: str) -> np.ndarray:
    values = _read_of(batch)
    col: np.ndarray | None = values.get(("derived", name))
    if col is None:
        if name == "context_passages":
            src = batch.texts("context")
            col = np.fromiter(
                (len(c) if isinstance(c, list) else math.nan for c in src), float, len(src)
            )
        else:
            src = batch.texts(name.removesuffix("_chars"))
            col = np.fromiter(
                (len(t) if isinstance(t, str) else math.nan for t in src), float, len(src)
            )
        values[("derived", name)] = col
    return col


def feature_column(batch: Batch, name: str) -> np.ndarray | None:
    """Feature ``name`` for every event of ``batch`` (NaN or ``""`` where
    missing), or ``None`` if the batch has no such column."""
    if name in DERIVED_FEATURES and not batch.has(name):
        return _derived(batch, name)
    if name in batch.columns:
        return batch.strings(name)
    return None


def present(col: np.ndarray) -> np.ndarray:
    """Where a feature column has a value (finite number, non-empty string)."""
    return np.isfinite(col) if col.dtype == np.float64 else col != ""


def feature_values(batch: Batch, name: str) -> tuple[np.ndarray, Kind] | None:
    """The present values of feature ``name`` in ``batch`` and its kind, or
    ``None`` if no event has it.

    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> b = synthetic_batch(3, seed=0)
    >>> feature_values(b, "prompt_chars")
    (array([26., 24., 25.]), 'numeric')
    >>> feature_values(b, "segment.language")[1], feature_values(b, "nope")
    ('categorical', None)
    """
    known = _read_of(batch)
    if ("present", name) in known:
        return known[("present", name)]
    found: tuple[np.ndarray, Kind] | None = None
    col = feature_column(batch, name)
    if col is not None:
        values = col[present(col)]
        if values.size:
            # shared by the detectors that read this window (and kept in their
            # references): read-only, so none can change what another sees
            values.flags.writeable = False
            found = values, "numeric" if col.dtype == np.float64 else "categorical"
    known[("present", name)] = found
    return found


def default_features(batch: Batch, kinds: Iterable[Kind]) -> list[str]:
    """Features tested when a detector names none: the defaults plus every
    ``feature.*`` (numeric) or ``segment.*`` (categorical) column."""
    names: list[str] = []
    kinds = set(kinds)
    if "numeric" in kinds:
        names += list(DEFAULT_NUMERIC) + [f"feature.{k}" for k in batch.prefixed("feature")]
    if "categorical" in kinds:
        names += list(DEFAULT_CATEGORICAL) + [f"segment.{k}" for k in batch.prefixed("segment")]
    return names


# -- binning ----------------------------------------------------------------------


def binned_percents(
    reference: np.ndarray,
    current: np.ndarray,
    kind: Kind,
    *,
    fill_zeroes: bool = True,
    reference_distinct: int | None = None,
    reference_counts: dict[Any, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Share of reference and current values per bin, binned as Evidently does.

    ``fill_zeroes`` replaces empty bins by a small share (Evidently's rule:
    ``1e-4``, or a millionth of the smallest non-empty share if that is below
    ``1e-4``), which PSI needs to stay finite. ``reference_distinct`` and
    ``reference_counts`` (see :func:`value_counts`) let a caller pass cached
    summaries of a reference that does not change.
    """
    if reference_distinct is None:
        reference_distinct = int(np.unique(reference).size)
    if kind == "numeric" and reference_distinct > 20:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        p = np.histogram(reference, edges)[0] / reference.size
        q = np.histogram(current, edges)[0] / current.size
    else:
        p, q = _category_shares(reference, current, reference_counts)
    if fill_zeroes:
        p = _fill_zeroes(p)
        q = _fill_zeroes(q)
    return p, q


def value_counts(values: np.ndarray) -> dict[Any, int]:
    """Count per distinct value, in sorted value order (the reference's is cached by callers).

    Object (string) columns are counted by hashing, which unlike sorting
    them is linear in the values; only the few distinct values are sorted.
    The result is the same as :func:`numpy.unique` with ``return_counts``.

    >>> value_counts(np.array(["b", "a", "b", "c"], dtype=object))
    {'a': 1, 'b': 2, 'c': 1}
    >>> value_counts(np.array([2.0, 1.0, 2.0]))
    {1.0: 1, 2.0: 2}
    """
    if values.dtype == object and values.size:
        codes, uniques = pd.factorize(values, sort=False)
        if codes.size and codes.min() >= 0:  # no missing values (None, NaN)
            counts = np.bincount(codes, minlength=len(uniques)).tolist()
            found = dict(zip(uniques.tolist(), counts, strict=True))
            return {k: found[k] for k in sorted(found)}
    keys, counts_arr = np.unique(values, return_counts=True)
    return dict(zip(keys.tolist(), counts_arr.tolist(), strict=True))


def cached_reference_counts(cache: dict[str, Any], reference: np.ndarray) -> dict[Any, int]:
    """:func:`value_counts` of the reference, computed once per reference version."""
    if "counts" not in cache:
        cache["counts"] = value_counts(reference)
    counts: dict[Any, int] = cache["counts"]
    return counts


def _category_shares(
    reference: np.ndarray, current: np.ndarray, reference_counts: dict[Any, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    ref_counts = reference_counts if reference_counts is not None else value_counts(reference)
    cur_counts = value_counts(current)
    keys = list(ref_counts.keys() | cur_counts.keys())
    p = np.fromiter((ref_counts.get(k, 0) for k in keys), float, len(keys)) / reference.size
    q = np.fromiter((cur_counts.get(k, 0) for k in keys), float, len(keys)) / current.size
    return p, q


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    zero = p == 0
    if not zero.any():
        return p
    smallest = float(p[~zero].min())
    p = p.copy()
    p[zero] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return p


# -- reference store ------------------------------------------------------------------


class _Reference:
    """Per-feature reference values under one policy (plain arrays, so it pickles)."""

    def __init__(self, policy: ReferencePolicy) -> None:
        self.policy = policy
        self.parts: dict[str, deque[np.ndarray]] = {}
        self.frozen: set[str] = set()
        self.version: dict[str, int] = {}
        self._joined: dict[str, tuple[int, np.ndarray]] = {}

    def ready(self, name: str) -> np.ndarray | None:
        parts = self.parts.get(name)
        if not parts:
            return None
        if name not in self.frozen and (
            self.policy.mode == "fixed" or len(parts) < self.policy.windows
        ):
            return None
        version = self.version.get(name, 0)
        joined = self._joined.get(name)
        if joined is None or joined[0] != version:
            joined = (version, np.concatenate(list(parts)) if len(parts) > 1 else parts[0])
            self._joined[name] = joined
        return joined[1]

    def observe(self, name: str, values: np.ndarray) -> None:
        if name in self.frozen:
            return
        parts = self.parts.setdefault(name, deque())
        if self.policy.mode == "rolling":
            parts.append(values)
            while len(parts) > self.policy.windows:
                parts.popleft()
        else:
            have = sum(p.size for p in parts)
            take = values[: self.policy.size - have]
            if take.size:
                parts.append(take)
            if have + take.size >= self.policy.size:
                parts = deque([np.concatenate(list(parts))])
                self.parts[name] = parts
                self.frozen.add(name)
        self.version[name] = self.version.get(name, 0) + 1

    def set(self, name: str, values: np.ndarray) -> None:
        self.parts[name] = deque([values])
        self.frozen.add(name)
        self.version[name] = self.version.get(name, 0) + 1

    def to_state(self) -> dict[str, Any]:
        return {
            "parts": {k: [_to_list(p) for p in v] for k, v in self.parts.items()},
            "frozen": sorted(self.frozen),
        }

    @classmethod
    def from_state(cls, policy: ReferencePolicy, state: Mapping[str, Any]) -> _Reference:
        ref = cls(policy)
        for name, parts in state["parts"].items():
            ref.parts[name] = deque(_from_list(p) for p in parts)
            ref.version[name] = 1
        ref.frozen = set(state["frozen"])
        return ref


def _to_list(a: np.ndarray) -> dict[str, Any]:
    return {"kind": "numeric" if a.dtype == np.float64 else "categorical", "values": a.tolist()}


def _from_list(d: Mapping[str, Any]) -> np.ndarray:
    if d["kind"] == "numeric":
        return np.asarray(d["values"], dtype=np.float64)
    return np.asarray(d["values"], dtype=object)


# -- the shared window test -------------------------------------------------------------


class WindowDriftTest(Detector):
    """Base of the window tests: per feature, score the window against the
    reference, emit one signal, then let the window into the reference.

    Subclasses set ``signal_name`` (and ``signals``), ``kinds`` (which feature kinds they test)
    and implement :meth:`score`. ``threshold_on`` says whether the threshold
    applies to the signal value (``value >= threshold`` is drift) or to the
    p-value (``p_value < threshold`` is drift). Windows with fewer than
    ``min_window`` values of a feature get no signal for it: a distance over
    a handful of values is noise.
    """

    signal_name: str = ""
    kinds: tuple[Kind, ...] = ("numeric",)
    threshold_on: Literal["value", "p_value"] = "value"
    default_threshold: float = 0.0
    """The shipped threshold of a test; ``threshold=None`` takes it."""

    def __init__(
        self,
        features: Sequence[str] | None = None,
        *,
        threshold: float | None = None,
        reference: ReferencePolicy | None = None,
        min_window: int = 50,
        reporter: Any = None,
    ) -> None:
        self.features = tuple(features) if features is not None else None
        self.threshold = float(self.default_threshold if threshold is None else threshold)
        self.reference = reference or ReferencePolicy()
        self.min_window = int(min_window)
        self.reporter = reporter
        self._ref = _Reference(self.reference)
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}

    # -- what subclasses implement ------------------------------------------------

    @abc.abstractmethod
    def score(
        self, reference: np.ndarray, current: np.ndarray, kind: Kind, cache: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        """The signal value and extra detail for one feature.

        ``cache`` is a dict kept per feature for as long as the reference does
        not change, for sorted copies, distinct counts and the like.
        """

    # -- the window loop -------------------------------------------------------------

    def set_reference(self, values: Mapping[str, Any] | Batch) -> None:
        """Freeze an explicit baseline: a batch (every tested feature) or a
        mapping of feature name to values."""
        if isinstance(values, Batch):
            names = self.features or default_features(values, self.kinds)
            for name in names:
                found = feature_values(values, name)
                if found is not None and found[1] in self.kinds:
                    self._ref.set(name, found[0].copy())
            return
        for name, vals in values.items():
            arr = np.asarray(vals)
            arr = arr.astype(np.float64) if arr.dtype.kind in "biuf" else arr.astype(object)
            self._ref.set(name, arr)

    def update(self, batch: Batch) -> list[Signal]:
        out: list[Signal] = []
        names = self.features or default_features(batch, self.kinds)
        for name in names:
            found = feature_values(batch, name)
            if found is None or found[1] not in self.kinds:
                continue
            current, kind = found
            reference = self._ref.ready(name)
            if reference is not None and current.size >= self.min_window:
                out.append(self._signal(batch, name, reference, current, kind))
            self._ref.observe(name, current)
        return out

    def _signal(
        self, batch: Batch, name: str, reference: np.ndarray, current: np.ndarray, kind: Kind
    ) -> Signal:
        version = self._ref.version.get(name, 0)
        cached = self._cache.get(name)
        if cached is None or cached[0] != version:
            cached = (version, {})
            self._cache[name] = cached
        value, extra = self.score(reference, current, kind, cached[1])
        if self.threshold_on == "p_value":
            drift = extra["p_value"] < self.threshold
        else:
            drift = value >= self.threshold
        detail: dict[str, Any] = {
            **extra,
            "drift": bool(drift),
            "threshold": self.threshold,
            "threshold_on": self.threshold_on,
            "kind": kind,
            "reference": self.reference.mode,
            "reference_n": int(reference.size),
            "window_n": int(current.size),
            "min_window": self.min_window,
        }
        if drift and self.reporter is not None:
            path = self.reporter.report(
                signal=self.signal_name,
                dimension=name,
                ts=batch.end,
                reference=reference,
                current=current,
                kind=kind,
            )
            if path is not None:
                detail["report"] = path
        return batch.signal(self.signal_name, value, n=int(current.size), dimension=name, detail=detail)

    # -- state -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Configuration and reference values, JSON-serialisable (the reporter
        is configuration of the running process and stays out)."""
        state: dict[str, Any] = {
            "features": list(self.features) if self.features is not None else None,
            "threshold": self.threshold,
            "reference": asdict(self.reference),
            "min_window": self.min_window,
            "exact": getattr(self, "exact", None),
            "state": self._ref.to_state(),
        }
        if self.reporter is not None:
            state["reporter"] = self.reporter.snapshot()
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        features = state["features"]
        self.features = tuple(features) if features is not None else None
        self.threshold = float(state["threshold"])
        self.reference = ReferencePolicy(**state["reference"])
        self.min_window = int(state["min_window"])
        if state.get("exact") is not None:
            self.exact = bool(state["exact"])
        self._ref = _Reference.from_state(self.reference, state["state"])
        self._cache = {}
        if self.reporter is not None and "reporter" in state:
            self.reporter.restore(state["reporter"])
