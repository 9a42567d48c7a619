"""Training data for a retrain request, read from the store.

A retrain request names a model and an event-time window (epoch seconds).
:func:`build_training_data` turns it into a training set and a held-out
evaluation slice, under a :class:`DatasetPolicy`:

**join**
    ``inference_events`` of the model in the window (status ``ok``, with a
    prompt) joined by ``request_id`` with the ground-truth ``label`` of
    ``feedback_events`` (the latest label wins when a request was labelled
    twice). Feedback may arrive after the window closed: it is not limited
    to the window, only to after its start. The ``app`` is not a filter: a
    model serves every app that calls it.
**held-out recent slice**
    The most recent ``holdout_share`` of the window's labelled rows (by event
    time) is the evaluation set of the gates: candidate and current version
    are compared on the traffic the alert was about. Rows whose text also
    appears in the slice are taken out of training, so no test prompt leaks.
**replay**
    Against forgetting, older labelled rows (before the window) are added to
    training: ``replay_share`` times the recent training rows, at most
    ``max_replay``, sampled deterministically (hash of ``request_id`` and the
    seed, in the store).
**class balance**
    Each training row is weighted by ``n / (k * n_class)`` (scikit-learn's
    ``balanced``), capped at ``max_class_weight``: a rare intent counts as
    much as a common one without its few rows dominating.
**segment reweighting** (bias triggers only)
    When the trigger is a bias alert (its signal or rule starts with
    ``bias.``), the segments the served model does worst on are boosted by
    ``segment_boost``: the alert's own dimension (``attribute=value``, read
    from the ``alerts`` table) and every segment with at least
    ``min_segment_rows`` labelled rows whose served accuracy is
    ``segment_gap`` or more below the overall.

Weights are normalised to mean 1 and travel in :attr:`Dataset.weights`.

>>> class_weights(["a", "a", "a", "b"])
{'a': 0.6667, 'b': 2.0}
>>> hurt_segments([{"segment": {"lang": "de"}, "predicted": "x", "label": "y"}] * 5
...               + [{"segment": {"lang": "en"}, "predicted": "x", "label": "x"}] * 15,
...               gap=0.1, min_rows=5)
['lang=de']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmpulse.retrain.model import INTENTS
from llmpulse.retrain.trainer import Dataset

__all__ = [
    "DatasetPolicy",
    "InsufficientData",
    "StoreLike",
    "TrainingData",
    "build_training_data",
    "class_weights",
    "fetch_labelled",
    "hurt_segments",
    "is_bias_trigger",
]


class StoreLike(Protocol):
    """What the dataset builder needs of :class:`llmpulse.store.Store` (blocking)."""

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...


class InsufficientData(ValueError):
    """The window holds too few labelled examples to train and evaluate on."""


@dataclass(frozen=True)
class DatasetPolicy:
    """How a retrain request becomes training and evaluation data (see the module docstring)."""

    holdout_share: float = 0.25
    min_recent: int = 60
    """Fewer labelled rows in the window: no retrain (the reason is recorded)."""
    max_recent: int = 20_000
    """The most recent rows of the window, at most."""
    replay_share: float = 0.5
    max_replay: int = 5_000
    balance: bool = True
    max_class_weight: float = 10.0
    segment_boost: float = 3.0
    segment_gap: float = 0.10
    min_segment_rows: int = 20
    labels: tuple[str, ...] = INTENTS
    """Labels the trainer knows; rows with another label are dropped and counted."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(f"holdout_share must be within (0, 1), got {self.holdout_share}")
        if self.replay_share < 0 or self.max_class_weight < 1 or self.segment_boost < 1:
            raise ValueError("replay_share must be >= 0, max_class_weight and segment_boost >= 1")


@dataclass
class TrainingData:
    """Training set (weighted), evaluation slice and what was done to get them."""

    train: Dataset
    eval: Dataset
    stats: dict[str, Any] = field(default_factory=dict)


