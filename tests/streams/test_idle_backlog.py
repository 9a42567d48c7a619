"""Silence is idleness only when nothing is left to read: a forward the broker has not
acknowledged yet, or acknowledged past what the engine took in, is a backlog.

The ingest agent counts its batch as read once the forward to ``llmpulse.grouped`` is
queued; the consumer learns of the new message only from a later fetch. A window poll
in between saw no backlog, so after ``idle_s`` of silence the engine closed the last
windows and the forwarded events were dropped as late.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field, replace
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
from llmpulse.streams.signals import IDLE_S, SignalAgents, unread
from llmpulse.streams.testing import TestingMessage, TestingSink, TestingTopic
from llmpulse.streams.windows import WindowSpec

START_MS = 1_700_000_000_000


@dataclass
class _Metadata:
    offset: int


@dataclass
class _HeldTopic:
    """A grouped topic whose sends stay unacknowledged until :meth:`acknowledge`
    (the shape of Faust's ``send``: it returns once queued, with a future)."""

    pending: list[tuple[asyncio.Future[Any], TestingMessage]] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)

    async def send(self, *, key: bytes | None = None, value: bytes = b"", headers: Any = None,
                   partition: int | None = None) -> asyncio.Future[Any]:
        p = partition or 0
        offset = self.offsets.get(p, 0)
        self.offsets[p] = offset + 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        items = headers.items() if isinstance(headers, dict) else (headers or ())
        self.pending.append((fut, TestingMessage("llmpulse.grouped", p, offset, key, value,
                                                 tuple((k, bytes(v)) for k, v in items))))
        return fut

    def acknowledge(self) -> list[TestingMessage]:
        out = []
        for fut, msg in self.pending:
            fut.set_result(_Metadata(msg.offset))
            out.append(msg)
        self.pending = []
        return out


def _event(i: int, ts_ms: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "request_id": f"r{i}", "ts": ts_ms, "app": "a", "model": "m",
            "model_version": "1", "latency_ms": 10.0, "status": "ok",
            "input_tokens": 1, "output_tokens": 1}


def _batch(events: list[dict[str, Any]], partition: int = 0, offset: int = 0) -> Any:
    """``events`` read from ``llmpulse.inference`` partition ``partition``."""
    envelope = Message(b"\n".join(orjson.dumps(e) for e in events), "llmpulse.inference",
                       partition, offset)
    batch = split_batch([envelope], kind="inference", keep_events=True,
                        now_ms=START_MS + 120_000)
    assert batch.count == len(events) and not batch.dead
    return batch


def _forwarding_agents(tmp_path: Path, store: Store, now: list[float]
                       ) -> tuple[SignalAgents, LocalEngine, _HeldTopic, list[Any]]:
    """Signal agents on a real chDB store whose forwards go to a topic acknowledged when
    the test says, with a 10 s latency window at the test's clock; the closed
    ``errors.rate`` windows are collected in the list returned."""
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False))
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                        web_port=None)
    agents = SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic())
    engine = LocalEngine(engine_kwargs={}, detectors="default")
    engine.engine = SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]},
                                 {"latency": WindowSpec(10.0, 5.0)},
                                 clock=lambda: now[0], idle_s=30.0)
    agents.engine = engine
    grouped = _HeldTopic()
    agents.grouped = grouped  # type: ignore[assignment]  # the sender only
    closed: list[Any] = []

    async def collect(signals: list[Any]) -> None:
        closed.extend(s for s in signals if s.signal == "errors.rate")

    agents.consumers.append(collect)
    return agents, engine, grouped, closed


async def test_a_forward_not_yet_acknowledged_holds_the_last_window(tmp_path: Path) -> None:
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
        # the stream's events up to 2 s into the window [0, 10 s), taken in
        await agents.forward_inference(_batch([_event(i, START_MS + 1_000 * i) for i in range(3)]),
                                       set())
        await agents.take(grouped.acknowledge())
        await agents.tick()
        assert closed == []
        # a slow store write: the last events are forwarded 31 s of wall time later,
        # and a window poll comes before the broker acknowledged them
        now[0] += 31.0
        last = [_event(i, START_MS + 1_000 * i) for i in range(3, 6)]
        await agents.forward_inference(_batch(last), set())
        assert agents._consumer_backlog()  # queued, not in the log yet: unread
        await agents.tick()
        assert closed == []  # the window waits for them
        await agents.take(grouped.acknowledge())
        await asyncio.sleep(0)  # the acknowledgements' callbacks
        assert agents.stats()["forwarding"] == 0
        await agents.tick()
        assert closed == []  # just heard from: not idle yet
        now[0] += 31.0
        await agents.tick()
        stats = engine.stats()
        await agents.close()
    finally:
        store.close()
    assert [(s.ts, s.n) for s in closed] == [((START_MS + 10_000) / 1000, 6)]
    assert stats["late_dropped"] == 0 and stats["events_in"] == 6


def test_what_is_unread_by_position_and_end_offset() -> None:
    view: dict[str, list[int | None]] = {
        "llmpulse.inference:0": [7, 7],        # read to the end
        "llmpulse.inference:1": [None, 4],     # never read since start: not known
        "llmpulse.grouped:0": [3, 5],          # two messages the engine has not taken
        "llmpulse.grouped:1": [None, 2],       # never read here, but forwarded to
        "llmpulse.grouped:2": [4, None],       # no end offset known
    }
    assert unread(view) == ["llmpulse.grouped:0"]
    assert unread(view, forwarded={1: 2}) == ["llmpulse.grouped:0", "llmpulse.grouped:1"]
    assert unread({"llmpulse.grouped:0": [5, 5]}, forwarded={0: 5}) == []


def test_the_idle_time_assumed_is_the_engines_default() -> None:
    assert inspect.signature(SignalEngine).parameters["idle_s"].default == IDLE_S
