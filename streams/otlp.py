"""The OTLP receiver: ``POST /v1/traces`` on the API server, and the ``otlp_spans`` topic.

Both entries share one path (:class:`SpanIngest`): decode the export
request, map it (:mod:`llmpulse.streams.otlp_mapping`), send the inference events to
``llmpulse.inference`` (so the ingest agent validates and stores them like
any producer's) and every span's row to ``llmpulse.spans`` (an agent stores
them in batches in the ``spans`` table), and dead-letter what is refused
(``llmpulse.deadletter`` and ``deadletter_events``, with the reason). A
request is answered once the broker holds its events and rows: a slow store
holds them up in the broker, not in the receiver.

OTLP/HTTP answers (https://opentelemetry.io/docs/specs/otlp/#otlphttp):

* 200 with an ``ExportTraceServiceResponse`` in the request's encoding;
  ``partial_success`` carries the number of spans rejected and why;
* 400 malformed protobuf or JSON, 413 a body over
  :attr:`ReceiverLimits.max_body_bytes` (after gzip) or a request of more
  spans than ``Limits.max_records_per_request`` (20,000), 415 a content type
  other than ``application/x-protobuf`` or ``application/json``; the body is
  a ``google.rpc.Status``;
* 503 with ``Retry-After`` when the broker does not take the data within
  :attr:`ReceiverLimits.timeout_s` (exporters retry; event ids and span rows
  are deterministic, so a retry stores no duplicate).

The Kafka path reads what the OpenTelemetry Collector's Kafka exporter
writes: one ``ExportTraceServiceRequest`` per message, ``otlp_proto`` or
``otlp_json`` (told apart by the first byte: a JSON object starts with
``{``, which no valid protobuf export request does).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from llmpulse.events import DEFAULT_LIMITS, Limits, split_envelope
from llmpulse.streams.ingest import DeadLetter
from llmpulse.streams.otlp_mapping import OtlpDecodeError, OtlpTooLarge
from llmpulse.streams.otlp_pool import MappingPool
from llmpulse.streams.otlp_prepare import (
    ENVELOPE_MAX_BYTES,
    SHIM_BUCKETS,
    PreparedRequest,
    envelopes,
    shim_partition,
    with_response_ids,
)
from llmpulse.streams.otlp_redact import redactor, withheld
from llmpulse.streams.whole import BatchOutcomes, take_whole

__all__ = [
    "OTLP_HTTP_SOURCE",
    "OTLP_TOPICS",
    "ENVELOPE_MAX_BYTES",
    "SHIM_BUCKETS",
    "ReceiverLimits",
    "RecentDocuments",
    "SpanIngest",
    "SpanStats",
    "TOPIC_OTLP_SPANS",
    "attach_otlp",
    "encoding_of",
    "envelopes",
    "rpc_status",
    "shim_partition",
    "trace_response",
    "with_response_ids",
]

log = logging.getLogger(__name__)

TOPIC_OTLP_SPANS = "otlp_spans"
"""The OTel Collector Kafka exporter's default traces topic."""
TOPIC_SPAN_ROWS = "llmpulse.spans"
"""Internal: mapped ``spans`` rows (NDJSON envelopes) on their way to the store."""
OTLP_TOPICS = (TOPIC_OTLP_SPANS, TOPIC_SPAN_ROWS)
TABLE_HEADER = "llmpulse-table"
"""Header of a ``llmpulse.spans`` message whose rows go to another table than ``spans``
(``request_index``: the span and response ids of model calls)."""
ROW_TABLES = frozenset({"spans", "request_index"})


def row_table(headers: Any) -> str:
    """The table of a ``llmpulse.spans`` message's rows, from its headers (a list of
    pairs or a mapping); ``""`` for a table that is not one of :data:`ROW_TABLES`.

    >>> row_table(None), row_table([("llmpulse-table", b"request_index")])
    ('spans', 'request_index')
    >>> row_table({"llmpulse-table": b"alerts"})
    ''
    """
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for k, v in items:
        if k == TABLE_HEADER:
            name = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            return name if name in ROW_TABLES else ""
    return "spans"
