"""The GenAI span -> inference event mapping, one test per row of the table in docs/otlp.md,
plus the decoders (protobuf and OTLP/JSON) and the rejections."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from llmpulse.events import EventError, validate_inference
from llmpulse.streams.otlp_mapping import (
    OtlpDecodeError,
    decode_traces,
    map_request,
    map_span,
    message_text,
)

NOW_MS = 1_700_000_000_000
START = (NOW_MS - 1500) * 1_000_000
END = (NOW_MS - 300) * 1_000_000  # 1200 ms
TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))
PARENT = bytes(range(9, 17))


def _set(v: AnyValue, x: Any) -> None:
    if isinstance(x, bool):
        v.bool_value = x
    elif isinstance(x, int):
        v.int_value = x
    elif isinstance(x, float):
        v.double_value = x
    elif isinstance(x, str):
        v.string_value = x
    elif isinstance(x, list):
        for item in x:
            _set(v.array_value.values.add(), item)
    elif isinstance(x, dict):
        for k, item in x.items():
            kv = v.kvlist_value.values.add(key=k)
            _set(kv.value, item)
    else:
        raise TypeError(x)


def make_span(attrs: dict[str, Any] | None = None, *, name: str = "chat m", status: int = 0,
              events: list[tuple[str, dict[str, Any]]] | None = None, start: int = START,
              end: int = END, trace: bytes = TRACE, span_id: bytes = SPAN,
              parent: bytes = PARENT, kind: Any = Span.SPAN_KIND_CLIENT) -> Span:
    s = Span(trace_id=trace, span_id=span_id, parent_span_id=parent, name=name, kind=kind,
             start_time_unix_nano=start, end_time_unix_nano=end)
    s.status.code = status  # type: ignore[assignment]
    for k, v in (attrs or {}).items():
        _set(s.attributes.add(key=k).value, v)
    for ename, eattrs in events or []:
        e = s.events.add(name=ename, time_unix_nano=end)
        for k, v in eattrs.items():
            _set(e.attributes.add(key=k).value, v)
    return s


def request(*spans: Span, service: str | None = "svc") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    if service is not None:
        rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    ss.scope.name = "scope"
    for s in spans:
        ss.spans.add().CopyFrom(s)
    return req


def one(attrs: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    out = map_request(request(make_span(attrs, **kw)), now_ms=NOW_MS)
    assert not out.rejected, out.rejected
    assert len(out.events) == 1
    return out.events[0]


def row(attrs: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    out = map_request(request(make_span(attrs, **kw)), now_ms=NOW_MS)
    assert not out.rejected and len(out.spans) == 1
    return out.spans[0]


CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}


# -- rows of the mapping table ---------------------------------------------------------------


@pytest.mark.parametrize(("op", "is_event", "step"), [
    ("chat", True, "llm"), ("text_completion", True, "llm"), ("generate_content", True, "llm"),
    ("embeddings", True, "llm"), ("execute_tool", False, "tool"),
    ("invoke_agent", False, "agent"), ("create_agent", False, "agent"),
    ("something_else", False, "other"),
])
def test_operation_name_decides_event_and_step(op: str, is_event: bool, step: str) -> None:
    out = map_request(request(make_span({"gen_ai.operation.name": op,
                                         "gen_ai.request.model": "m"})), now_ms=NOW_MS)
    assert (len(out.events), out.genai, out.other) == ((1, 1, 0) if is_event else (0, 0, 1))
    assert out.spans[0]["step"] == step and out.spans[0]["operation"] == op


def test_provider_name_and_the_older_gen_ai_system() -> None:
    assert row({**CHAT, "gen_ai.provider.name": "openai"})["provider"] == "openai"
    assert row({**CHAT, "gen_ai.system": "mistral_ai"})["provider"] == "mistral_ai"
    assert row({**CHAT, "gen_ai.provider.name": "aws.bedrock",
                "gen_ai.system": "old"})["provider"] == "aws.bedrock"
    # a span with no operation name that names a GenAI system is a model call (older spans)
    ev = one({"gen_ai.system": "openai", "gen_ai.request.model": "m"})
    assert ev["model"] == "m"


def test_request_and_response_model() -> None:
    ev = one({**CHAT, "gen_ai.response.model": "gpt-4o-2024-08-06"})
    assert (ev["model"], ev["model_version"]) == ("gpt-4o", "gpt-4o-2024-08-06")
    ev = one({"gen_ai.operation.name": "chat", "gen_ai.response.model": "r"})
    assert (ev["model"], ev["model_version"]) == ("r", "r")
    ev = one({"gen_ai.operation.name": "chat"})
    assert (ev["model"], ev["model_version"]) == ("unknown", "unknown")


def test_usage_tokens_current_and_older() -> None:
    ev = one({**CHAT, "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 40})
    assert (ev["input_tokens"], ev["output_tokens"]) == (120, 40)
    ev = one({**CHAT, "gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": 8})
    assert (ev["input_tokens"], ev["output_tokens"]) == (7, 8)
    ev = one({**CHAT, "llm.usage.prompt_tokens": 5, "llm.usage.completion_tokens": 6,
              "llm.usage.total_tokens": 11})
    assert (ev["input_tokens"], ev["output_tokens"]) == (5, 6)
    ev = one(CHAT)
    assert (ev["input_tokens"], ev["output_tokens"]) == (0, 0)


def test_input_output_messages_and_system_instructions() -> None:
    ev = one({**CHAT,
              "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be kind."}]),
              "gen_ai.input.messages": json.dumps([
                  {"role": "user", "parts": [{"type": "text", "content": "Hi"},
                                             {"type": "image", "uri": "x"}]},
                  {"role": "assistant", "parts": [{"type": "tool_call", "name": "f"}]},
                  {"role": "user", "parts": [{"type": "text", "content": "Again"}]}]),
              "gen_ai.output.messages": json.dumps([
                  {"role": "assistant", "parts": [{"type": "text", "content": "Hello"}],
                   "finish_reason": "stop"}])})
    assert ev["prompt"] == "Be kind.\nHi\nAgain" and ev["response"] == "Hello"


def test_messages_as_structured_attribute_values() -> None:
    """Some SDKs set the messages as an array of maps rather than JSON text."""
    ev = one({**CHAT, "gen_ai.input.messages": [
        {"role": "user", "parts": [{"type": "text", "content": "structured"}]}]})
    assert ev["prompt"] == "structured"


def test_finish_reasons_go_to_the_spans_row() -> None:
    assert row({**CHAT, "gen_ai.response.finish_reasons": ["stop", "length"]})[
        "finish_reasons"] == ["stop", "length"]
    assert row({**CHAT, "gen_ai.completion.0.finish_reason": "length"})["finish_reasons"] == [
        "length"]


@pytest.mark.parametrize(("status", "error_type", "expected"), [
    (Status.STATUS_CODE_UNSET, None, ("ok", None)),
    (Status.STATUS_CODE_OK, None, ("ok", None)),
    (Status.STATUS_CODE_ERROR, "openai.RateLimitError", ("error", "openai.RateLimitError")),
    (Status.STATUS_CODE_ERROR, "timeout", ("timeout", "timeout")),
    (Status.STATUS_CODE_ERROR, "openai.APITimeoutError", ("timeout", "openai.APITimeoutError")),
    (Status.STATUS_CODE_UNSET, "500", ("error", "500")),  # error.type alone marks a failure
])
def test_span_status_and_error_type(status: int, error_type: str | None,
                                    expected: tuple[str, str | None]) -> None:
    attrs = dict(CHAT)
    if error_type:
        attrs["error.type"] = error_type
    ev = one(attrs, status=status)
    assert (ev["status"], ev.get("error_type")) == expected


def test_error_status_without_error_type_takes_the_exception_event() -> None:
    ev = one(CHAT, status=Status.STATUS_CODE_ERROR,
             events=[("exception", {"exception.type": "httpx.ConnectError",
                                    "exception.message": "refused"})])
    assert (ev["status"], ev["error_type"]) == ("error", "httpx.ConnectError")


def test_older_indexed_prompt_and_completion_attributes() -> None:
    ev = one({**CHAT, "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "second",
              "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "first",
              "gen_ai.prompt.10.content": "eleventh",
              "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "done"})
    assert ev["prompt"] == "first\nsecond\neleventh" and ev["response"] == "done"


def test_older_content_span_events() -> None:
    ev = one(CHAT, events=[("gen_ai.content.prompt", {"gen_ai.prompt": "asked"}),
                           ("gen_ai.content.completion", {"gen_ai.completion": "answered"})])
    assert (ev["prompt"], ev["response"]) == ("asked", "answered")
    ev = one(CHAT, events=[
        ("gen_ai.system.message", {"content": "sys"}), ("gen_ai.user.message", {"content": "u"}),
        ("gen_ai.choice", {"message": {"role": "assistant", "content": "a"}})])
    assert (ev["prompt"], ev["response"]) == ("sys\nu", "a")


def test_service_name_gives_the_app() -> None:
    out = map_request(request(make_span(CHAT), service="checkout"), now_ms=NOW_MS)
    assert out.events[0]["app"] == "checkout" and out.spans[0]["app"] == "checkout"
    out = map_request(request(make_span(CHAT), service=None), now_ms=NOW_MS)
    assert out.events[0]["app"] == "unknown_service"


def test_span_duration_gives_latency_and_end_time_gives_ts() -> None:
    ev = one(CHAT)
    assert ev["latency_ms"] == 1200.0 and ev["ts"] == NOW_MS - 300
    r = row(CHAT)
    assert r["duration_ms"] == 1200.0 and r["ts"] == START / 1e9 and r["end_ts"] == END / 1e9


def test_ids_on_the_event_and_request_id_is_the_trace() -> None:
    ev = one(CHAT)
    assert ev["trace_id"] == TRACE.hex() and ev["span_id"] == SPAN.hex()
    assert ev["parent_span_id"] == PARENT.hex() and ev["request_id"] == TRACE.hex()
    # the event id is a UUID fixed by the ids: an exporter's retry is the same event
    assert ev["event_id"] == one(CHAT)["event_id"] != one(CHAT, span_id=b"\x09" * 8)["event_id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
                        ev["event_id"])
    assert "parent_span_id" not in one(CHAT, parent=b"")


def test_non_genai_spans_are_counted_and_kept_as_rows() -> None:
    http = make_span({"http.request.method": "GET", "url.path": "/ask"}, name="GET /ask",
                     span_id=b"\x02" * 8, kind=Span.SPAN_KIND_SERVER, parent=b"")
    tool = make_span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
                      "gen_ai.tool.call.arguments": '{"q": "secret"}'},
                     name="execute_tool search", span_id=b"\x03" * 8)
    out = map_request(request(http, make_span(CHAT), tool), now_ms=NOW_MS)
    assert (out.genai, out.other, len(out.events), len(out.spans)) == (1, 2, 1, 3)
    rows = {r["name"]: r for r in out.spans}
    assert rows["GET /ask"]["step"] == "other" and rows["GET /ask"]["kind"] == "SPAN_KIND_SERVER"
    assert rows["GET /ask"]["attributes"] == {"http.request.method": "GET", "url.path": "/ask"}
    assert rows["execute_tool search"]["tool_name"] == "search"
    assert "gen_ai.tool.call.arguments" not in rows["execute_tool search"]["attributes"]
    assert rows["GET /ask"]["event_id"] == "" and rows["chat m"]["event_id"]


def test_content_capture_off_gives_events_without_text() -> None:
    ev = one({**CHAT, "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 4})
    assert "prompt" not in ev and "response" not in ev
    assert validate_inference(dict(ev), now_ms=NOW_MS)["output_tokens"] == 4


def test_retrieval_documents_become_the_context_of_the_trace() -> None:
    ret = make_span({"openinference.span.kind": "RETRIEVER",
                     "retrieval.documents.1.document.content": "doc two",
                     "retrieval.documents.0.document.content": "doc one",
                     "retrieval.documents.0.document.id": "d1"},
                    name="retrieve", span_id=b"\x05" * 8)
    other_trace = make_span(CHAT, trace=b"\x07" * 16)
    out = map_request(request(ret, make_span(CHAT), other_trace), now_ms=NOW_MS)
    by_trace = {e["trace_id"]: e for e in out.events}
    assert by_trace[TRACE.hex()]["context"] == ["doc one", "doc two"]
    assert "context" not in by_trace[(b"\x07" * 16).hex()]
    assert out.documents == {TRACE.hex(): ["doc one", "doc two"]}
    assert {r["name"]: r["step"] for r in out.spans}["retrieve"] == "retrieval"
    # documents from an earlier request of the same trace
    later = map_request(request(make_span(CHAT)), now_ms=NOW_MS,
                        known_documents={TRACE.hex(): ["remembered"]})
    assert later.events[0]["context"] == ["remembered"]


# -- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "reason"), [
    ({"trace": b"\0" * 16}, "trace_id"),
    ({"trace": b"\1" * 8}, "trace_id"),
    ({"span_id": b""}, "span_id"),
    ({"parent": b"\1" * 3}, "parent_span_id"),
    ({"end": 0}, "start and end times"),
    ({"end": START - 1}, "end time is before its start time"),
    ({"start": 1_000_000, "end": 2_000_000}, "days in the past"),
])
def test_bad_spans_are_rejected_with_the_reason(kw: dict[str, Any], reason: str) -> None:
    good = make_span(CHAT, span_id=b"\x0a" * 8)
    out = map_request(request(make_span(CHAT, **kw), good), now_ms=NOW_MS)
    assert len(out.rejected) == 1 and reason in out.rejected[0].reason
    assert len(out.events) == 1 and out.events[0]["span_id"] == (b"\x0a" * 8).hex()


@pytest.mark.parametrize(("kw", "reason"), [
    ({"end": START - 1_000 * 10**9}, "end time is before its start time"),
    ({"start": 2**64 - 2, "end": 2**64 - 1}, "s in the future"),
    ({"start": 1, "end": 2}, "days in the past"),
])
def test_spans_that_are_not_model_calls_get_the_same_time_checks(kw: dict[str, Any],
                                                                 reason: str) -> None:
    """A plain span (a tool or an HTTP call) ending before it started was stored with a
    negative duration, fed to the step signals; one at the ends of time was lost unseen
    (the store refused its row, nothing dead-lettered it)."""
    plain = {"http.method": "GET"}
    good = make_span(plain, span_id=b"\x0b" * 8)
    out = map_request(request(make_span(plain, **kw), good), now_ms=NOW_MS)
    assert [r.reason for r in out.rejected if reason in r.reason] and len(out.rejected) == 1
    assert [row["span_id"] for row in out.spans] == [(b"\x0b" * 8).hex()]


def test_a_huge_prompt_is_rejected_not_truncated() -> None:
    out = map_request(request(make_span({**CHAT, "gen_ai.prompt.0.content": "x" * 300_000})),
                      now_ms=NOW_MS)
    assert out.events == [] and "prompt: text longer than" in out.rejected[0].reason


def test_event_contract_checks_the_ids() -> None:
    base = one(CHAT)
    for name, bad in (("trace_id", "ABC"), ("span_id", "0102"), ("parent_span_id", 7),
                      ("trace_id", "0" * 31 + "g")):
        with pytest.raises(EventError, match=name):
            validate_inference({**base, name: bad}, now_ms=NOW_MS)


# -- decoding --------------------------------------------------------------------------------


def otlp_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON: protobuf's JSON mapping with trace and span ids in hex, not base64."""
    import base64

    doc = json_format.MessageToDict(req)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(doc).encode()


