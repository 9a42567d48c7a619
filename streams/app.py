"""The stream worker's Faust application: ingest agents, the raw sink and the HTTP API.

Agents are short loops over batches of Kafka messages (envelopes). Each
batch is validated (:mod:`llmpulse.streams.ingest`), dead letters are produced to
``llmpulse.deadletter`` with the reason in the headers, and valid rows are
stored. ``Stream.take_events`` acks a batch's messages only when the loop
comes back for the next batch, i.e. after the store accepted the rows, so
offsets are committed only for stored events (at-least-once). A replay after
a crash inserts rows already stored; the raw tables collapse them
(``ReplacingMergeTree`` + ``FINAL``), so no duplicate is visible.

When the store is down the agent retries the same batch with capped
exponential backoff: nothing is acked, the stream's buffer stays bounded,
and the broker keeps the rest. A batch acks only once the broker has its dead
letters and forwards too; a batch that fails otherwise (a forward refused, a
delivery failed) is tried again whole, and one not done when the worker stops
is held back from the commit (:mod:`llmpulse.streams.whole`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson

from llmpulse.audit import TOPIC_AUDIT, AuditLog, AuditSink, discard
from llmpulse.audit_record import ORIGIN_HEADER
from llmpulse.auth import ApiGuard
from llmpulse.broker import cluster_id
from llmpulse.config import Settings
from llmpulse.detectors.base import Signal
from llmpulse.drain import Ends
from llmpulse.events import (
    TOPIC_DEADLETTER,
    TOPIC_FEEDBACK,
    TOPIC_GROUPED,
    TOPIC_INFERENCE,
    Limits,
)
from llmpulse.kafka_security import KafkaSecurity
from llmpulse.sqlguard import QueryLimitError, QueryRefused, SqlGuard
from llmpulse.store import RAW_INGEST, QueryError, Store, StoreError
from llmpulse.streams.admin import register_audit_agent, register_erase
from llmpulse.streams.agent_traces import AgentTraceSettings, TraceWindows, attach_agent_signals
from llmpulse.streams.alerting import AlertLinker
from llmpulse.streams.alerts_agent import AlertAgent, load_rules
from llmpulse.streams.catch_up import GroupProgress
from llmpulse.streams.deployments import register_command_deployments, register_retrain_completion
from llmpulse.streams.gaps import GapCloser, GapProbe, fetched_ends
from llmpulse.streams.handoff import EngineStateLog
from llmpulse.streams.ingest import DeadLetter, IngestBatch, Message, split_batch
from llmpulse.streams.notify import Notifier
from llmpulse.streams.otlp import OTLP_TOPICS, SpanIngest, attach_otlp, faust_sender
from llmpulse.streams.otlp_logs import attach_otlp_logs
from llmpulse.streams.otlp_pool import MappingPool
from llmpulse.streams.otlp_redact import redactor
from llmpulse.streams.rules import Rules
from llmpulse.streams.service_health import register_service_health
from llmpulse.streams.signals import SignalAgents, largest_end
from llmpulse.streams.sink import RawSink
from llmpulse.streams.whole import BatchOutcomes, take_whole

__all__ = ["HealthSignals", "IngestLag", "IngestStats", "NAMED_QUERIES", "Pipeline",
           "bind_audit", "build_pipeline", "faust_credentials", "new_faust_app", "query_view",
           "register_http_api", "register_ingest", "store_sink"]

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    """Counters of the ingest path, served at ``/api/stats``."""

    started_at: float = field(default_factory=time.time)
    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    consumed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stored: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    deadlettered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    store_errors: int = 0
    store_rejected: int = 0
    batches: int = 0
    last_store_s: float = 0.0
    #: batches tried again after a failure, and messages held back from the commit at a stop
    outcomes: BatchOutcomes = field(default_factory=BatchOutcomes)
    #: next offset to process per (topic, partition)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)

    def record(self, topic: str, batch: IngestBatch, n_messages: int) -> None:
        self.messages[topic] += n_messages
        self.consumed[topic] += batch.count + len(batch.dead)
        self.stored[topic] += batch.count
        self.deadlettered[topic] += len(batch.dead)
        self.batches += 1

    def as_dict(self, lag: dict[str, int] | None = None) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "messages": dict(self.messages),
            "consumed": dict(self.consumed),
            "stored": dict(self.stored),
            "dead_lettered": dict(self.deadlettered),
            "store_errors": self.store_errors,
            "store_rejected": self.store_rejected,
            "batches": self.batches,
            "batches_retried": self.outcomes.retried,
            "held_back": self.outcomes.held_back,
            "last_batch_error": self.outcomes.last_error,
            "last_store_s": round(self.last_store_s, 4),
            "lag": lag or {},
        }


NAMED_QUERIES: dict[str, str] = {
    "counts": (
        "SELECT 'inference_events' AS table, count() AS rows FROM inference_events FINAL "
        "UNION ALL SELECT 'feedback_events', count() FROM feedback_events FINAL "
        "UNION ALL SELECT 'signals', count() FROM signals FINAL "
        "UNION ALL SELECT 'alerts', count() FROM alerts FINAL "
        "UNION ALL SELECT 'deployments', count() FROM deployments FINAL "
        "UNION ALL SELECT 'deadletter_events', count() FROM deadletter_events FINAL "
        "UNION ALL SELECT 'spans', count() FROM spans FINAL"
    ),
    "recent_inference": (
        "SELECT event_id, request_id, ts, app, model, model_version, latency_ms, status "
        "FROM inference_events FINAL ORDER BY ts DESC LIMIT 100"
    ),
    "deadletters": (
        "SELECT ts, topic, partition, offset, reason FROM deadletter_events FINAL "
        "ORDER BY ts DESC LIMIT 100"
    ),
    "ingest_lag": (
        "SELECT quantile(0.5)(dateDiff('millisecond', ts, ingested_at)) AS p50_ms, "
        "quantile(0.99)(dateDiff('millisecond', ts, ingested_at)) AS p99_ms, count() AS n "
        "FROM inference_events WHERE ingested_at > now64(3) - INTERVAL 60 SECOND"
    ),
    "trace": (
        "SELECT trace_id, span_id, parent_span_id, ts, end_ts, duration_ms, app, name, step, "
        "operation, provider, model, tool_name, agent_name, status, error_type, input_tokens, "
        "output_tokens, finish_reasons, event_id FROM spans FINAL "
        "WHERE trace_id = {trace_id:String} ORDER BY ts, span_id LIMIT 10000"
    ),
}


FETCH_MAX_WAIT_MS = 100


def _tune_fetch_wait(ms: int) -> None:
    """Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no
    setting to change it; a broker may hold a fetch that long before answering
    (Tansu does), which puts seconds into every event's lag. Lower it once."""
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    if getattr(cls, "_llmpulse_fetch_wait", None) == ms:
        return
    original = getattr(cls, "_llmpulse_original_create", cls._create_worker_consumer)

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    cls._llmpulse_original_create = original  # type: ignore[attr-defined]
    cls._create_worker_consumer = create  # type: ignore[method-assign]
    cls._llmpulse_fetch_wait = ms  # type: ignore[attr-defined]


