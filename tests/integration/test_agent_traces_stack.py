"""Agent traces end to end: spans made by the real OpenTelemetry SDK (and by real
instrumentations of the real ``openai`` client), exported with the standard OTLP/HTTP
exporter to ``llmpulse up``, come out as ``spans`` rows, inference rows and ``agent.*``
signals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import StackProcess, module_stack
from tests.integration.test_dashboard_browser import _chromium, chromium  # noqa: F401, F811
from tests.integration.test_otlp_stack import _OpenAIStub, _sdk, wait_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    yield from module_stack(tmp_path_factory, "agent")


def _agent_trace(provider: Any) -> str:
    """One request: an agent that plans with a model, retrieves, calls ``search`` six
    times (the third call fails), calls ``fetch_page`` once and answers."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = provider.get_tracer("tests.agent")
    with tracer.start_as_current_span("POST /ask", kind=SpanKind.SERVER) as root, \
            tracer.start_as_current_span("invoke_agent researcher") as agent:
        agent.set_attributes({"gen_ai.operation.name": "invoke_agent",
                              "gen_ai.agent.name": "researcher"})
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as plan:
            plan.set_attributes({"gen_ai.operation.name": "chat",
                                 "gen_ai.request.model": "gpt-4o",
                                 "gen_ai.usage.input_tokens": 40,
                                 "gen_ai.usage.output_tokens": 10,
                                 "gen_ai.usage.cost": 0.001,
                                 "gen_ai.response.id": "chatcmpl-plan"})
            time.sleep(0.005)
        with tracer.start_as_current_span("retrieval kb") as ret:
            ret.set_attributes({"gen_ai.operation.name": "retrieval",
                                "gen_ai.data_source.id": "kb"})
        for i in range(6):
            with tracer.start_as_current_span("execute_tool search") as tool:
                tool.set_attributes({"gen_ai.operation.name": "execute_tool",
                                     "gen_ai.tool.name": "search"})
                if i == 2:
                    tool.set_attribute("error.type", "TimeoutError")
                    tool.set_status(Status(StatusCode.ERROR, "search timed out"))
        with tracer.start_as_current_span("execute_tool fetch_page") as tool:
            tool.set_attributes({"gen_ai.operation.name": "execute_tool",
                                 "gen_ai.tool.name": "fetch_page"})
        with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as answer:
            answer.set_attributes({"gen_ai.operation.name": "chat",
                                   "gen_ai.request.model": "gpt-4o",
                                   "gen_ai.usage.input_tokens": 60,
                                   "gen_ai.usage.output_tokens": 20,
                                   "gen_ai.usage.cost": 0.002})
        return format(root.get_span_context().trace_id, "032x")


