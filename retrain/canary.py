"""Canary judgement: a canary's live figures against the current version's.

:func:`live_metrics` reads a version's figures since the canary started (the
``signals`` rows of its ``model_version``, else its raw events);
:func:`judge_canary` compares them under a
:class:`~llmpulse.retrain.settings.CanaryPolicy` and answers ``wait``, ``promote`` or
``rollback`` with the reasons.

>>> v = judge_canary(VersionMetrics(n=200, n_labelled=80, accuracy=0.70),
...                  VersionMetrics(n=900, n_labelled=300, accuracy=0.92),
...                  CanaryPolicy(min_duration_s=30), elapsed_s=12.0)
>>> v.decision, v.reasons
('rollback', ['accuracy 0.7000 is below 0.8900 (current 0.9200 - 0.03)'])
>>> judge_canary(VersionMetrics(n=200, n_labelled=80, accuracy=0.93),
...              VersionMetrics(n=900, n_labelled=300, accuracy=0.92),
...              CanaryPolicy(min_duration_s=30), elapsed_s=12.0).decision
'wait'

A current version with no measured traffic is no evidence: the verdict waits,
then follows ``on_no_evidence`` and says the comparison was not made.

>>> v = judge_canary(VersionMetrics(n=200, n_labelled=80, accuracy=0.93, p99_ms=9.0, error_rate=0.0),
...                  VersionMetrics(), CanaryPolicy(max_wait_s=60), elapsed_s=61.0)
>>> v.decision, v.reasons[0].endswith("not compared with the current version, promote as "
...                                    "the policy's on_no_evidence says")
('promote', True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmpulse.retrain.dataset import StoreLike
from llmpulse.retrain.settings import CanaryPolicy

__all__ = ["CanaryVerdict", "VersionMetrics", "judge_canary", "live_metrics"]



@dataclass(frozen=True)
class VersionMetrics:
    """Live figures of one version over the canary period."""

    n: int = 0
    n_labelled: int = 0
    accuracy: float | None = None
    p99_ms: float | None = None
    error_rate: float | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CanaryVerdict:
    """``wait``, ``promote`` or ``rollback``, and why."""

    decision: str
    reasons: list[str] = field(default_factory=list)


def judge_canary(
    canary: VersionMetrics, current: VersionMetrics, policy: CanaryPolicy, *, elapsed_s: float
) -> CanaryVerdict:
    """Compare the canary's live figures with the current version's (see :class:`CanaryPolicy`).

    >>> judge_canary(VersionMetrics(n=100, n_labelled=40, accuracy=0.9, p99_ms=80.0),
    ...              VersionMetrics(n=400, n_labelled=100, accuracy=0.9, p99_ms=20.0),
    ...              CanaryPolicy(), elapsed_s=5.0).reasons
    ['p99 80.0 ms is above 35.0 ms (current 20.0 ms + 50% + 5 ms)']
    """
    def short(m: VersionMetrics) -> bool:
        return m.n < policy.min_samples or m.n_labelled < policy.min_labelled

    # Both sides need the minimum sample: a comparison with a current version
    # that got no measured traffic is no comparison at all.
    if short(canary) or short(current):
        if elapsed_s >= policy.max_wait_s:
            return CanaryVerdict(policy.on_no_evidence, [
                f"no live evidence after {elapsed_s:.0f} s (canary: {canary.n} inferences, "
                f"{canary.n_labelled} labelled; current: {current.n} inferences, "
                f"{current.n_labelled} labelled; each needs {policy.min_samples} and "
                f"{policy.min_labelled}): the canary was not compared with the current version, "
                f"{policy.on_no_evidence} as the policy's on_no_evidence says"
            ])
        return CanaryVerdict("wait")
    reasons: list[str] = []
    if canary.accuracy is not None and current.accuracy is not None and current.n_labelled:
        limit = current.accuracy - policy.accuracy_tolerance
        if canary.accuracy < limit:
            reasons.append(f"accuracy {canary.accuracy:.4f} is below {limit:.4f} "
                           f"(current {current.accuracy:.4f} - {policy.accuracy_tolerance:g})")
    if canary.p99_ms is not None and current.p99_ms is not None:
        limit = current.p99_ms * (1 + policy.latency_margin) + policy.latency_slack_ms
        if canary.p99_ms > limit:
            reasons.append(f"p99 {canary.p99_ms:.1f} ms is above {limit:.1f} ms (current "
                           f"{current.p99_ms:.1f} ms + {policy.latency_margin:.0%} + "
                           f"{policy.latency_slack_ms:g} ms)")
    if canary.error_rate is not None and current.error_rate is not None:
        limit = current.error_rate + policy.error_margin
        if canary.error_rate > limit:
            reasons.append(f"error rate {canary.error_rate:.4f} is above {limit:.4f} "
                           f"(current {current.error_rate:.4f} + {policy.error_margin:g})")
    if reasons:
        return CanaryVerdict("rollback", reasons)
    if elapsed_s < policy.min_duration_s:
        return CanaryVerdict("wait")
    missing = [name for name, a, b in (
        ("accuracy", canary.accuracy, current.accuracy if current.n_labelled else None),
        ("p99 latency", canary.p99_ms, current.p99_ms),
        ("error rate", canary.error_rate, current.error_rate),
    ) if a is None or b is None]
    if missing:  # the promote row says what was not compared
        return CanaryVerdict("promote", [f"not compared (a figure is missing): {', '.join(missing)}"])
    return CanaryVerdict("promote")


_SIGNALS_SQL = """
SELECT signal, sum(value * n) / greatest(sum(n), 1) AS mean, max(value) AS worst, sum(n) AS total
FROM signals FINAL
WHERE model = {model:String} AND model_version = {version:String} AND dimension = ''
  AND signal IN ('quality.accuracy', 'latency.p99_ms', 'errors.rate')
  AND ts >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
