"""OpenTelemetry spans into a real ``llmpulse up``: the OTel SDK's OTLP/HTTP exporter,
hand-built OTLP/JSON and gzip bodies, refused bodies, the ``otlp_spans`` topic and tokens.

The SDK test builds an agent trace (an HTTP server span, an agent invocation,
a retrieval with OpenInference documents, chat calls in the current and the
older conventions, a tool call, an error and a timeout, a call with content
capture off) and checks the rows in ``inference_events`` and ``spans``.
"""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from llmpulse.auth import create_token
from llmpulse.harness import wait_for
from llmpulse.secret import Secret
from tests.conftest import StackProcess, module_stack, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    yield from module_stack(tmp_path_factory, "otlp")


def wait_rows(stack: StackProcess, sql: str, n: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = stack.sql(sql)
        if len(rows) >= n:
            return rows
        time.sleep(0.3)
    raise AssertionError(f"{len(rows)} of {n} rows for {sql!r}: {rows}\n{stack.log()}")


def post(url: str, body: bytes, ctype: str, **headers: str) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": ctype, **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _sdk(endpoint: str, service: str, headers: dict[str, str] | None = None) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers or {})
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_sdk_exporter_agent_trace_lands_in_inference_events_and_spans(
        stack: StackProcess) -> None:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = _sdk(stack.endpoints["otlp"], "support-bot")
    tracer = provider.get_tracer("tests.otlp")
    msgs_in = json.dumps([{"role": "user", "parts": [{"type": "text",
                                                      "content": "Where is my parcel?"}]}])
    msgs_out = json.dumps([{"role": "assistant", "finish_reason": "stop",
                            "parts": [{"type": "text", "content": "It ships Monday."}]}])
    with tracer.start_as_current_span("GET /ask", kind=SpanKind.SERVER) as root, \
            tracer.start_as_current_span("invoke_agent helper") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        agent.set_attribute("gen_ai.agent.name", "helper")
        with tracer.start_as_current_span("retrieve") as ret:
            ret.set_attribute("openinference.span.kind", "RETRIEVER")
            ret.set_attribute("retrieval.documents.0.document.content", "Parcels ship Monday.")
            ret.set_attribute("retrieval.documents.1.document.content", "Returns take 5 days.")
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as s:
            s.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 31, "gen_ai.usage.output_tokens": 7,
                "gen_ai.input.messages": msgs_in, "gen_ai.output.messages": msgs_out,
                "gen_ai.system_instructions": json.dumps([{"type": "text",
                                                           "content": "Be brief."}]),
                "gen_ai.response.finish_reasons": ["stop"], "gen_ai.response.id": "chatcmpl-1"})
            time.sleep(0.01)
        with tracer.start_as_current_span("execute_tool lookup") as tool:
            tool.set_attribute("gen_ai.operation.name", "execute_tool")
            tool.set_attribute("gen_ai.tool.name", "lookup_order")
        with tracer.start_as_current_span("openai.chat") as old:  # OpenLLMetry, older
            old.set_attributes({
                "gen_ai.system": "openai", "llm.request.type": "chat",
                "gen_ai.request.model": "gpt-3.5-turbo", "llm.usage.prompt_tokens": 11,
                "llm.usage.completion_tokens": 4, "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "older prompt",
                "gen_ai.completion.0.content": "older answer",
                "gen_ai.completion.0.finish_reason": "length"})
        with tracer.start_as_current_span("chat events") as ev:
            ev.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.system": "mistral_ai",
                               "gen_ai.request.model": "mistral-small-latest",
                               "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 6})
            ev.add_event("gen_ai.content.prompt", {"gen_ai.prompt": "prompt in an event"})
            ev.add_event("gen_ai.content.completion", {"gen_ai.completion": "answer in an event"})
        with tracer.start_as_current_span("chat failing") as err:
            err.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                                "error.type": "openai.RateLimitError"})
            err.set_status(Status(StatusCode.ERROR, "429"))
        with tracer.start_as_current_span("chat slow") as slow:
            slow.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                                 "error.type": "openai.APITimeoutError"})
            slow.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span("chat private") as quiet:  # content capture off
            quiet.set_attributes({"gen_ai.operation.name": "chat",
                                  "gen_ai.request.model": "gpt-4o-mini",
                                  "gen_ai.usage.input_tokens": 9,
                                  "gen_ai.usage.output_tokens": 3})
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()

    rows = wait_rows(stack, f"SELECT * FROM inference_events FINAL WHERE trace_id = '{trace_id}' "
                     "ORDER BY ts", 6)
    by_model = {r["model"]: r for r in rows}
    assert len(rows) == 6, rows
    assert {r["app"] for r in rows} == {"support-bot"}
    assert {r["request_id"] for r in rows} == {trace_id}
    cur = next(r for r in rows if r["model_version"] == "gpt-4o-2024-08-06")
    assert cur["model"] == "gpt-4o" and cur["status"] == "ok"
    assert (cur["input_tokens"], cur["output_tokens"]) == (31, 7)
    assert cur["prompt"] == "Be brief.\nWhere is my parcel?"
    assert cur["response"] == "It ships Monday."
    assert cur["context"] == ["Parcels ship Monday.", "Returns take 5 days."]
    assert cur["latency_ms"] >= 10
    assert len(cur["span_id"]) == 16 and len(cur["parent_span_id"]) == 16
    old = by_model["gpt-3.5-turbo"]
    assert (old["input_tokens"], old["output_tokens"]) == (11, 4)
    assert (old["prompt"], old["response"]) == ("older prompt", "older answer")
    evs = by_model["mistral-small-latest"]
    assert (evs["prompt"], evs["response"]) == ("prompt in an event", "answer in an event")
    failing = [r for r in rows if r["error_type"]]
    assert sorted((r["status"], r["error_type"]) for r in failing) == [
        ("error", "openai.RateLimitError"), ("timeout", "openai.APITimeoutError")]
    quiet_row = by_model["gpt-4o-mini"]
    assert (quiet_row["prompt"], quiet_row["response"], quiet_row["status"]) == ("", "", "ok")
    assert (quiet_row["input_tokens"], quiet_row["output_tokens"]) == (9, 3)

    spans = wait_rows(stack, f"SELECT * FROM spans FINAL WHERE trace_id = '{trace_id}'", 10)
    steps = sorted(s["step"] for s in spans)
    assert steps == ["agent", "llm", "llm", "llm", "llm", "llm", "llm", "other", "retrieval",
                     "tool"], steps
    by_name = {s["name"]: s for s in spans}
    assert by_name["GET /ask"]["parent_span_id"] == "" and by_name["GET /ask"]["kind"] == \
        "SPAN_KIND_SERVER"
    agent_id = by_name["invoke_agent helper"]["span_id"]
    assert by_name["execute_tool lookup"]["parent_span_id"] == agent_id
    assert by_name["execute_tool lookup"]["tool_name"] == "lookup_order"
    assert by_name["chat gpt-4o"]["finish_reasons"] == ["stop"]
    assert by_name["chat gpt-4o"]["provider"] == "openai"
    assert by_name["chat gpt-4o"]["response_id"] == "chatcmpl-1"
    assert by_name["openai.chat"]["finish_reasons"] == ["length"]
    assert by_name["chat gpt-4o"]["event_id"] == cur["event_id"]
    # content stays out of the spans row's attributes
    assert not any(k.startswith(("gen_ai.input", "gen_ai.prompt.", "retrieval.documents"))
                   for s in spans for k in s["attributes"])
    steps = stack.get(f"/api/query?name=trace&trace_id={trace_id}")["rows"]
    assert [r["name"] for r in steps][:2] == ["GET /ask", "invoke_agent helper"]
    assert len(steps) == 10
    otlp = stack.get("/api/stats")["otlp"]
    assert otlp["genai_spans"] >= 6 and otlp["other_spans"] >= 4


