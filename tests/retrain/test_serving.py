"""Serving over real HTTP: dynamic batching, hot-swap under load, canary, monitored events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmpulse.events import validate_inference
from llmpulse.monitor import Monitor
from llmpulse.retrain.serving import LoadedModel, ModelServer, canary_bucket
from llmpulse.retrain.trainer import Artifact, Dataset


class Recorder:
    """Keeps every event, after the same validation the pipeline applies."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def inference(self, **event: Any) -> str:
        ev = dict(event, event_id=f"e{len(self.events)}", app="serving-test", ts=1_700_000_000_000)
        validate_inference(ev, now_ms=1_700_000_000_000)
        self.events.append(event)
        return str(event["request_id"])


async def _client(server: ModelServer) -> TestClient:
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    return client


async def test_http_predict_with_dynamic_batching(loaded: LoadedModel, split: tuple[Dataset, Dataset]) -> None:
    texts = list(split[1].texts[:16])
    rec = Recorder()
    # A wait far longer than the test: batches are cut only when 8 texts are queued.
    server = ModelServer(loaded, max_batch=8, max_wait_ms=600_000, monitor=rec)
    client = await _client(server)
    try:
        responses = await asyncio.gather(*[
            client.post("/predict", json={"texts": [t], "request_id": f"r{i}",
                                          "segment": {"language": "de"}})
            for i, t in enumerate(texts)
        ])
        bodies = [await r.json() for r in responses]
        assert [r.status for r in responses] == [200] * 16
        stats = server.stats()
        assert (stats["batches"], stats["mean_batch"], stats["failed"]) == (2, 8.0, 0)
        direct = loaded.predict_proba(texts)[0]
        expected = [loaded.labels[i] for i in direct.argmax(axis=1)]
        assert [b["labels"][0] for b in bodies] == expected
        np.testing.assert_allclose([b["scores"][0] for b in bodies], direct.max(axis=1), atol=1e-4)
        assert {b["model_version"] for b in bodies} == {"1"}
        assert bodies[0]["provider"] == "CPUExecutionProvider"
        # One monitored inference event per text, tagged with the serving version.
        assert len(rec.events) == 16
        by_id = {e["request_id"]: e for e in rec.events}
        assert by_id["r3"]["prediction"]["label"] == bodies[3]["labels"][0]
        assert by_id["r3"]["model"] == "intent-router" and by_id["r3"]["model_version"] == "1"
        assert by_id["r3"]["segment"] == {"language": "de"} and by_id["r3"]["prompt"] == texts[3]
        # Several texts in one request share a batch and get one answer each.
        r = await client.post("/predict", json={"texts": texts[:8], "request_id": "multi"})
        body = await r.json()
        assert body["labels"] == expected[:8] and body["request_id"] == "multi"
        assert {"multi-0", "multi-7"} <= {e["request_id"] for e in rec.events}
    finally:
        await client.close()


async def test_bad_requests_are_refused(loaded: LoadedModel) -> None:
    client = await _client(ModelServer(loaded, max_wait_ms=0))
    try:
        for body in ({"texts": []}, {"texts": "x"}, {"texts": [1]}, {"texts": ["a"], "segment": {"a": 1}},
                     # ids and dimensions its monitoring event could not carry
                     {"texts": ["a"], "request_id": "r" * 3_000_000},
                     {"texts": ["a"], "segment": {f"k{i}": "v" for i in range(50_000)}},
                     {"texts": ["a"], "segment": {"k": "v" * 201}}):
            r = await client.post("/predict", json=body)
            assert r.status == 400, body
        r = await client.post("/predict", data=b"{not json",
                              headers={"Content-Type": "application/json"})
        assert r.status == 400
        r = await client.post("/predict", data=b'{"texts": ["a"]}',
                              headers={"Content-Type": "text/plain"})
        assert r.status == 415  # a page could send text/plain cross-origin without a preflight
        health = await (await client.get("/health")).json()
        assert health == {"status": "ok", "model": "intent-router", "version": "1",
                          "provider": "CPUExecutionProvider"}
    finally:
        await client.close()


async def test_events_pass_the_real_monitor(loaded: LoadedModel) -> None:
    mon = Monitor(app="serving", bootstrap="127.0.0.1:9")
    try:
        async with ModelServer(loaded, max_wait_ms=0, monitor=mon) as server:
            await server.predict(["where is my parcel?", "refund me"], request_id="x")
        s = mon.stats()
    finally:
        mon.close(timeout=0)
    assert (s["sent"], s["invalid"]) == (2, 0)


