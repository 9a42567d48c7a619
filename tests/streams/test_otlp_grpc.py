"""The OTLP/gRPC receiver without a broker: the status of each failure, the retry hint,
the guard's answers, a busy port, and the ``otlp:`` settings."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmpulse.auth import INGEST, ApiGuard, create_token
from llmpulse.config import ConfigError, OtlpSettings, load_settings
from llmpulse.events import Limits
from llmpulse.streams.otlp import ReceiverLimits, SpanIngest
from llmpulse.streams.otlp_grpc import OtlpGrpcServer, refusal_for
from llmpulse.streams.otlp_mapping import OtlpDecodeError

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.mark.parametrize(("exc", "code", "dead", "retry"), [
    (OtlpDecodeError("malformed OTLP protobuf: x"), "INVALID_ARGUMENT", True, None),
    (TimeoutError(), "UNAVAILABLE", False, 5),
    (KafkaConnectionError(), "UNAVAILABLE", False, 5),
    (KafkaTimeoutError(), "UNAVAILABLE", False, 5),
    (ConnectionResetError(), "UNAVAILABLE", False, 5),
    (KeyError("trace_id"), "INTERNAL", True, None),
    (ValueError("bad"), "INTERNAL", True, None),
])
def test_status_of_each_failure(exc: BaseException, code: str, dead: bool,
                                retry: int | None) -> None:
    r = refusal_for(exc)
    assert (r.code.name, r.dead_letter, r.retry_after_s) == (code, dead, retry)


class Pipeline:
    """What :class:`SpanIngest` hands on: sent messages and stored rows, in memory.
    ``hold`` keeps every broker ack pending (a broker that does not take the data)."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.sent: list[tuple[str, bytes]] = []
        self.rows: list[tuple[str, list[bytes]]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Any,
                   partition: int | None) -> Any:
        self.sent.append((topic, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.hold:
            ack.set_result(None)
        return ack

    async def write(self, table: str, lines: list[bytes]) -> list[tuple[int, str]]:
        self.rows.append((table, lines))
        return []


def _ingest(p: Pipeline) -> SpanIngest:
    return SpanIngest(p.send, p.write, inference_topic="llmpulse.inference",
                      deadletter_topic="llmpulse.deadletter")


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[OtlpGrpcServer] = []

    async def start(server: OtlpGrpcServer) -> str:
        servers.append(server)
        return f"127.0.0.1:{await server.start('127.0.0.1', 0)}"

    yield start
    for s in servers:
        await s.stop(None)


def _chat_request() -> bytes:
    now = time.time_ns()
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x11" * 16, span_id=b"\x22" * 8, name="chat", kind=3,
        start_time_unix_nano=now - 250_000_000, end_time_unix_nano=now)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    return req.SerializeToString()


async def test_a_broker_that_does_not_take_the_data_is_unavailable_with_a_retry_hint(
        serve: Any) -> None:
    p = Pipeline(hold=True)
    ingest = _ingest(p)
    target = await serve(OtlpGrpcServer(ingest, feedback_topic="llmpulse.feedback",
                                        limits=ReceiverLimits(timeout_s=0.3)))
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(TRACES)(_chat_request(), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    trailing = dict(err.value.trailing_metadata() or ())
    info = error_details_pb2.RetryInfo.FromString(trailing["google.rpc.retryinfo-bin"])
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert info.retry_delay.seconds == 5 and status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert status.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    assert ingest.stats.refused == {"UNAVAILABLE": 1}
    topics = [t for t, _ in p.sent]  # sent, never acknowledged
    assert topics[:2] == ["llmpulse.inference", "llmpulse.spans"]
    assert "llmpulse.deadletter" not in topics
    assert p.rows == []  # a slow broker is no bad request: nothing dead-lettered


async def test_the_guard_answers_for_the_grpc_calls(serve: Any, tmp_path: Path) -> None:
    ingest_token = create_token(tmp_path / "tokens.json", "app", "ingest")
    read_token = create_token(tmp_path / "tokens.json", "reader", "read")
    guard = ApiGuard.from_settings(tmp_path, "127.0.0.1")
    seen: list[tuple[str | None, str, str]] = []

    def authorize(authorization: str | None, method: str, peer: str) -> tuple[int, str]:
        seen.append((authorization, method, peer))
        return guard.check_bearer(authorization, INGEST, target=method, remote=peer)

    p = Pipeline()
    target = await serve(OtlpGrpcServer(_ingest(p), feedback_topic="llmpulse.feedback",
                                        authorize=authorize))
    body = _chat_request()

    async def call(*metadata: tuple[str, str]) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(target) as ch:
            try:
                await ch.unary_unary(TRACES)(body, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    good = ("authorization", f"Bearer {ingest_token}")
    assert await call() == grpc.StatusCode.UNAUTHENTICATED
    assert await call(("authorization", "Basic dXNlcjpwYXNz")) == grpc.StatusCode.UNAUTHENTICATED
    assert await call(good, good) == grpc.StatusCode.UNAUTHENTICATED  # two credentials
    assert await call(("authorization", f"Bearer {read_token}")) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert p.sent == []  # nothing of a refused call reaches the broker or the dead letters
    assert await call(good) == grpc.StatusCode.OK
    assert [t for t, _ in p.sent][:2] == ["llmpulse.inference", "llmpulse.spans"]
    assert seen[-1][1] == TRACES and seen[-1][2].startswith("ipv4:127.0.0.1:")
    assert seen[2][0] == ""


async def test_a_busy_fixed_port_fails_to_start() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = OtlpGrpcServer(_ingest(Pipeline()), feedback_topic="llmpulse.feedback")
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await server.start("127.0.0.1", port)


def test_otlp_settings(tmp_path: Path) -> None:
    assert load_settings(env={}, path=None).otlp == OtlpSettings(grpc=True, grpc_port=0)
    off = load_settings(env={"LLMPULSE_OTLP_GRPC": "false"}, path=None).otlp
    assert off.grpc is False
    yaml = tmp_path / "llmpulse.yaml"
    yaml.write_text("otlp:\n  grpc_port: 4317\n")
    assert load_settings(env={}, path=yaml).otlp.grpc_port == 4317
    assert load_settings(env={"LLMPULSE_OTLP_GRPC_PORT": "4318"}, path=yaml).otlp.grpc_port == 4318
    for text, key in (("otlp:\n  grpc_port: 70000\n", "otlp.grpc_port"),
                      ("otlp:\n  grpc: 'yes'\n", "otlp.grpc"),
                      ("otlp:\n  grpc_port: true\n", "otlp.grpc_port"),
                      ("otlp:\n  http_port: 1\n", "otlp.http_port"),
                      ("otlp:\n  map_processes: 100000\n", "otlp.map_processes"),
                      ("otlp:\n  map_processes: -2\n", "otlp.map_processes"),
                      ("otlp:\n  map_processes: true\n", "otlp.map_processes")):
        yaml.write_text(text)
        with pytest.raises(ConfigError, match=f"^{key}:"):
            load_settings(env={}, path=yaml)
    for n in (-1, 0, 2):  # -1, the default, may be written out
        yaml.write_text(f"otlp:\n  map_processes: {n}\n")
        assert load_settings(env={}, path=yaml).otlp.map_processes == n
    with pytest.raises(ConfigError, match="^LLMPULSE_OTLP_GRPC_PORT:"):
        load_settings(env={"LLMPULSE_OTLP_GRPC_PORT": "abc"}, path=None)


async def test_oversize_messages_are_refused_and_counted(serve: Any) -> None:
    p = Pipeline()
    ingest = _ingest(p)
    target = await serve(OtlpGrpcServer(ingest, feedback_topic="llmpulse.feedback",
                                        limits=ReceiverLimits(max_body_bytes=64 * 1024)))
    codes = []
    async with grpc.aio.insecure_channel(target) as ch:
        for size in (100 * 1024, 10 * 1024 * 1024):  # counted; refused by gRPC itself
            try:
                await ch.unary_unary(TRACES)(b"\n" + b"\0" * size, timeout=30)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        answer = await ch.unary_unary(TRACES)(_chat_request(), timeout=30)
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert ingest.stats.refused == {"RESOURCE_EXHAUSTED": 1}
    assert answer == b"" and ingest.stats.genai_spans == 1  # it keeps serving


async def test_a_request_of_too_many_spans_is_refused_before_it_is_mapped(serve: Any) -> None:
    p = Pipeline()
    ingest = SpanIngest(p.send, p.write, inference_topic="llmpulse.inference",
                        deadletter_topic="llmpulse.deadletter",
                        limits=Limits(max_records_per_request=3))
    target = await serve(OtlpGrpcServer(ingest, feedback_topic="llmpulse.feedback"))
    req = ExportTraceServiceRequest.FromString(_chat_request())
    for i in range(3):
        req.resource_spans.add().scope_spans.add().spans.add(
            trace_id=b"\x33" * 16, span_id=bytes([i + 1]) * 8, name="tool")
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(TRACES)(req.SerializeToString(), timeout=30)
        del req.resource_spans[-1]  # three spans: at the limit
        answer = await ch.unary_unary(TRACES)(req.SerializeToString(), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4 spans in one request; at most 3" in (err.value.details() or "")
    assert ingest.stats.refused == {"RESOURCE_EXHAUSTED": 1}
    assert ingest.stats.spans == 3 and ingest.stats.genai_spans == 1 and answer
