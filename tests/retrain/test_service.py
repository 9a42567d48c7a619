"""The retraining service against a real embedded store filled with simulator traffic.

Retrain requests are handed to :meth:`RetrainService.handle` directly (no
broker). The canary watch runs on a fake clock: the injected ``sleep``
advances it and, on its first call, stores the canary period's live traffic
(raw events or signal rows), as the stack would while the canary serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from llmpulse.events import TOPIC_INFERENCE
from llmpulse.retrain.canary import live_metrics
from llmpulse.retrain.dataset import DatasetPolicy, build_training_data, class_weights
from llmpulse.retrain.reference import train_reference
from llmpulse.retrain.registry import ModelRegistry
from llmpulse.retrain.service import RetrainService
from llmpulse.retrain.serving import LoadedModel, ModelServer
from llmpulse.retrain.settings import CanaryPolicy, RetrainSettings
from llmpulse.retrain.trainer import HeadTrainer, MemoEmbedder
from llmpulse.simulate import Incident, SupportAppSimulator
from llmpulse.store import Store

NOW = float(int(time.time()))
OLD_START = NOW - 7200.0  # launch-time traffic: replay material
WIN_START = NOW - 3600.0  # the alert's window: drifted, and worse for German speakers
WIN_S = 150.0
MODEL = "intent-router"


def _fill(store: Store, sim: SupportAppSimulator, duration_s: float) -> list[dict[str, Any]]:
    inf, fb, routed = [], [], []
    for topic, ev in sim.events(duration_s):
        (inf if topic == TOPIC_INFERENCE else fb).append(orjson.dumps(ev))
        if topic == TOPIC_INFERENCE and ev["model"] == MODEL:
            routed.append(ev)
    store.insert_json("inference_ingest", b"\n".join(inf))
    store.insert_json("feedback_ingest", b"\n".join(fb))
    return routed


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store.open(f"chdb://{tmp_path_factory.mktemp('svc')}/store")
    _fill(s, SupportAppSimulator(seed=1, rate=4, start_ts=OLD_START, feedback_share=0.8,
                                 feedback_delay_s=2.0), 150)
    _fill(s, SupportAppSimulator(
        seed=2, rate=5, start_ts=WIN_START, feedback_share=0.8, feedback_delay_s=2.0,
        incidents=[Incident("prompt_drift", 0, WIN_S, {"share": "0.75"}),
                   Incident("segment_quality_drop", 0, WIN_S)]), WIN_S)
    yield s
    s.close()


def request(**kw: Any) -> dict[str, Any]:
    base = {"request_id": "req-" + kw.pop("tag", "x"), "model": MODEL, "model_version": "1",
            "app": "support-assistant", "alert_id": "alert-" + kw.pop("alert", "1"),
            "rule": "accuracy-low", "signal": "quality.accuracy",
            "window": {"start": WIN_START, "end": WIN_START + WIN_S}, "ts": WIN_START + WIN_S}
    base.update(kw)
    return base


def truth(store: Store) -> list[dict[str, Any]]:
    """The window's labelled router inferences, by a query independent of the builder."""
    return store.query(
        "SELECT i.request_id AS rid, toUnixTimestamp64Milli(i.ts) AS ms, f.label AS label "
        "FROM inference_events AS i FINAL JOIN feedback_events AS f FINAL USING (request_id) "
        "WHERE i.model = 'intent-router' AND i.status = 'ok' AND f.label IS NOT NULL "
        "AND i.ts >= fromUnixTimestamp64Milli({a:Int64}) AND i.ts <= fromUnixTimestamp64Milli({b:Int64})",
        {"a": int(WIN_START * 1000), "b": int((WIN_START + WIN_S) * 1000)},
    )


