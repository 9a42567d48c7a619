"""OTLP/gRPC into a real ``llmpulse up`` with API tokens: the OTel SDK's gRPC exporter
next to its HTTP exporter, raw calls with bad, oversized and unauthenticated messages,
and feedback log records.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from llmpulse.auth import create_token
from llmpulse.secret import Secret
from tests.conftest import StackProcess, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


class Secured:
    def __init__(self, stack: StackProcess, ingest: str, read: str) -> None:
        self.stack, self.ingest, self.read = stack, ingest, read
        self.target = stack.endpoints["otlp_grpc"].removeprefix("http://")

    def call(self, method: str, body: bytes, token: str | None = "ingest",
             compression: grpc.Compression | None = None) -> tuple[grpc.StatusCode, bytes, Any]:
        """(status, response bytes, the error) of one raw unary call."""
        secret = {"ingest": self.ingest, "read": self.read}.get(token or "", token)
        md = (("authorization", f"Bearer {secret}"),) if token else ()
        with grpc.insecure_channel(self.target) as ch:
            fn = ch.unary_unary(method)
            try:
                out = fn(body, metadata=md, timeout=60, compression=compression)
                return grpc.StatusCode.OK, out, None
            except grpc.RpcError as exc:
                return exc.code(), b"", exc


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    data = tmp_path_factory.mktemp("otlp-grpc") / "data"
    data.mkdir()
    ingest = create_token(data / "tokens.json", "otel-app", "ingest")
    read = create_token(data / "tokens.json", "reader", "read")
    sp = StackProcess(data, stack_env(data)).start(timeout=180)
    sp.token = Secret(read)
    try:
        yield Secured(sp, ingest, read)
        # the gRPC server stops with the stack: calls in flight first, then a clean exit
        rc = sp.stop(timeout=120)
        log = sp.log()
    finally:
        sp.close()  # by pid, if it is still running
    assert rc == 0, log
    assert not (data / "endpoints.json").exists()


def wait_rows(stack: StackProcess, sql: str, n: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = stack.sql(sql)
        if len(rows) >= n:
            return rows
        time.sleep(0.3)
    raise AssertionError(f"{len(rows)} of {n} rows for {sql!r}: {rows}\n{stack.log()}")


def _provider(exporter: Any) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _agent_trace(provider: Any, model: str, t0: int) -> str:
    """A server span around a chat call and a tool call, at fixed times; the trace id."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = provider.get_tracer("tests.otlp_grpc")
    root = tracer.start_span("GET /ask", kind=SpanKind.SERVER, start_time=t0)
    ctx = trace.set_span_in_context(root)
    chat = tracer.start_span(f"chat {model}", context=ctx, kind=SpanKind.CLIENT, start_time=t0,
                             attributes={"gen_ai.operation.name": "chat",
                                         "gen_ai.provider.name": "openai",
                                         "gen_ai.request.model": model,
                                         "gen_ai.response.model": model,
                                         "gen_ai.response.id": f"resp-{model}",
                                         "gen_ai.response.finish_reasons": ["stop"],
                                         "gen_ai.usage.input_tokens": 31,
                                         "gen_ai.usage.output_tokens": 7})
    chat.end(end_time=t0 + 420_000_000)
    tool = tracer.start_span("execute_tool lookup", context=ctx, start_time=t0 + 430_000_000,
                             attributes={"gen_ai.operation.name": "execute_tool",
                                         "gen_ai.tool.name": "lookup_order"})
    tool.set_status(Status(StatusCode.ERROR, "timeout"))
    tool.end(end_time=t0 + 530_000_000)
    root.end(end_time=t0 + 600_000_000)
    return format(root.get_span_context().trace_id, "032x")


_IDS = {"event_id", "request_id", "trace_id", "span_id", "parent_span_id", "ingested_at"}


def _same_shape(rows: list[dict[str, Any]], model: str) -> Any:
    """The rows without their ids, the model's name replaced: what the mapping made."""
    text = json.dumps([{k: v for k, v in r.items() if k not in _IDS} for r in rows],
                      sort_keys=True, default=str)
    return json.loads(text.replace(model, "MODEL"))