def faust_credentials(sec: KafkaSecurity) -> Any:
    """``broker_credentials`` for ``faust.App`` (None for plaintext). faust-streaming
    hands SASL credentials to aiokafka as ``sasl_plain_username``/``_password``
    with the mechanism's name, which aiokafka uses for SCRAM too."""
    if sec.is_plaintext:
        return None
    ctx = sec.ssl_context()
    if not sec.sasl:
        return faust.SSLCredentials(ctx)
    assert sec.password is not None
    return faust.SASLCredentials(
        username=sec.username, password=sec.password.get(), ssl_context=ctx,
        mechanism=sec.sasl_mechanism,
    )


def new_faust_app(
    app_id: str, settings: Settings, *, bootstrap: str, datadir: Path, web_port: int | None,
    guard: ApiGuard | None = None,
) -> faust.App:
    """A Faust app with the consumer settings every llmpulse worker uses.

    Its web server (when ``web_port`` is given) runs every request through
    ``guard`` (by default tokens from the configured file, no audit sink):
    the middleware goes in through Faust's ``web_application_options``,
    which become the aiohttp ``Application``'s arguments.
    """
    session_s = settings.session_timeout_s
    _tune_fetch_wait(FETCH_MAX_WAIT_MS)
    web: dict[str, Any] = {"web_enabled": False}
    if web_port is not None:
        if guard is None:
            guard = ApiGuard.from_settings(settings.data_dir, settings.http.host)
        web = {"web_enabled": True, "web_port": web_port, "web_bind": settings.http.host,
               "web_host": settings.http.host,
               # bodies are inflated by the routes that take gzip, within their limit
               # (streams/otlp.py, _read_body); the server inflated every chunk as it
               # arrived, before the token check, and went on after the answer
               "web_application_options": {"middlewares": [guard.middleware()],
                                           "handler_args": {"auto_decompress": False}}}
    return faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        datadir=str(datadir),
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(0.5, session_s / 6),
        broker_rebalance_timeout=session_s * 2,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.ingest.partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        # no Faust tables here (engine state travels on llmpulse.engine-state): with
        # standbys, Faust's assignor lets every worker keep up to ceil(partitions /
        # workers), so a third worker joining two that hold 2 of 4 partitions each
        # got none; without, the others give up all above floor(partitions / workers)
        table_standby_replicas=0,
        stream_wait_empty=False,
        producer_acks=-1,
        web_cors_options=None,
        logging_config=None,
        broker_credentials=faust_credentials(settings.kafka_security),
        **web,
    )