def test_dataset_window_join_replay_and_balance(store: Store) -> None:
    policy = DatasetPolicy()
    data = build_training_data(store, request(), policy)
    expected = truth(store)
    st = data.stats
    assert st["n_recent"] == len(expected) > 300
    assert st["n_eval"] == round(0.25 * len(expected))
    assert not set(data.train.texts) & set(data.eval.texts)
    # replay: half the recent training rows, all from before the window
    assert st["n_replay"] + st["dropped_replay"] == round(0.5 * st["n_train_recent"])
    assert st["n_replay"] > 0.9 * round(0.5 * st["n_train_recent"])
    assert st["n_train"] == st["n_train_recent"] + st["n_replay"] == len(data.train)
    recent_ids = {r["rid"] for r in expected}
    older = store.query(
        "SELECT count() AS n FROM inference_events FINAL WHERE model = 'intent-router' "
        "AND ts < fromUnixTimestamp64Milli({a:Int64})", {"a": int(WIN_START * 1000)})[0]["n"]
    assert older > st["n_replay"] and recent_ids
    # the held-out slice is the most recent labelled traffic
    cut = sorted(r["ms"] for r in expected)[-st["n_eval"]]
    assert st["window"] == {"start": WIN_START, "end": WIN_START + WIN_S}
    # class balance: weights are the balanced class weights, normalised to mean 1
    cw = class_weights(list(data.train.labels))
    w = np.asarray([cw[lab] for lab in data.train.labels])
    np.testing.assert_allclose(data.train.weights, w / w.mean(), atol=1e-5)
    assert st["class_weights"] == cw and st["boosted_segments"] == []
    assert min(cw.values()) < 1 < max(cw.values())
    # the drifted window is mostly developer and compliance tickets
    assert st["class_counts"]["integration"] > st["class_counts"]["refund"]
    assert cut <= max(r["ms"] for r in expected)


def test_bias_trigger_boosts_the_hurt_segment(store: Store) -> None:
    data = build_training_data(store, request(rule="segment-accuracy-gap",
                                              signal="bias.accuracy_gap"))
    assert "language=de" in data.stats["boosted_segments"]
    plain = build_training_data(store, request())
    de = np.asarray([s.get("language") == "de" for s in data.train.segments])
    ratio = np.asarray(data.train.weights) / np.asarray(plain.train.weights)
    # every German row weighs 3x relative to the others (up to the common normalisation)
    boosted = set(data.stats["boosted_segments"])
    only_de = de & np.asarray([
        not any(f"{k}={v}" in boosted - {"language=de"} for k, v in s.items())
        for s in data.train.segments])
    others = ~np.asarray([any(f"{k}={v}" in boosted for k, v in s.items()) for s in data.train.segments])
    np.testing.assert_allclose(ratio[only_de] / ratio[others].mean(), 3.0, rtol=1e-4)


# -- the loop ----------------------------------------------------------------------------


class FakeTime:
    def __init__(self, start: float, on_first_sleep: Any = None) -> None:
        self.t = start
        self.on_first_sleep = on_first_sleep
        self.slept = 0

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        if self.slept == 0 and self.on_first_sleep is not None:
            await asyncio.to_thread(self.on_first_sleep, self.t)
        self.slept += 1
        self.t += s


@pytest.fixture(scope="module")
def trainer(embedder: MemoEmbedder, encoder_path: Path) -> HeadTrainer:
    return HeadTrainer(encoder_path=encoder_path, embedder=embedder)


def make_service(store: Store, tmp: Path, ft: FakeTime, trainer: Any, **kw: Any) -> RetrainService:
    registry = ModelRegistry(tmp, clock=ft.clock)
    train_reference(registry, trainer=trainer, work_dir=tmp / "ref")
    canary = CanaryPolicy(share=0.25, min_duration_s=60, min_samples=40, min_labelled=30,
                          max_wait_s=600, poll_s=5)
    return RetrainService(
        store, registry, settings=RetrainSettings(canary=canary), clock=ft.clock, sleep=ft.sleep,
        trainer_factory=lambda req: trainer, latency_probe=lambda cand, cur: (5.0, 5.0),
        work_dir=tmp / "work", **kw)


