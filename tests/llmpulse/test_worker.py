"""The composition root builds an explicit worker: nothing patched onto the Faust app."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import faust
import pytest

from llmpulse.config import ConfigError, Settings, load_settings
from llmpulse.retrain.service import RetrainService
from llmpulse.store import Store
from llmpulse.streams.app import IngestStats, Pipeline, build_pipeline
from llmpulse.worker import build_retrain_worker, build_worker

GRAFANA = {"LLMPULSE_GRAFANA_URL": "http://127.0.0.1:9/grafana", "LLMPULSE_GRAFANA_TOKEN": "t"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "data")}, path=None)
    return replace(s, signals=replace(s.signals, process=False))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"chdb://{tmp_path}/store")
    yield s
    s.close()


def _own_attributes(app: faust.App) -> set[str]:
    """Instance attributes a fresh app of the same class does not have."""
    fresh = faust.App("t-fresh", broker="kafka://127.0.0.1:9", web_enabled=False)
    return set(vars(app)) - set(vars(fresh))


def test_the_stream_worker_is_an_explicit_object(settings: Settings, store: Store) -> None:
    stats = IngestStats()
    worker = build_worker(settings, store, stats, bootstrap="127.0.0.1:9", web_port=1, env={})
    assert isinstance(worker.pipeline, Pipeline) and isinstance(worker.retrain, RetrainService)
    assert worker.stats is stats and worker.lag is worker.pipeline.lag
    assert worker.pipeline.signals is not None and worker.pipeline.alerts is not None
    assert worker.pipeline.signals.positions is stats.positions  # one record of offsets
    assert worker.pipeline.notifier is worker.pipeline.alerts.notifier
    # nothing is patched onto the Faust app: the worker hands its parts out
    assert not {a for a in _own_attributes(worker.app) if a.startswith("llmpulse")}
    assert worker.annotations is None  # no Grafana configured: no annotation agent
    agents = set(worker.app.agents)
    assert {"llmpulse.ingest_inference", "llmpulse.ingest_feedback", "llmpulse.signals",
            "llmpulse.retrain_outcomes"} <= agents
    assert "llmpulse.deployment_annotations" not in agents
    pages = {r.resource.canonical for r in worker.app.web.web_app.router.routes()
             if r.resource is not None}
    assert {"/health", "/api/stats", "/api/query", "/dashboards"} <= pages


def test_annotations_only_when_grafana_is_configured(settings: Settings, store: Store) -> None:
    worker = build_worker(settings, store, IngestStats(), bootstrap="127.0.0.1:9", web_port=1,
                          env=GRAFANA)
    assert worker.annotations is not None
    assert "llmpulse.deployment_annotations" in worker.app.agents
    # the URL alone (links in pages) does not turn annotations on
    alone = build_worker(settings, store, IngestStats(), bootstrap="127.0.0.1:9", web_port=1,
                         env={"LLMPULSE_GRAFANA_URL": GRAFANA["LLMPULSE_GRAFANA_URL"]})
    assert alone.annotations is None


@pytest.mark.parametrize(("env", "key"), [
    ({**GRAFANA, "LLMPULSE_GRAFANA_URL": "grafana:3000"}, "LLMPULSE_GRAFANA_URL"),
    ({**GRAFANA, "LLMPULSE_GRAFANA_URL": "http://grafana:99999"}, "LLMPULSE_GRAFANA_URL"),
    ({"LLMPULSE_GRAFANA_URL": "http://g:3000", "LLMPULSE_GRAFANA_BASIC_AUTH": "admin"},
     "LLMPULSE_GRAFANA_BASIC_AUTH"),
])
def test_a_bad_grafana_setting_is_refused_naming_the_key(
        settings: Settings, store: Store, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        build_worker(settings, store, IngestStats(), bootstrap="127.0.0.1:9", web_port=1, env=env)


def test_the_retrain_worker_consumes_the_retrain_topic(settings: Settings, store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMPULSE_RETRAIN", raising=False)
    rw = build_retrain_worker(settings, store, bootstrap="127.0.0.1:9", web_port=None)
    assert rw.app.conf.id == "llmpulse-retrain"  # its own consumer group
    [agent] = [a for name, a in rw.app.agents.items() if name == "llmpulse.retrain"]
    assert agent.channel.get_topic_name() == "llmpulse.retrain"
    assert isinstance(rw.retrain, RetrainService)


def test_the_stream_pipeline_patches_nothing_onto_its_app(settings: Settings,
                                                          store: Store) -> None:
    pipeline = build_pipeline(settings, store, IngestStats(), bootstrap="127.0.0.1:9", web_port=1)
    assert not [a for a in _own_attributes(pipeline.app) if a.startswith("llmpulse")]
    assert "llmpulse.retrain" not in pipeline.app.agents  # retrain is the root's to attach
