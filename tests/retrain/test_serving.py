"""Serving over real HTTP: dynamic batching, hot-swap under load, canary, monitored events."""

from __future__ import annotations

import asyncio
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
        for body in ({"texts": []}, {"texts": "x"}, {"texts": [1]}, {"texts": ["a"], "segment": {"a": 1}}):
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
