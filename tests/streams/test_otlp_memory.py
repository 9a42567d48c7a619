"""The receiver's per-trace memory (documents retrieved per trace) stays bounded,
and what it drops is counted in the receiver's stats."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmpulse.streams.otlp import RecentDocuments, SpanIngest


def _retrieval_request(trace: int, passage: str) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "rag"
    span = rs.scope_spans.add().spans.add(
        trace_id=trace.to_bytes(16, "big"), span_id=b"\1" * 8, name="retrieve",
        start_time_unix_nano=time.time_ns() - 100_000_000, end_time_unix_nano=time.time_ns())
    for i in range(3):
        span.attributes.add(key=f"retrieval.documents.{i}.document.content").value.string_value \
            = passage
    return req.SerializeToString()


def test_documents_per_trace_are_bounded_and_evictions_counted() -> None:
    sent: list[tuple[str, bytes]] = []

    async def send(topic: str, value: bytes, key: Any, headers: Any, partition: Any) -> Any:
        sent.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def write(table: str, lines: list[bytes]) -> list[tuple[int, str]]:
        return []

    ingest = SpanIngest(send, write, inference_topic="inference", deadletter_topic="dead")
    ingest.documents = RecentDocuments(max_traces=1_000, max_chars=30_000)

    async def run() -> None:
        for trace in range(1, 201):  # 200 traces x 3 passages x 1,000 characters
            await ingest.ingest(_retrieval_request(trace, "x" * 1_000), "otlp_proto", source="t")

    asyncio.run(run())
    docs = ingest.documents
    assert len(docs) == 10 and docs.chars == 30_000  # the newest 10 traces fit
    assert ingest.stats.documents_evicted == docs.evicted == 190
    assert ingest.stats.as_dict()["documents_evicted"] == 190
    assert (200).to_bytes(16, "big").hex() in docs and (1).to_bytes(16, "big").hex() not in docs
    assert ingest.stats.spans == 200 and len([t for t, _ in sent if t == "llmpulse.spans"]) == 200