OTLP_HTTP_SOURCE = "otlp_http"
"""The ``topic`` of dead letters refused by the HTTP receiver (their ``offset``
is the receive time in nanoseconds, unique per receiver)."""

CONTENT_TYPES = {"application/x-protobuf": "otlp_proto", "application/json": "otlp_json"}
_RESPONSE_TYPES = {"otlp_proto": "application/x-protobuf", "otlp_json": "application/json"}
_DEAD_PAYLOAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """Limits of the OTLP/HTTP receiver."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body, counted after gzip decompression (413 above it)."""
    timeout_s: float = 10.0
    """How long a request may wait for the broker and the store before a 503."""


@dataclass
class SpanStats:
    """Counters of both OTLP entries, served under ``otlp`` at ``/api/stats``."""

    requests: int = 0
    spans: int = 0
    genai_spans: int = 0
    other_spans: int = 0
    rejected_spans: int = 0
    rows_stored: int = 0
    index_rejected: int = 0
    """``request_index`` rows (span and response ids of model calls) the store refused."""
    documents_evicted: int = 0
    """Traces whose retrieved documents were dropped from memory to stay within bounds."""
    log_feedback: int = 0
    """Feedback events taken from log records (``/v1/logs``)."""
    rejected_log_records: int = 0
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Refused requests or messages by HTTP status (or ``kafka``)."""
    outcomes: BatchOutcomes = field(default_factory=BatchOutcomes)
    """Batches of the two agents tried again, and messages held back at a stop."""

    def record(self, mapped: PreparedRequest) -> None:
        self.requests += 1
        self.spans += mapped.total
        self.genai_spans += mapped.genai
        self.other_spans += mapped.other
        self.rejected_spans += len(mapped.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "spans": self.spans, "genai_spans": self.genai_spans,
                "other_spans": self.other_spans, "rejected_spans": self.rejected_spans,
                "rows_stored": self.rows_stored, "index_rejected": self.index_rejected,
                "documents_evicted": self.documents_evicted,
                "log_feedback": self.log_feedback,
                "rejected_log_records": self.rejected_log_records,
                "refused": dict(self.refused), "batches_retried": self.outcomes.retried,
                "held_back": self.outcomes.held_back,
                "last_batch_error": self.outcomes.last_error}


def encoding_of(value: bytes) -> str:
    """The Collector encoding of a Kafka message.

    >>> encoding_of(b' {"resourceSpans": []}'), encoding_of(bytes([10, 0]))
    ('otlp_json', 'otlp_proto')
    """
    return "otlp_json" if value.lstrip()[:1] == b"{" else "otlp_proto"


def rpc_status(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` (``code`` = field 1, ``message`` = field 2) in protobuf.

    >>> rpc_status(3, "bad")
    b'\\x08\\x03\\x12\\x03bad'
    """
    msg = message.encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


Send = Callable[[str, bytes, bytes | None, list[tuple[str, bytes]] | None, int | None],
                Awaitable[Any]]
"""``send(topic, value, key, headers, partition)``: produce; returns an awaitable of the ack."""
Write = Callable[[str, list[bytes]], Awaitable[list[tuple[int, str]]]]
"""``write(table, lines)``: store JSONEachRow lines; (index, reason) of rows the store refused."""