def live_events(store: Store, since: float, version: str, accuracy: float, n: int, tag: str) -> None:
    rng = np.random.default_rng(len(tag))
    inf, fb = [], []
    for i in range(n):
        rid = f"{tag}-{version}-{i}"
        ok = rng.random() < accuracy
        inf.append({"event_id": rid, "request_id": rid, "ts": int((since + 1 + i * 0.1) * 1000),
                    "app": "support-assistant", "model": MODEL, "model_version": version,
                    "latency_ms": 12.0, "status": "ok", "input_tokens": 9, "output_tokens": 1,
                    "prompt": "p", "prediction": {"label": "billing" if ok else "refund", "score": 0.9}})
        fb.append({"event_id": rid + "-f", "request_id": rid, "ts": int((since + 2 + i * 0.1) * 1000),
                   "label": "billing"})
    store.insert_json("inference_ingest", b"\n".join(orjson.dumps(e) for e in inf))
    store.insert_json("feedback_ingest", b"\n".join(orjson.dumps(e) for e in fb))


def rows_of(store: Store, request_id: str) -> list[dict[str, Any]]:
    rows = store.query("SELECT * FROM deployments FINAL WHERE JSONExtractString(metrics, "
                       "'request_id') = {r:String} ORDER BY ts, stage", {"r": request_id})
    for r in rows:
        r["metrics"] = json.loads(r["metrics"])
    order = ["skipped", "training", "canary", "rejected", "promoted", "rolled_back", "failed"]
    return sorted(rows, key=lambda r: (r["ts"], order.index(r["stage"])))


@pytest.mark.slow
def test_gates_pass_canary_promote(store: Store, tmp_path: Path, trainer: HeadTrainer) -> None:
    start = NOW + 10_000
    ft = FakeTime(start, lambda t: (live_events(store, t, "2", 1.0, 60, "promote"),
                                    live_events(store, t, "1", 0.5, 60, "promote")))
    completed: list[str] = []
    svc = make_service(store, tmp_path, ft, trainer, on_complete=completed.append)
    out = asyncio.run(svc.handle(request(tag="promote")))
    assert out.stage == "promoted", out.reason
    assert svc.registry.current(MODEL).version == out.version == "2"
    rows = rows_of(store, "req-promote")
    assert [r["stage"] for r in rows] == ["training", "canary", "promoted"]
    assert all(r["trigger"] == "alert-1" for r in rows)
    canary_row, promoted = rows[1], rows[2]
    assert canary_row["version"] == "2" and canary_row["previous_version"] == "1"
    assert canary_row["metrics"]["share"] == 0.25
    # candidate and current evaluated on the held-out drifted slice, overall and per segment
    gates = out.metrics["gates"]
    assert gates["passed"] and gates["metrics"]["accuracy"] > 0.95
    assert gates["metrics"]["current_accuracy"] < 0.6  # v1 never learned the new intents
    assert "language=en" in gates["metrics"]["segments"]
    live = promoted["metrics"]["canary"]
    assert live["accuracy"] == 1.0 and live["source"] == "events" and live["n_labelled"] == 60
    assert promoted["metrics"]["current"]["accuracy"] == pytest.approx(0.5, abs=0.15)
    assert ft.t - start >= 60  # promoted only after the minimum canary duration
    assert completed == [MODEL]


@pytest.mark.slow
def test_worse_model_is_refused_with_a_reason(store: Store, tmp_path: Path, embedder: MemoEmbedder,
                                              encoder_path: Path, trainer: HeadTrainer) -> None:
    ft = FakeTime(NOW + 20_000)
    svc = make_service(store, tmp_path, ft, trainer)
    svc.trainer_factory = lambda req: HeadTrainer(encoder_path=encoder_path, embedder=embedder,
                                                  label_noise=0.6)
    out = asyncio.run(svc.handle(request(tag="reject", alert="2")))
    assert out.stage == "rejected"
    assert "accuracy" in out.reason and "is below" in out.reason
    rows = rows_of(store, "req-reject")
    assert [r["stage"] for r in rows] == ["training", "rejected"]
    rejected = rows[1]["metrics"]
    assert rejected["rejected_version"] == "2"
    assert any(r["gate"] == "accuracy" for r in rejected["reasons"])
    assert svc.registry.get(MODEL, "2").stage == "rejected"
    assert svc.registry.current(MODEL).version == "1"
    assert ft.slept == 0  # no canary was started