def store_sink(app: faust.App, store: Store, settings: Settings) -> RawSink:
    """The app's sink into ``store`` (retries outages until the app stops)."""

    def insert(table: str, data: bytes, count: int) -> int:
        return store.insert_json(table, data, count=count)

    return RawSink(insert, should_stop=lambda: bool(app.should_stop),
                   retry_max_s=settings.ingest.store_retry_max_s)


Lag = Callable[[], Awaitable[dict[str, int]]]


@dataclass(frozen=True)
class Pipeline:
    """The stream worker as built: the Faust app and the parts others need to see.

    Returned by :func:`build_pipeline` and handed, explicitly, to whoever
    needs a part (the composition root, ``llmpulse up``, tests); nothing is
    stored on the Faust app.
    """

    app: faust.App
    sink: RawSink
    stats: IngestStats
    lag: Lag
    """Unprocessed messages per raw topic on this worker's partitions."""
    otlp: SpanIngest
    signals: SignalAgents | None = None
    """The signal agents (None with ``signals.enabled`` off)."""
    alerts: AlertAgent | None = None
    """The alert agent (None without signals)."""
    traces: TraceWindows | None = None
    """Spans put together into traces for the ``agent.*`` signals (None without signals)."""
    gaps: GapCloser | None = None
    """Moves the read positions past offsets that hold no record (transaction markers)."""

    @property
    def notifier(self) -> Notifier | None:
        return self.alerts.notifier if self.alerts is not None else None

    async def close(self) -> None:
        """Stop the signal engine (flushing or saving its open windows, as
        ``signals.stop`` says) and the alert agent (before the app stops), then the
        OTLP mapping processes. Each step runs even if one before it failed (a signal
        engine process that died cannot save; the alert agent and the mapping
        processes still stop cleanly); the first failure is raised at the end."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.signals is not None:
            steps.append(("the signal engine", self.signals.stop))
        if self.alerts is not None:
            steps.append(("the alert agent", self.alerts.close))
        steps.append(("the OTLP mapping processes", lambda: asyncio.to_thread(self.otlp.close)))
        if self.gaps is not None:
            steps.append(("the gap probe", self.gaps.probe.close))
        failed: BaseException | None = None
        for what, step in steps:
            try:
                await step()
            except Exception as exc:
                log.error("stopping %s failed: %s: %s", what, type(exc).__name__, exc)
                failed = failed or exc
        if failed is not None:
            raise failed


def register_ingest(
    app: faust.App, topic_name: str, kind: str, table: str, *, settings: Settings,
    limits: Limits, sink: RawSink, stats: IngestStats, agents: SignalAgents | None,
) -> None:
    """The ingest agent of one raw topic: validate, store, dead-letter, forward to signals."""
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
    deadletter = app.topic(TOPIC_DEADLETTER, value_serializer="raw", key_serializer="raw")
    forward = agents is not None
    redact = redactor(settings.ingest.redact_regions) if settings.ingest.redact else None

    async def handle(events: Sequence[Any]) -> None:
        msgs = [
            Message(ev.value, ev.message.topic, ev.message.partition, ev.message.offset)
            for ev in events
        ]
        if redact is None:
            batch = split_batch(msgs, kind=kind, limits=limits, keep_events=forward)
        else:  # tens of microseconds an event: off the event loop, which keeps the group's heartbeats
            batch = await asyncio.to_thread(split_batch, msgs, kind=kind, limits=limits,
                                            keep_events=forward, redact=redact)
        rejected: set[int] = set()
        if batch.count:
            for i, reason in await sink.write(RAW_INGEST[table], batch.lines):
                m = batch.sources[i]
                batch.dead.append(
                    DeadLetter(batch.lines[i], reason, m.topic, m.partition, m.offset))
                rejected.add(i)
            batch.count -= len(rejected)
        delivered: list[Awaitable[Any]] = []
        if batch.dead:
            for d in batch.dead:
                delivered.append(await deadletter.send(value=d.payload, headers=d.headers()))
            await sink.write("deadletter_events",
                             [orjson.dumps(d.row()) for d in batch.dead])
        if agents is not None and batch.events:
            if kind == "inference":
                delivered += await agents.forward_inference(batch, rejected)
            else:
                delivered += await agents.forward_feedback(batch, rejected)
        # the broker has every dead letter and forward before the stream acks the batch:
        # a delivery that fails fails the batch, which is tried again
        for sent in delivered:
            await sent
        stats.record(topic_name, batch, len(events))
        for m in msgs:
            stats.positions[(m.topic, m.partition)] = m.offset + 1

    async def ingest(stream: Any) -> None:
        # stored, dead-lettered and forwarded whole, or tried again, or held back from the
        # commit at a stop (:mod:`llmpulse.streams.whole`)
        await take_whole(stream, handle, max_=settings.ingest.batch_messages,
                         within=settings.ingest.batch_within_s,
                         should_stop=lambda: bool(app.should_stop), outcomes=stats.outcomes,
                         what=f"{topic_name} batch",
                         retry_max_s=settings.ingest.store_retry_max_s)

    ingest.__name__ = f"ingest_{kind}"
    ingest.__qualname__ = ingest.__name__
    app.agent(topic, name=f"llmpulse.ingest_{kind}")(ingest)


class IngestLag:
    """Messages not yet processed per raw topic on the worker's partitions (high water
    minus the next offset to process, else the consumer's position: its committed offset).

    ``exact`` is what a clean stop waits on: the producer is flushed first, so the
    messages forwarded to ``llmpulse.grouped`` count once they are in the broker, and
    the end offsets are asked of the broker. The high water of the last fetch is
    stale for a partition fetched before the forward: the stop then saw no backlog
    while the engine had not yet read the batch.

    The end of a partition is the largest offset known for it: the broker's answer,
    the last fetch's high water, and ``forwarded`` (the ends of what this worker
    forwarded and the broker acknowledged). A broker over a shared log answers
    ListOffsets from its own view, which lags while writes flow (the local cluster,
    docs/cluster.md): by its answer alone a stop saw no backlog while the worker's
    own last forwards were unread, flushed the windows without them, and counted
    them late when they came.
    """

    TOPICS: tuple[str, ...] = (TOPIC_INFERENCE, TOPIC_FEEDBACK, TOPIC_GROUPED, *OTLP_TOPICS)

    def __init__(self, app: faust.App, stats: IngestStats, *, exact: bool = False,
                 forwarded: Callable[[], Mapping[tuple[str, int], int]] | None = None) -> None:
        self.app = app
        self.stats = stats
        self.exact = exact
        self.forwarded = forwarded

    async def __call__(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (topic, _partition), (pos, end) in (await self.partitions()).ends.items():
            out[topic] += max(0, end - pos)
        return dict(out)

    async def partitions(self) -> Ends:
        """Per partition of the worker's: the next offset to process and the end."""
        consumer = self.app.consumer
        try:
            assignment = consumer.assignment()
        except Exception:
            return Ends({}, fresh=False)
        tps = [tp for tp in assignment if tp.topic in self.TOPICS]
        fresh: dict[Any, int] = {}
        starts: dict[Any, int] = {}
        asked = False
        if self.exact and tps:
            try:
                await asyncio.wait_for(self.app.producer.flush(), 10.0)
                fresh = dict(await asyncio.wait_for(consumer.highwaters(*tps), 10.0))
                starts = dict(await asyncio.wait_for(consumer.earliest_offsets(*tps), 10.0))
                asked = True
            except Exception as exc:  # the last fetch's high water, then
                log.debug("end offsets not read from the broker: %s", exc)
        # the offsets committed when the partitions were assigned (None: none, or 0)
        committed = getattr(consumer, "_committed_offset", {})
        forwarded = dict(self.forwarded()) if self.forwarded is not None else {}
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for tp in tps:
            try:
                fetched = consumer.highwater(tp)
            except Exception:
                # revoked since the assignment was read (a rebalance): aiokafka asserts,
                # or, its assignment replaced by the consumer's thread between its own
                # check and read, fails on the missing partition state
                continue
            hw = largest_end(fresh.get(tp), fetched, forwarded.get((tp.topic, tp.partition)))
            if hw is None:
                continue
            pos = self.stats.positions.get((tp.topic, tp.partition))
            if pos is None and tp in starts:
                # nothing processed since it was assigned: processing starts at the
                # committed offset. The consumer's position is past what the fetcher
                # buffered, so a batch fetched but not yet processed would not count.
                pos = max(int(committed.get(tp) or 0), int(starts[tp]))
            if pos is None:  # nothing read since it was assigned: where reading starts
                try:
                    pos = await asyncio.wait_for(consumer.position(tp), 5.0)
                except Exception:
                    pos = None
                pos = pos or 0
            out[(tp.topic, tp.partition)] = (int(pos), int(hw))
        return Ends(out, fresh=asked)