GROUP BY signal
"""

_RAW_SQL = """
SELECT count() AS n, countIf(status != 'ok') AS errors, quantile(0.99)(latency_ms) AS p99
FROM inference_events FINAL
WHERE model = {model:String} AND model_version = {version:String}
  AND ts >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
"""

_RAW_ACC_SQL = """
SELECT count() AS n, countIf(i.pred = f.true_label) AS correct
FROM (
    SELECT request_id, prediction.label AS pred FROM inference_events FINAL
    WHERE model = {model:String} AND model_version = {version:String} AND status = 'ok'
      AND ts >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
) AS i
INNER JOIN (
    SELECT request_id, argMax(assumeNotNull(label), ts) AS true_label FROM feedback_events FINAL
    WHERE label IS NOT NULL AND label != ''
      AND ts >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')
    GROUP BY request_id
) AS f ON i.request_id = f.request_id
"""


def live_metrics(store: StoreLike, model: str, version: str, since: float) -> VersionMetrics:
    """Live figures of ``model``@``version`` since ``since`` (epoch s); blocking.

    The ``signals`` rows of the version (window ends after ``since``;
    ``quality.accuracy`` and ``errors.rate`` n-weighted, ``latency.p99_ms`` the
    worst window) are used when the signal windows hold at least as many
    inferences as the raw events; else the raw ``inference_events`` (with
    their feedback labels) since ``since``: a canary's first minutes are
    often shorter than one signal window.
    """
    p = {"model": model, "version": str(version), "since_ms": int(since * 1000)}
    sig = {r["signal"]: r for r in store.query(_SIGNALS_SQL, p)}
    raw = store.query(_RAW_SQL, p)[0]
    acc = store.query(_RAW_ACC_SQL, p)[0]
    n_raw, n_lab = int(raw["n"]), int(acc["n"])
    raw_m = VersionMetrics(
        n=n_raw,
        n_labelled=n_lab,
        accuracy=round(acc["correct"] / n_lab, 6) if n_lab else None,
        p99_ms=round(float(raw["p99"]), 3) if n_raw else None,
        error_rate=round(raw["errors"] / n_raw, 6) if n_raw else None,
        source="events",
    )
    if "quality.accuracy" in sig and int(sig["quality.accuracy"]["total"]) >= max(n_lab, 1):
        sa = sig["quality.accuracy"]
        p99 = sig.get("latency.p99_ms")
        err = sig.get("errors.rate")
        return VersionMetrics(
            n=max(n_raw, int(err["total"]) if err else 0),
            n_labelled=int(sa["total"]),
            accuracy=round(float(sa["mean"]), 6),
            p99_ms=round(float(p99["worst"]), 3) if p99 else raw_m.p99_ms,
            error_rate=round(float(err["mean"]), 6) if err else raw_m.error_rate,
            source="signals",
        )
    return raw_m