def signal_rows(since: float, version: str, accuracy: float, p99: float) -> list[dict[str, Any]]:
    base = {"window_s": 60.0, "app": "support-assistant", "model": MODEL, "model_version": version,
            "dimension": "", "detail": "{}"}
    return [{**base, "ts": since + 60, "signal": "quality.accuracy", "value": accuracy, "n": 120},
            {**base, "ts": since + 60, "signal": "errors.rate", "value": 0.0, "n": 400},
            {**base, "ts": since + 60, "signal": "latency.p99_ms", "value": p99, "n": 400}]


@pytest.mark.slow
def test_canary_regression_rolls_back(store: Store, tmp_path: Path, trainer: HeadTrainer) -> None:
    start = NOW + 30_000

    def traffic(t: float) -> None:
        store.insert_rows("signals", signal_rows(t, "2", 0.62, 14.0) + signal_rows(t, "1", 0.91, 13.0))

    ft = FakeTime(start, traffic)
    svc = make_service(store, tmp_path, ft, trainer)
    out = asyncio.run(svc.handle(request(tag="rollback", alert="3")))
    assert out.stage == "rolled_back"
    assert out.reason == "accuracy 0.6200 is below 0.8800 (current 0.9100 - 0.03)"
    rows = rows_of(store, "req-rollback")
    assert [r["stage"] for r in rows] == ["training", "canary", "rolled_back"]
    rb = rows[2]
    assert rb["version"] == "1" and rb["previous_version"] == "2"
    assert rb["metrics"]["rolled_back_version"] == "2"
    assert rb["metrics"]["canary"]["source"] == "signals"
    assert svc.registry.current(MODEL).version == "1"
    assert svc.registry.get(MODEL, "2").stage == "rolled_back"
    assert ft.t - start < 60  # a regression does not wait for the minimum duration


def test_untrainable_model_and_empty_window_are_skipped(store: Store, tmp_path: Path) -> None:
    svc = RetrainService(store, ModelRegistry(tmp_path))
    out = asyncio.run(svc.handle(request(tag="api", model="gpt-4o-mini")))
    assert out.stage == "skipped" and "not trainable" in out.reason
    [row] = rows_of(store, "req-api")
    assert row["stage"] == "skipped" and row["model"] == "gpt-4o-mini"
    again = asyncio.run(svc.handle(request(tag="api", model="gpt-4o-mini")))
    assert again.stage == "duplicate" and len(rows_of(store, "req-api")) == 1
    empty = asyncio.run(svc.handle(request(tag="empty", window={"start": NOW + 90_000,
                                                                 "end": NOW + 90_600})))
    assert empty.stage == "skipped" and empty.reason.startswith("0 labelled intent-router examples")
    assert [r["stage"] for r in rows_of(store, "req-empty")] == ["skipped"]
    assert svc.registry.current(MODEL) is None  # nothing bootstrapped for nothing to train on
    # names the registry refuses are vendor models too: skipped with a row (the task
    # raised RegistryError before, leaving no row and the alert's retrain pending)
    for tag, name in (("slash", "openai/gpt-4o-mini"), ("colon", "llama3:8b")):
        out = asyncio.run(svc.handle(request(tag=tag, model=name)))
        assert out.stage == "skipped" and "not trainable" in out.reason
        assert [r["stage"] for r in rows_of(store, f"req-{tag}")] == ["skipped"]


def test_live_metrics_from_raw_events(store: Store) -> None:
    since = NOW + 40_000
    live_events(store, since, "9", 0.75, 80, "raw")
    m = live_metrics(store, MODEL, "9", since)
    expected = store.query(
        "SELECT countIf(prediction.label = 'billing') / count() AS a FROM inference_events FINAL "
        "WHERE model_version = '9'")[0]["a"]
    assert (m.n, m.n_labelled, m.source) == (80, 80, "events")
    assert m.accuracy == pytest.approx(expected) and m.error_rate == 0.0 and m.p99_ms == 12.0


# -- the canary and the model server -------------------------------------------------------------


def _loaded_current(svc: RetrainService) -> LoadedModel:
    mv = svc.registry.current(MODEL)
    return LoadedModel(mv.artifact, mv.version, providers=["CPUExecutionProvider"])