class RecentDocuments(MutableMapping[str, list[str]]):
    """Documents retrieved per trace, for model calls exported after their retrieval.

    Bounded: the least recently written traces go first past ``max_traces``
    traces or ``max_chars`` characters of documents in all (``evicted`` counts
    them; a trace whose documents alone are larger is not kept), and a trace
    is forgotten ``ttl_s`` after it was last written. In memory, per worker:
    the Collector keeps a trace on one partition with ``partition_traces_by_id``.

    >>> now = [0.0]
    >>> docs = RecentDocuments(max_traces=2, max_chars=10, ttl_s=60, clock=lambda: now[0])
    >>> docs["a"] = ["x"]; docs["b"] = ["y"]; docs["c"] = ["z"]
    >>> sorted(docs), docs.get("c"), docs.evicted
    (['b', 'c'], ['z'], 1)
    >>> docs["d"] = ["0123456789"]; sorted(docs), docs.chars, docs.evicted
    (['d'], 10, 3)
    >>> now[0] = 61.0; docs.get("d") is None, docs.chars
    (True, 0)
    """

    def __init__(self, *, max_traces: int = 10_000, max_chars: int = 32 << 20,
                 ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_traces = max_traces
        self.max_chars = max_chars
        self.ttl_s = ttl_s
        self.clock = clock
        self.evicted = 0
        """Traces dropped to stay within ``max_traces`` / ``max_chars`` (not by age)."""
        self.chars = 0
        """Characters of the documents held."""
        self._items: OrderedDict[str, tuple[float, list[str], int]] = OrderedDict()

    def __getitem__(self, key: str) -> list[str]:
        stamp, docs, _ = self._items[key]
        if self.clock() - stamp > self.ttl_s:
            del self[key]
            raise KeyError(key)
        return docs

    def __setitem__(self, key: str, value: list[str]) -> None:
        if key in self._items:
            del self[key]
        size = sum(len(d) for d in value)
        self._items[key] = (self.clock(), value, size)
        self.chars += size
        while len(self._items) > self.max_traces or self.chars > self.max_chars:
            self.chars -= self._items.popitem(last=False)[1][2]
            self.evicted += 1

    def __delitem__(self, key: str) -> None:
        self.chars -= self._items.pop(key)[2]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)


class SpanIngest:
    """Decode, map, publish and store one OTLP export request (either entry).

    ``pool`` decodes and maps the request bodies (by default in this process;
    :class:`MappingPool` with processes puts that work on other cores)."""

    def __init__(self, send: Send, write: Write, *, inference_topic: str, deadletter_topic: str,
                 rows_topic: str = TOPIC_SPAN_ROWS,
                 limits: Limits = DEFAULT_LIMITS, stats: SpanStats | None = None,
                 partitions: int | None = None, pool: MappingPool | None = None) -> None:
        self.send = send
        self.write = write
        self.inference_topic = inference_topic
        self.deadletter_topic = deadletter_topic
        self.rows_topic = rows_topic
        self.limits = limits
        self.stats = stats or SpanStats()
        self.documents = RecentDocuments()
        self.partitions = partitions
        """Partitions of the inference topic (None: leave it to the producer)."""
        self.pool = pool or MappingPool(processes=0, limits=limits, partitions=partitions)
        self._offsets = itertools.count(time.time_ns())

    def next_offset(self) -> int:
        """A unique offset for a dead letter that has no Kafka offset (HTTP)."""
        return max(next(self._offsets), time.time_ns())

    def close(self) -> None:
        """Stop the mapping processes (a later request is mapped in this process)."""
        self.pool.close()

    async def ingest(self, body: bytes, encoding: str, *, source: str, partition: int = 0,
                     offset: int | None = None) -> PreparedRequest:
        """Map ``body`` and hand the results on; :class:`OtlpDecodeError` when it is no
        export request (the caller answers or dead-letters it)."""
        prepared = await self.pool.prepare(body, encoding)
        # a model call whose trace retrieved documents in an earlier request is mapped
        # again with them (rare: an exporter that splits a trace across requests)
        known = {t: d for t in prepared.uncontexted if (d := self.documents.get(t))}
        if known:
            prepared = await self.pool.prepare(body, encoding, known_documents=known)
        for trace, docs in prepared.documents.items():
            self.documents[trace] = (self.documents.get(trace, []) + docs)[
                : self.limits.max_context_passages]
        self.stats.documents_evicted = self.documents.evicted
        acks: list[Awaitable[Any]] = []
        for key, value, part in prepared.inference:
            acks.append(await self.send(self.inference_topic, value, key, None, part))
        for key, value, part in prepared.rows:
            acks.append(await self.send(self.rows_topic, value, key, None, part))
        dead = [DeadLetter(r.payload, f"span {r.trace_id}/{r.span_id}: {r.reason}", source,
                           partition, offset if offset is not None else self.next_offset())
                for r in prepared.rejected]
        if prepared.index:  # feedback may name a model call by span or response id
            acks.append(await self.send(self.rows_topic, prepared.index, None,
                                        [(TABLE_HEADER, b"request_index")], None))
        await self.dead_letter(dead, acks)
        for a in acks:
            await a
        self.stats.record(prepared)
        return prepared

    async def refuse(self, payload: bytes, reason: str, *, source: str, status: str,
                     partition: int = 0, offset: int | None = None) -> None:
        """Count and dead-letter a request or message refused as a whole (with
        ``otlp.redact``, only its size and digest: see :func:`withheld`)."""
        self.stats.refused[status] += 1
        if self.pool.redact_regions is not None:
            payload = withheld(payload)
        off = offset if offset is not None else self.next_offset()
        acks: list[Awaitable[Any]] = []
        await self.dead_letter(
            [DeadLetter(payload[:_DEAD_PAYLOAD_BYTES], reason, source, partition, off)], acks)
        for a in acks:
            await a

    async def dead_letter(self, dead: list[DeadLetter], acks: list[Awaitable[Any]]) -> None:
        if not dead:
            return
        regions = self.pool.redact_regions
        if regions is not None:  # a reason may quote the value it refused
            red = redactor(regions)
            dead = [replace(d, reason=red(d.reason)) for d in dead]
        for d in dead:
            acks.append(await self.send(self.deadletter_topic, d.payload, None, d.headers(), None))
        await self.write("deadletter_events", [orjson.dumps(d.row()) for d in dead])