def test_json_and_protobuf_decode_to_the_same_request() -> None:
    req = request(make_span({**CHAT, "gen_ai.usage.input_tokens": 2**40}))
    body = otlp_json(req)
    span = json.loads(body)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == TRACE.hex()
    assert span["attributes"][-1]["value"] == {"intValue": str(2**40)}  # int64 as a string
    from_json = decode_traces(body, "otlp_json")
    assert from_json == decode_traces(req.SerializeToString(), "otlp_proto") == req


def test_json_accepts_snake_case_and_ignores_unknown_fields() -> None:
    body = {"resource_spans": [{"scope_spans": [{"spans": [{
        "trace_id": TRACE.hex(), "span_id": SPAN.hex(), "name": "x", "newField": 1}]}]}],
        "somethingNew": True}
    req = decode_traces(json.dumps(body).encode(), "otlp_json")
    assert req.resource_spans[0].scope_spans[0].spans[0].trace_id == TRACE


@pytest.mark.parametrize(("body", "encoding", "reason"), [
    (b"\x0a\xff\xff\xff\xff", "otlp_proto", "malformed protobuf"),
    (b"\x0a\x05\x0a\x03\x0a", "otlp_proto", "malformed protobuf"),
    (b"{", "otlp_json", "malformed JSON"),
    (b"[]", "otlp_json", "malformed JSON"),
    (b'{"resourceSpans": {}}', "otlp_json", "must be a list"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}', "otlp_json",
     "not hex"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}', "otlp_json",
     "hex string"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
     "otlp_json", "malformed OTLP JSON"),
    (b"{}", "yaml", "unknown encoding"),
])
def test_malformed_bodies_are_refused(body: bytes, encoding: str, reason: str) -> None:
    with pytest.raises(OtlpDecodeError, match=reason):
        decode_traces(body, encoding)