def test_sdk_agent_trace_gives_spans_rows_and_agent_signals(stack: StackProcess) -> None:
    provider = _sdk(stack.endpoints["otlp"], "research-bot")
    trace_id = _agent_trace(provider)
    provider.shutdown()

    spans = wait_rows(stack, f"SELECT * FROM spans FINAL WHERE trace_id = '{trace_id}'", 12)
    assert len(spans) == 12
    assert sorted(s["step"] for s in spans) == ["agent", "llm", "llm", "other", "retrieval",
                                                 *["tool"] * 7]
    tools = [s for s in spans if s["step"] == "tool"]
    assert sorted(s["tool_name"] for s in tools) == ["fetch_page", *["search"] * 6]
    assert sorted(s["status"] for s in tools) == [*["ok"] * 6, "timeout"]
    agent_id = next(s["span_id"] for s in spans if s["step"] == "agent")
    assert all(s["parent_span_id"] == agent_id for s in tools)

    # the agent.* signals of the window holding the trace (10 s windows, closed in wall time)
    deadline = time.monotonic() + 90
    got: dict[tuple[str, str], dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = stack.sql("SELECT signal, dimension, value, n, detail, model FROM signals FINAL "
                         "WHERE app = 'research-bot' AND signal LIKE 'agent.%'")
        got = {(r["signal"], r["dimension"]): r for r in rows}
        if ("agent.loop_rate", "") in got:
            break
        time.sleep(0.5)
    assert ("agent.loop_rate", "") in got, (got, stack.log())
    value = {k: v["value"] for k, v in got.items()}
    assert value[("agent.loop_rate", "")] == 1.0  # six calls of one tool: a loop
    assert value[("agent.loop_rate", "agent=researcher")] == 1.0
    loops = json.loads(got[("agent.loop_rate", "")]["detail"])["loops"]
    assert loops == [{"trace_id": trace_id, "tool": "search", "calls": 6}]
    assert value[("agent.tool_calls_max", "tool=search")] == 6.0
    assert value[("agent.tool_calls_max", "tool=fetch_page")] == 1.0
    assert value[("agent.tool_error_rate", "tool=search")] == pytest.approx(1 / 6)
    assert value[("agent.tool_error_rate", "tool=fetch_page")] == 0.0
    assert value[("agent.tool_error_rate", "")] == pytest.approx(1 / 7)
    assert got[("agent.tool_error_rate", "")]["n"] == 7
    assert value[("agent.steps_per_trace", "")] == 10.0  # 2 LLM calls, 7 tool calls, 1 retrieval
    assert value[("agent.tokens_per_trace", "")] == 130.0
    assert value[("agent.cost_per_trace_usd", "")] == pytest.approx(0.003)
    durations = sorted(s["duration_ms"] for s in spans if s["tool_name"] == "search")
    assert got[("agent.step_p50_ms", "tool=search")]["n"] == 6
    assert value[("agent.step_p50_ms", "tool=search")] == pytest.approx(
        (durations[2] + durations[3]) / 2, rel=1e-6)
    llm = [s["duration_ms"] for s in spans if s["step"] == "llm"]
    assert value[("agent.step_p99_ms", "step=llm")] <= max(llm) + 1e-6
    assert value[("agent.step_p99_ms", "step=llm")] > 5.0  # the planning call slept 5 ms
    assert ("agent.step_p95_ms", "agent=researcher") in value
    assert {r["model"] for r in got.values()} == {""}
    traces = stack.get("/api/stats")["agent_traces"]
    assert traces["traces_done"] >= 1 and traces["spans"] >= 12


def test_feedback_names_an_otel_model_call_by_response_or_span_id(stack: StackProcess) -> None:
    """An app that only uses OTel sends feedback with the shim, naming the call by the
    provider's response id or by ``<trace_id>/<span_id>``: the router finds the call's
    group in the store's request index, as for a shim ``request_id``."""
    from llmpulse import Monitor

    provider = _sdk(stack.endpoints["otlp"], "feedback-bot")
    trace_id = _agent_trace(provider)
    provider.shutdown()
    calls = wait_rows(stack, "SELECT span_id, response_id FROM spans FINAL "
                      f"WHERE trace_id = '{trace_id}' AND step = 'llm' ORDER BY ts", 2)
    answer_span = calls[1]["span_id"]
    assert calls[0]["response_id"] == "chatcmpl-plan"
    before = stack.get("/api/stats")["signals"].get("forwarded_feedback", 0)
    with Monitor(app="feedback-bot", bootstrap=stack.endpoints["kafka"]) as mon:
        mon.feedback(request_id="chatcmpl-plan", score=1.0)
        mon.feedback(request_id=f"{trace_id}/{answer_span}", score=-1.0)
        mon.feedback(request_id=trace_id, score=0.5)
    stored = wait_rows(stack, "SELECT request_id, score FROM feedback_events FINAL "
                       "WHERE app = 'feedback-bot' ORDER BY request_id", 3)
    assert sorted(r["score"] for r in stored) == [-1.0, 0.5, 1.0]
    deadline = time.monotonic() + 60
    forwarded = before
    while time.monotonic() < deadline and forwarded < before + 3:
        forwarded = stack.get("/api/stats")["signals"].get("forwarded_feedback", 0)
        time.sleep(0.3)
    signals = stack.get("/api/stats")["signals"]
    assert forwarded == before + 3, signals  # all three found in the request index
    assert signals.get("feedback_unmatched", 0) == 0, signals


def _two_calls(client: Any, instrument: Any, uninstrument: Any, monkeypatch: pytest.MonkeyPatch,
               env: str, on: str, off: str) -> None:
    """One call with content capture on, one with it off (instrumented afresh for each,
    since an instrumentation may read its settings when it starts)."""
    for value, text in ((on, "Where is my parcel?"), (off, "A private question")):
        monkeypatch.setenv(env, value)
        instrument()
        try:
            client.chat.completions.create(model="gpt-4o",
                                           messages=[{"role": "user", "content": text}])
        finally:
            uninstrument()


def _assert_two_rows(stack: StackProcess, app: str, http_spans: int = 0) -> None:
    """Two model calls, one inference row each; ``http_spans``: HTTP client spans the
    instrumentation adds, stored as ``other`` steps and no inference rows."""
    rows = wait_rows(stack, "SELECT model, model_version, input_tokens, output_tokens, prompt, "
                     "response, latency_ms, status, trace_id, span_id FROM inference_events "
                     f"FINAL WHERE app = '{app}' ORDER BY ts", 2)
    assert len(rows) == 2, rows
    on, off = rows
    for r in rows:
        assert r["model"] == "gpt-4o"
        assert (r["input_tokens"], r["output_tokens"], r["status"]) == (17, 5, "ok")
        assert r["latency_ms"] > 0
        assert len(r["trace_id"]) == 32 and len(r["span_id"]) == 16
    assert "Where is my parcel?" in on["prompt"] and on["response"] == "It ships Monday."
    assert (off["prompt"], off["response"]) == ("", "")
    spans = stack.sql(f"SELECT step, response_id FROM spans FINAL WHERE app = '{app}' "
                      "ORDER BY step, response_id")
    assert [(s["step"], s["response_id"]) for s in spans] == [("llm", "chatcmpl-stub")] * 2 + [
        ("other", "")] * http_spans


def test_openai_client_under_the_official_openai_v2_instrumentation(
        stack: StackProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``openai`` client under ``opentelemetry-instrumentation-openai-v2`` (the
    OpenTelemetry project's own), on the current GenAI conventions: messages on the span
    when content capture is ``span_only``, none when it is ``no_content``."""
    import openai
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    provider = _sdk(stack.endpoints["otlp"], "otel-v2-app")
    instrumentor = OpenAIInstrumentor()
    try:
        with _OpenAIStub() as base_url:
            client = openai.OpenAI(base_url=base_url, api_key="test-key")
            _two_calls(client, lambda: instrumentor.instrument(tracer_provider=provider),
                       instrumentor.uninstrument, monkeypatch,
                       "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
                       "span_only", "no_content")
    finally:
        provider.shutdown()
    _assert_two_rows(stack, "otel-v2-app")


def test_openai_client_under_openlit_auto_instrumentation(stack: StackProcess) -> None:
    """The real ``openai`` client under OpenLIT's auto-instrumentation (``openlit.init``),
    exporting through its own OTLP/HTTP exporter. OpenLIT pins ``openai<3``, which the
    project's environment cannot hold, so the client runs in a cached virtualenv of its
    own (:mod:`tests.integration.isolated_venv`), one process per call: message capture
    on, then off (``capture_message_content``, read once by ``openlit.init``)."""
    import subprocess
    from pathlib import Path

    from tests.integration.isolated_venv import OPENLIT_REQUIREMENTS, isolated_python

    python = isolated_python("openlit", OPENLIT_REQUIREMENTS, imports=("openlit", "openai"))
    script = Path(__file__).with_name("openlit_client.py")
    with _OpenAIStub() as base_url:
        for capture, question in (("on", "Where is my parcel?"), ("off", "A private question")):
            done = subprocess.run(
                [str(python), str(script), stack.endpoints["otlp"], base_url, "openlit-app",
                 capture, question], capture_output=True, text=True, timeout=180,
                env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                     "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
            assert done.returncode == 0, done.stderr[-3000:]
            assert done.stdout.split() == ["chatcmpl-stub", "True"], done.stdout
    _assert_two_rows(stack, "openlit-app", http_spans=2)  # OpenLIT traces the POST too


def test_trace_view_draws_the_steps_of_one_request(stack: StackProcess, chromium: str,  # noqa: F811
                                                   tmp_path: Any) -> None:
    """The embedded trace view, loaded in headless Chromium: one bar per span, nested
    under its parent, read through the query API."""
    import re
    import urllib.error
    import urllib.request

    provider = _sdk(stack.endpoints["otlp"], "trace-view-bot")
    trace_id = _agent_trace(provider)
    provider.shutdown()
    wait_rows(stack, f"SELECT span_id FROM spans FINAL WHERE trace_id = '{trace_id}'", 12)
    for bad in ("0" * 32, "zz" * 16, trace_id[:30]):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{stack.endpoints['http']}/dashboards/trace/{bad}", timeout=10)
        assert err.value.code in (400, 404)
    done = _chromium(chromium, tmp_path, f"{stack.endpoints['http']}/dashboards/trace/{trace_id}",
                     "--dump-dom")
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-rows="12"' in dom, dom[-3000:]
    steps = re.findall(r'<div class="step" data-step="(\w+)" data-span="(\w+)">'
                       r'<div class="label" style="padding-left: (\d+)px;">'
                       r'<span class="name">([^<]*)</span>', dom)
    assert len(steps) == 12, dom[-3000:]
    depth = {name: int(pad) // 14 for _, _, pad, name in steps}
    assert depth["POST /ask"] == 0 and depth["invoke_agent researcher"] == 1
    assert depth["execute_tool search"] == 2 and depth["chat gpt-4o"] == 2
    assert [s for s, *_ in steps].count("tool") == 7
    assert dom.count("bar failed") == 1  # the search call that timed out
    [summary] = re.findall(r'<div id="summary">([^<]*)</div>', dom)
    assert summary.startswith("12 spans · ") and "1 failed · 130 tokens" in summary, summary


def test_feedback_as_otlp_log_records(stack: StackProcess) -> None:
    """Feedback as OpenTelemetry log records through the SDK's OTLP/HTTP log exporter:
    ``llmpulse.feedback`` inside the model call's span (named by trace and span id),
    ``gen_ai.evaluation.result`` naming the response id; a score out of range is
    rejected, counted and dead-lettered; bad bodies are answered as for traces."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    from tests.integration.test_otlp_stack import post

    provider = _sdk(stack.endpoints["otlp"], "log-feedback-bot")
    logs = LoggerProvider(resource=Resource.create({"service.name": "log-feedback-bot"}))
    logs.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=f"{stack.endpoints['otlp']}/v1/logs")))
    logger = logs.get_logger("tests.feedback")
    tracer = provider.get_tracer("tests.feedback")
    with tracer.start_as_current_span("chat gpt-4o") as span:
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                             "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 2,
                             "gen_ai.response.id": "chatcmpl-logs"})
        logger.emit(event_name="llmpulse.feedback",
                    attributes={"llmpulse.feedback.score": -1.0,
                                "llmpulse.feedback.comment": "wrong parcel"})
        ctx = span.get_span_context()
    logger.emit(event_name="gen_ai.evaluation.result",
                attributes={"gen_ai.evaluation.name": "relevance",
                            "gen_ai.evaluation.score.value": 0.25,
                            "gen_ai.evaluation.score.label": "partly relevant",
                            "gen_ai.response.id": "chatcmpl-logs"})
    logger.emit(event_name="gen_ai.evaluation.result",
                attributes={"gen_ai.evaluation.score.value": 7.0,
                            "gen_ai.response.id": "chatcmpl-logs"})
    logger.emit(body="an ordinary log line")
    provider.shutdown()
    logs.shutdown()
    trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    rows = wait_rows(stack, "SELECT request_id, score, label, comment, app FROM feedback_events "
                     "FINAL WHERE app = 'log-feedback-bot'", 2)
    # keyed by request id: one of them is a random trace id, so no order of ids is fixed
    assert {r["request_id"]: (r["score"], r["label"], r["comment"]) for r in rows} == {
        f"{trace_id}/{span_id}": (-1.0, None, "wrong parcel"),
        "chatcmpl-logs": (0.25, "partly relevant", "")}, rows
    assert len(rows) == 2, rows
    dead = wait_rows(stack, "SELECT reason FROM deadletter_events FINAL "
                     "WHERE topic = 'otlp_http_logs'", 1)
    assert "score: must be a number in -1..1, got 7.0" in dead[0]["reason"]
    otlp = stack.get("/api/stats")["otlp"]
    assert otlp["log_feedback"] == 2 and otlp["rejected_log_records"] == 1
    url = stack.endpoints["otlp"] + "/v1/logs"
    assert post(url, b"\xff\xff", "application/x-protobuf")[0] == 400
    assert post(url, b"{}", "text/plain")[0] == 415
    assert post(url, b'{"resourceLogs": "x"}', "application/json")[0] == 400
    assert stack.get("/health")["status"] == "ok"