def _json_request(trace: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "json-app"}}]},
        "scopeSpans": [{"scope": {"name": "hand"}, "spans": spans}]}]}


def _json_span(trace: str, span: str, start_ns: int, end_ns: int, **attrs: Any) -> dict[str, Any]:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, int):
            return {"intValue": str(v)}  # OTLP/JSON: int64 as a string
        return {"stringValue": v}

    return {"traceId": trace, "spanId": span, "name": "chat", "kind": 3,
            "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(end_ns),
            "attributes": [{"key": k.replace("__", "."), "value": value(v)}
                           for k, v in attrs.items()],
            "status": {}}


def test_json_gzip_and_partial_success(stack: StackProcess) -> None:
    now = time.time_ns()
    trace = "5a" * 16
    good = _json_span(trace, "01" * 8, now - 400_000_000, now, gen_ai__operation__name="chat",
                      gen_ai__request__model="m-json", gen_ai__usage__input_tokens=3,
                      gen_ai__usage__output_tokens=2)
    backwards = _json_span(trace, "02" * 8, now, now - 1_000_000, gen_ai__operation__name="chat",
                           gen_ai__request__model="m-json")
    zero_ids = _json_span("00" * 16, "03" * 8, now - 1000, now, gen_ai__operation__name="chat")
    body = json.dumps(_json_request(trace, [good, backwards, zero_ids])).encode()
    status, answer, ctype = post(stack.endpoints["otlp"] + "/v1/traces", gzip.compress(body),
                                 "application/json", **{"Content-Encoding": "gzip"})
    assert status == 200 and ctype.startswith("application/json"), answer
    partial = json.loads(answer)["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "end time is before its start time" in partial["errorMessage"]
    assert "trace_id" in partial["errorMessage"]
    rows = wait_rows(stack, f"SELECT model, latency_ms, input_tokens, app FROM inference_events "
                     f"FINAL WHERE trace_id = '{trace}'", 1)
    assert rows == [{"model": "m-json", "latency_ms": 400.0, "input_tokens": 3,
                     "app": "json-app"}]
    dead = wait_rows(stack, "SELECT reason FROM deadletter_events FINAL WHERE topic = 'otlp_http' "
                     f"AND reason LIKE 'span {trace}/%'", 1)
    assert "end time is before its start time" in dead[0]["reason"]

    # the same span again (an exporter retry) stores no duplicate: once ingest has stored it
    stored_before = stack.get("/api/stats")["stored"].get("llmpulse.inference", 0)
    status, answer, _ = post(stack.endpoints["otlp"] + "/v1/traces",
                             json.dumps(_json_request(trace, [good])).encode(), "application/json")
    assert status == 200 and json.loads(answer) == {}
    wait_for(lambda: stack.get("/api/stats")["stored"].get("llmpulse.inference", 0)
             > stored_before, 60, "the retried span through ingest", every=0.2)
    assert stack.sql(f"SELECT count() AS n FROM inference_events FINAL WHERE trace_id = "
                     f"'{trace}'") == [{"n": 1}]


def test_refused_bodies_are_answered_counted_and_dead_lettered(stack: StackProcess) -> None:
    url = stack.endpoints["otlp"] + "/v1/traces"
    status, answer, ctype = post(url, b"\x0a\xff\xff\xff", "application/x-protobuf")
    assert status == 400 and ctype == "application/x-protobuf"
    from google.rpc.status_pb2 import Status  # shipped with the OTLP exporter

    assert "malformed protobuf" in Status.FromString(answer).message
    status, answer, _ = post(url, b'{"resourceSpans": [', "application/json")
    assert status == 400 and b"malformed JSON" in answer
    status, answer, _ = post(url, b'{"resourceSpans": [{"scopeSpans": [{"spans": '
                             b'[{"traceId": "zz"}]}]}]}', "application/json")
    assert status == 400 and b"not hex" in answer
    # 9 MiB of zeros: 9 KiB on the wire, over the 8 MiB limit once decompressed
    bomb = gzip.compress(b"\0" * (9 * 1024 * 1024))
    status, answer, _ = post(url, bomb, "application/x-protobuf", **{"Content-Encoding": "gzip"})
    assert status == 413, answer
    # 20,001 empty spans: refused whole before they are mapped, in either encoding
    many = b'{"resourceSpans": [{"scopeSpans": [{"spans": [' + b",".join(
        [b"{}"] * 20_001) + b"]}]}]}"
    status, answer, _ = post(url, many, "application/json")
    assert status == 413 and b"20001 spans in one request" in answer, answer
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for _ in range(20_001):
        scope.spans.add()
    status, answer, _ = post(url, req.SerializeToString(), "application/x-protobuf")
    assert status == 413 and "20001 spans" in Status.FromString(answer).message
    status, answer, _ = post(url, b"hello", "text/plain")
    assert status == 415 and b"application/x-protobuf" in answer
    status, _, _ = post(url, b"a=1", "application/x-www-form-urlencoded")
    assert status == 415
    refused = stack.get("/api/stats")["otlp"]["refused"]
    assert refused["400"] >= 3 and refused["413"] >= 3 and refused["415"] >= 2
    reasons = [r["reason"] for r in wait_rows(
        stack, "SELECT reason FROM deadletter_events FINAL WHERE topic = 'otlp_http' "
        "AND reason NOT LIKE 'span %'", 8)]
    assert any(r.startswith("malformed protobuf") for r in reasons)
    assert any(r.startswith("malformed JSON") for r in reasons)
    assert any(r.startswith("body larger than") for r in reasons)
    assert any(r.startswith("20001 spans in one request") for r in reasons)
    assert any(r.startswith("unsupported content type 'text/plain'") for r in reasons)
    assert stack.get("/health")["status"] == "ok"
    # a browser page of another origin is refused before the receiver
    status, _, _ = post(url, b"", "application/x-protobuf", Origin="http://evil.example")
    assert status == 403


def test_collector_kafka_encodings_on_otlp_spans(stack: StackProcess) -> None:
    from confluent_kafka import Producer
    from google.protobuf import json_format

    now = time.time_ns()
    msgs = {}
    for enc, trace in (("otlp_proto", "7b" * 16), ("otlp_json", "7c" * 16)):
        body = _json_request(trace, [_json_span(
            trace, "0a" * 8, now - 50_000_000, now, gen_ai__operation__name="chat",
            gen_ai__request__model=f"m-{enc}", gen_ai__usage__output_tokens=8)])
        if enc == "otlp_json":
            msgs[enc] = json.dumps(body).encode()
        else:  # the protobuf form of the same request (ids as bytes)
            span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
            span["traceId"] = bytes.fromhex(span["traceId"])
            span["spanId"] = bytes.fromhex(span["spanId"])
            import base64

            span["traceId"] = base64.b64encode(span["traceId"]).decode()
            span["spanId"] = base64.b64encode(span["spanId"]).decode()
            msgs[enc] = json_format.ParseDict(body, ExportTraceServiceRequest()).SerializeToString()
    p = Producer({"bootstrap.servers": stack.endpoints["kafka"]})
    for value in (*msgs.values(), b"\xff\xfe not an export request"):
        p.produce("otlp_spans", value)
    assert p.flush(30) == 0
    rows = wait_rows(stack, "SELECT model, output_tokens, app FROM inference_events FINAL "
                     "WHERE model IN ('m-otlp_proto', 'm-otlp_json') ORDER BY model", 2)
    assert rows == [{"model": "m-otlp_json", "output_tokens": 8, "app": "json-app"},
                    {"model": "m-otlp_proto", "output_tokens": 8, "app": "json-app"}]
    dead = wait_rows(stack, "SELECT reason FROM deadletter_events FINAL "
                     "WHERE topic = 'otlp_spans'", 1)
    assert dead[0]["reason"].startswith("malformed protobuf")


def test_ingest_token_writes_spans_and_nothing_else(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ingest = create_token(data / "tokens.json", "otel-app", "ingest")
    read = create_token(data / "tokens.json", "reader", "read")
    sp = StackProcess(data, stack_env(data)).start(timeout=180)
    try:
        url = sp.endpoints["otlp"] + "/v1/traces"
        empty = ExportTraceServiceRequest().SerializeToString()
        assert post(url, empty, "application/x-protobuf")[0] == 401
        assert post(url, empty, "application/x-protobuf",
                    Authorization=f"Bearer {read}")[0] == 403
        # the SDK sends the token the way OTEL_EXPORTER_OTLP_HEADERS configures it
        provider = _sdk(sp.endpoints["otlp"], "secured-app",
                        headers={"Authorization": f"Bearer {ingest}"})
        with provider.get_tracer("t").start_as_current_span("chat") as s:
            s.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "m-sec"})
        provider.shutdown()
        sp.token = Secret(read)
        rows = wait_rows(sp, "SELECT app FROM inference_events FINAL WHERE model = 'm-sec'", 1)
        assert rows == [{"app": "secured-app"}]
        status, answer, _ = post(url, empty, "application/x-protobuf",
                                 Authorization=f"Bearer {ingest}")
        assert status == 200 and ExportTraceServiceResponse.FromString(answer) == \
            ExportTraceServiceResponse()
        req = urllib.request.Request(sp.endpoints["http"] + "/api/stats",
                                     headers={"Authorization": f"Bearer {ingest}"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=30)
        assert exc.value.code == 403
    finally:
        sp.close()  # by pid, with the broker a failed stop would leave behind


def test_events_are_keyed_and_partitioned_as_the_shim_does(broker: Any) -> None:
    """librdkafka (the shim's client) puts each bucket key on the partition the receiver
    computes, so feedback sent through the shim meets its OTel-sourced inference."""
    import uuid

    from confluent_kafka import Producer

    from llmpulse.streams.otlp import SHIM_BUCKETS, envelopes, shim_partition

    topic = f"otlp-partitions-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 8})
    events = [{"request_id": f"{i:032x}"} for i in range(40)]
    keys = [k for k, _, _ in envelopes(events)]
    grouped = envelopes(events, partitions=8)
    assert all(shim_partition(k, 8) == p for k, _, p in grouped) and len(grouped) <= 8
    assert all(0 <= int(k) < SHIM_BUCKETS for k in keys) and len(set(keys)) > 8
    landed: dict[bytes, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        landed[msg.key()] = msg.partition()

    p = Producer({"bootstrap.servers": broker.bootstrap})
    for k in keys:
        p.produce(topic, b"x", key=k, on_delivery=on_delivery)
    assert p.flush(30) == 0
    assert landed == {k: shim_partition(k, 8) for k in keys}


def test_bench_otlp_quick_stores_every_span_it_sent() -> None:
    from llmpulse.bench.otlp import format_table, run

    result = run(quick=True, seconds=1.5, senders=2)
    for name, r in result["runs"].items():
        assert r["sent"] > 0 and r["failed"] == 0, (name, r)
        assert r["spans_stored"] == r["events_stored"] == r["sent"], (name, r)
        assert r["spans_per_s"] > 0 and r["lag_p99_ms"] >= r["lag_p50_ms"] >= 0
        cpu = r.get("cpu_ms_per_1k_spans")
        if cpu is not None:  # Linux: the broker's part holds its object server's CPU too
            assert cpu["broker"] > 0 and cpu["total"] >= cpu["broker"] + cpu["engine"]
    assert "spans/s" in format_table(result)


class _OpenAIStub:
    """A local OpenAI-compatible chat endpoint with fixed usage (17 in, 5 out)."""

    def __enter__(self) -> str:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                time.sleep(0.02)
                data = json.dumps({
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": 1700000000,
                    "model": body["model"] + "-2024-08-06",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "It ships Monday."}}],
                    "usage": {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_openai_client_under_openllmetry_with_and_without_content(
        stack: StackProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``openai`` client, instrumented by OpenLLMetry
    (``opentelemetry-instrumentation-openai``), exporting through the SDK's OTLP/HTTP
    exporter: one inference row per call, tokens equal to the stub's usage, text only
    when content capture is on."""
    import openai
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    provider = _sdk(stack.endpoints["otlp"], "openllmetry-app")
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with _OpenAIStub() as base_url:
            client = openai.OpenAI(base_url=base_url, api_key="test-key")
            monkeypatch.setenv("TRACELOOP_TRACE_CONTENT", "true")
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Where is my parcel?"}])
            monkeypatch.setenv("TRACELOOP_TRACE_CONTENT", "false")
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "A private question"}])
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    rows = wait_rows(stack, "SELECT model, model_version, input_tokens, output_tokens, prompt, "
                     "response, latency_ms, status FROM inference_events FINAL "
                     "WHERE app = 'openllmetry-app' ORDER BY ts", 2)
    assert len(rows) == 2
    on, off = rows
    for r in rows:
        assert (r["model"], r["model_version"]) == ("gpt-4o", "gpt-4o-2024-08-06")
        assert (r["input_tokens"], r["output_tokens"], r["status"]) == (17, 5, "ok")
        assert r["latency_ms"] > 0
    assert (on["prompt"], on["response"]) == ("Where is my parcel?", "It ships Monday.")
    assert (off["prompt"], off["response"]) == ("", "")


def test_redaction_at_the_receiver(stack_factory: Any) -> None:
    """``otlp.redact`` on (``LLMPULSE_OTLP_REDACT``): what the SDK exports with personal
    data is stored without it, in every table it reaches, over HTTP and over the
    logs endpoint; nothing else of the span changes."""
    sp = stack_factory(LLMPULSE_OTLP_REDACT="true").start(timeout=180)
    email, phone = "jane.doe@example.com", "+44 20 7946 0958"
    provider = _sdk(sp.endpoints["otlp"], "support-bot")
    tracer = provider.get_tracer("tests.otlp")
    with tracer.start_as_current_span("GET /ask") as root:
        with tracer.start_as_current_span("retrieve") as ret:
            ret.set_attribute("retrieval.documents.0.document.content", f"Account of {email}")
        with tracer.start_as_current_span(f"chat for {email}") as s:
            s.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                "gen_ai.prompt.0.content": f"I am {email}, call me on {phone}",
                "gen_ai.completion.0.content": f"Noted, {phone} it is.",
                "enduser.id": email})
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()
    rows = wait_rows(sp, f"SELECT * FROM inference_events FINAL WHERE trace_id = '{trace_id}'", 1)
    assert rows[0]["prompt"] == "I am [EMAIL], call me on [PHONE]"
    assert rows[0]["response"] == "Noted, [PHONE] it is."
    assert rows[0]["context"] == ["Account of [EMAIL]"]
    assert rows[0]["model"] == "gpt-4o"
    spans = wait_rows(sp, f"SELECT name, attributes FROM spans FINAL WHERE trace_id = '{trace_id}'",
                      3)
    assert {r["name"] for r in spans} == {"GET /ask", "retrieve", "chat for [EMAIL]"}
    assert any(r["attributes"].get("enduser.id") == "[EMAIL]" for r in spans), spans
    feedback = {"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "support-bot"}}]},
        "scopeLogs": [{"logRecords": [{"eventName": "llmpulse.feedback",
                                        "timeUnixNano": str(time.time_ns()),
                                        "attributes": [
            {"key": "llmpulse.feedback.request_id", "value": {"stringValue": trace_id}},
            {"key": "llmpulse.feedback.score", "value": {"doubleValue": 0.0}},
            {"key": "llmpulse.feedback.comment",
             "value": {"stringValue": f"wrong: mail {email}"}}]}]}]}]}
    status, _, _ = post(sp.endpoints["otlp"] + "/v1/logs", json.dumps(feedback).encode(),
                        "application/json")
    assert status == 200
    fb = wait_rows(sp, f"SELECT comment FROM feedback_events WHERE request_id = '{trace_id}'", 1)
    assert fb[0]["comment"] == "wrong: mail [EMAIL]"
    def holding(table: str, text: str) -> int:
        return int(sp.sql(f"SELECT count() AS n FROM {table} "
                          f"WHERE position(toString(tuple(*)), '{text}') > 0")[0]["n"])

    assert holding("inference_events", "[EMAIL]") == 1  # the search finds what is there
    for table in ("inference_events", "spans", "feedback_events", "deadletter_events"):
        assert holding(table, email) == 0, table