_JOIN_SQL = """
SELECT i.request_id AS request_id, toUnixTimestamp64Milli(i.ts) AS ts_ms, i.prompt AS prompt,
       i.segment AS segment, i.model_version AS model_version, i.pred AS predicted,
       f.true_label AS label
FROM (
    SELECT request_id, ts, prompt, segment, model_version, prediction.label AS pred
    FROM inference_events FINAL
    WHERE model = {model:String} AND status = 'ok' AND prompt != ''
      AND ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')
      AND ts <= fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
) AS i
INNER JOIN (
    SELECT request_id, argMax(assumeNotNull(label), ts) AS true_label
    FROM feedback_events FINAL
    WHERE label IS NOT NULL AND label != ''
      AND ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')
    GROUP BY request_id
) AS f ON i.request_id = f.request_id
ORDER BY {order} LIMIT {limit:UInt32}
"""


def fetch_labelled(
    store: StoreLike,
    model: str,
    start: float,
    end: float,
    *,
    limit: int,
    sample_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Labelled inferences of ``model`` with event time in ``[start, end]`` (epoch s).

    The most recent ``limit`` rows in time order, or, with ``sample_seed``, a
    deterministic sample of ``limit`` rows (hash of request id and seed).
    Each row: ``request_id``, ``ts`` (epoch s), ``prompt``, ``segment``,
    ``model_version``, ``predicted`` (the served label) and ``label``.
    """
    if sample_seed is None:
        order = "ts_ms DESC, request_id"
    else:
        order = f"cityHash64(request_id, {int(sample_seed)})"
    rows = store.query(
        _JOIN_SQL.replace("{order}", order),
        {"model": model, "start_ms": int(start * 1000), "end_ms": int(end * 1000),
         "limit": int(limit)},
    )
    for r in rows:
        r["ts"] = r.pop("ts_ms") / 1000.0
        r["segment"] = dict(r.get("segment") or {})
    rows.sort(key=lambda r: (r["ts"], r["request_id"]))
    return rows


def class_weights(labels: Sequence[str], *, max_weight: float = 10.0) -> dict[str, float]:
    """``n / (k * n_class)`` per class, capped at ``max_weight`` (rounded to 4 places)."""
    counts = Counter(labels)
    n, k = len(labels), len(counts)
    return {c: round(min(max_weight, n / (k * counts[c])), 4) for c in sorted(counts)}


def hurt_segments(
    rows: Sequence[Mapping[str, Any]], *, gap: float, min_rows: int
) -> list[str]:
    """``attribute=value`` segments whose served accuracy is ``gap`` or more below the overall."""
    hits = np.asarray([r.get("predicted") == r.get("label") for r in rows], dtype=float)
    if not len(hits):
        return []
    overall = float(hits.mean())
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        for k, v in dict(r.get("segment") or {}).items():
            groups.setdefault(f"{k}={v}", []).append(i)
    return sorted(
        name for name, idx in groups.items()
        if len(idx) >= min_rows and float(hits[idx].mean()) <= overall - gap
    )


def is_bias_trigger(request: Mapping[str, Any]) -> bool:
    """True when a retrain request comes from a bias alert.

    >>> is_bias_trigger({"rule": "segment-accuracy-gap", "signal": "bias.accuracy_gap"})
    True
    >>> is_bias_trigger({"rule": "feature-drift", "signal": "drift.psi"})
    False
    """
    return any(str(request.get(k) or "").startswith("bias.") for k in ("signal", "rule"))


def _alert_dimension(store: StoreLike, alert_id: str) -> str:
    if not alert_id:
        return ""
    try:
        rows = store.query(
            "SELECT dimension FROM alerts FINAL WHERE alert_id = {a:String} LIMIT 1", {"a": alert_id}
        )
    except Exception:
        return ""
    dim = str(rows[0]["dimension"]) if rows else ""
    return dim if "=" in dim else ""


def _to_dataset(
    rows: Sequence[Mapping[str, Any]], window: tuple[float, float], weights: Sequence[float] = ()
) -> Dataset:
    return Dataset(
        tuple(str(r["prompt"]) for r in rows),
        tuple(str(r["label"]) for r in rows),
        tuple(dict(r.get("segment") or {}) for r in rows),
        window,
        tuple(weights),
    )


def build_training_data(
    store: StoreLike, request: Mapping[str, Any], policy: DatasetPolicy = DatasetPolicy()
) -> TrainingData:
    """Training and evaluation data for ``request`` (blocking: run it in a thread).

    Raises :class:`InsufficientData` when the window has fewer than
    ``policy.min_recent`` labelled rows (or no row is left to train on).
    """
    model = str(request["model"])
    window = request.get("window") or {}
    start, end = float(window["start"]), float(window["end"])
    if not end > start:
        raise ValueError(f"retrain window must end after it starts, got {start}..{end}")
    known = set(policy.labels)
    recent_all = fetch_labelled(store, model, start, end, limit=policy.max_recent)
    recent = [r for r in recent_all if r["label"] in known]
    dropped = len(recent_all) - len(recent)
    if len(recent) < policy.min_recent:
        raise InsufficientData(
            f"{len(recent)} labelled {model} examples in the window "
            f"(need {policy.min_recent}): send feedback labels, or widen retrain.window"
        )
    n_eval = max(1, int(round(policy.holdout_share * len(recent))))
    eval_rows = recent[-n_eval:]
    eval_texts = {r["prompt"] for r in eval_rows}
    train_recent = [r for r in recent[:-n_eval] if r["prompt"] not in eval_texts]
    n_replay = min(policy.max_replay, int(round(policy.replay_share * len(train_recent))))
    replay: list[dict[str, Any]] = []
    older: list[dict[str, Any]] = []
    if n_replay > 0:
        # Older than the window: ts <= start - 1 ms keeps the two sets disjoint.
        older = fetch_labelled(store, model, 0.0, start - 0.001, limit=n_replay,
                               sample_seed=policy.seed)
        replay = [r for r in older if r["label"] in known and r["prompt"] not in eval_texts]
    train_rows = train_recent + replay
    if len({r["label"] for r in train_rows}) < 2:
        raise InsufficientData(
            f"{len(train_rows)} training examples of {model} hold fewer than two labels"
        )

    weights = np.ones(len(train_rows))
    cw: dict[str, float] = {}
    if policy.balance:
        cw = class_weights([r["label"] for r in train_rows], max_weight=policy.max_class_weight)
        weights *= np.asarray([cw[r["label"]] for r in train_rows])
    boosted: list[str] = []
    if is_bias_trigger(request):
        boosted = hurt_segments(recent, gap=policy.segment_gap, min_rows=policy.min_segment_rows)
        dim = _alert_dimension(store, str(request.get("alert_id") or ""))
        if dim and dim not in boosted:
            boosted.append(dim)
        pairs = [tuple(b.split("=", 1)) for b in boosted]
        hit = np.asarray([
            any(dict(r.get("segment") or {}).get(k) == v for k, v in pairs) for r in train_rows
        ], dtype=bool)
        weights = np.where(hit, weights * policy.segment_boost, weights)
    weights = weights / weights.mean()

    served = [r["predicted"] == r["label"] for r in eval_rows]
    span = (start, end)
    stats = {
        "window": {"start": start, "end": end},
        "n_recent": len(recent),
        "n_train_recent": len(train_recent),
        "n_replay": len(replay),
        "dropped_replay": len(older) - len(replay),
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "dropped_unknown_labels": dropped,
        "dropped_eval_duplicates": len(recent) - n_eval - len(train_recent),
        "class_counts": dict(sorted(Counter(r["label"] for r in train_rows).items())),
        "class_weights": cw,
        "boosted_segments": sorted(boosted),
        "served_accuracy_eval": round(float(np.mean(served)), 6) if served else None,
        "served_versions": sorted({str(r["model_version"]) for r in recent}),
    }
    return TrainingData(
        _to_dataset(train_rows, span, [round(float(w), 6) for w in weights]),
        _to_dataset(eval_rows, span),
        stats,
    )
