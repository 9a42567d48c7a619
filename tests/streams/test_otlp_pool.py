"""OTLP requests prepared in child processes give the same messages as in the
receiver's own process, keep the receiver's answers, and lose nothing when the
pool is closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmpulse.streams.otlp import SpanIngest, trace_response
from llmpulse.streams.otlp_mapping import OtlpDecodeError
from llmpulse.streams.otlp_pool import MappingPool


def _request(trace: int, *kinds: str) -> bytes:
    """A request of spans in one trace: ``chat`` (a model call), ``retrieval`` (two
    documents), ``tool``, ``bad`` (a chat span with negative token counts)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "rag"
    spans = rs.scope_spans.add().spans
    end = time.time_ns()
    for n, kind in enumerate(kinds, 1):
        s = spans.add(trace_id=trace.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"),
                      name=kind, start_time_unix_nano=end - 250_000_000,
                      end_time_unix_nano=end)
        a = s.attributes
        if kind in ("chat", "bad"):
            a.add(key="gen_ai.operation.name").value.string_value = "chat"
            a.add(key="gen_ai.request.model").value.string_value = "gpt-4o"
            a.add(key="gen_ai.response.id").value.string_value = f"chatcmpl-{trace}-{n}"
            a.add(key="gen_ai.usage.output_tokens").value.int_value = -5 if kind == "bad" else 7
        elif kind == "retrieval":
            for i, doc in enumerate(("first passage", "second passage")):
                a.add(key=f"retrieval.documents.{i}.document.content").value.string_value = doc
        else:
            a.add(key="gen_ai.operation.name").value.string_value = "execute_tool"
            a.add(key="gen_ai.tool.name").value.string_value = "search"
    return req.SerializeToString()


@pytest.fixture(scope="module")
def pool() -> Iterator[MappingPool]:
    p = MappingPool(processes=1, partitions=4, min_bytes=0)
    p.start(wait=True)
    yield p
    p.close()


def test_child_process_prepares_the_same_messages(pool: MappingPool) -> None:
    body = _request(7, "retrieval", "chat", "tool", "bad")
    here = asyncio.run(MappingPool(processes=0, partitions=4).prepare(body, "otlp_proto"))
    assert pool.ready
    there = asyncio.run(pool.prepare(body, "otlp_proto"))
    assert (there.genai, there.other, len(there.rejected)) == (1, 2, 1)
    for name in ("inference", "rows", "index", "rejected", "documents", "uncontexted"):
        assert getattr(there, name) == getattr(here, name), name
    event = orjson.loads(there.inference[0][1])
    assert event["context"] == ["first passage", "second passage"]
    assert event["response_id"] == "chatcmpl-7-2"
    assert "output_tokens" in there.rejected[0].reason
    assert pool.fallbacks == 0


def test_decode_errors_come_back_from_the_child(pool: MappingPool) -> None:
    with pytest.raises(OtlpDecodeError, match="malformed protobuf"):
        asyncio.run(pool.prepare(b"\xff\xff", "otlp_proto"))


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: Any, headers: Any, partition: Any) -> Any:
        self.sent.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def write(self, table: str, lines: list[bytes]) -> list[tuple[int, str]]:
        return []

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for topic, value in self.sent if topic == "inference"
                for line in value.split(b"\n")]


def test_documents_of_an_earlier_request_reach_a_model_call_mapped_in_a_child(
        pool: MappingPool) -> None:
    rec = _Recorder()
    ingest = SpanIngest(rec.send, rec.write, inference_topic="inference",
                        deadletter_topic="dead", partitions=4, pool=pool)

    async def run() -> Any:
        await ingest.ingest(_request(9, "retrieval"), "otlp_proto", source="t")
        return await ingest.ingest(_request(9, "chat", "bad"), "otlp_proto", source="t")

    second = asyncio.run(run())
    (event,) = rec.events()
    assert event["context"] == ["first passage", "second passage"]
    assert trace_response(second).partial_success.rejected_spans == 1
    assert ingest.stats.spans == 3 and ingest.stats.rejected_spans == 1
    assert [t for t, _ in rec.sent].count("dead") == 1


def test_requests_before_the_children_are_ready_are_prepared_in_the_caller() -> None:
    p = MappingPool(processes=1, min_bytes=0)
    try:
        got = asyncio.run(p.prepare(_request(4, "chat", "tool"), "otlp_proto"))
        assert (got.genai, got.other, len(got.inference)) == (1, 1, 1)
    finally:
        p.close()


def test_a_closed_pool_prepares_in_the_caller() -> None:
    p = MappingPool(processes=1, min_bytes=0)
    p.start(wait=True)
    p.close()
    got = asyncio.run(p.prepare(_request(3, "chat"), "otlp_proto"))
    assert got.genai == 1 and len(got.inference) == 1
    with pytest.raises(ValueError, match="otlp.map_processes"):
        MappingPool(processes=-2)


def test_small_bodies_are_prepared_in_the_caller() -> None:
    p = MappingPool(processes=1)
    body = _request(5, "chat")
    assert len(body) < p.min_bytes
    try:
        got = asyncio.run(p.prepare(body, "otlp_proto"))
        assert got.genai == 1 and not p.ready  # no child was even started
    finally:
        p.close()
