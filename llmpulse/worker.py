"""The composition root: the stream worker and the retrain worker, assembled.

``streams/``, ``retrain/`` and ``dashboards/`` import none of one another;
this module is where they meet. :func:`build_worker` builds the stream
pipeline (:func:`llmpulse.streams.app.build_pipeline`) and adds to its Faust app the
dashboards' pages, the retrain service (which consumes ``llmpulse.retrain``)
and, when Grafana is configured, the deployment annotations (which consume
``llmpulse.deployments``). :func:`build_retrain_worker` is the retrain
service alone, for its own process (:mod:`llmpulse.retrain_worker`).

What the parts must tell one another travels on topics: the alert agent asks
for a retrain on ``llmpulse.retrain``, the retrain service answers on
``llmpulse.deployments``, which the alert agent (its pending request) and the
annotations read. The parts a caller needs are fields of :class:`Worker`;
nothing is attached to the Faust app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from llmpulse.audit import AuditSink, discard
from llmpulse.auth import ApiGuard
from llmpulse.config import Settings
from llmpulse.dashboards.annotations import (
    DeploymentAnnotator,
    GrafanaTarget,
    register_deployment_annotations,
)
from llmpulse.dashboards.web import routes as dashboard_routes
from llmpulse.drain import StopBacklog
from llmpulse.retrain.service import RetrainService, attach_retrain
from llmpulse.sqlguard import SqlGuard
from llmpulse.store import Store
from llmpulse.streams.alerting import AlertLinker
from llmpulse.streams.app import (
    IngestLag,
    IngestStats,
    Lag,
    Pipeline,
    build_pipeline,
    new_faust_app,
    store_sink,
)
from llmpulse.streams.rules import Rules
from llmpulse.streams.sink import RawSink

__all__ = ["RETRAIN_APP_ID", "RetrainWorker", "Worker", "attach_dashboards", "build_retrain_worker",
           "build_worker"]

log = logging.getLogger(__name__)

RETRAIN_APP_ID = "llmpulse-retrain"
"""The retrain worker's Faust app id, hence its consumer group."""


@dataclass(frozen=True)
class Worker:
    """The stream worker of ``llmpulse up``: the pipeline plus what the root attached."""

    pipeline: Pipeline
    retrain: RetrainService
    annotations: DeploymentAnnotator | None = None
    """Grafana annotations of deployments (None when Grafana is not configured)."""

    @property
    def app(self) -> faust.App:
        return self.pipeline.app

    @property
    def stats(self) -> IngestStats:
        return self.pipeline.stats

    @property
    def lag(self) -> Lag:
        return self.pipeline.lag

    def stop_backlog(self) -> Lag:
        """For one clean stop, the backlog it drains: what the broker held when the
        stop began (:class:`StopBacklog`), with exact ends (:class:`IngestLag`'s
        ``exact``)."""
        signals = self.pipeline.signals
        exact = IngestLag(self.pipeline.app, self.pipeline.stats, exact=True,
                          forwarded=None if signals is None else signals.forwarded_ends)
        return StopBacklog(exact.partitions)

    async def close(self) -> None:
        """Flush the stream state before the app stops (see :meth:`Pipeline.close`)."""
        await self.pipeline.close()


@dataclass(frozen=True)
class RetrainWorker:
    """The retrain service in its own Faust app (consumer group ``llmpulse-retrain``)."""

    app: faust.App
    sink: RawSink
    retrain: RetrainService


def attach_dashboards(app: faust.App, store: Store, *, reports_dir: Path | None = None) -> None:
    """The live dashboards' pages (``/dashboards``...) on ``app``, reading ``store``
    (and drift reports from ``reports_dir``). A panel's expanded SQL goes through the
    query API's guard like any caller's: the values in it come from the page's URL."""
    guard = SqlGuard.for_store(store)

    def read(sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return guard.run(sql, params)

    for path, name, handler in dashboard_routes(read, reports_dir=reports_dir):
        app.page(path, name=name)(handler)


def build_worker(
    settings: Settings,
    store: Store,
    stats: IngestStats,
    *,
    bootstrap: str,
    web_port: int,
    app_id: str = "llmpulse",
    rules: Rules | None = None,
    guard: ApiGuard | None = None,
    audit: AuditSink | None = None,
    linker: AlertLinker | None = None,
    env: Mapping[str, str] | None = None,
) -> Worker:
    """The stream worker with dashboards, retrain service and, if configured, annotations.

    Arguments as :func:`llmpulse.streams.app.build_pipeline`; ``env`` (default the
    process environment) holds the Grafana settings
    (:meth:`llmpulse.dashboards.annotations.GrafanaTarget.from_env`;
    :class:`~llmpulse.config.ConfigError` naming the key for a bad one).
    """
    target = GrafanaTarget.from_env(os.environ if env is None else env)
    pipeline = build_pipeline(settings, store, stats, bootstrap=bootstrap, web_port=web_port,
                              app_id=app_id, rules=rules, guard=guard, audit=audit,
                              linker=linker)
    attach_dashboards(pipeline.app, store, reports_dir=settings.data_dir / "reports")
    service = attach_retrain(pipeline.app, settings, store, pipeline.sink,
                             audit=audit if audit is not None else discard)
    annotator: DeploymentAnnotator | None = None
    if target is not None:
        annotator = DeploymentAnnotator.for_target(target)
        register_deployment_annotations(pipeline.app, annotator)
        log.info("deployments are annotated in Grafana at %s", target.url)
    return Worker(pipeline=pipeline, retrain=service, annotations=annotator)


def build_retrain_worker(settings: Settings, store: Store, *, bootstrap: str,
                         web_port: int | None, datadir: Path | None = None) -> RetrainWorker:
    """The retrain worker's app: the retrain agent on ``llmpulse.retrain`` (and the serving
    pages when ``web_port`` is given; None serves no HTTP)."""
    datadir = datadir or settings.data_dir / "retrain-worker"
    datadir.mkdir(parents=True, exist_ok=True)
    app = new_faust_app(RETRAIN_APP_ID, settings, bootstrap=bootstrap, datadir=datadir,
                        web_port=web_port)
    sink = store_sink(app, store, settings)
    service = attach_retrain(app, settings, store, sink)
    return RetrainWorker(app=app, sink=sink, retrain=service)