@pytest.mark.slow
async def test_a_server_that_starts_during_the_canary_gets_the_canary(
        store: Store, tmp_path: Path, trainer: HeadTrainer) -> None:
    """The demo's case: an alert's retrain starts its canary while no model server runs
    (serving is started later, by the closed loop); the canary is put on the server
    once it runs and promoted there, not failed with 'there is no canary to promote'."""
    start = NOW + 50_000
    emitted: list[dict[str, Any]] = []
    servers: list[ModelServer] = []

    def traffic(t: float) -> None:
        live_events(store, t, "2", 1.0, 60, "late")
        live_events(store, t, "1", 0.5, 60, "late")

    ft = FakeTime(start, traffic)

    async def emit(rows: list[dict[str, Any]]) -> None:
        emitted.extend(rows)
        await asyncio.to_thread(store.insert_rows, "deployments", rows)

    svc = make_service(store, tmp_path, ft, trainer, emit=emit)
    server = ModelServer(_loaded_current(svc), name=MODEL)
    await server.start()
    try:
        async def start_serving_later(s: float) -> None:
            await ft.sleep(s)
            if ft.slept == 3:  # the canary has been watched for a while without a server
                svc.server = server
                servers.append(server)

        svc.sleep = start_serving_later
        out = await svc.handle(request(tag="late", alert="4"))
        assert out.stage == "promoted", out.reason
        assert servers and server.active.version == out.version == "2"
        assert server.canary is None
        assert out.metrics["canary"]["served"] is True
    finally:
        await server.close()
    assert [r["stage"] for r in rows_of(store, "req-late")] == ["training", "canary", "promoted"]
    # every stage change went out with what a dashboard annotation needs
    assert [r["stage"] for r in emitted] == ["training", "canary", "promoted"]
    for r in emitted:
        assert r["model"] == MODEL and r["trigger"] == "alert-4" and r["version"]
        assert isinstance(r["ts"], float) and r["ts"] >= start
    assert not svc.busy and not svc._lock.locked()


@pytest.mark.slow
@pytest.mark.parametrize("on_no_evidence", ["promote", "rollback"])
def test_a_canary_without_live_traffic_ends_cleanly(
        store: Store, tmp_path: Path, trainer: HeadTrainer, on_no_evidence: str,
        caplog: pytest.LogCaptureFixture) -> None:
    ft = FakeTime(NOW + 60_000 + (1000 if on_no_evidence == "rollback" else 0))
    svc = make_service(store, tmp_path, ft, trainer)
    svc.settings = replace(svc.settings, canary=replace(svc.settings.canary, max_wait_s=20,
                                                        on_no_evidence=on_no_evidence))
    tag = f"quiet-{on_no_evidence}"
    with caplog.at_level(logging.INFO, logger="llmpulse.retrain.service"):
        out = asyncio.run(svc.handle(request(tag=tag, alert="5")))
    want = "promoted" if on_no_evidence == "promote" else "rolled_back"
    assert out.stage == want
    assert out.reason.startswith("no live evidence after 20 s (canary: 0 inferences, 0 labelled")
    assert "the canary was not compared with the current version" in out.reason
    [last] = [r for r in rows_of(store, f"req-{tag}") if r["stage"] == want]
    assert last["metrics"]["reasons"] == [out.reason]  # the row says no comparison was made
    assert out.metrics["canary"]["served"] is False
    assert [r["stage"] for r in rows_of(store, f"req-{tag}")] == ["training", "canary", want]
    assert svc.registry.current(MODEL).version == ("2" if want == "promoted" else "1")
    assert not svc.busy and not svc._lock.locked()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_failed_retrain_is_one_line_and_frees_the_service(
        store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def fit(self, dataset: Any, out_dir: Any) -> Any:
            raise RuntimeError("the GPU fell off the bus")

    registry = ModelRegistry(tmp_path)
    registry.register(MODEL, _tiny_artifact(tmp_path), version="1", trigger="bootstrap")
    registry.deploy(MODEL, "1", trigger="bootstrap")
    svc = RetrainService(store, registry, trainer_factory=lambda req: Broken(),
                         work_dir=tmp_path / "work")
    with caplog.at_level(logging.INFO, logger="llmpulse.retrain.service"):
        out = asyncio.run(svc.handle(request(tag="broken", alert="6")))
    assert (out.stage, out.reason) == ("failed", "RuntimeError: the GPU fell off the bus")
    [row] = [r for r in rows_of(store, "req-broken") if r["stage"] == "failed"]
    assert row["metrics"]["error"] == out.reason
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "retrain req-broken of intent-router failed: RuntimeError: the GPU fell off the bus"]
    assert not errors[0].exc_info  # no traceback
    assert not svc.busy and svc.counters["failed"] == 1


