"""The retraining service: retrain requests in, a gated, canaried release out.

:class:`RetrainService` handles one request (a dict from ``llmpulse.retrain``:
``request_id``, ``model``, ``model_version``, ``app``, ``alert_id``, ``rule``,
``signal``, ``window {start, end}``, ``ts``) in these steps, each recorded as
a row of the ``deployments`` table and a message on ``llmpulse.deployments``
(``trigger`` = the alert id, ``metrics["request_id"]`` = the request):

1. **skip** models it cannot train (not in :attr:`RetrainSettings.models`,
   e.g. ``gpt-4o-mini``, an API model): stage ``skipped`` with the reason;
   also ``skipped`` when the window holds too few labelled examples.
2. **bootstrap** the reference version ``1`` when the registry has no current
   version of the model (:func:`train_reference`).
3. **dataset** from the store (:mod:`retrain.dataset`: window ⋈ feedback
   labels, replay, class balance, segment reweighting for bias alerts), then
   **train** with the pluggable trainer: stage ``training`` (dataset figures).
4. **gates** (:mod:`retrain.gates`) on the held-out recent slice, candidate
   against the current version, overall and per segment. A failed gate stops
   here: the version is ``rejected`` in the registry and a ``rejected`` row
   names it (``metrics["rejected_version"]``) with the failed gates
   (``metrics["reasons"]``). The alert itself is not rewritten: the alerts
   table belongs to the rule state machine; the row's ``trigger`` links both.
5. **canary**: the candidate serves ``canary.share`` of the requests (when a
   :class:`~retrain.serving.ModelServer` runs) and its live figures are
   watched (:func:`live_metrics`: the ``signals`` rows of its
   ``model_version``, else its raw events) against the current version's
   (:func:`judge_canary`); then **promoted** (stage ``promoted``) or
   **rolled back** (stage ``rolled_back``, the current version keeps serving).
6. ``trigger.complete(model)`` so the next alert may request a retrain.

Stages beyond the contract's ``canary|promoted|rolled_back``: ``skipped``,
``training``, ``rejected`` and ``failed`` (an exception, its message in
``metrics["error"]``). CPU work (queries, training, gates) runs in threads.

A request whose ``request_id`` already reached a final stage in the
``deployments`` table is ignored: a replayed request retrains nothing.

Configuration: :class:`RetrainSettings` from the environment
(:meth:`RetrainSettings.from_env`); serving in ``llmpulse up`` is off unless
``LLMPULSE_SERVING=1``, which keeps ``up`` fast.

>>> v = judge_canary(VersionMetrics(n=200, n_labelled=80, accuracy=0.70),
...                  VersionMetrics(n=900, n_labelled=300, accuracy=0.92),
...                  CanaryPolicy(min_duration_s=30), elapsed_s=12.0)
>>> v.decision, v.reasons
('rollback', ['accuracy 0.7000 is below 0.8900 (current 0.9200 - 0.03)'])
>>> judge_canary(VersionMetrics(n=200, n_labelled=80, accuracy=0.93),
...              VersionMetrics(n=900, n_labelled=300, accuracy=0.92),
...              CanaryPolicy(min_duration_s=30), elapsed_s=12.0).decision
'wait'
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from retrain.dataset import DatasetPolicy, InsufficientData, StoreLike, build_training_data
from retrain.gates import GateConfig
from retrain.registry import Deployment, ModelRegistry, ModelVersion, RegistryError
from retrain.trainer import Dataset, Trainer, load_trainer

__all__ = [
    "FINAL_STAGES",
    "LAUNCH_INTENTS",
    "CanaryPolicy",
    "CanaryVerdict",
    "RetrainOutcome",
    "RetrainService",
    "RetrainSettings",
    "StoreMonitor",
    "VersionMetrics",
    "attach_retrain",
    "drifted_tickets",
    "drive_traffic",
    "judge_canary",
    "live_metrics",
    "run_closed_loop",
    "run_demo_loop",
    "train_reference",
]

log = logging.getLogger(__name__)

FINAL_STAGES: tuple[str, ...] = ("promoted", "rolled_back", "rejected", "skipped", "failed")
LAUNCH_INTENTS: tuple[str, ...] = ("billing", "refund", "shipping", "account", "technical")
"""Intents the reference version ``1`` is trained on: launch-time traffic, before
developers and compliance teams (``integration``, ``privacy``) became customers."""
REFERENCE_MODEL = "intent-router"
REFERENCE_VERSION = "1"


# -- settings -------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryPolicy:
    """How long a canary serves and what counts as a regression.

    The canary is judged once it has ``min_samples`` inferences and
    ``min_labelled`` labelled ones; it is promoted only after
    ``min_duration_s`` as well. Regressions (any one rolls back): accuracy
    below the current version's minus ``accuracy_tolerance``; p99 latency
    above ``current * (1 + latency_margin) + latency_slack_ms``; error rate
    above the current's plus ``error_margin``. Without enough evidence after
    ``max_wait_s`` the canary is promoted or rolled back as ``on_no_evidence``
    says (default promote: the offline gates already passed).
    """

    share: float = 0.2
    min_duration_s: float = 60.0
    min_samples: int = 50
    min_labelled: int = 30
    max_wait_s: float = 900.0
    poll_s: float = 2.0
    accuracy_tolerance: float = 0.03
    latency_margin: float = 0.5
    latency_slack_ms: float = 5.0
    error_margin: float = 0.02
    on_no_evidence: str = "promote"

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"canary share must be within (0, 1], got {self.share}")
        if self.on_no_evidence not in ("promote", "rollback"):
            raise ValueError(f"on_no_evidence must be promote or rollback, got {self.on_no_evidence!r}")


@dataclass(frozen=True)
class RetrainSettings:
    """The retraining service's own settings.

    ``models``: the models it can train (others are skipped with a reason);
    ``trainer`` and ``trainer_options``: see :func:`retrain.trainer.load_trainer`;
    ``serving``: serve the promoted version in the stack (``/serve/...``),
    bootstrapping the reference version on first start.
    """

    enabled: bool = True
    serving: bool = False
    models: tuple[str, ...] = (REFERENCE_MODEL,)
    trainer: str = "head"
    trainer_options: Mapping[str, Any] = field(default_factory=dict)
    dataset: DatasetPolicy = field(default_factory=DatasetPolicy)
    canary: CanaryPolicy = field(default_factory=CanaryPolicy)
    gates: GateConfig = field(default_factory=GateConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetrainSettings:
        """``LLMPULSE_RETRAIN=0`` disables the service, ``LLMPULSE_SERVING=1`` serves models,
        ``LLMPULSE_RETRAIN_MODELS`` (comma-separated), ``LLMPULSE_RETRAIN_TRAINER``,
        ``LLMPULSE_CANARY_SHARE``, ``LLMPULSE_CANARY_MIN_S``, ``LLMPULSE_CANARY_MAX_WAIT_S``.

        >>> s = RetrainSettings.from_env({"LLMPULSE_SERVING": "1", "LLMPULSE_CANARY_SHARE": "0.5",
        ...                               "LLMPULSE_CANARY_MAX_WAIT_S": "90"})
        >>> s.serving, s.canary.share, s.canary.max_wait_s, s.models
        (True, 0.5, 90.0, ('intent-router',))
        >>> RetrainSettings.from_env({"LLMPULSE_CANARY_MAX_WAIT_S": "nan"})
        Traceback (most recent call last):
        ...
        ValueError: LLMPULSE_CANARY_MAX_WAIT_S: must be a finite number >= 0, got 'nan'
        """
        env = os.environ if env is None else env

        def flag(key: str, default: bool) -> bool:
            v = env.get(key)
            return default if v is None or v == "" else v.strip().lower() in ("1", "true", "yes", "on")

        def number(key: str) -> float | None:
            text = env.get(key)
            if not text:
                return None
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"{key}: not a number: {text!r}") from None
            if not v >= 0 or v == float("inf"):  # also refuses NaN
                raise ValueError(f"{key}: must be a finite number >= 0, got {text!r}")
            return v

        canary = CanaryPolicy()
        if (share := number("LLMPULSE_CANARY_SHARE")) is not None:
            canary = replace(canary, share=share)
        if (min_s := number("LLMPULSE_CANARY_MIN_S")) is not None:
            canary = replace(canary, min_duration_s=min_s)
        if (wait_s := number("LLMPULSE_CANARY_MAX_WAIT_S")) is not None:
            canary = replace(canary, max_wait_s=wait_s)
        models = tuple(m.strip() for m in env.get("LLMPULSE_RETRAIN_MODELS", "").split(",") if m.strip())
        return cls(
            enabled=flag("LLMPULSE_RETRAIN", True),
            serving=flag("LLMPULSE_SERVING", False),
            models=models or (REFERENCE_MODEL,),
            trainer=env.get("LLMPULSE_RETRAIN_TRAINER") or "head",
            canary=canary,
        )


# -- canary judgement -------------------------------------------------------------


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
    enough = canary.n >= policy.min_samples and canary.n_labelled >= policy.min_labelled
    if not enough:
        if elapsed_s >= policy.max_wait_s:
            return CanaryVerdict(policy.on_no_evidence, [
                f"no live evidence after {elapsed_s:.0f} s ({canary.n} inferences, "
                f"{canary.n_labelled} labelled; need {policy.min_samples} and {policy.min_labelled})"
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


# -- the reference model ----------------------------------------------------------------


def train_reference(
    registry: ModelRegistry,
    *,
    model: str = REFERENCE_MODEL,
    work_dir: str | os.PathLike[str] | None = None,
    trainer: Trainer | None = None,
    seed: int = 0,
    duration_s: float = 120.0,
    rate: float = 5.0,
) -> tuple[ModelVersion, Deployment]:
    """Train, register and promote the reference version ``1`` (blocking, a few seconds).

    Trained on launch-time simulator traffic restricted to :data:`LAUNCH_INTENTS`,
    so it serves the everyday consumer tickets well and the tickets of the
    later developer and compliance segment (``prompt_drift``) poorly: that is
    what a retrain has to fix.
    """
    from retrain.trainer import HeadTrainer

    data = Dataset.from_simulator(seed=seed, duration_s=duration_s, rate=rate,
                                  start_ts=1_700_000_000.0, dedupe=False, model=model)
    data = data.subset([i for i, lab in enumerate(data.labels) if lab in LAUNCH_INTENTS])
    own = work_dir is None
    out = Path(tempfile.mkdtemp(prefix="llmpulse-reference-")) if own else Path(work_dir)  # type: ignore[arg-type]
    try:
        artifact = (trainer or HeadTrainer(seed=seed)).fit(data, out)
        mv = registry.register(model, artifact.path, metrics=dict(artifact.metrics),
                               data_window=data.window, trigger="bootstrap",
                               version=REFERENCE_VERSION)
        d = registry.deploy(model, mv.version, trigger="bootstrap",
                            metrics={**artifact.metrics, "reference": True,
                                     "intents": list(LAUNCH_INTENTS)})
    finally:
        if own:
            shutil.rmtree(out, ignore_errors=True)
    return registry.get(model, mv.version), d


# -- the service ---------------------------------------------------------------------------


@dataclass
class RetrainOutcome:
    """What one request led to: final stage, the version concerned, rows and timings."""

    request: dict[str, Any]
    stage: str
    version: str = ""
    reason: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Emit = Callable[[list[dict[str, Any]]], Awaitable[None]]


def annotate_in_grafana(rows: list[dict[str, Any]],
                        env: Mapping[str, str] | None = None) -> int:
    """Post deployment steps as Grafana annotations when ``LLMPULSE_GRAFANA_URL`` (and
    ``LLMPULSE_GRAFANA_TOKEN``) are set; returns how many were posted. Never raises:
    a dashboard being unreachable must not stop a rollout."""
    env = os.environ if env is None else env
    url = env.get("LLMPULSE_GRAFANA_URL")
    if not url or not rows:
        return 0
    try:
        from dashboards.publish import Publisher, grafana_client

        face = grafana_client(url, token=env.get("LLMPULSE_GRAFANA_TOKEN"),
                              basic_auth=env.get("LLMPULSE_GRAFANA_BASIC_AUTH"))
        counts = Publisher(face).post_annotations(rows)
        return int(counts.get("created", 0) + counts.get("updated", 0))
    except Exception as exc:
        log.warning("grafana annotation of %d deployment steps failed: %s", len(rows), exc)
        return 0


class RetrainService:
    """Handles retrain requests: dataset, training, gates, canary, promote or roll back.

    ``store`` is read (and, without ``emit``, written) through blocking calls
    run in threads; ``emit`` stores and publishes deployment rows;
    ``server`` is the :class:`~retrain.serving.ModelServer` to canary and
    swap (None: the registry alone records the release). ``clock`` and
    ``sleep`` drive the canary watch (tests advance a fake clock);
    ``trainer_factory(request)`` overrides the trainer of the settings;
    ``latency_probe`` and ``loader`` are passed to the gates.
    """

    def __init__(
        self,
        store: Any,
        registry: ModelRegistry,
        *,
        settings: RetrainSettings = RetrainSettings(),
        emit: Emit | None = None,
        server: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        trainer_factory: Callable[[Mapping[str, Any]], Trainer] | None = None,
        on_complete: Callable[[str], Any] | None = None,
        latency_probe: Callable[[Any, Any | None], tuple[float, float | None]] | None = None,
        loader: Callable[[Path, str], Any] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.emit = emit or self._insert
        self.server = server
        self.clock = clock
        self.sleep = sleep
        self.trainer_factory = trainer_factory
        self.on_complete = on_complete
        self.latency_probe = latency_probe
        self.loader = loader
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.outcomes: list[RetrainOutcome] = []
        self.counters: dict[str, int] = {s: 0 for s in FINAL_STAGES}
        self.busy = False
        self._lock = asyncio.Lock()
        self._boot_lock = asyncio.Lock()
        self._trainer: Trainer | None = None
        self._handled = asyncio.Event()

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self.store.insert_rows, "deployments", rows)

    def _row(self, model: str, version: str, previous: str, trigger: str, stage: str,
             metrics: Mapping[str, Any]) -> dict[str, Any]:
        return Deployment(uuid.uuid4().hex, model, version, previous, trigger, stage,
                          dict(metrics), self.clock()).row()

    async def _record(self, out: RetrainOutcome, rows: list[dict[str, Any]]) -> None:
        rid = out.request.get("request_id", "")
        stamped = []
        for row in rows:
            m = json.loads(row["metrics"]) if isinstance(row["metrics"], str) else dict(row["metrics"])
            m.setdefault("request_id", rid)
            stamped.append({**row, "metrics": json.dumps(m, sort_keys=True, default=str)})
        out.rows.extend(stamped)
        for row in stamped:
            log.info("retrain %s: %s %s (was %s)", row["model"], row["stage"], row["version"],
                     row["previous_version"] or "-")
        await self.emit(stamped)
        await asyncio.to_thread(annotate_in_grafana, stamped)

    async def _already_done(self, request_id: str) -> str | None:
        if not request_id:
            return None
        try:
            rows = await asyncio.to_thread(
                self.store.query,
                "SELECT stage FROM deployments FINAL WHERE JSONExtractString(metrics, 'request_id') "
                "= {r:String} AND stage IN {s:Array(String)} LIMIT 1",
                {"r": request_id, "s": list(FINAL_STAGES)},
            )
        except Exception:
            return None
        return str(rows[0]["stage"]) if rows else None

    def trainer_for(self, request: Mapping[str, Any]) -> Trainer:
        if self.trainer_factory is not None:
            return self.trainer_factory(request)
        if self._trainer is None:
            self._trainer = load_trainer(self.settings.trainer, **dict(self.settings.trainer_options))
        return self._trainer

    async def wait_handled(self, timeout: float) -> RetrainOutcome | None:
        """The next outcome (or None after ``timeout`` seconds)."""
        self._handled.clear()
        try:
            await asyncio.wait_for(self._handled.wait(), timeout)
        except TimeoutError:
            return None
        return self.outcomes[-1] if self.outcomes else None

    async def handle(self, request: Mapping[str, Any]) -> RetrainOutcome:
        """Run the whole loop for one request; never raises for a bad model or data."""
        async with self._lock:
            self.busy = True
            try:
                out = await self._handle(dict(request))
            finally:
                self.busy = False
        self.counters[out.stage] = self.counters.get(out.stage, 0) + 1
        self.outcomes.append(out)
        self._handled.set()
        if self.on_complete is not None and out.stage != "duplicate":
            try:
                self.on_complete(str(request.get("model", "")))
            except Exception:
                log.exception("retrain completion callback failed")
        return out

    async def _handle(self, req: dict[str, Any]) -> RetrainOutcome:
        t0 = self.clock()
        out = RetrainOutcome(req, "failed")
        model = str(req.get("model") or "")
        trigger = str(req.get("alert_id") or "manual")
        prior = await self._already_done(str(req.get("request_id") or ""))
        if prior is not None:
            out.stage, out.reason = "duplicate", f"request already handled: {prior}"
            return out
        current = await asyncio.to_thread(self.registry.current, model) if model else None
        cur_v = current.version if current is not None else ""
        if model not in self.settings.models:
            out.stage = "skipped"
            out.reason = (f"model {model!r} is not trainable here (trainable: "
                          f"{', '.join(self.settings.models)}); an API model is retrained by its vendor")
            await self._record(out, [self._row(model or "-", cur_v, cur_v, trigger, "skipped",
                                               {"reason": out.reason, "rule": req.get("rule")})])
            return out
        try:
            try:
                data = await asyncio.to_thread(
                    build_training_data, self.store, req, self.settings.dataset)
            except InsufficientData as exc:
                out.stage, out.reason = "skipped", str(exc)
                await self._record(out, [self._row(model, cur_v, cur_v, trigger, "skipped",
                                                   {"reason": out.reason})])
                return out
            if current is None:
                current = await self._bootstrap(model)
                cur_v = current.version
            t_data = self.clock()
            await self._record(out, [self._row(model, cur_v, cur_v, trigger, "training",
                                               {"dataset": data.stats, "rule": req.get("rule")})])
            trainer = self.trainer_for(req)
            artifact, work = await asyncio.to_thread(self._fit, trainer, data.train)
            t_train = self.clock()
            try:
                release = await asyncio.to_thread(self._release, model, artifact, data.eval, trigger)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            t_gates = self.clock()
            out.version = release.version.version
            out.metrics = {"gates": release.report.to_dict(), "dataset": data.stats}
            out.timings = {"dataset_s": t_data - t0, "train_s": t_train - t_data,
                           "gates_s": t_gates - t_train}
            rows = release.rows()
            for row in rows:
                row["metrics"] = _merge_json(row["metrics"], {"gates": release.report.to_dict()["results"]})
            await self._record(out, rows)
            if not release.report.passed:
                out.stage = "rejected"
                out.reason = "; ".join(r.reason for r in release.report.failures)
                return out
            await self._canary(out, model, release.version, cur_v, trigger)
            out.timings["total_s"] = self.clock() - t0
            return out
        except Exception as exc:
            log.exception("retrain of %s failed", model)
            out.stage, out.reason = "failed", f"{type(exc).__name__}: {exc}"
            await self._record(out, [self._row(model, cur_v, cur_v, trigger, "failed",
                                               {"error": out.reason})])
            return out

    async def _bootstrap(self, model: str) -> ModelVersion:
        if model != REFERENCE_MODEL:
            raise RegistryError(f"model {model} has no current version and no reference to bootstrap")
        async with self._boot_lock:  # serving and a retrain request may both find no version
            current = await asyncio.to_thread(self.registry.current, model)
            if current is not None:
                return current
            mv, d = await asyncio.to_thread(train_reference, self.registry, model=model)
            await self.emit([d.row()])
            return mv

    def _fit(self, trainer: Trainer, train: Dataset) -> tuple[Any, Path]:
        base = self.work_dir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="llmpulse-train-", dir=base))
        return trainer.fit(train, work), work

    def _release(self, model: str, artifact: Any, eval_set: Dataset, trigger: str) -> Any:
        from retrain.release import release

        return release(self.registry, model, artifact, eval_set, trigger=trigger,
                       canary_share=self.settings.canary.share, config=self.settings.gates,
                       latency_probe=self.latency_probe, loader=self.loader)

    async def _canary(self, out: RetrainOutcome, model: str, mv: ModelVersion, cur_v: str,
                      trigger: str) -> None:
        policy = self.settings.canary
        if self.server is not None:
            await self.server.set_canary(mv.artifact, mv.version, policy.share)
        since = self.clock()
        verdict = CanaryVerdict("wait")
        cm = pm = VersionMetrics()
        while True:
            cm = await asyncio.to_thread(live_metrics, self.store, model, mv.version, since)
            pm = await asyncio.to_thread(live_metrics, self.store, model, cur_v, since)
            verdict = judge_canary(cm, pm, policy, elapsed_s=self.clock() - since)
            if verdict.decision != "wait":
                break
            await self.sleep(policy.poll_s)
        watch = {"canary": cm.to_dict(), "current": pm.to_dict(), "reasons": verdict.reasons,
                 "watched_s": round(self.clock() - since, 3)}
        out.metrics["canary"] = watch
        out.timings["canary_s"] = self.clock() - since
        if verdict.decision == "promote":
            d = await asyncio.to_thread(self.registry.deploy, model, mv.version, trigger=trigger,
                                        metrics=watch)
            if self.server is not None:
                await self.server.promote_canary()
            out.stage = "promoted"
        else:
            d = await asyncio.to_thread(self.registry.abort_canary, model, mv.version,
                                        trigger=trigger, metrics=watch)
            if self.server is not None:
                await self.server.set_canary(None, share=0.0)
            out.stage, out.reason = "rolled_back", "; ".join(verdict.reasons)
        await self._record(out, [d.row()])


def _merge_json(text: str, extra: Mapping[str, Any]) -> str:
    d = json.loads(text)
    for k, v in extra.items():
        d.setdefault(k, v)
    return json.dumps(d, sort_keys=True, default=str)


# -- the stack -----------------------------------------------------------------------------------


def attach_retrain(app: Any, settings: Any, store: Any, sink: Any,
                   audit: Callable[[Any], None] | None = None) -> RetrainService:
    """Register the retrain agent (and, with serving on, the model server) on the Faust app.

    * agent on ``llmpulse.retrain``: each request goes to :meth:`RetrainService.handle`
      in a background task (a retrain takes minutes; the agent keeps consuming;
      the service runs one at a time);
    * deployment rows go to the ``deployments`` table through ``sink`` and to
      ``llmpulse.deployments``;
    * with :attr:`RetrainSettings.serving` (``LLMPULSE_SERVING=1``): on start the
      current version of ``intent-router`` is served (bootstrapped in a thread if
      the registry is empty; ``up`` is ready before it), at ``/serve/predict``,
      ``/serve/health``, ``/serve/stats``; its predictions are monitored as
      ``inference/v1`` events on the stack's broker.
    """
    import orjson

    from llmpulse.events import TOPIC_DEPLOYMENTS, TOPIC_RETRAIN

    rs = RetrainSettings.from_env()
    registry = ModelRegistry(settings.data_dir)
    deployments = app.topic(TOPIC_DEPLOYMENTS, value_serializer="raw", key_serializer="raw")

    from llmpulse.audit import AuditEvent

    def record(action: str, target: str, detail: dict[str, Any]) -> None:
        if audit is not None:
            audit(AuditEvent(action, actor="retrain-service", target=target, remote="local",
                             detail=detail))

    async def emit(rows: list[dict[str, Any]]) -> None:
        lines = [orjson.dumps(r) for r in rows]
        await sink.write("deployments", lines)
        for r, line in zip(rows, lines, strict=True):
            await deployments.send(key=str(r["model"]).encode(), value=line)
            stage = str(r.get("stage", ""))
            if stage in ("canary", "promoted", "rolled_back"):
                record("rollback" if stage == "rolled_back" else "deploy",
                       f"{r.get('model')}:{r.get('version')}",
                       {"stage": stage, "previous_version": r.get("previous_version"),
                        "trigger": r.get("trigger")})

    def complete(model: str) -> None:
        alerts = getattr(app, "llmpulse_alerts", None)
        trigger = getattr(alerts, "trigger", None)
        if trigger is not None:
            trigger.complete(model)

    service = RetrainService(store, registry, settings=rs, emit=emit, on_complete=complete,
                             work_dir=settings.data_dir / "worker" / "train")
    app.llmpulse_retrain = service
    tasks: set[asyncio.Task[Any]] = set()

    if rs.enabled:
        topic = app.topic(TOPIC_RETRAIN, value_serializer="raw", key_serializer="raw")

        async def retrain_agent(stream: Any) -> None:
            async for value in stream:
                try:
                    req = orjson.loads(value)
                except orjson.JSONDecodeError:
                    log.warning("ignoring a retrain request that is not JSON")
                    continue
                if not isinstance(req, dict) or "model" not in req or "window" not in req:
                    log.warning("ignoring a retrain request without model and window: %r", req)
                    continue
                record("retrain", str(req.get("model")),
                       {"trigger": str(req.get("alert_id") or "manual"),
                        "rule": str(req.get("rule") or "")})
                task = asyncio.ensure_future(service.handle(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        app.agent(topic, name="llmpulse.retrain")(retrain_agent)

    serving = _ServingHost(service, app, settings, enabled=rs.serving)
    service.host = serving  # type: ignore[attr-defined]
    serving.register_pages()

    @app.task
    async def _start_serving() -> None:
        if rs.serving:
            t = asyncio.ensure_future(serving.start())
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    async def _stop(*_: Any, **__: Any) -> None:
        for t in list(tasks):
            t.cancel()
        await serving.stop()

    app.on_before_shutdown.connect(_stop)
    return service


class _ServingHost:
    """The model server inside the stack: started in the background, pages under ``/serve``."""

    def __init__(self, service: RetrainService, app: Any, settings: Any, *, enabled: bool) -> None:
        self.service = service
        self.app = app
        self.settings = settings
        self.enabled = enabled
        self.status = "off" if not enabled else "starting"
        self.monitor: Any = None
        self._lock = asyncio.Lock()

    def _bootstrap_servers(self) -> str:
        broker = str(self.app.conf.broker[0]) if isinstance(self.app.conf.broker, list) else str(self.app.conf.broker)
        return broker.replace("kafka://", "").rstrip("/")

    async def start(self) -> Any:
        """Serve the current version (bootstrapping it if needed); returns the server."""

        async with self._lock:
            return await self._start()

    async def _start(self) -> Any:
        from retrain.serving import LoadedModel, ModelServer

        svc = self.service
        if svc.server is not None:
            return svc.server
        try:
            self.status = "starting"
            current = await asyncio.to_thread(svc.registry.current, REFERENCE_MODEL)
            if current is None:
                self.status = "bootstrapping"
                current = await svc._bootstrap(REFERENCE_MODEL)
            loaded = await asyncio.to_thread(LoadedModel, current.artifact, current.version)
            await asyncio.to_thread(loaded.warm_up)
            try:
                from llmpulse.monitor import Monitor

                self.monitor = Monitor(app="llmpulse-serving", bootstrap=self._bootstrap_servers(),
                                       strict=False, security=self.settings.kafka_security)
            except Exception as exc:
                log.warning("served predictions are not monitored: %s", exc)
            server = ModelServer(loaded, name=REFERENCE_MODEL, monitor=self.monitor)
            await server.start()
            svc.server = server
            self.status = "serving"
            log.info("serving %s version %s on %s", REFERENCE_MODEL, loaded.version, loaded.provider)
            return server
        except Exception:
            self.status = "failed"
            log.exception("model serving did not start")
            raise

    async def stop(self) -> None:
        server, self.service.server = self.service.server, None
        if server is not None:
            await server.close()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.close)
            self.monitor = None

    def register_pages(self) -> None:
        import faust

        host = self

        def unavailable(view: Any) -> Any:
            return view.json({"error": f"model serving is {host.status}",
                              "hint": "set LLMPULSE_SERVING=1 to serve intent-router"}, status=503)

        @self.app.page("/serve/predict")
        class Predict(faust.web.View):
            async def post(self, request: Any) -> Any:
                server = host.service.server
                if server is None:
                    return unavailable(self)
                return await server._http_predict(request)

        @self.app.page("/serve/health")
        class Health(faust.web.View):
            async def get(self, request: Any) -> Any:
                server = host.service.server
                if server is None:
                    return self.json({"status": host.status})
                return await server._http_health(request)

        @self.app.page("/serve/stats")
        class Stats(faust.web.View):
            async def get(self, request: Any) -> Any:
                svc = host.service
                body: dict[str, Any] = {"serving": host.status,
                                        "retrain": {"busy": svc.busy, "outcomes": dict(svc.counters)}}
                if svc.server is not None:
                    body["server"] = svc.server.stats()
                return self.json(body)


# -- demo and benchmark: drifted traffic through the served model ------------------------------------


class StoreMonitor:
    """A :class:`~retrain.serving.MonitorLike` that writes events straight into a store.

    For runs without a broker (the benchmark): events are buffered and
    inserted on :meth:`flush` (blocking).
    """

    def __init__(self, store: Any, app: str = "llmpulse-serving") -> None:
        self.store = store
        self.app = app
        self._inf: list[bytes] = []
        self._fb: list[bytes] = []

    def _stamp(self, ev: dict[str, Any]) -> dict[str, Any]:
        ev.setdefault("event_id", uuid.uuid4().hex)
        ev.setdefault("ts", int(time.time() * 1000))
        ev.setdefault("app", self.app)
        return ev

    def inference(self, **ev: Any) -> str:
        import orjson

        self._inf.append(orjson.dumps(self._stamp(ev)))
        return str(ev["request_id"])

    def feedback(self, **ev: Any) -> str:
        import orjson

        self._fb.append(orjson.dumps(self._stamp(ev)))
        return str(ev["event_id"])

    def flush(self) -> None:
        inf, self._inf = self._inf, []
        fb, self._fb = self._fb, []
        if inf:
            self.store.insert_json("inference_ingest", b"\n".join(inf))
        if fb:
            self.store.insert_json("feedback_ingest", b"\n".join(fb))


def drifted_tickets(seed: int, n: int, *, share: float = 1.0) -> list[tuple[str, str, dict[str, str]]]:
    """``n`` router tickets ``(prompt, true intent, segment)`` of the simulator under
    ``prompt_drift`` (``share`` of requests on the new topics).

    >>> [t[1] for t in drifted_tickets(3, 4)]
    ['refund', 'integration', 'account', 'technical']
    """
    from llmpulse.simulate import Incident, SupportAppSimulator

    rate = 20.0
    sim = SupportAppSimulator(seed=seed, rate=rate, start_ts=1_700_000_000.0,
                              incidents=[Incident("prompt_drift", 0, 1e9, {"share": str(share)})])
    out: list[tuple[str, str, dict[str, str]]] = []
    for _topic, ev, t in sim.labelled_events(n / rate * 1.5 + 5):
        if t is not None and ev.get("model") == REFERENCE_MODEL:
            out.append((str(ev["prompt"]), t.intent, dict(ev.get("segment") or {})))
            if len(out) >= n:
                break
    return out


async def drive_traffic(
    server: Any,
    feedback: Any,
    tickets: list[tuple[str, str, dict[str, str]]],
    *,
    rate: float = 50.0,
    stop: asyncio.Event | None = None,
    flush: Callable[[], Any] | None = None,
    tag: str = "drift",
) -> dict[str, Any]:
    """Send ``tickets`` through ``server`` (cycling until ``stop`` is set, if given) at
    ``rate`` requests/s, with their true label as feedback; accuracy per version answered."""
    per_version: dict[str, list[int]] = {}
    i = 0
    t0 = time.monotonic()
    run = uuid.uuid4().hex[:8]
    while True:
        if stop is None and i >= len(tickets):
            break
        if stop is not None and stop.is_set():
            break
        batch = []
        for _ in range(max(1, int(rate / 10))):
            prompt, label, seg = tickets[i % len(tickets)]
            batch.append((f"{tag}-{run}-{i}", prompt, label, seg))
            i += 1
            if stop is None and i >= len(tickets):
                break
        preds = await asyncio.gather(*[server.predict([p], request_id=rid, segment=seg)
                                       for rid, p, _, seg in batch])
        for (rid, _p, label, _s), pred in zip(batch, preds, strict=True):
            feedback.feedback(request_id=rid, label=label)
            c = per_version.setdefault(pred.model_version, [0, 0])
            c[0] += int(pred.labels[0] == label)
            c[1] += 1
        if flush is not None:
            await asyncio.to_thread(flush)
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
    return {
        "n": sum(c[1] for c in per_version.values()),
        "accuracy_by_version": {v: round(c[0] / c[1], 4) for v, c in per_version.items() if c[1]},
    }


async def _wait_labelled(store: Any, model: str, since: float, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(
            store.query,
            "SELECT count() AS n FROM inference_events AS i FINAL INNER JOIN "
            "(SELECT DISTINCT request_id FROM feedback_events FINAL WHERE label IS NOT NULL "
            "AND ts >= fromUnixTimestamp64Milli({s:Int64}, 'UTC')) AS f USING (request_id) "
            "WHERE i.model = {m:String} AND i.ts >= fromUnixTimestamp64Milli({s:Int64}, 'UTC')",
            {"m": model, "s": int(since * 1000)},
        )
        got = int(rows[0]["n"])
        if got >= n:
            return got
        await asyncio.sleep(0.5)
    return got


async def run_closed_loop(
    service: RetrainService,
    server: Any,
    feedback: Any,
    *,
    seed: int = 7,
    n_drift: int = 600,
    rate: float = 60.0,
    flush: Callable[[], Any] | None = None,
    alert_wait_s: float = 0.0,
    bad_case: bool = True,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Drift → (alert) → retrain → gates → canary → promote, then a refused bad model.

    ``server`` serves the current version (its monitor sends the predictions
    to the store), ``feedback`` sends the true labels (a :class:`llmpulse.Monitor`
    or :class:`StoreMonitor`). With ``alert_wait_s`` the loop waits that long
    for a retrain request from the alert rules; otherwise (or if none comes) it
    sends the request itself, as ``llmpulse retrain`` would.
    """
    say = progress or (lambda _m: None)
    model = REFERENCE_MODEL
    tickets = drifted_tickets(seed, n_drift, share=0.75)
    t_start = time.time()
    say(f"drift: {len(tickets)} tickets through {model} version {server.active.version}")
    before = await drive_traffic(server, feedback, tickets, rate=rate, flush=flush, tag="drift")
    v_before = server.active.version
    acc_before = before["accuracy_by_version"].get(v_before)
    say(f"accuracy of version {v_before} on drifted traffic: {acc_before}")
    min_rows = service.settings.dataset.min_recent
    await _wait_labelled(service.store, model, t_start - 1, min(len(tickets) // 2, 4 * min_rows), 30.0)
    # the drift phase's own window: later traffic repeats these tickets, and the
    # dataset keeps evaluation texts out of training
    t_drift_end = time.time()

    stop = asyncio.Event()

    async def canary_traffic() -> dict[str, Any]:
        # Live traffic starts with the canary: during training and the latency
        # gate it would only add noise to the measurement on a small machine.
        while not stop.is_set() and server.canary is None:
            await asyncio.sleep(0.2)
        return await drive_traffic(server, feedback, tickets, rate=rate, stop=stop, flush=flush,
                                   tag="live")

    live = asyncio.ensure_future(canary_traffic())
    try:
        outcome = None
        t_req = time.time()
        if alert_wait_s > 0:
            say(f"waiting up to {alert_wait_s:g} s for an alert to request a retrain")
            while outcome is None or outcome.request.get("model") != model:
                outcome = await service.wait_handled(max(0.1, alert_wait_s - (time.time() - t_req)))
                if outcome is None or time.time() - t_req >= alert_wait_s:
                    break
        if outcome is None or outcome.request.get("model") != model:
            req = {"request_id": f"demo-{uuid.uuid4().hex[:12]}", "model": model,
                   "model_version": v_before, "app": "demo", "alert_id": "demo-drift",
                   "rule": "accuracy-low", "signal": "quality.accuracy",
                   "window": {"start": t_start - 1, "end": t_drift_end}, "ts": time.time()}
            say("retrain requested")
            t_req = time.time()
            outcome = await service.handle(req)
        t_done = time.time()
    finally:
        stop.set()
        await live
    say(f"retrain: {outcome.stage} version {outcome.version}" +
        (f" ({outcome.reason})" if outcome.reason else ""))
    after = await drive_traffic(server, feedback, tickets[: max(100, len(tickets) // 3)],
                                rate=rate, flush=flush, tag="after")
    acc_after = after["accuracy_by_version"].get(server.active.version)
    say(f"accuracy of version {server.active.version} on drifted traffic: {acc_after}")
    result: dict[str, Any] = {
        "stage": outcome.stage,
        "version_before": v_before,
        "version_after": server.active.version,
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "request_to_final_s": round(t_done - t_req, 3),
        "timings": {k: round(v, 3) for k, v in outcome.timings.items()},
        "gates": [(r["gate"], r["passed"]) for r in outcome.metrics.get("gates", {}).get("results", [])],
        "canary": outcome.metrics.get("canary"),
        "reason": outcome.reason,
    }
    if bad_case:
        from retrain.trainer import HeadTrainer

        saved = service.trainer_factory
        service.trainer_factory = lambda req: HeadTrainer(label_noise=0.6)
        try:
            bad = await service.handle({
                "request_id": f"demo-{uuid.uuid4().hex[:12]}", "model": model,
                "model_version": server.active.version, "app": "demo",
                "alert_id": "demo-mislabelled", "rule": "accuracy-low",
                "signal": "quality.accuracy", "window": {"start": t_start - 1, "end": t_drift_end},
                "ts": time.time()})
        finally:
            service.trainer_factory = saved
        say(f"mislabelled candidate: {bad.stage} ({bad.reason})")
        result["bad_case"] = {"stage": bad.stage, "version": bad.version, "reason": bad.reason}
    return result


async def run_demo_loop(
    service: RetrainService,
    *,
    seed: int = 7,
    n_drift: int = 600,
    rate: float = 60.0,
    alert_wait_s: float = 0.0,
    canary: CanaryPolicy | None = None,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """The closed loop inside a running stack (``llmpulse demo``).

    ``service`` is ``app.llmpulse_retrain`` (returned by :func:`attach_retrain`).
    Serving is started if it is not running; feedback labels go through a
    :class:`llmpulse.Monitor` on the stack's broker. ``canary`` defaults to a
    short demo canary (30 % for at least 10 s with 20 labelled answers).
    """
    from llmpulse.monitor import Monitor

    host = getattr(service, "host", None)
    if host is None:
        raise RuntimeError("the service is not attached to a stack: use run_closed_loop")
    server = service.server or await host.start()
    saved = service.settings
    service.settings = replace(saved, canary=canary or CanaryPolicy(
        share=0.3, min_duration_s=10.0, min_samples=30, min_labelled=20, max_wait_s=120.0,
        poll_s=1.0))
    fb = Monitor(app="llmpulse-demo", bootstrap=host._bootstrap_servers(), strict=False,
                 security=host.settings.kafka_security)
    try:
        return await run_closed_loop(service, server, fb, seed=seed, n_drift=n_drift, rate=rate,
                                     flush=fb.flush, alert_wait_s=alert_wait_s, progress=progress)
    finally:
        service.settings = saved
        await asyncio.to_thread(fb.close)