class HealthSignals:
    """The monitor's own health, as signals the dashboards and rules read (``app=llmpulse``)."""

    def __init__(self, stats: IngestStats, sink: RawSink, lag: Lag,
                 agents: SignalAgents | None = None, notifier: Notifier | None = None) -> None:
        self.stats = stats
        self.sink = sink
        self.lag = lag
        self.agents = agents
        self.notifier = notifier
        self._last_t = time.time()
        self._consumed: dict[str, int] = {}
        self._dead: dict[str, int] = {}

    async def __call__(self) -> list[Signal]:
        now = time.time()
        dt = max(1e-3, now - self._last_t)
        lags = await self.lag()
        out: list[Signal] = []

        def sig(name: str, value: float, dimension: str, n: int = 0) -> None:
            out.append(Signal(signal=name, value=float(value), n=n, dimension=dimension,
                              ts=now, window_s=dt, app="llmpulse"))

        for topic in (TOPIC_INFERENCE, TOPIC_FEEDBACK):
            consumed = self.stats.consumed.get(topic, 0)
            dead = self.stats.deadlettered.get(topic, 0)
            d_consumed = consumed - self._consumed.get(topic, 0)
            d_dead = dead - self._dead.get(topic, 0)
            sig("llmpulse.lag", lags.get(topic, 0), topic)
            sig("llmpulse.events_per_s", d_consumed / dt, topic, d_consumed)
            sig("llmpulse.deadletter_rate", d_dead / d_consumed if d_consumed else 0.0, topic,
                d_consumed)
            self._consumed[topic] = consumed
            self._dead[topic] = dead
        sig("llmpulse.store_errors", self.sink.errors, "store")
        if self.agents is not None:
            delay = self.agents.engine_stats.get("close_delay_s", {}).get("last")
            if delay is not None:
                sig("llmpulse.window_close_delay_s", delay, "signals")
            sig("llmpulse.feedback_unmatched", self.agents.counters.get("feedback_unmatched", 0),
                "signals")
        for channel, failures in self._notify_failures().items():
            sig("llmpulse.notify_failures", failures, channel)
        self._last_t = now
        return out

    def _notify_failures(self) -> dict[str, int]:
        if self.notifier is None:
            return {}
        try:
            return {ch: int(v.get("failed", 0)) for ch, v in self.notifier.stats().items()}
        except Exception:
            return {}