def test_deep_json_nesting_is_refused_not_a_crash() -> None:
    deep = b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": ' + \
        b'{"arrayValue": {"values": [' * 200 + b"{}" + b"]}}" * 200 + b"}]}}]}"
    with pytest.raises(OtlpDecodeError):
        decode_traces(deep, "otlp_json")


def test_message_text_ignores_what_is_not_text() -> None:
    assert message_text(None) == [] and message_text(5) == [] and message_text("") == []
    assert message_text("[not json") == ["[not json"]
    assert message_text([{"role": "user", "parts": [{"type": "blob", "content": "b64"}]}]) == []


def test_map_span_returns_no_event_for_plain_spans() -> None:
    ev, r = map_span(make_span({"db.system": "postgresql"}), "a", "s")
    assert ev is None and r["step"] == "other"


def test_mapping_table_in_the_docs_names_every_attribute_read() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "otlp.md").read_text()
    source = (Path(__file__).resolve().parents[2] / "streams" / "otlp_mapping.py").read_text()
    read = set(re.findall(r'"((?:gen_ai|llm|error|retrieval)\.[a-z_.]+)"', source))
    missing = sorted(a for a in read if a.rstrip(".") not in doc)
    assert not missing, missing


def test_mutated_requests_are_refused_or_mapped_never_a_crash() -> None:
    import random

    spans = [make_span({**CHAT, "gen_ai.usage.input_tokens": 4,
                        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                            {"type": "text", "content": "hello"}]}]),
                        "retrieval.documents.0.document.content": "d"},
                       events=[("gen_ai.content.prompt", {"gen_ai.prompt": "p"})]),
             make_span({"http.route": "/x", "n": 1.5, "flags": [True, False]}, span_id=b"\2" * 8)]
    good = request(*spans).SerializeToString()
    doc = otlp_json(request(*spans))
    rng = random.Random(7)
    mapped = refused = 0
    for _ in range(3000):
        enc, base = ("otlp_proto", good) if rng.random() < 0.7 else ("otlp_json", doc)
        body = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        try:
            req = decode_traces(bytes(body), enc)
        except OtlpDecodeError:
            refused += 1
            continue
        out = map_request(req, now_ms=NOW_MS)
        assert out.total == sum(len(ss.spans) for rs in req.resource_spans
                                for ss in rs.scope_spans)
        mapped += 1
    assert mapped > 100 and refused > 100, (mapped, refused)

