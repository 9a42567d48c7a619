"""One OTLP traces export request, from its body to the Kafka messages it becomes.

:func:`prepare` decodes and maps a request body
(:mod:`llmpulse.streams.otlp_mapping`) and encodes what it maps to as the
messages the receiver produces: NDJSON envelopes of inference events keyed
as the client shim keys them, envelopes of ``spans`` rows, and the
``request_index`` rows of the model calls' span and response ids. Bytes in,
bytes out, no Faust and no I/O, so it can run in another process
(:mod:`llmpulse.streams.otlp_pool`): returning the mapped events as Python
objects would cost the receiver more to unpickle (~18 us a span) than to map.

>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
...     ExportTraceServiceRequest)
>>> req = ExportTraceServiceRequest()
>>> rs = req.resource_spans.add()
>>> rs.resource.attributes.add(key="service.name").value.string_value = "support"
>>> span = rs.scope_spans.add().spans.add(trace_id=bytes(range(1, 17)),
...     span_id=bytes(range(1, 9)), start_time_unix_nano=1_700_000_000_000_000_000,
...     end_time_unix_nano=1_700_000_000_250_000_000)
>>> span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
>>> p = prepare(req.SerializeToString(), "otlp_proto", now_ms=1_700_000_000_000)
>>> p.genai, p.other, len(p.inference), len(p.rows), p.index.count(b"\\n") + 1
(1, 0, 1, 1, 1)
>>> sorted(p.uncontexted)
['0102030405060708090a0b0c0d0e0f10']
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmpulse.events import DEFAULT_LIMITS, Limits
from llmpulse.streams.otlp_identity import index_rows
from llmpulse.streams.otlp_mapping import MappedRequest, RejectedSpan, decode_traces, map_request
from llmpulse.streams.otlp_redact import redactor

__all__ = [
    "ENVELOPE_MAX_BYTES",
    "SHIM_BUCKETS",
    "PreparedRequest",
    "envelopes",
    "prepare",
    "shim_partition",
    "with_response_ids",
]

SHIM_BUCKETS = 64
"""The client shim's default ``buckets``. Events are keyed as the shim keys them and
sent to the partition librdkafka's default partitioner (CRC-32 of the key) picks
for that key, so the feedback an app sends through the shim for an OTel-sourced
request (``request_id`` = trace id) lands on the partition of its inference."""
ENVELOPE_MAX_BYTES = 512 << 10

def shim_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default ``consistent_random`` partitioner picks.

    >>> [shim_partition(key, 8) for key in (b"0", b"1", b"49")]
    [1, 7, 0]
    """
    return zlib.crc32(key) % partitions


def envelopes(events: list[dict[str, Any]], *, buckets: int = SHIM_BUCKETS,
              max_bytes: int = ENVELOPE_MAX_BYTES, key_field: str = "request_id",
              partitions: int | None = None) -> list[tuple[bytes, bytes, int | None]]:
    """(key, NDJSON value, partition) messages for ``events``, keyed as the shim keys them.

    An event's key is its bucket, CRC-32 of ``key_field`` modulo ``buckets``,
    as ASCII digits. Without ``partitions`` an envelope holds one bucket's
    events and the producer picks the partition from the key; with them it
    holds the events of every bucket that :func:`shim_partition` puts on one
    partition (fewer, larger messages), sent to that partition explicitly.
    An envelope is at most ``max_bytes``.

    >>> evs = [{"request_id": "r1", "n": 1}, {"request_id": "r2", "n": 2},
    ...        {"request_id": "r1", "n": 3}]
    >>> [(k, v.count(b"\\n") + 1, p) for k, v, p in envelopes(evs)]
    [(b'49', 2, None), (b'11', 1, None)]
    >>> [(k, v.count(b"\\n") + 1, p) for k, v, p in envelopes(evs, partitions=2)]
    [(b'49', 2, 0), (b'11', 1, 1)]
    >>> len(envelopes(evs, max_bytes=30))
    3
    """
    crc = zlib.crc32
    keys = [str(b).encode() for b in range(buckets)]
    part_of = [shim_partition(k, partitions) for k in keys] if partitions else None
    out: list[tuple[bytes, bytes, int | None]] = []
    open_: dict[int, tuple[bytes, list[bytes], int]] = {}
    for ev in events:
        b = crc(ev[key_field].encode()) % buckets
        slot = part_of[b] if part_of is not None else b
        line = orjson.dumps(ev)
        key, lines, size = open_.get(slot, (keys[b], [], 0))
        if lines and size + len(line) + 1 > max_bytes:
            out.append((key, b"\n".join(lines), slot if part_of is not None else None))
            key, lines, size = keys[b], [], 0
        lines.append(line)
        open_[slot] = (key, lines, size + len(line) + 1)
    out.extend((key, b"\n".join(lines), slot if part_of is not None else None)
               for slot, (key, lines, _) in open_.items())
    return out


