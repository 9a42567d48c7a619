"""Decoding OTLP logs bodies (``POST /v1/logs``): the same decoder as traces."""

from __future__ import annotations

import orjson
import pytest

from llmpulse.streams.otlp_logs import decode_logs
from llmpulse.streams.otlp_mapping import OtlpDecodeError, decode_traces

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"


def _logs(record: dict, *, snake: bool = False) -> bytes:
    keys = ("resource_logs", "scope_logs", "log_records") if snake else \
        ("resourceLogs", "scopeLogs", "logRecords")
    return orjson.dumps({keys[0]: [{keys[1]: [{keys[2]: [record]}]}]})


@pytest.mark.parametrize("snake", [False, True])
def test_hex_ids_of_log_records_become_the_raw_bytes(snake: bool) -> None:
    rec = {"traceId": TRACE, "spanId": SPAN, "body": {"stringValue": "ok"}} if not snake else \
        {"trace_id": TRACE, "span_id": SPAN, "body": {"string_value": "ok"}}
    req = decode_logs(_logs(rec, snake=snake), "otlp_json")
    [got] = req.resource_logs[0].scope_logs[0].log_records
    assert got.trace_id.hex() == TRACE and got.span_id.hex() == SPAN
    assert got.body.string_value == "ok"


@pytest.mark.parametrize(("body", "message"), [
    (b"[]", "must be an object with resourceLogs"),
    (b"{", "malformed JSON"),
    (orjson.dumps({"resourceLogs": {"scopeLogs": []}}), "resourceLogs: must be a list"),
    (orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": 7}]}]}]}),
     "resourceLogs[0].scopeLogs[0].logRecords[0].traceId: must be a hex string"),
    (_logs({"spanId": "xyz"}), "logRecords[0].spanId: not hex"),
    (b"\xff\xfe", "malformed JSON"),
])
def test_bad_logs_bodies_say_where(body: bytes, message: str) -> None:
    with pytest.raises(OtlpDecodeError, match="^malformed") as exc:
        decode_logs(body, "otlp_json")
    assert message in str(exc.value)


def test_protobuf_and_unknown_encodings() -> None:
    with pytest.raises(OtlpDecodeError, match="malformed protobuf"):
        decode_logs(b"\xff\xff\xff", "otlp_proto")
    with pytest.raises(OtlpDecodeError, match="unknown encoding"):
        decode_logs(b"{}", "otlp_yaml")


def test_span_links_keep_their_hex_ids_converted() -> None:
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": TRACE, "spanId": SPAN, "name": "chat",
         "links": [{"traceId": TRACE, "spanId": "0102030405060708"}]}]}]}]})
    [span] = decode_traces(body, "otlp_json").resource_spans[0].scope_spans[0].spans
    assert span.links[0].span_id.hex() == "0102030405060708"
    with pytest.raises(OtlpDecodeError,
                       match=r"resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]\.links\[0\]\.spanId"):
        decode_traces(body.replace(b"0102030405060708", b"zz"), "otlp_json")