def _unavailable(web: Any, reason: str) -> Any:
    """503 with ``reason``: a state that passes (a rebalance, a store reopening), to retry."""
    log.warning("HTTP API: answering 503: %s", reason)
    return web.json({"error": reason, "retry": True}, status=503, headers={"Retry-After": "1"})


def query_view(store: Store) -> type[faust.web.View]:
    """``/api/query``: the read-only query API over ``store``."""

    class QueryView(faust.web.View):
        """Named queries by ``GET ?name=`` or POST; caller SQL only in a POSTed JSON body.

        Status codes: 400 refused by the guard or a bad query, 404 unknown
        name, 408 / 413 / 422 a limit of ``query.*`` broken (the body's
        ``limit`` names the key), 415 a POST that is not JSON.
        """

        guard = SqlGuard.for_store(store)

        async def get(self, request: Any) -> Any:
            q = request.query
            if "sql" in q:
                return self.json({"error": "sql is accepted only in a POST with a JSON body"},
                                 status=405, headers={"Allow": "POST"})
            return await self._named(q.get("name"), dict(q))

        async def post(self, request: Any) -> Any:
            if request.content_type != "application/json":
                return self.json({"error": "Content-Type must be application/json"}, status=415)
            try:
                body = await request.json()
            except Exception:
                return self.json({"error": "body must be JSON"}, status=400)
            if not isinstance(body, dict):
                return self.json({"error": "body must be a JSON object"}, status=400)
            params = body.get("params") or {}
            if not isinstance(params, dict):
                return self.json({"error": "params must be a JSON object"}, status=400)
            sql = body.get("sql")
            if sql is None:
                return await self._named(body.get("name"), params)
            if not isinstance(sql, str):
                return self.json({"error": "sql must be a string"}, status=400)
            try:
                rows = await asyncio.to_thread(self.guard.run, sql, params)
            except (QueryRefused, QueryLimitError) as exc:
                out = {"error": str(exc)}
                if isinstance(exc, QueryLimitError):
                    out["limit"] = exc.key
                return self.json(out, status=exc.status)
            except QueryError as exc:
                return self.json({"error": str(exc)}, status=400)
            except StoreError as exc:  # closed or not answering: not the query's fault
                return _unavailable(self, f"the store is not available: {exc}")
            return self.json({"rows": rows})

        async def _named(self, name: str | None, params: dict[str, Any]) -> Any:
            if not name:
                return self.json({"error": "give a query name (GET or POST) or sql (POST)"},
                                 status=400)
            if name not in NAMED_QUERIES:
                return self.json(
                    {"error": f"unknown query {name!r}", "known": sorted(NAMED_QUERIES)},
                    status=404,
                )
            qparams = {k: v for k, v in params.items() if k not in ("name", "sql")}
            try:
                rows = await asyncio.to_thread(
                    store.query, NAMED_QUERIES[name], qparams, readonly=True)
            except QueryLimitError as exc:  # busy with other reads, or a result too large
                return self.json({"error": str(exc), "limit": exc.key}, status=exc.status)
            except Exception as exc:
                return self.json({"error": str(exc).splitlines()[0][:500]}, status=400)
            return self.json({"rows": rows})

    return QueryView