@pytest.mark.slow
async def test_hot_swap_under_load_fails_no_request(
    artifact: Artifact, bad_artifact: Artifact, loaded: LoadedModel, split: tuple[Dataset, Dataset]
) -> None:
    texts = list(split[1].texts[:40])
    server = ModelServer(loaded, max_batch=16, max_wait_ms=2.0)
    client = await _client(server)
    statuses: list[int] = []
    versions: list[str] = []
    done = asyncio.Event()

    async def user(k: int) -> None:
        i = 0
        while not done.is_set():
            r = await client.post("/predict", json={"texts": [texts[(k + i) % len(texts)]]})
            statuses.append(r.status)
            if r.status == 200:
                versions.append((await r.json())["model_version"])
            i += 1

    users = [asyncio.create_task(user(k)) for k in range(6)]
    try:
        plan = [(bad_artifact.path, "2"), (artifact.path, "3"), (bad_artifact.path, "4")]
        for path, version in plan:
            result = await server.swap(Path(path), version)
            assert result["version"] == version
            # Once the swap returned, every new request is answered by the new version.
            r = await client.post("/predict", json={"texts": ["a new request"]})
            assert (await r.json())["model_version"] == version
    finally:
        done.set()
        await asyncio.gather(*users)
        await client.close()
    assert statuses and set(statuses) == {200}
    assert server.stats()["failed"] == 0 and server.stats()["swaps"] == 3
    assert {"1", "2", "3"} <= set(versions)


def test_canary_share_is_deterministic_and_close_to_the_setting() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    share = float(np.mean([canary_bucket(i) < 0.1 for i in ids]))
    assert abs(share - 0.1) < 0.01
    assert [canary_bucket(i) for i in ids[:50]] == [canary_bucket(i) for i in ids[:50]]


async def test_canary_routes_its_share_to_the_candidate(loaded: LoadedModel, loaded_bad: LoadedModel) -> None:
    async with ModelServer(loaded, max_batch=32, max_wait_ms=1.0) as server:
        await server.set_canary(loaded_bad, share=0.25)
        ids = [f"user-{i}" for i in range(4000)]
        routed = [server.route(i).version for i in ids]
        assert abs(routed.count("2") / len(ids) - 0.25) < 0.02
        preds = await asyncio.gather(*[server.predict(["hello"], request_id=i) for i in ids[:96]])
        assert [p.model_version for p in preds] == routed[:96]
        assert server.stats()["canary"] == {"version": "2", "share": 0.25}
        await server.promote_canary()
        assert server.active is loaded_bad and server.canary is None
        assert (await server.predict(["hi"], request_id=ids[0])).model_version == "2"


def test_io_binding_gives_the_same_probabilities(artifact: Artifact, loaded: LoadedModel) -> None:
    bound = LoadedModel(artifact.path, "1", providers=["CPUExecutionProvider"], io_binding=True)
    texts = ["refund please", "my parcel is late", ""]
    np.testing.assert_allclose(bound.predict_proba(texts)[0], loaded.predict_proba(texts)[0], atol=1e-6)
    assert bound.io_binding and not loaded.io_binding


# -- one bad request or one bad model never takes others down ----------------------------------


async def test_a_lone_surrogate_is_refused_and_fails_no_one_else(loaded: LoadedModel) -> None:
    # Requests sent together share a batch: the hostile texts would share it with the innocent.
    server = ModelServer(loaded, max_batch=64, max_wait_ms=200)
    client = await _client(server)
    poison = b'{"texts": ["\\ud800"]}'  # legal JSON, not encodable UTF-8
    try:
        responses = await asyncio.wait_for(asyncio.gather(
            *[client.post("/predict", data=poison, headers={"Content-Type": "application/json"})
              for _ in range(4)],
            *[client.post("/predict", json={"texts": [f"where is my parcel {i}?"]}) for i in range(8)],
        ), 30)
        assert [r.status for r in responses] == [400] * 4 + [200] * 8
        assert "not valid UTF-8" in (await responses[0].json())["error"]
        assert server.stats()["failed"] == 0
        with pytest.raises(ValueError, match="not valid UTF-8"):
            await server.predict(["fine", "\ud800"])
    finally:
        await client.close()