# -- HTTP ------------------------------------------------------------------------------------


def trace_response(mapped: PreparedRequest) -> ExportTraceServiceResponse:
    """The answer to a traces export: ``partial_success`` counts the rejected spans and
    names up to five reasons (both transports)."""
    resp = ExportTraceServiceResponse()
    if mapped.rejected:
        resp.partial_success.rejected_spans = len(mapped.rejected)
        reasons = sorted({r.reason for r in mapped.rejected})
        resp.partial_success.error_message = (
            f"{len(mapped.rejected)} span(s) rejected: " + "; ".join(reasons[:5]))[:1000]
    return resp


def _response(web: Any, encoding: str, mapped: PreparedRequest) -> Any:
    resp = trace_response(mapped)
    if encoding == "otlp_json":
        return web.bytes(json_format.MessageToJson(resp, indent=None).encode(),
                         content_type="application/json")
    return web.bytes(resp.SerializeToString(), content_type="application/x-protobuf")


def _error(web: Any, encoding: str | None, status: int, message: str,
           headers: dict[str, str] | None = None) -> Any:
    code = {400: 3, 413: 8, 415: 3, 503: 14}.get(status, 2)  # google.rpc.Code
    if encoding == "otlp_proto":
        return web.bytes(rpc_status(code, message), content_type="application/x-protobuf",
                         status=status, headers=headers)
    return web.bytes(orjson.dumps({"code": code, "message": message}),
                     content_type="application/json", status=status, headers=headers)


class BodyError(ValueError):
    """A request body that cannot be read: a broken or unsupported compression."""