def with_response_ids(mapped: MappedRequest) -> list[bytes]:
    """Put each model call's ``gen_ai.response.id`` on its event (``response_id``, which
    the feedback join reads and the event tables ignore) and return the ``request_index``
    rows of the events' span and response ids (:mod:`llmpulse.streams.otlp_identity`)."""
    ids = {r["event_id"]: r["response_id"] for r in mapped.spans
           if r["response_id"] and r["event_id"]}
    if ids:
        for ev in mapped.events:
            rid = ids.get(ev["event_id"])
            if rid:
                ev["response_id"] = rid
    return index_rows(mapped.events)


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """What one export request becomes: its messages, ready to produce, and its counts."""

    inference: list[tuple[bytes, bytes, int | None]] = field(default_factory=list)
    """Envelopes of validated ``inference/v1`` events."""
    rows: list[tuple[bytes, bytes, int | None]] = field(default_factory=list)
    """Envelopes of ``spans`` rows."""
    index: bytes = b""
    """``request_index`` rows (JSONEachRow), empty when there are none."""
    rejected: list[RejectedSpan] = field(default_factory=list)
    genai: int = 0
    other: int = 0
    documents: dict[str, list[str]] = field(default_factory=dict)
    """Retrieved documents found in this request, by trace id (hex)."""
    uncontexted: frozenset[str] = frozenset()
    """Trace ids of the model calls mapped without retrieved documents (accepted or
    rejected): those whose trace has documents from earlier requests are mapped again
    with them."""

    @property
    def total(self) -> int:
        return self.genai + self.other + len(self.rejected)


def prepare(body: bytes, encoding: str, *, limits: Limits = DEFAULT_LIMITS,
            partitions: int | None = None,
            known_documents: Mapping[str, list[str]] | None = None,
            now_ms: int | None = None,
            redact_regions: tuple[str, ...] | None = None) -> PreparedRequest:
    """Decode, map and encode one export request body; :class:`OtlpDecodeError` when it
    is no export request in ``encoding`` (:class:`OtlpTooLarge` when it holds more than
    ``limits.max_records_per_request`` spans). ``known_documents``: documents retrieved by
    earlier requests, by trace id (see :func:`map_request`). ``redact_regions`` (None:
    off): redact personal data, with these phone regions (empty: the defaults)."""
    req = decode_traces(body, encoding, max_spans=limits.max_records_per_request)
    mapped = map_request(req, now_ms=now_ms, limits=limits,
                         known_documents=known_documents,
                         redact=None if redact_regions is None else redactor(redact_regions))
    index = with_response_ids(mapped)
    uncontexted = {ev["trace_id"] for ev in mapped.events if "context" not in ev}
    uncontexted.update(r.trace_id for r in mapped.rejected)
    return PreparedRequest(
        inference=envelopes(mapped.events, partitions=partitions),
        rows=envelopes(mapped.spans, key_field="trace_id", partitions=partitions),
        index=b"\n".join(index), rejected=mapped.rejected, genai=mapped.genai,
        other=mapped.other, documents=mapped.documents, uncontexted=frozenset(uncontexted))