async def test_a_request_that_breaks_its_batch_fails_alone(
        loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a text to get past the boundary and break the session call (the tokenizer
    refuses a lone surrogate), only its own request fails: the batch is split."""
    import llmpulse.retrain.serving as serving

    monkeypatch.setattr(serving, "unencodable", lambda texts: None, raising=False)
    rec = Recorder()
    server = ModelServer(loaded, max_batch=8, max_wait_ms=600_000, monitor=rec)
    client = await _client(server)
    try:
        poison = client.post("/predict", data=b'{"texts": ["\\ud800"], "request_id": "bad"}',
                             headers={"Content-Type": "application/json"})
        innocent = [client.post("/predict", json={"texts": [f"refund {i}", "hi"], "request_id": f"ok{i}"})
                    for i in range(3)]
        single = [client.post("/predict", json={"texts": ["late parcel"], "request_id": "one"})]
        responses = await asyncio.wait_for(asyncio.gather(poison, *innocent, *single), 60)
        assert [r.status for r in responses] == [500, 200, 200, 200, 200]
        bodies = [await r.json() for r in responses[1:]]
        direct = loaded.predict_proba(["refund 0", "hi"])[0]
        assert bodies[0]["labels"] == [loaded.labels[i] for i in direct.argmax(axis=1)]
        stats = server.stats()
        assert stats["failed"] == 1 and stats["items"] == 7
        assert [e["request_id"] for e in rec.events if e["status"] == "error"] == ["bad"]
    finally:
        await client.close()


@pytest.fixture(scope="module")
def odd_model(encoder_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph with three outputs whose ``llmpulse.labels`` names only two."""
    from llmpulse.retrain.model import HeadClassifier, build_classifier_graph

    head = HeadClassifier(np.zeros((384, 3)), np.array([0.0, 0.0, 1.0]), ("a", "b", "c"))
    return build_classifier_graph(encoder_path, head, tmp_path_factory.mktemp("odd") / "m.onnx",
                                  metadata={"llmpulse.labels": json.dumps(["a", "b"])})


async def test_a_failure_building_answers_resolves_every_request(
        loaded: LoadedModel, odd_model: Path) -> None:
    odd = LoadedModel(odd_model, "9", providers=["CPUExecutionProvider"])
    async with ModelServer(loaded, max_batch=64, max_wait_ms=600_000) as server:
        # as if the model got past the load check: every answer of it fails to build
        server.canary, server.canary_share = odd, 0.5
        ids = [f"user-{i}" for i in range(64)]
        ids.sort(key=lambda i: server.route(i) is not odd)  # its group is cut first
        results = await asyncio.wait_for(asyncio.gather(
            *[server.predict(["hello"], request_id=i) for i in ids], return_exceptions=True), 20)
        to_odd = [i for i in ids if server.route(i) is odd]
        assert 0 < len(to_odd) < len(ids)
        failed = [i for i, r in zip(ids, results, strict=True) if isinstance(r, Exception)]
        assert failed == to_odd  # the other group, cut after it, still ran
        assert all(isinstance(r, ValueError) and "for 2 labels" in str(r) for r in results
                   if isinstance(r, Exception))
        assert {r.model_version for r in results if not isinstance(r, BaseException)} == {"1"}
        assert server.stats()["failed"] == len(to_odd)
        assert odd.inflight == 0 and loaded.inflight == 0


async def test_a_model_whose_labels_do_not_fit_its_outputs_is_refused_at_load(
        loaded: LoadedModel, odd_model: Path) -> None:
    async with ModelServer(loaded, max_wait_ms=0) as server:
        with pytest.raises(ValueError, match="3 outputs but its llmpulse.labels metadata names 2"):
            await server.swap(odd_model, "9")
        with pytest.raises(ValueError, match="3 outputs"):
            await server.set_canary(odd_model, "9", 0.2)
        assert server.active is loaded and server.canary is None
        assert (await server.predict(["hi"])).model_version == "1"
        client = await _client(server)
        try:
            r = await client.post("/admin/swap", json={"path": str(odd_model), "version": "9"})
            assert r.status == 500 and "version 1 still serves" in (await r.json())["error"]
            for share in (1.0, -0.1, 7):
                r = await client.post("/admin/canary", json={"path": str(loaded.path),
                                                             "version": "3", "share": share})
                assert r.status == 400, share
            r = await client.post("/admin/canary", data=b'{"path": "p", "version": "3", "share": NaN}',
                                  headers={"Content-Type": "application/json"})
            assert r.status == 400
        finally:
            await client.close()
    with pytest.raises(ValueError, match="canary share"):
        await ModelServer(loaded).set_canary(loaded, share=1.0)
    odd = LoadedModel(odd_model, "9", providers=["CPUExecutionProvider"])
    server = ModelServer(odd)
    with pytest.raises(ValueError, match="3 outputs"):
        await server.start()
    await server.close()