def register_http_api(pipeline: Pipeline, store: Store) -> None:
    """``/health``, ``/api/stats`` and ``/api/query`` on the pipeline's app."""
    app = pipeline.app

    async def health(web: Any, request: Any) -> Any:
        ok = not store.closed
        return web.json({"status": "ok" if ok else "down", "store": not store.closed})

    async def api_stats(web: Any, request: Any) -> Any:
        stats, sink = pipeline.stats, pipeline.sink
        stats.store_errors = sink.errors
        stats.store_rejected = sink.rejected
        stats.last_store_s = sink.last_store_s
        try:
            lag = await pipeline.lag()
        except Exception as exc:  # the consumer's state, changed by its thread meanwhile
            return _unavailable(web, f"the consumer's partitions could not be read "
                                f"(rebalancing: {bool(getattr(app, 'rebalancing', False))}): {exc}")
        out = stats.as_dict(lag)
        try:
            out["assignment"] = sorted(f"{tp.topic}:{tp.partition}"
                                       for tp in app.consumer.assignment())
        except Exception:
            out["assignment"] = []
        out["otlp"] = pipeline.otlp.stats.as_dict()
        if pipeline.gaps is not None:
            out.update(pipeline.gaps.as_dict())
        if pipeline.signals is not None:
            out["signals"] = pipeline.signals.stats()
        if pipeline.traces is not None:
            out["agent_traces"] = pipeline.traces.stats()
        if pipeline.alerts is not None:
            out["alerts"] = pipeline.alerts.stats()
        if pipeline.notifier is not None:
            out["notify"] = pipeline.notifier.stats()
        return web.json(out)

    app.page("/health")(health)
    app.page("/api/stats")(api_stats)
    app.page("/api/query")(query_view(store))


