"""The worker's HTTP API answers a passing state (a store not answering, a consumer between
assignments) with a 503 and its reason, which a client retries, never with a bare 500.

The worker's own aiohttp application (its routes and the guard's middleware) is served
by aiohttp's test server; the store is real chDB; the Faust app is built, not started
(its consumer has no assignment, as between a revocation and the next assignment).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmpulse.config import load_settings
from llmpulse.store import Store
from llmpulse.streams.app import IngestStats, Pipeline, build_pipeline


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Pipeline, Store, TestClient]]:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "data")}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False))
    store = Store.open(f"chdb://{tmp_path}/store")
    pipeline = build_pipeline(settings, store, IngestStats(), bootstrap="127.0.0.1:9",
                              web_port=1)
    web: Any = pipeline.app.web  # Faust's aiohttp driver: its application
    client = TestClient(TestServer(web.web_app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield pipeline, store, client
    finally:
        await client.close()
        if pipeline.signals is not None:
            await pipeline.signals.close()
        store.close()


async def test_stats_without_an_assignment_are_an_answer(
        api: tuple[Pipeline, Store, TestClient]) -> None:
    _, _, client = api
    resp = await client.get("/api/stats")
    assert resp.status == 200
    body = await resp.json()
    assert body["assignment"] == [] and body["lag"] == {}


async def test_a_store_that_does_not_answer_is_a_503_with_its_reason(
        api: tuple[Pipeline, Store, TestClient]) -> None:
    _, store, client = api
    store.close()  # the first query also loads the guard's function catalogue from it
    resp = await client.post("/api/query", json={"sql": "SELECT count() FROM signals"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    body = await resp.json()
    assert body["retry"] is True and "store is closed" in body["error"]