def _tiny_artifact(tmp: Path) -> Path:
    """A file to register: the failing trainer never gets as far as the gates."""
    p = tmp / "v1" / "model.onnx"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"not used")
    return p


def test_a_request_that_fails_before_the_loop_is_a_failed_outcome_not_a_lost_task(
        store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the deployments topic refuses every row (a broker gone): the skipped row's send
    # raised out of handle(), and the agent's background task died with "exception
    # was never retrieved", leaving no outcome and nothing logged
    async def refused(rows: list[dict[str, Any]]) -> None:
        raise ConnectionError("the broker refused the deployments row")

    svc = RetrainService(store, ModelRegistry(tmp_path), emit=refused)
    with caplog.at_level(logging.ERROR, logger="llmpulse.retrain.service"):
        out = asyncio.run(svc.handle(request(tag="down", model="gpt-4o-mini")))
    assert out.stage == "failed" and "ConnectionError" in out.reason
    assert svc.counters["failed"] == 1 and not svc.busy
    assert any("not stored either" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_retrains_a_crash_interrupted_are_ended_at_start(
        store: Store, tmp_path: Path, artifact: Any, bad_artifact: Any) -> None:
    # kill -9 during a canary: the request was acknowledged when its task started, so
    # nothing ran it again; its last row stayed "canary", the registry kept the version
    # at stage canary, and the alert's pending retrain waited for its 6 h TTL. The
    # module's store is shared: this service's rows are told apart by its instance
    reg = ModelRegistry(tmp_path)
    v1 = reg.register(MODEL, artifact.path)
    reg.deploy(MODEL, v1.version)
    v2 = reg.register(MODEL, bad_artifact.path)
    svc = RetrainService(store, reg)
    me, other = svc.instance, "elsewhere:/data/registry"

    def row(rid: str, stage: str, version: str, service: str, age_s: float) -> dict:
        return {"deployment_id": f"{rid}-{stage}", "model": MODEL, "version": version,
                "previous_version": "1", "trigger": "alert-9", "stage": stage,
                "metrics": json.dumps({"request_id": rid, "service": service}),
                "ts": time.time() - age_s}

    reg.start_canary(MODEL, v2.version, share=0.1, trigger="alert-9")
    store.insert_rows("deployments", [
        row("cut-canary", "training", "1", me, 60), row("cut-canary", "canary", "2", me, 30),
        row("cut-training", "training", "1", me, 20),
        row("done", "training", "1", me, 90), row("done", "promoted", "3", me, 80),
        row("theirs", "training", "1", other, 10)])
    outs = asyncio.run(svc.recover())
    assert sorted((o.request["request_id"], o.stage) for o in outs) == [
        ("cut-canary", "rolled_back"), ("cut-training", "failed")]
    assert reg.canary(MODEL) is None and reg.get(MODEL, "2").stage == "rolled_back"
    assert reg.current(MODEL).version == "1"
    finals = store.query(
        "SELECT JSONExtractString(metrics, 'request_id') AS rid, stage FROM deployments "
        "FINAL WHERE stage IN ('rolled_back', 'failed') AND JSONExtractString(metrics, "
        "'request_id') LIKE 'cut-%' ORDER BY rid")
    assert [(r["rid"], r["stage"]) for r in finals] == [
        ("cut-canary", "rolled_back"), ("cut-training", "failed")]
    assert asyncio.run(svc.recover()) == []  # once ended, never again