def bind_audit(app: faust.App, audit: AuditLog) -> None:
    """Records of ``audit`` go to the ``llmpulse.audit`` topic, drained by a task of ``app``."""
    audit_topic = app.topic(TOPIC_AUDIT, value_serializer="raw", key_serializer="raw")

    async def produce_audit(key: bytes, value: bytes) -> None:
        await audit_topic.send(key=key, value=value, headers={ORIGIN_HEADER: b"stack"})

    audit.bind(produce_audit)
    app.task(audit.run)


def build_pipeline(
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
) -> Pipeline:
    """The stream worker: ingest agents for both raw topics, signals, alerts, the HTTP API.

    Every route goes through ``guard`` (:class:`llmpulse.auth.ApiGuard`;
    built from the tokens file, recording to ``audit``, when not given).
    ``audit`` receives the audit trail (authentication, erasures, retrain,
    deploy, rollback); an :class:`~llmpulse.audit.AuditLog` is bound to the
    ``llmpulse.audit`` topic and drained by a task of this app.
    ``linker`` gives each alert its dashboard, runbook and report links (see
    :class:`~llmpulse.streams.alerting.AlertManager`).

    Only the streams' own parts are registered here; the composition root
    (:mod:`llmpulse.worker`) adds the dashboards and the retrain service.
    """
    audit_sink = audit if audit is not None else discard
    if guard is None:
        guard = ApiGuard.from_settings(settings.data_dir, settings.http.host, audit=audit_sink)
    app = new_faust_app(app_id, settings, bootstrap=bootstrap,
                        datadir=settings.data_dir / "worker", web_port=web_port, guard=guard)
    limits = Limits(max_past_s=settings.ingest.max_past_days * 86400.0)
    sink = store_sink(app, store, settings)
    lag = IngestLag(app, stats)
    probe = GapProbe(bootstrap, security=settings.kafka_security)
    ends, starts = fetched_ends(app, IngestLag.TOPICS)
    gaps = GapCloser(stats.positions, ends, probe, starts=starts)

    @app.timer(1.0)
    async def close_gaps() -> None:  # a transaction's marker is no backlog
        await gaps.check()

    agents: SignalAgents | None = None
    alert_agent: AlertAgent | None = None
    if settings.signals.enabled:
        health = HealthSignals(stats, sink, lag)
        agents = SignalAgents(app, settings, store, sink, health=health,
                              positions=stats.positions,
                              log_id=lambda: cluster_id(bootstrap,
                                                        security=settings.kafka_security),
                              state_log=EngineStateLog(bootstrap,
                                                       partitions=settings.ingest.partitions,
                                                       security=settings.kafka_security),
                              progress=GroupProgress(bootstrap, app.conf.id, TOPIC_INFERENCE,
                                                     settings.ingest.partitions,
                                                     security=settings.kafka_security),
                              gap_probe=probe)
        alert_agent = AlertAgent(
            app, rules if rules is not None else load_rules(settings.rules), sink,
            state_dir=settings.data_dir / "worker",
            dashboard_url=f"http://{settings.http.host}:{web_port}/dashboards",
            notify=settings.signals.notify_in_worker, linker=linker,
        )
        agents.consumers.append(alert_agent)
        agents.group_states = alert_agent  # a group's alert states move with its partition
        health.agents, health.notifier = agents, alert_agent.notifier
        register_retrain_completion(app, alert_agent.trigger)
        # the LLM judge's health reports -> llmpulse.judge_* signals
        register_service_health(app, agents.emit)

    for topic_name, kind, table in ((TOPIC_INFERENCE, "inference", "inference_events"),
                                    (TOPIC_FEEDBACK, "feedback", "feedback_events")):
        register_ingest(app, topic_name, kind, table, settings=settings, limits=limits,
                        sink=sink, stats=stats, agents=agents)

    # OTLP: POST /v1/traces and the otlp_spans topic; events go through the ingest above
    otlp = SpanIngest(faust_sender(app), sink.write, inference_topic=TOPIC_INFERENCE,
                      deadletter_topic=TOPIC_DEADLETTER, limits=limits,
                      partitions=settings.ingest.partitions,
                      pool=MappingPool(processes=settings.otlp.map_processes, limits=limits,
                                       partitions=settings.ingest.partitions,
                                       redact_regions=settings.otlp.redact_regions
                                       if settings.otlp.redact else None))
    traces = None if agents is None else attach_agent_signals(  # agent.* signals from the spans
        app, agents.emit, poll_s=settings.signals.poll_s,
        settings=AgentTraceSettings(window_s=settings.signals.latency_window_s))
    attach_otlp(app, otlp, batch_messages=settings.ingest.batch_messages,
                batch_within_s=settings.ingest.batch_within_s, positions=stats.positions,
                on_rows=None if traces is None else traces.add_lines)
    attach_otlp_logs(app, otlp, feedback_topic=TOPIC_FEEDBACK)  # feedback as OTLP log records

    pipeline = Pipeline(app=app, sink=sink, stats=stats, lag=lag, otlp=otlp, signals=agents,
                        alerts=alert_agent, traces=traces, gaps=gaps)
    register_http_api(pipeline, store)
    if isinstance(audit, AuditLog):
        bind_audit(app, audit)
    register_audit_agent(app, sink, stats.outcomes)
    register_command_deployments(app, sink, stats.outcomes)
    register_erase(app, store, settings, audit_sink,
                   forget=agents.forget_requests if agents is not None else None)
    return pipeline
