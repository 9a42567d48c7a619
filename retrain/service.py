"""The retraining service: retrain requests in, a gated, canaried release out.

:class:`RetrainService` handles one request (a dict from ``llmpulse.retrain``:
``request_id``, ``model``, ``model_version``, ``app``, ``alert_id``, ``rule``,
``signal``, ``window {start, end}``, ``ts``) in these steps, each recorded as
a row of the ``deployments`` table and a message on ``llmpulse.deployments``
(``trigger`` = the alert id, ``metrics["request_id"]`` = the request; every
message carries ``model``, ``version``, ``previous_version``, ``stage``,
``trigger`` and ``ts``, which is what a dashboard annotation needs):

1. **skip** models it cannot train (not in :attr:`RetrainSettings.models`,
   e.g. ``gpt-4o-mini``, an API model): stage ``skipped`` with the reason;
   also ``skipped`` when the window holds too few labelled examples.
2. **bootstrap** the reference version ``1`` when the registry has no current
   version of the model (:func:`llmpulse.retrain.reference.train_reference`).
3. **dataset** from the store (:mod:`llmpulse.retrain.dataset`: window ⋈ feedback
   labels, replay, class balance, segment reweighting for bias alerts), then
   **train** with the pluggable trainer: stage ``training`` (dataset figures).
4. **gates** (:mod:`llmpulse.retrain.gates`) on the held-out recent slice, candidate
   against the current version, overall and per segment. A failed gate stops
   here: the version is ``rejected`` in the registry and a ``rejected`` row
   names it (``metrics["rejected_version"]``) with the failed gates
   (``metrics["reasons"]``). The alert itself is not rewritten: the alerts
   table belongs to the rule state machine; the row's ``trigger`` links both.
5. **canary**: the candidate serves ``canary.share`` of the requests (when a
   :class:`~llmpulse.retrain.serving.ModelServer` runs; a server that starts during
   the watch is given the canary then) and its live figures are watched
   (:func:`llmpulse.retrain.canary.live_metrics`) against the current version's
   (:func:`llmpulse.retrain.canary.judge_canary`); then **promoted** (stage
   ``promoted``) or **rolled back** (stage ``rolled_back``, the current
   version keeps serving).
6. ``on_complete(model)`` so the next alert may request a retrain.

Stages beyond the contract's ``canary|promoted|rolled_back``: ``skipped``,
``training``, ``rejected`` and ``failed`` (an exception, its message in
``metrics["error"]``, logged on one line). CPU work (queries, training,
gates) runs in threads.

A request whose ``request_id`` already reached a final stage in the
``deployments`` table is ignored: a replayed request retrains nothing.

Configuration: :class:`~llmpulse.retrain.settings.RetrainSettings` from the
environment; serving in ``llmpulse up`` is off unless ``LLMPULSE_SERVING=1``,
which keeps ``up`` fast. :func:`attach_retrain` wires the service into the
stack's Faust app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmpulse.retrain.canary import CanaryVerdict, VersionMetrics, judge_canary, live_metrics
from llmpulse.retrain.dataset import InsufficientData, build_training_data
from llmpulse.retrain.reference import REFERENCE_MODEL, train_reference
from llmpulse.retrain.registry import Deployment, ModelRegistry, ModelVersion, RegistryError
from llmpulse.retrain.serving_host import FOLLOW_S, ServingHost
from llmpulse.retrain.settings import CanaryPolicy, RetrainSettings
from llmpulse.retrain.trainer import Dataset, Trainer, load_trainer

__all__ = [
    "FINAL_STAGES",
    "CanaryPolicy",
    "RetrainOutcome",
    "RetrainService",
    "RetrainSettings",
    "attach_retrain",
]

log = logging.getLogger(__name__)

FINAL_STAGES: tuple[str, ...] = ("promoted", "rolled_back", "rejected", "skipped", "failed")


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


class RetrainService:
    """Handles retrain requests: dataset, training, gates, canary, promote or roll back.

    ``store`` is read (and, without ``emit``, written) through blocking calls
    run in threads; ``emit`` stores and publishes deployment rows;
    ``server`` is the :class:`~llmpulse.retrain.serving.ModelServer` to canary and
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
        self.instance = f"{socket.gethostname()}:{Path(registry.root).resolve()}"
        """Which service wrote a row (``metrics.service``): the host and the registry it
        keeps. After a crash it ends only its own interrupted retrains (:meth:`recover`);
        another worker's that run on are not its to end."""
        self.outcomes: list[RetrainOutcome] = []
        self.counters: dict[str, int] = {s: 0 for s in FINAL_STAGES}
        self.busy = False
        self._lock = asyncio.Lock()
        self._boot_lock = asyncio.Lock()
        self._trainer: Trainer | None = None
        self._handled = asyncio.Event()
        self.host: ServingHost | None = None
        """The stack's serving host, set by :func:`attach_retrain`."""

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
            m.setdefault("service", self.instance)
            stamped.append({**row, "metrics": json.dumps(m, sort_keys=True, default=str)})
        out.rows.extend(stamped)
        for row in stamped:
            log.info("retrain %s: %s %s (was %s)", row["model"], row["stage"], row["version"],
                     row["previous_version"] or "-")
        await self.emit(stamped)

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
            except Exception as exc:  # before its own handler (the store, the registry)
                out = await self._unhandled(dict(request), exc)
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

    async def recover(self, *, within_s: float = 7 * 86400.0) -> list[RetrainOutcome]:
        """End the retrains a crash interrupted (run once at start, before any request).

        A request is acknowledged once its task starts, so a kill during a retrain
        left its last row ``training`` or ``canary`` for good: no final row ended the
        alert agent's pending retrain (for ``pending_ttl_s``), and the registry kept the
        version at stage ``canary``. Each such request of the last ``within_s`` gets a
        final row now: a canary still marked in the registry is aborted (``rolled_back``,
        the current version serves on), anything else is ``failed``; both say why. A
        canary started by hand (no request id) is left alone."""
        async with self._lock:
            try:
                rows = await asyncio.to_thread(
                    self.store.query,
                    "SELECT rid, argMax(stage, ts) AS last, argMax(model, ts) AS model, "
                    "argMax(version, ts) AS version, argMax(trigger, ts) AS trigger FROM ("
                    "SELECT JSONExtractString(metrics, 'request_id') AS rid, stage, model, "
                    "version, trigger, ts FROM deployments FINAL "
                    "WHERE ts > now64(3) - toIntervalSecond({w:UInt32}) "
                    "AND JSONExtractString(metrics, 'service') = {i:String}) WHERE rid != '' "
                    "GROUP BY rid HAVING countIf(stage IN {s:Array(String)}) = 0",
                    {"w": int(within_s), "s": list(FINAL_STAGES), "i": self.instance})
            except Exception as exc:
                log.warning("interrupted retrains not looked for: %s", exc)
                return []
            outs = []
            for r in rows:
                out = RetrainOutcome({"request_id": r["rid"], "model": r["model"]}, "failed",
                                     version=str(r["version"]))
                why = (f"interrupted: the retrain service stopped during stage {r['last']} "
                       f"and did not run it again; ask again if still needed")
                try:
                    canary = await asyncio.to_thread(self.registry.canary, r["model"])
                    if r["last"] == "canary" and canary is not None \
                            and canary.version == r["version"]:
                        d = await asyncio.to_thread(
                            self.registry.abort_canary, r["model"], canary.version,
                            trigger=r["trigger"], metrics={"reason": why})
                        out.stage, out.reason = "rolled_back", why
                        await self._record(out, [d.row()])
                    else:
                        out.reason = why
                        await self._record(out, [self._row(r["model"], r["version"], "",
                                                           r["trigger"], "failed",
                                                           {"reason": why})])
                except Exception as exc:
                    log.error("retrain %s: interrupted, and not ended: %s", r["rid"], exc)
                    continue
                log.warning("retrain %s of %s: %s (%s)", r["rid"], r["model"], why, out.stage)
                outs.append(out)
            return outs

    async def _unhandled(self, req: dict[str, Any], exc: Exception) -> RetrainOutcome:
        """A request that failed outside the loop's own handling: a ``failed`` row when
        the store takes it, logged either way (a task's exception went unseen)."""
        out = RetrainOutcome(req, "failed")
        out.reason = f"{type(exc).__name__}: {exc}"[:500]
        log.error("retrain %s of %s failed: %s", req.get("request_id") or "-",
                  req.get("model"), out.reason)
        model = str(req.get("model") or "-")[:128]
        try:
            await self._record(out, [self._row(model, "", "", str(req.get("alert_id") or "manual"),
                                               "failed", {"reason": out.reason})])
        except Exception as again:
            log.error("retrain %s: its failed row was not stored either: %s",
                      req.get("request_id") or "-", again)
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
        try:
            current = await asyncio.to_thread(self.registry.current, model) if model else None
        except RegistryError:  # a name the registry refuses ("openai/gpt-4o", "llama3:8b")
            current = None
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
                current = await self.bootstrap(model)
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
            out.stage, out.reason = "failed", f"{type(exc).__name__}: {exc}"
            # the outcome (stage failed, the error in its row) is the report; the
            # traceback is for whoever turns on debug logging
            log.error("retrain %s of %s failed: %s", req.get("request_id") or "-", model,
                      out.reason, exc_info=log.isEnabledFor(logging.DEBUG))
            await self._record(out, [self._row(model, cur_v, cur_v, trigger, "failed",
                                               {"error": out.reason})])
            return out

    async def bootstrap(self, model: str) -> ModelVersion:
        """The current version of ``model``, training the reference version if there is none."""
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
        from llmpulse.retrain.release import release

        return release(self.registry, model, artifact, eval_set, trigger=trigger,
                       canary_share=self.settings.canary.share, config=self.settings.gates,
                       latency_probe=self.latency_probe, loader=self.loader)

    async def _canary(self, out: RetrainOutcome, model: str, mv: ModelVersion, cur_v: str,
                      trigger: str) -> None:
        policy = self.settings.canary
        # The server the canary is on. None while no server runs (serving off, or
        # still starting): the canary is put on a server that starts during the
        # watch, since only a server sends it live traffic.
        server = None
        since = self.clock()
        verdict = CanaryVerdict("wait")
        cm = pm = VersionMetrics()
        while True:
            if server is None and self.server is not None:
                try:
                    await self.server.set_canary(mv.artifact, mv.version, policy.share)
                    server = self.server
                except Exception as exc:
                    verdict = CanaryVerdict("rollback", [
                        f"the model server did not load version {mv.version} as a canary: "
                        f"{type(exc).__name__}: {exc}"])
                    break
                if self.clock() > since:
                    log.info("%s: a model server started; canary version %s now serves "
                             "%.0f%% of requests", model, mv.version, policy.share * 100)
            cm = await asyncio.to_thread(live_metrics, self.store, model, mv.version, since)
            pm = await asyncio.to_thread(live_metrics, self.store, model, cur_v, since)
            verdict = judge_canary(cm, pm, policy, elapsed_s=self.clock() - since)
            if verdict.decision != "wait":
                break
            await self.sleep(policy.poll_s)
        watch = {"canary": cm.to_dict(), "current": pm.to_dict(), "reasons": verdict.reasons,
                 "watched_s": round(self.clock() - since, 3),
                 "served": server is not None}
        out.metrics["canary"] = watch
        out.timings["canary_s"] = self.clock() - since
        decision, reasons = verdict.decision, list(verdict.reasons)
        if decision == "promote":
            try:
                await self._promote_on(server, mv)
            except Exception as exc:
                # the server still serves the current version: the registry must agree
                decision = "rollback"
                reasons.append(f"the model server did not take version {mv.version}: "
                               f"{type(exc).__name__}: {exc}")
                watch["reasons"] = reasons
        if decision == "promote":
            d = await asyncio.to_thread(self.registry.deploy, model, mv.version, trigger=trigger,
                                        metrics=watch)
            out.stage, out.reason = "promoted", "; ".join(reasons)
        else:
            d = await asyncio.to_thread(self.registry.abort_canary, model, mv.version,
                                        trigger=trigger, metrics=watch)
            out.stage, out.reason = "rolled_back", "; ".join(reasons)
            await self._withdraw_from(server, model, mv)
        await self._record(out, [d.row()])

    @staticmethod
    def _carries(server: Any, mv: ModelVersion) -> bool:
        """Whether ``server`` holds ``mv`` as its canary (a remote server is taken at its word)."""
        if not hasattr(server, "canary"):
            return True
        canary = server.canary
        return canary is not None and str(getattr(canary, "version", "")) == mv.version

    async def _promote_on(self, server: Any, mv: ModelVersion) -> None:
        if server is None:
            server = self.server  # started after the verdict: serve the new version too
        if server is None:
            return
        if self._carries(server, mv):
            await server.promote_canary()
        else:  # its canary was removed or replaced by hand: load the version anew
            await server.swap(mv.artifact, mv.version)

    async def _withdraw_from(self, server: Any, model: str, mv: ModelVersion) -> None:
        if server is None or not self._carries(server, mv):
            return
        try:
            await server.set_canary(None, share=0.0)
        except Exception as exc:
            log.warning("%s: the model server kept canary version %s after its rollback: %s: %s",
                        model, mv.version, type(exc).__name__, exc)


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

    # every final outcome is a row on llmpulse.deployments: the alert agent ends the
    # pending retrain from there (llmpulse.streams.deployments), so nothing is called back here
    service = RetrainService(store, registry, settings=rs, emit=emit,
                             work_dir=settings.data_dir / "worker" / "train")
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

    serving = ServingHost(service, app, settings, enabled=rs.serving)
    service.host = serving
    serving.register_pages()

    @app.task
    async def _start_serving() -> None:
        if rs.enabled:  # before serving starts, so it loads what the registry says after
            await service.recover()
        if rs.serving:
            t = asyncio.ensure_future(serving.start())
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    if rs.serving:
        @app.timer(FOLLOW_S)
        async def _follow_registry() -> None:  # deploy / rollback from a shell
            try:
                await serving.follow()
            except Exception:  # a registry file being replaced, read half-way: next time
                log.exception("the model server could not follow the registry")

    async def _stop(*_: Any, **__: Any) -> None:
        for t in list(tasks):
            t.cancel()
        await serving.stop()

    app.on_before_shutdown.connect(_stop)
    return service