async def _read_body(request: Any, limit: int) -> bytes | None:
    """The (decompressed) body, or None when it is larger than ``limit``; BodyError for a
    broken gzip stream or another ``Content-Encoding``.

    The server does not inflate bodies itself (``auto_decompress`` is off,
    :func:`llmpulse.streams.app.new_faust_app`): it inflated every chunk as it
    arrived, on the event loop, before any handler or the token check ran, and went
    on after a 401 or 413 answer. A few MB of gzip holding GBs of zeros stalled every
    route for seconds. Here a chunk is inflated only up to the limit, and a stream
    that does not end with its trailer is refused (it was taken as an empty body)."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("identity", "gzip", "x-gzip"):
        raise BodyError(f"Content-Encoding {coding[:40]!r} is not supported: send gzip or none")
    n = request.content_length
    if n is not None and n > limit:
        return None
    inflate = zlib.decompressobj(wbits=31) if coding != "identity" else None
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        if inflate is not None:
            if inflate.eof:
                raise BodyError("data after the end of the gzip stream")
            try:
                chunk = inflate.decompress(chunk, limit - total + 1)
            except zlib.error as exc:
                raise BodyError(f"broken gzip stream: {exc}") from None
            if inflate.unconsumed_tail:
                return None  # more than the limit inflated: stop reading
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    if inflate is not None:
        if not inflate.eof:
            raise BodyError("the gzip stream is cut short (no end or checksum)")
        if inflate.unused_data:
            raise BodyError("data after the end of the gzip stream")
    return b"".join(chunks)


Refuse = Callable[[bytes, str, str], Awaitable[None]]


def dead_letter_refusals(ingest: SpanIngest, source: str, timeout_s: float) -> Refuse:
    """``refuse(payload, reason, status)``: count and dead-letter a refused request
    through ``ingest``; the answer goes out even when the dead letter is slow."""

    async def refuse(payload: bytes, reason: str, status: str) -> None:
        try:
            await asyncio.wait_for(ingest.refuse(payload, reason, source=source, status=status),
                                   timeout_s)
        except TimeoutError:  # the answer goes out anyway; the count is kept
            log.warning("dead letter not stored in %g s: %s", timeout_s, reason[:200])

    return refuse


async def handle_post(view: Any, request: Any, *, limits: ReceiverLimits, refuse: Refuse,
                      take: Callable[[bytes, str], Awaitable[Any]], stats: Any,
                      respond: Callable[[Any, str, Any], Any]) -> Any:
    """One OTLP/HTTP export request (``/v1/traces``, ``/v1/logs``): 415 for another
    content type, 400 for an unreadable body, 413 over ``limits.max_body_bytes`` or
    with more records than the event limits' ``max_records_per_request``,
    400 for what does not decode, 503 when ``take`` (decode, map, send) is slower
    than ``limits.timeout_s``; else ``respond(view, encoding, take(body, encoding))``."""
    encoding = CONTENT_TYPES.get(request.content_type)
    if encoding is None:
        ctype = request.content_type[:100]
        await refuse(ctype.encode(), f"unsupported content type {ctype!r}", "415")
        return _error(view, None, 415, "Content-Type must be application/x-protobuf "
                      "or application/json")
    try:
        body = await _read_body(request, limits.max_body_bytes)
    except Exception as exc:  # a broken gzip stream, a dropped connection
        reason = f"unreadable body: {type(exc).__name__}: {str(exc)[:200]}"
        await refuse(b"", reason, "400")
        return _error(view, encoding, 400, reason)
    if body is None:
        reason = f"body larger than {limits.max_body_bytes} bytes"
        await refuse(b"", reason, "413")
        return _error(view, encoding, 413, reason)
    try:
        mapped = await asyncio.wait_for(take(body, encoding), limits.timeout_s)
    except OtlpTooLarge as exc:
        await refuse(b"", str(exc), "413")
        return _error(view, encoding, 413, str(exc))
    except OtlpDecodeError as exc:
        await refuse(body, str(exc), "400")
        return _error(view, encoding, 400, str(exc))
    except TimeoutError:
        stats.refused["503"] += 1
        return _error(view, encoding, 503, "the broker or store is slow; retry",
                      headers={"Retry-After": "5"})
    return respond(view, encoding, mapped)



def attach_otlp(app: Any, ingest: SpanIngest, *, limits: ReceiverLimits = ReceiverLimits(),
                batch_messages: int = 100, batch_within_s: float = 0.2,
                positions: dict[tuple[str, int], int] | None = None,
                on_rows: Callable[[list[bytes]], None] | None = None) -> None:
    """Register ``POST /v1/traces`` and the agents of ``otlp_spans`` and the span rows
    on a Faust app. ``positions`` gets the next offset per (topic, partition) once a
    message is done (the worker's lag, which shutdown drains to zero); ``on_rows`` gets
    every stored batch of span rows (the agent-trace signals)."""
    done = positions if positions is not None else {}
    import faust

    refuse = dead_letter_refusals(ingest, OTLP_HTTP_SOURCE, limits.timeout_s)

    async def take(body: bytes, encoding: str) -> Any:
        return await ingest.ingest(body, encoding, source=OTLP_HTTP_SOURCE)

    @app.page("/v1/traces")
    class TracesView(faust.web.View):
        """OTLP/HTTP traces (see the module docstring for the answers)."""

        async def post(self, request: Any) -> Any:
            return await handle_post(self, request, limits=limits, refuse=refuse, take=take,
                                     stats=ingest.stats, respond=_response)

    topic = app.topic(TOPIC_OTLP_SPANS, value_serializer="raw", key_serializer="raw")

    async def map_messages(events: Sequence[Any]) -> None:
        for ev in events:
            value = ev.value
            m = ev.message
            if not value:
                done[(m.topic, m.partition)] = m.offset + 1
                continue
            try:
                await ingest.ingest(value, encoding_of(value), source=m.topic,
                                    partition=m.partition, offset=m.offset)
            except OtlpDecodeError as exc:
                await ingest.refuse(value, str(exc), source=m.topic, status="kafka",
                                    partition=m.partition, offset=m.offset)
            except Exception as exc:  # one message must not stop the partition behind it
                log.exception("otlp_spans %s:%s: mapping failed", m.partition, m.offset)
                await ingest.refuse(value, f"mapping failed: {type(exc).__name__}: {exc}"[:500],
                                    source=m.topic, status="kafka", partition=m.partition,
                                    offset=m.offset)
            done[(m.topic, m.partition)] = m.offset + 1

    def should_stop() -> bool:
        return bool(app.should_stop)

    async def ingest_otlp_spans(stream: Any) -> None:
        # mapped and handed on whole before the stream acks it, or tried again, or held
        # back from the commit at a stop (llmpulse.streams.whole)
        await take_whole(stream, map_messages, max_=batch_messages, within=batch_within_s,
                         should_stop=should_stop, outcomes=ingest.stats.outcomes,
                         what="otlp_spans batch")

    app.agent(topic, name="llmpulse.ingest_otlp_spans")(ingest_otlp_spans)

    rows_topic = app.topic(ingest.rows_topic, value_serializer="raw", key_serializer="raw")

    async def store_rows(events: Sequence[Any]) -> None:
        lines: list[bytes] = []
        sources: list[Any] = []
        index: list[bytes] = []
        unknown: list[DeadLetter] = []
        for ev in events:
            table = row_table(ev.message.headers)
            if table == "request_index":
                index.extend(split_envelope(ev.value or b""))
                continue
            if not table:
                m = ev.message
                unknown.append(DeadLetter((ev.value or b"")[:_DEAD_PAYLOAD_BYTES],
                                          f"unknown {TABLE_HEADER} header", m.topic,
                                          m.partition, m.offset))
                continue
            for line in split_envelope(ev.value or b""):
                lines.append(line)
                sources.append(ev.message)
        if index:
            ingest.stats.index_rejected += len(await ingest.write("request_index", index))
        dead = [DeadLetter(lines[i], reason, sources[i].topic, sources[i].partition,
                           sources[i].offset)
                for i, reason in await ingest.write("spans", lines)] if lines else []
        rows_dead = len(dead)
        dead += unknown
        if dead:
            acks: list[Awaitable[Any]] = []
            await ingest.dead_letter(dead, acks)
            for a in acks:
                await a
        ingest.stats.rows_stored += len(lines) - rows_dead
        if on_rows is not None and lines:
            on_rows(lines)
        for ev in events:
            done[(ev.message.topic, ev.message.partition)] = ev.message.offset + 1

    async def store_span_rows(stream: Any) -> None:
        await take_whole(stream, store_rows, max_=batch_messages, within=batch_within_s,
                         should_stop=should_stop, outcomes=ingest.stats.outcomes,
                         what="span rows batch")

    app.agent(rows_topic, name="llmpulse.store_span_rows")(store_span_rows)


def faust_sender(app: Any) -> Send:
    """:data:`Send` over a Faust app's producer."""
    topics: dict[str, Any] = {}

    async def send(topic: str, value: bytes, key: bytes | None,
                   headers: list[tuple[str, bytes]] | None, partition: int | None) -> Any:
        t = topics.get(topic)
        if t is None:
            t = topics[topic] = app.topic(topic, value_serializer="raw", key_serializer="raw")
        return await t.send(key=key, value=value, headers=headers, partition=partition)

    return send