def test_sdk_grpc_exporter_maps_spans_as_http_does(secured: Secured,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    sp = secured.stack
    assert sp.endpoints["otlp_grpc"].startswith("http://127.0.0.1:")
    # configured as the README tells an app to: the endpoint and the (URL-encoded) header
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sp.endpoints["otlp_grpc"])
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{secured.ingest}")
    via_grpc = _provider(GrpcExporter())
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS")
    via_http = _provider(HttpExporter(endpoint=sp.endpoints["otlp"] + "/v1/traces",
                                      headers={"Authorization": f"Bearer {secured.ingest}"}))
    t0 = time.time_ns() - 5_000_000_000
    traces = {}
    for name, provider in (("grpc", via_grpc), ("http", via_http)):
        traces[name] = _agent_trace(provider, f"m-{name}", t0)
        provider.shutdown()

    rows = {name: wait_rows(sp, f"SELECT * FROM inference_events FINAL WHERE trace_id = '{t}'", 1)
            for name, t in traces.items()}
    grpc_row, http_row = rows["grpc"][0], rows["http"][0]
    assert (grpc_row["model"], grpc_row["app"], grpc_row["latency_ms"]) == \
        ("m-grpc", "support-bot", 420.0)
    assert (grpc_row["input_tokens"], grpc_row["output_tokens"]) == (31, 7)
    assert _same_shape(rows["grpc"], "m-grpc") == _same_shape(rows["http"], "m-http")
    assert http_row["model"] == "m-http"

    spans = {name: wait_rows(sp, f"SELECT * FROM spans FINAL WHERE trace_id = '{t}' "
                                 "ORDER BY ts, duration_ms DESC", 3)
             for name, t in traces.items()}
    assert [s["step"] for s in spans["grpc"]] == ["other", "llm", "tool"]
    assert spans["grpc"][2]["tool_name"] == "lookup_order"
    assert _same_shape(spans["grpc"], "m-grpc") == _same_shape(spans["http"], "m-http")
    stats = sp.get("/api/stats")["otlp"]
    assert stats["genai_spans"] >= 2 and stats["spans"] >= 6


def _request(trace: bytes, *, start: int, end: int, model: str) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "raw-app"
    span = rs.scope_spans.add().spans.add(trace_id=trace, span_id=b"\x01" * 8, name="chat",
                                          kind=3, start_time_unix_nano=start,
                                          end_time_unix_nano=end)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    span.attributes.add(key="gen_ai.request.model").value.string_value = model
    return req


