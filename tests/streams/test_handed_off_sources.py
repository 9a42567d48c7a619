"""A grouped partition handed to another worker leaves no source behind: the wall time
its sources were last given events stops counting towards idleness here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from llmpulse.config import load_settings
from llmpulse.detectors.latency import ErrorRates
from llmpulse.store import Store
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.engine import SignalEngine
from llmpulse.streams.engine_process import LocalEngine
from llmpulse.streams.ingest import Message, split_batch
from llmpulse.streams.signals import SignalAgents
from llmpulse.streams.testing import TestingSink, TestingTopic
from llmpulse.streams.windows import WindowSpec

START_MS = 1_700_000_000_000


def _event(i: int, model: str) -> dict[str, Any]:
    return {"event_id": f"{model}{i}", "request_id": f"r{model}{i}", "ts": START_MS + 1_000 * i,
            "app": "a", "model": model, "model_version": "1", "latency_ms": 10.0,
            "status": "ok", "input_tokens": 1, "output_tokens": 1}


async def test_a_partition_handed_off_forgets_when_its_sources_were_heard_from(
        tmp_path: Path) -> None:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False))
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                            web_port=None)
        grouped = TestingTopic()
        agents = SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic())
        engine = LocalEngine(engine_kwargs={}, detectors="default")
        engine.engine = SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]},
                                     {"latency": WindowSpec(10.0, 5.0)}, clock=lambda: 0.0)
        agents.engine = engine
        agents.grouped = grouped  # type: ignore[assignment]  # the sender only
        events = [_event(i, m) for i in range(3) for m in ("x", "y", "z", "w")]
        envelope = Message(b"\n".join(orjson.dumps(e) for e in events), "llmpulse.inference", 0, 0)
        batch = split_batch([envelope], kind="inference", keep_events=True,
                            now_ms=START_MS + 60_000)
        await agents.forward_inference(batch, set())
        await agents.take(grouped.messages)
        parts = {src[0] for src in agents._added_at}
        assert parts and engine.stats()["events_in"] == len(events)
        gone = min(parts)
        agents._drop_partitions({gone})
        assert {src[0] for src in agents._added_at} == parts - {gone}
        agents._drop_partitions(parts)
        assert agents._added_at == {} and not agents._may_be_idle()
        await agents.close()
    finally:
        store.close()
