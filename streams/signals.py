"""Signal agents: route events by group, window them, run detectors, store signals.

Partitioning, end to end:

* ``llmpulse.inference`` / ``llmpulse.feedback``: keyed by a bucket of
  ``request_id`` (the shim's envelopes), so an inference and its feedback sit
  on the same partition number; the ingest agents validate and store them.
* ``llmpulse.grouped`` (internal): after storing, the ingest agents forward
  each valid event keyed by its group ``app/model/model_version``. Feedback
  names only its ``request_id``; its group comes from the store's
  ``request_index`` (filled as inferences are stored), so feedback that
  arrives seconds or days later finds its group without a join table in
  memory. Feedback whose inference is not stored yet waits up to
  ``signals.feedback_wait_s`` and is then counted as unmatched (it is stored
  in ``feedback_events`` regardless).
* The signal agent consumes ``llmpulse.grouped``: every event of a group
  reaches one worker, so a window never spans workers and two workers produce
  the same signals as one (the test in ``tests/integration`` checks it).
  The engine (:mod:`streams.engine`) windows by event time, joins feedback and
  runs the detectors in one dedicated thread, off the event loop.

Signals go to the ``signals`` table (a ``ReplacingMergeTree``: a window
recomputed after late feedback replaces its earlier row) and to
``llmpulse.signals``; then to every registered consumer (the alert rules).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import orjson

from detectors.base import Signal
from llmpulse.config import Settings
from llmpulse.events import TOPIC_GROUPED, TOPIC_SIGNALS
from llmpulse.store import Store, lookup_requests
from streams.ingest import IngestBatch
from streams.sink import RawSink

__all__ = ["SignalAgents", "group_key"]

log = logging.getLogger(__name__)

MAX_FORWARD_BYTES = 512 * 1024


def group_key(app: str, model: str, version: str) -> bytes:
    """The routing key of a group.

    >>> group_key("support", "gpt-4o-mini", "2024-07-18")
    b'support/gpt-4o-mini/2024-07-18'
    """
    return f"{app}/{model}/{version}".encode()


def _chunks(lines: Sequence[bytes], limit: int = MAX_FORWARD_BYTES) -> list[bytes]:
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for ln in lines:
        if cur and size + len(ln) > limit:
            out.append(b"\n".join(cur))
            cur, size = [], 0
        cur.append(ln)
        size += len(ln) + 1
    if cur:
        out.append(b"\n".join(cur))
    return out


def signal_row(s: Signal) -> dict[str, Any]:
    row = s.to_row()
    row["detail"] = orjson.dumps(row["detail"], option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return row


SignalConsumer = Callable[[list[Signal]], Awaitable[None]]


class SignalAgents:
    """Registers the grouped forwarder, the signal agent and its timers on a Faust app."""

    def __init__(self, app: faust.App, settings: Settings, store: Store, sink: RawSink,
                 *, health: Callable[[], Awaitable[list[Signal]]] | None = None) -> None:
        from streams.engine_process import EngineProcess, LocalEngine
        from streams.windows import DEFAULT_WINDOWS, WindowSpec

        cfg = settings.signals
        self.app = app
        self.settings = settings
        self.store = store
        self.sink = sink
        self.health = health
        self.consumers: list[SignalConsumer] = []
        windows = {}
        for fam, spec in DEFAULT_WINDOWS.items():
            length = cfg.latency_window_s if fam == "latency" else cfg.window_s
            windows[fam] = WindowSpec(length_s=length, lateness_s=spec.lateness_s * length / spec.length_s)
        engine_cls = EngineProcess if cfg.process else LocalEngine
        self.engine = engine_cls(
            engine_kwargs={"windows": windows},
            detectors={"embedding": cfg.embedding,
                       "hallucination_max_scored": cfg.hallucination_max_scored},
        )
        self.engine.start()
        self._state_path = settings.data_dir / "worker" / "signals.pkl"
        self._restore()
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmpulse-signals")
        self.grouped = app.topic(TOPIC_GROUPED, value_serializer="raw", key_serializer="raw")
        self.signals_topic = app.topic(TOPIC_SIGNALS, value_serializer="raw", key_serializer="raw")
        self.pending_feedback: list[tuple[float, bytes, str]] = []
        self.counters: dict[str, int] = defaultdict(int)
        self.last_signals_at = 0.0
        self.last_health = time.monotonic()
        self.engine_stats: dict[str, Any] = {}
        self._register()

    # -- forwarding from the ingest agents -------------------------------------

    async def forward_inference(self, batch: IngestBatch, rejected: set[int]) -> None:
        by_group: dict[tuple[str, str, str], list[bytes]] = defaultdict(list)
        for i, (ev, line) in enumerate(zip(batch.events, batch.lines, strict=True)):
            if i not in rejected:
                by_group[(ev["app"], ev["model"], ev["model_version"])].append(line)
        for group, lines in by_group.items():
            key = group_key(*group)  # encoded once per group, not per event
            for value in _chunks(lines):
                await self.grouped.send(key=key, value=value)
        self.counters["forwarded_inference"] += len(batch.events) - len(rejected)

    async def forward_feedback(self, batch: IngestBatch, rejected: set[int]) -> None:
        now = time.monotonic()
        items = [(now, line, ev["request_id"])
                 for i, (ev, line) in enumerate(zip(batch.events, batch.lines, strict=True))
                 if i not in rejected]
        await self._route_feedback(items)

    async def _route_feedback(self, items: list[tuple[float, bytes, str]]) -> None:
        if not items:
            return
        found = await asyncio.to_thread(lookup_requests, self.store, [rid for _, _, rid in items])
        by_group: dict[bytes, list[bytes]] = defaultdict(list)
        wait = self.settings.signals.feedback_wait_s
        now = time.monotonic()
        for first_seen, line, rid in items:
            inf = found.get(rid)
            if inf is not None:
                by_group[group_key(inf["app"], inf["model"], inf["model_version"])].append(line)
            elif now - first_seen < wait:
                self.pending_feedback.append((first_seen, line, rid))
            else:
                self.counters["feedback_unmatched"] += 1
        for key, lines in by_group.items():
            for value in _chunks(lines):
                await self.grouped.send(key=key, value=value)
            self.counters["forwarded_feedback"] += len(lines)

    # -- the signal agent ---------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        cfg = self.settings.signals

        async def signals_agent(stream: Any) -> None:
            loop = asyncio.get_running_loop()
            async for events in stream.take_events(1000, within=0.2):
                chunks = [(ev.message.partition, ev.value) for ev in events]
                await loop.run_in_executor(self._exec, self.engine.add, chunks)
                positions = self.app.llmpulse_stats.positions  # type: ignore[attr-defined]
                for ev in events:
                    positions[(ev.message.topic, ev.message.partition)] = ev.message.offset + 1

        signals_agent.__name__ = signals_agent.__qualname__ = "signals"
        app.agent(self.grouped, name="llmpulse.signals")(signals_agent)

        @app.timer(cfg.poll_s)
        async def poll_windows() -> None:
            loop = asyncio.get_running_loop()
            signals = await loop.run_in_executor(self._exec, self._poll)
            if self.pending_feedback:
                items, self.pending_feedback = self.pending_feedback, []
                await self._route_feedback(items)
            if self.health is not None and time.monotonic() - self.last_health >= 10.0:
                self.last_health = time.monotonic()
                signals = signals + await self.health()
            await self.emit(signals)

        if cfg.snapshot_s > 0:
            @app.timer(cfg.snapshot_s)
            async def save_state() -> None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._exec, self._save)

    def _poll(self) -> list[Signal]:
        # in the engine's thread: the engine's counters are read here, once a poll,
        # so the event loop never waits on the engine for them
        signals = self.engine.poll()
        self.engine_stats = self.engine.stats()
        return signals

    async def emit(self, signals: list[Signal]) -> None:
        if not signals:
            return
        rows = [orjson.dumps(signal_row(s), option=orjson.OPT_SERIALIZE_NUMPY) for s in signals]
        await self.sink.write("signals", rows)
        by_group: dict[bytes, list[bytes]] = defaultdict(list)
        for s, row in zip(signals, rows, strict=True):
            by_group[group_key(s.app, s.model, s.model_version)].append(row)
        for key, lines in by_group.items():
            for value in _chunks(lines):
                await self.signals_topic.send(key=key, value=value)
        self.counters["signals"] += len(signals)
        self.last_signals_at = time.time()
        for consumer in self.consumers:
            try:
                await consumer(signals)
            except Exception:  # a consumer (alerting) failing must not stop signals
                log.exception("signal consumer %r failed", consumer)

    async def flush(self) -> None:
        """Close every open window now and emit (clean shutdown, end of a demo)."""
        loop = asyncio.get_running_loop()
        signals = await loop.run_in_executor(self._exec, self.engine.flush)
        await self.emit(signals)
        await loop.run_in_executor(self._exec, self._save)

    async def close(self) -> None:
        """Stop the engine (its process, when it has one)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._exec, self.engine.stop)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["pending_feedback"] = len(self.pending_feedback)
        out["engine"] = self.engine_stats
        return out

    # -- state across restarts ----------------------------------------------------

    def _save(self) -> None:
        try:
            state = self.engine.snapshot_bytes()
            self._state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_path.with_suffix(".tmp")
            tmp.write_bytes(state)
            os.replace(tmp, self._state_path)
        except Exception:
            log.exception("saving the signal engine state failed")

    def _restore(self) -> None:
        try:
            self.engine.restore_bytes(self._state_path.read_bytes())
            log.info("signal engine state restored from %s", self._state_path)
        except FileNotFoundError:
            pass
        except Exception:
            log.exception("ignoring an unreadable signal engine state at %s", self._state_path)