def test_partial_success_and_malformed_requests(secured: Secured) -> None:
    sp = secured.stack
    now = time.time_ns()
    body = _request(b"\x5b" * 16, start=now, end=now - 1_000_000, model="m-back")
    code, answer, _ = secured.call(TRACES, body.SerializeToString())
    assert code == grpc.StatusCode.OK
    partial = ExportTraceServiceResponse.FromString(answer).partial_success
    assert partial.rejected_spans == 1 and "end time is before its start time" in partial.error_message
    dead = wait_rows(sp, "SELECT reason FROM deadletter_events FINAL WHERE topic = 'otlp_grpc' "
                     f"AND reason LIKE 'span {'5b' * 16}/%'", 1)
    assert "end time is before its start time" in dead[0]["reason"]

    code, _, err = secured.call(TRACES, b"\x0a\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed protobuf" in err.details()
    code, _, err = secured.call(LOGS, b"\x0a\x05\x0a\x03\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, err
    reasons = [r["reason"] for r in wait_rows(
        sp, "SELECT reason FROM deadletter_events FINAL WHERE topic IN ('otlp_grpc', "
        "'otlp_grpc_logs') AND reason NOT LIKE 'span %'", 2)]
    assert sum(r.startswith("malformed protobuf") for r in reasons) >= 2, reasons

    # over the 8 MiB limit: as sent, and as a gzip bomb (9 KiB on the wire)
    code, _, _ = secured.call(TRACES, b"\n" + b"\0" * (9 * 1024 * 1024))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    bomb = b"\x0a\x80\x80\x80\x04" + b"\0" * (9 * 1024 * 1024)
    code, _, _ = secured.call(TRACES, bomb, compression=grpc.Compression.Gzip)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(gzip.compress(bomb)) < 64 * 1024

    refused = sp.get("/api/stats")["otlp"]["refused"]
    assert refused["INVALID_ARGUMENT"] >= 2
    assert refused["RESOURCE_EXHAUSTED"] == 2  # both oversize calls, counted like HTTP's 413
    # it keeps serving
    good = _request(b"\x5c" * 16, start=now - 300_000_000, end=now, model="m-after")
    code, answer, _ = secured.call(TRACES, good.SerializeToString())
    assert code == grpc.StatusCode.OK and ExportTraceServiceResponse.FromString(answer) == \
        ExportTraceServiceResponse()
    rows = wait_rows(sp, f"SELECT model, app, latency_ms FROM inference_events FINAL "
                     f"WHERE trace_id = '{'5c' * 16}'", 1)
    assert rows == [{"model": "m-after", "app": "raw-app", "latency_ms": 300.0}]


def test_tokens_are_checked_on_grpc(secured: Secured) -> None:
    body = ExportTraceServiceRequest().SerializeToString()
    code, _, err = secured.call(TRACES, body, token=None)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.details()
    code, _, _ = secured.call(TRACES, body, token="lp_not-a-token")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _, err = secured.call(LOGS, body, token="read")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "ingest" in err.details()
    code, _, _ = secured.call(TRACES, body, token="ingest")
    assert code == grpc.StatusCode.OK
    rows = wait_rows(secured.stack, "SELECT outcome, target FROM audit_events "
                     "WHERE action = 'auth_failed' AND target LIKE '/opentelemetry.%'", 3)
    assert {r["target"] for r in rows} == {TRACES, LOGS}


def test_feedback_log_records_over_grpc(secured: Secured) -> None:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "support-bot"
    records = rl.scope_logs.add()
    rec = records.log_records.add(event_name="llmpulse.feedback", time_unix_nano=time.time_ns())
    rec.attributes.add(key="llmpulse.feedback.request_id").value.string_value = "grpc-req-1"
    rec.attributes.add(key="llmpulse.feedback.score").value.double_value = -1.0
    bad = records.log_records.add(event_name="llmpulse.feedback", time_unix_nano=time.time_ns())
    bad.attributes.add(key="llmpulse.feedback.request_id").value.string_value = "grpc-req-2"
    bad.attributes.add(key="llmpulse.feedback.score").value.double_value = 7.0
    records.log_records.add(event_name="other.event")
    code, answer, _ = secured.call(LOGS, req.SerializeToString())
    assert code == grpc.StatusCode.OK
    partial = ExportLogsServiceResponse.FromString(answer).partial_success
    assert partial.rejected_log_records == 1 and "score" in partial.error_message
    rows = wait_rows(secured.stack, "SELECT request_id, score, app FROM feedback_events FINAL "
                     "WHERE request_id LIKE 'grpc-req-%'", 1)
    assert rows == [{"request_id": "grpc-req-1", "score": -1.0, "app": "support-bot"}]
    wait_rows(secured.stack, "SELECT reason FROM deadletter_events FINAL "
              "WHERE topic = 'otlp_grpc_logs' AND reason LIKE 'log record:%score%'", 1)


def test_bench_otlp_over_grpc_stores_every_span_it_sent() -> None:
    from llmpulse.bench.otlp import format_table, run

    result = run(quick=True, seconds=1.0, senders=2, transport="grpc")
    assert set(result["runs"]) == {"grpc_batch_10", "grpc_batch_512"}
    for name, r in result["runs"].items():
        assert r["sent"] > 0 and r["failed"] == 0, (name, r)
        assert r["spans_stored"] == r["events_stored"] == r["sent"], (name, r)
    assert " grpc    10" in format_table(result)


def test_a_busy_grpc_port_stops_up_before_it_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data = tmp_path / "data"
        env = stack_env(data, LLMPULSE_OTLP_GRPC_PORT=str(port))
        r = subprocess.run([sys.executable, "-m", "llmpulse.cli", "up"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"otlp.grpc_port: port {port} is busy" in r.stderr
    assert not (data / "endpoints.json").exists()
