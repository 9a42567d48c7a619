"""Batch.from_events builds the same columns as building every column at once."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from llmpulse.detectors.base import CATEGORICAL_FIELDS, NUMERIC_FIELDS, Batch, parse_ts
from llmpulse.simulate import SupportAppSimulator

_EMPTY: dict[str, Any] = {}


def _floats(values):
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array(
            [math.nan if v is None or isinstance(v, str) else float(v) for v in values],
            dtype=np.float64,
        )


def _strings(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    if not all(type(v) is str for v in values):
        arr[:] = ["" if v is None else str(v) for v in values]
    return arr


def _reference_columns(events, start=None, end=None):
    """Every column built eagerly, one pass per field (the straightforward way)."""
    n = len(events)
    ts_raw = [e.get("ts") for e in events]
    try:
        ts = np.array(ts_raw, dtype=np.float64) / 1000.0
    except (TypeError, ValueError):
        ts = np.fromiter((parse_ts(v) if v is not None else math.nan for v in ts_raw), float, n)
    columns = {"ts": ts}
    for name in NUMERIC_FIELDS:
        columns[name] = _floats([e.get(name) for e in events])
    for name in CATEGORICAL_FIELDS:
        columns[name] = _strings([e.get(name) for e in events])
    preds = [e.get("prediction") or _EMPTY for e in events]
    columns["prediction.label"] = _strings([p.get("label") for p in preds])
    columns["prediction.score"] = _floats([p.get("score") for p in preds])
    segs = [e.get("segment") or _EMPTY for e in events]
    for key in sorted({k for sg in segs for k in sg}):
        columns[f"segment.{key}"] = _strings([sg.get(key) for sg in segs])
    feats = [e.get("features") or _EMPTY for e in events]
    for key in sorted({k for f in feats for k in f}):
        columns[f"feature.{key}"] = _floats([f.get(key) for f in feats])
    if any("feedback" in e for e in events):
        fb = [e.get("feedback") or _EMPTY for e in events]
        columns["feedback.score"] = _floats([f.get("score") for f in fb])
        columns["feedback.label"] = _strings([f.get("label") for f in fb])
        columns["feedback.hallucination"] = _floats([f.get("hallucination") for f in fb])
        columns["feedback.source"] = _strings([f.get("source") for f in fb])
        for key in ("groundedness", "relevance", "correctness", "groundedness_free", "score",
                    "hallucination"):
            columns[f"feedback.judge_{key}"] = _floats([f.get(f"judge_{key}") for f in fb])
    lists = {k: [e.get(k) for e in events] for k in ("prompt", "response", "context", "token_logprobs")}
    if any("feedback" in e for e in events):
        lists["feedback.reference"] = [(e.get("feedback") or _EMPTY).get("reference") for e in events]
    finite = ts[np.isfinite(ts)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    return columns, lists, (lo if start is None else start, hi if end is None else end)


def _sim_events(n: int, seed: int = 3) -> list[dict[str, Any]]:
    sim = SupportAppSimulator(seed=seed, rate=500, start_ts=1_700_000_000.0)
    out = [dict(e) for t, e in sim.events(duration_s=n / 400 + 5) if t == "llmpulse.inference"]
    return out[:n]


def _assert_same(batch: Batch, events, start=None, end=None) -> None:
    columns, lists, (lo, hi) = _reference_columns(events, start, end)
    assert (batch.start, batch.end, len(batch)) == (lo, hi, len(events))
    assert batch.columns == sorted(columns)
    for name, want in columns.items():
        got = batch.numeric(name) if want.dtype == np.float64 else batch.strings(name)
        assert got.dtype == want.dtype, name
        if want.dtype == np.float64:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert got.tolist() == want.tolist(), name
            assert all(type(v) is str for v in got), name
    for name, want in lists.items():
        assert batch.texts(name) == want, name
    for prefix in ("segment", "feature", "feedback", "prediction"):
        assert batch.prefixed(prefix) == sorted(
            c[len(prefix) + 1:] for c in columns if c.startswith(prefix + ".")
        )


@pytest.mark.parametrize("order", ["columns_first", "values_first"])
def test_simulator_events_give_the_same_columns(order):
    events = _sim_events(1500)
    assert {"segment", "features", "prediction", "context"} <= {k for e in events for k in e}
    batch = Batch.from_events(events, start=1.0, end=61.0)
    if order == "values_first":  # read a nested column before anything lists the columns
        assert batch.strings("segment.language").size == len(events)
        assert batch.numeric("feedback.score").size == len(events)
    _assert_same(batch, events, 1.0, 61.0)


def test_feedback_missing_fields_and_text_times_give_the_same_columns():
    events = _sim_events(300, seed=5)
    for i, e in enumerate(events):
        if i % 3 == 0:
            e["feedback"] = {"score": -1.0, "label": "billing", "hallucination": i % 2 == 0}
        if i % 7 == 0:
            e.pop("segment", None)
            e.pop("latency_ms", None)
            e["status"] = None
        if i % 11 == 0:
            e["ts"] = "2023-11-14T22:13:20Z"
            e["error_type"] = 5
    _assert_same(Batch.from_events(events), events)


def test_has_and_missing_columns_of_a_lazy_batch():
    events = _sim_events(50)
    batch = Batch.from_events(events)
    assert batch.has("segment.language") and batch.has("prompt") and batch.has("latency_ms")
    assert not batch.has("feedback.score") and not batch.has("segment.nope")
    assert np.isnan(batch.numeric("feedback.score")).all()
    assert (batch.strings("segment.nope") == "").all()
    with pytest.raises(TypeError):
        batch.numeric("status")


def test_select_of_a_lazy_batch_matches_select_of_an_eager_one():
    events = _sim_events(400)
    mask = np.arange(len(events)) % 3 == 1
    lazy = Batch.from_events(events, start=0.0, end=60.0)
    _ = lazy.numeric("latency_ms")
    columns, lists, _ = _reference_columns(events)
    eager = Batch(columns, lists, start=0.0, end=60.0).select(mask)
    got = lazy.select(mask)
    assert got.columns == eager.columns and len(got) == len(eager) == int(mask.sum())
    for name in eager.columns:
        a, b = got.strings(name), eager.strings(name)
        if a.dtype == np.float64:
            np.testing.assert_array_equal(a, b)
        else:
            assert a.tolist() == b.tolist()
    assert got.texts("prompt") == eager.texts("prompt")


def test_empty_events():
    batch = Batch.from_events([])
    assert len(batch) == 0 and (batch.start, batch.end) == (0.0, 0.0)
    assert batch.numeric("latency_ms").size == 0 and batch.texts("prompt") == []
