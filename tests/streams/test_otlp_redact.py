"""``otlp.redact``: personal data in spans and log records is redacted at the receiver,
before anything is produced; refused spans and records are dead-lettered bare."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmpulse.config import ConfigError, load_settings
from llmpulse.streams.otlp_logs import decode_logs, map_logs
from llmpulse.streams.otlp_pool import MappingPool
from llmpulse.streams.otlp_prepare import PreparedRequest, prepare
from llmpulse.streams.otlp_redact import redactor

EMAIL, PHONE, CARD = "jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"
SECRETS = (EMAIL, "7946 0958", "4111 1111")
NOW_MS = 1_700_000_001_000


def _request(n_calls: int = 1, bad_ids: bool = False, filler: int = 0,
             start_ns: int = 1_700_000_000_000_000_000) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "support"
    spans = rs.scope_spans.add().spans
    retrieval = spans.add(trace_id=bytes(range(1, 17)), span_id=b"\x00" * 7 + b"\x09",
                          start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + 100_000_000,
                          name="retrieve")
    retrieval.attributes.add(key="retrieval.documents.0.document.content").value.string_value = \
        f"Customer record: {EMAIL}, phone {PHONE}."
    for k in range(n_calls):
        s = spans.add(trace_id=bytes(range(1, 17)), span_id=(k + 1).to_bytes(8, "big"),
                      start_time_unix_nano=start_ns, end_time_unix_nano=start_ns + 250_000_000,
                      name=f"chat for {EMAIL}")
        if bad_ids:
            s.span_id = b"\x00" * 8
        a = s.attributes
        a.add(key="gen_ai.operation.name").value.string_value = "chat"
        a.add(key="gen_ai.request.model").value.string_value = "gpt-x"
        a.add(key="gen_ai.prompt.0.role").value.string_value = "user"
        a.add(key="gen_ai.prompt.0.content").value.string_value = \
            f"My card is {CARD}, mail me at {EMAIL}. " + "x" * filler
        a.add(key="gen_ai.completion.0.role").value.string_value = "assistant"
        a.add(key="gen_ai.completion.0.content").value.string_value = f"Done, I will call {PHONE}."
        a.add(key="enduser.id").value.string_value = EMAIL
    return req.SerializeToString()


def _texts(p: PreparedRequest) -> str:  # every byte the request would produce or dead-letter
    parts = [v for _, v, _ in p.inference] + [v for _, v, _ in p.rows] + [p.index]
    parts += [r.payload for r in p.rejected]
    return b"\n".join(parts).decode("utf-8", "replace")


def test_without_redaction_the_content_is_kept_as_sent() -> None:
    out = _texts(prepare(_request(), "otlp_proto", now_ms=NOW_MS))
    assert all(s in out for s in SECRETS)  # the control: the request does carry them


def test_redaction_covers_prompt_response_documents_names_and_attributes() -> None:
    p = prepare(_request(), "otlp_proto", now_ms=NOW_MS, redact_regions=())
    out = _texts(p)
    assert not any(s in out for s in SECRETS), out
    ev = orjson.loads(p.inference[0][1].split(b"\n")[0])
    assert ev["prompt"].startswith("My card is [CARD], mail me at [EMAIL].")
    assert ev["response"] == "Done, I will call [PHONE]."
    assert ev["context"] == ["Customer record: [EMAIL], phone [PHONE]."]
    rows = [orjson.loads(line) for _, v, _ in p.rows for line in v.split(b"\n")]
    chat = next(r for r in rows if r["event_id"])
    assert chat["name"] == "chat for [EMAIL]" and chat["attributes"]["enduser.id"] == "[EMAIL]"
    assert chat["attributes"]["gen_ai.request.model"] == "gpt-x"  # nothing else touched


def test_a_refused_span_is_dead_lettered_without_its_content() -> None:
    p = prepare(_request(bad_ids=True), "otlp_proto", now_ms=NOW_MS, redact_regions=())
    assert len(p.rejected) == 1 and "span_id" in p.rejected[0].reason
    assert not any(s.encode() in p.rejected[0].payload for s in SECRETS)
    plain = prepare(_request(bad_ids=True), "otlp_proto", now_ms=NOW_MS)
    assert EMAIL.encode() in plain.rejected[0].payload


def test_redaction_in_the_mapping_processes() -> None:
    pool = MappingPool(processes=1, min_bytes=0, redact_regions=("GB",))
    try:
        pool.start(wait=True)
        body = _request(n_calls=40, filler=400, start_ns=time.time_ns() - 10**9)
        p = asyncio.run(pool.prepare(body, "otlp_proto"))
        assert pool.fallbacks == 0 and p.genai == 40
        assert not any(s in _texts(p) for s in SECRETS)
    finally:
        pool.close()


def _logs(comment: str, request_id: str | None = "0102030405060708090a0b0c0d0e0f10") -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "support"
    rec = rl.scope_logs.add().log_records.add(time_unix_nano=1_700_000_000_500_000_000)
    rec.event_name = "llmpulse.feedback"
    rec.body.string_value = f"feedback from {EMAIL}"
    a = rec.attributes
    a.add(key="llmpulse.feedback.score").value.double_value = 0.0
    a.add(key="llmpulse.feedback.comment").value.string_value = comment
    if request_id:
        a.add(key="llmpulse.feedback.request_id").value.string_value = request_id
    return req.SerializeToString()


def test_feedback_comments_and_refused_records() -> None:
    r = redactor(())
    mapped = map_logs(decode_logs(_logs(f"wrong, write to {EMAIL}"), "otlp_proto"),
                      now_ms=NOW_MS, redact=r)
    assert [e["comment"] for e in mapped.feedback] == ["wrong, write to [EMAIL]"]
    refused = map_logs(decode_logs(_logs(f"call {PHONE}", request_id=None), "otlp_proto"),
                       now_ms=NOW_MS, redact=r)
    assert len(refused.rejected) == 1
    assert not any(s.encode() in refused.rejected[0][1] for s in SECRETS)
    plain = map_logs(decode_logs(_logs(f"call {PHONE}", request_id=None), "otlp_proto"),
                     now_ms=NOW_MS)
    assert PHONE.encode() in plain.rejected[0][1]


def test_settings() -> None:
    assert load_settings(env={}, path=None).otlp.redact is False
    assert load_settings(env={"LLMPULSE_OTLP_REDACT": "1"}, path=None).otlp.redact is True
    with pytest.raises(ConfigError, match="LLMPULSE_OTLP_REDACT"):
        load_settings(env={"LLMPULSE_OTLP_REDACT": "yes please"}, path=None)


def test_region_settings_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "llmpulse.yaml"
    f.write_text(json.dumps({"otlp": {"redact": True, "redact_regions": ["CH", "DE"]}}))
    otlp = load_settings(env={}, path=f).otlp
    assert (otlp.redact, otlp.redact_regions) == (True, ("CH", "DE"))
    for bad in ("CH", [1], [""]):
        f.write_text(json.dumps({"otlp": {"redact_regions": bad}}))
        with pytest.raises(ConfigError, match="otlp.redact_regions"):
            load_settings(env={}, path=f)
    with pytest.raises(ValueError):
        MappingPool(processes=0, redact_regions=("NOT-A-REGION",))


def test_config_refuses_bad_regions_and_a_missing_extra(tmp_path: Path) -> None:
    f = tmp_path / "llmpulse.yaml"
    f.write_text(json.dumps({"otlp": {"redact": True, "redact_regions": ["XX"]}}))
    with pytest.raises(ConfigError, match="otlp.redact"):
        load_settings(env={}, path=f)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "email_validator.py").write_text("raise ImportError('not installed here')\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", "from llmpulse.config import load_settings, ConfigError\n"
         "try:\n    load_settings(env={'LLMPULSE_OTLP_REDACT': 'true'}, path=None)\n"
         "except ConfigError as e:\n    print(e)\n"],
        capture_output=True, text=True, timeout=120, cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(root)])})
    assert proc.returncode == 0, proc.stderr
    assert "otlp.redact" in proc.stdout and "pip install 'llmpulse[redact]'" in proc.stdout


def test_a_body_refused_whole_leaves_only_its_size_and_digest() -> None:
    from llmpulse.streams.otlp import SpanIngest

    sent: list[tuple[str, bytes]] = []
    written: list[tuple[str, list[bytes]]] = []

    async def send(topic: str, value: bytes, key: bytes | None, headers: object,
                   partition: int | None) -> asyncio.Future[None]:
        sent.append((topic, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def write(table: str, lines: list[bytes]) -> list[tuple[int, str]]:
        written.append((table, lines))
        return []

    body = f'{{"resourceSpans": [{{"oops": "{EMAIL}"'.encode()  # malformed JSON
    for regions, leaks in ((None, True), ((), False)):
        sent.clear()
        written.clear()
        ingest = SpanIngest(send, write, inference_topic="i", deadletter_topic="d",
                            pool=MappingPool(processes=0, redact_regions=regions))
        asyncio.run(ingest.refuse(body, "malformed JSON", source="otlp_http", status="400"))
        stored = b"".join(v for _, v in sent) + b"".join(b"".join(ls) for _, ls in written)
        assert (EMAIL.encode() in stored) is leaks
        if not leaks:
            assert f"{len(body)} bytes, sha256".encode() in stored


def test_span_fields_beside_the_attributes_and_cut_values_are_redacted() -> None:
    # a red-team pass found these stored as sent: error types (also copied into the
    # errors.rate detail), tool and agent names (signal dimensions), response ids and
    # attribute keys; and values cut to the row's length before redaction, which left
    # "card 4111 1111 1111 11" and "jane.doe@exampl"
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "support"
    start = 1_700_000_000_000_000_000
    spans = rs.scope_spans.add().spans
    chat = spans.add(trace_id=bytes(range(1, 17)), span_id=b"\x00" * 7 + b"\x01",
                     start_time_unix_nano=start, end_time_unix_nano=start + 10**8,
                     name="lookup " + "y" * 477 + " " + EMAIL)
    a = chat.attributes
    a.add(key="gen_ai.operation.name").value.string_value = "chat"
    a.add(key="error.type").value.string_value = f"SMTPRecipientRefused: {EMAIL}"
    a.add(key="gen_ai.response.id").value.string_value = f"resp {EMAIL}"
    a.add(key="input.value").value.string_value = "x" * 1000 + f" card {CARD} ok"
    a.add(key=f"user {EMAIL}").value.string_value = "1"
    tool = spans.add(trace_id=bytes(range(1, 17)), span_id=b"\x00" * 7 + b"\x02",
                     start_time_unix_nano=start, end_time_unix_nano=start + 10**8, name="tool")
    tool.attributes.add(key="gen_ai.operation.name").value.string_value = "execute_tool"
    tool.attributes.add(key="gen_ai.tool.name").value.string_value = f"send mail to {EMAIL}"
    body = req.SerializeToString()
    plain = _texts(prepare(body, "otlp_proto", now_ms=NOW_MS))
    assert EMAIL in plain and "4111 1111 1111 11" in plain  # the control
    p = prepare(body, "otlp_proto", now_ms=NOW_MS, redact_regions=())
    out = _texts(p)
    assert not any(s in out for s in (*SECRETS, "jane.doe@exampl", "1111 11")), out
    rows = {r["span_id"][-1]: r for _, v, _ in p.rows for r in map(orjson.loads, v.split(b"\n"))}
    assert rows["1"]["error_type"] == "SMTPRecipientRefused: [EMAIL]"
    assert rows["2"]["tool_name"] == "send mail to [EMAIL]"
    assert rows["1"]["name"].endswith(" [EMAIL]")
    assert rows["1"]["attributes"]["input.value"].endswith("x card [CARD] ok")
    ev = orjson.loads(p.inference[0][1])
    assert ev["error_type"] == "SMTPRecipientRefused: [EMAIL]"


def test_feedback_references_and_labels_and_dead_letter_reasons() -> None:
    req = ExportLogsServiceRequest.FromString(_logs("fine"))
    a = req.resource_logs[0].scope_logs[0].log_records[0].attributes
    a.add(key="llmpulse.feedback.reference").value.string_value = f"Answer for {EMAIL}, {CARD}"
    a.add(key="llmpulse.feedback.label").value.string_value = f"escalate {EMAIL}"
    mapped = map_logs(req, now_ms=NOW_MS, redact=redactor(()))
    (fb,) = mapped.feedback
    assert fb["reference"] == "Answer for [EMAIL], [CARD]" and fb["label"] == "escalate [EMAIL]"
    # a reason quoting the refused value is redacted before it is dead-lettered
    from llmpulse.streams.ingest import DeadLetter
    from llmpulse.streams.otlp import SpanIngest

    stored: list[bytes] = []

    async def send(*_: object) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def write(table: str, lines: list[bytes]) -> list[tuple[int, str]]:
        stored.extend(lines)
        return []

    async def run(regions: tuple[str, ...] | None) -> None:
        ingest = SpanIngest(send, write, inference_topic="i", deadletter_topic="d",
                            pool=MappingPool(processes=0, redact_regions=regions))
        acks: list[object] = []
        await ingest.dead_letter([DeadLetter(b"", f"source: got {EMAIL!r}", "otlp_http", 0, 1)],
                                 acks)  # type: ignore[arg-type]

    asyncio.run(run(None))
    assert EMAIL in stored[-1].decode()  # the control
    asyncio.run(run(()))
    assert EMAIL not in stored[-1].decode() and "[EMAIL]" in stored[-1].decode()
