"""Golden-set runs: the real openai client against a local OpenAI-compatible server,
events through the real embedded broker, scored by the signal engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from confluent_kafka import Consumer, TopicPartition

from llmpulse.broker import EmbeddedBroker
from llmpulse.cli import main
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE, split_envelope
from llmpulse.golden import GoldenError, OpenAIAnswerer, parse_golden, run_golden
from llmpulse.monitor import Monitor
from llmpulse.streams.engine import SignalEngine, default_detectors

pytestmark = pytest.mark.integration

PARTITIONS = 2
CASES = [
    {"id": 1, "question": "How long does a refund take?",
     "reference": "A refund takes five working days after we receive the item."},
    {"id": 2, "question": "How do I reset my password?",
     "reference": "Open the login page, choose Forgot password and follow the e-mail link."},
    {"id": 3, "question": "Can I change my plan?",
     "reference": "Yes, change your plan under Settings, then Billing."},
    {"id": 4, "question": "Please fail on this one.", "reference": "Anything."},
]


class StubLLM:
    """An OpenAI-compatible chat server on a free port, in a thread of its own."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"auth": request.headers.get("Authorization"), **body})
        question = body["messages"][-1]["content"]
        if "fail" in question:
            return web.json_response({"error": {"message": "boom", "type": "server_error"}},
                                     status=500)
        text = self.answers.get(question, "I do not know.")
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
            "model": "stub-7", "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": len(text.split()),
                      "total_tokens": 11 + len(text.split())},
        })

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def __enter__(self) -> StubLLM:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


GOOD = {c["question"]: c["reference"] for c in CASES}
BAD = {c["question"]: "Please contact our support team for help." for c in CASES}


@pytest.fixture(scope="module")
def topics(broker: EmbeddedBroker) -> str:
    broker.create_topics({TOPIC_INFERENCE: PARTITIONS, TOPIC_FEEDBACK: PARTITIONS})
    return broker.bootstrap


def _consume(bootstrap: str, topic: str, where: Any, expected: int) -> list[dict[str, Any]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"golden-{time.time()}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(out) < expected:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out += [e for e in map(orjson.loads, split_envelope(m.value())) if where(e)]
    finally:
        c.close()
    return out


def _golden_file(tmp_path: Path) -> Path:
    path = tmp_path / "support-golden.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in CASES) + "\n")
    return path


def test_golden_run_records_answers_and_references(topics: str, tmp_path: Path) -> None:
    cases = parse_golden(_golden_file(tmp_path).open())
    good_mon = Monitor(app="golden-app", bootstrap=topics)
    with StubLLM(GOOD) as good, StubLLM(BAD) as bad:
        ans = OpenAIAnswerer(good.url, "support-llm", api_key="sk-test", max_retries=0)
        run = run_golden(cases, ans, good_mon, model="support-llm", golden_set="support")
        ans.close()
        ans_bad = OpenAIAnswerer(bad.url, "support-llm", api_key="sk-test", max_retries=0)
        run_bad = run_golden(cases, ans_bad, good_mon, model="support-llm",
                             model_version="regressed", golden_set="support")
        ans_bad.close()
        assert good.requests[0]["auth"] == "Bearer sk-test"
        assert good.requests[0]["model"] == "support-llm"
    assert good_mon.flush(30)
    good_mon.close()
    assert (run.answered, run.errors) == (3, {"InternalServerError": 1})
    assert run.rouge_l == pytest.approx(1.0)
    assert run_bad.rouge_l is not None and run_bad.rouge_l < 0.2

    ids = set(run.request_ids) | set(run_bad.request_ids)
    infs = _consume(topics, TOPIC_INFERENCE, lambda e: e["request_id"] in ids, 8)
    fbs = _consume(topics, TOPIC_FEEDBACK, lambda e: e["request_id"] in ids, 6)
    assert len(infs) == 8 and len(fbs) == 6
    by_status = {e["status"] for e in infs}
    assert by_status == {"ok", "error"}
    ok = [e for e in infs if e["status"] == "ok"]
    assert {e["segment"]["source"] for e in infs} == {"golden"}
    assert {e["model_version"] for e in ok} == {"stub-7", "regressed"}  # reported by the endpoint
    assert all(e["output_tokens"] > 0 for e in ok)
    assert {f["source"] for f in fbs} == {"golden"}

    # the pipeline's view: ROUGE-L per model version drops for the regressed answers
    now = [time.time()]
    engine = SignalEngine({"quality": default_detectors()["quality"]}, clock=lambda: now[0])
    engine.add_inference(infs)
    engine.add_feedback(fbs)
    rouge = {}
    for s in engine.flush():
        if s.signal == "quality.rouge_l":
            rouge.setdefault(s.model_version, []).append(s.value)
    assert min(rouge["stub-7"]) == pytest.approx(1.0)
    assert max(rouge["regressed"]) < 0.2


def test_eval_command_with_schedule(topics: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _golden_file(tmp_path)
    with StubLLM(GOOD) as stub:
        rc = main(["eval", str(path), "--app", "golden-cli", "--endpoint", stub.url,
                   "--model", "m", "--prompt-version", "p3", "--kafka", topics,
                   "--every", "1s", "--runs", "2"])
        assert len(stub.requests) >= 8  # every case, twice (the failing one possibly retried)
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("golden run") == 2 and "3/4 answered" in out
    infs = _consume(topics, TOPIC_INFERENCE, lambda e: e["app"] == "golden-cli", 8)
    assert len(infs) == 8 and {e["prompt_version"] for e in infs} == {"p3"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"question": "q"}\n', "line 1: reference"),
        ('{"question": "q", "reference": "r"}\nnot json\n', "line 2: not valid JSON"),
        ('[1, 2]\n', "line 1: must be a JSON object"),
        ('{"question": "q", "reference": "r", "context": "one"}\n', "context"),
        ("\n\n", "no cases"),
    ],
)
def test_bad_golden_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(text)
    with pytest.raises(GoldenError, match=message):
        parse_golden(path.open())


def test_eval_command_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"question": 1}\n')
    assert main(["eval", str(path), "--app", "a", "--callable", "os.path:basename"]) == 2
    assert "line 1: question" in capsys.readouterr().err


async def test_judge_service_grades_from_the_topic(topics: str) -> None:
    from llmpulse.judge import JudgeSettings, JudgeWorker, sampled, serve

    verdict = json.dumps({"groundedness": 0.8, "relevance": 0.9, "correctness": 0.7,
                          "rationale": "fine"})

    async def judge(event: Any) -> Any:
        from llmpulse.judge import parse_verdict

        return parse_verdict(verdict, 300)

    app = f"judged-{time.time_ns()}"
    with Monitor(app=app, bootstrap=topics) as mon:
        rids = [mon.inference(model="m", model_version="1", latency_ms=5.0, status="ok",
                              input_tokens=1, output_tokens=1, response=f"answer {i}",
                              context=[f"answer {i}"]) for i in range(20)]
        assert mon.flush(30)
    expected = {r for r in rids if sampled(r, 0.5)}  # the sample is a hash: known in advance
    out: list[dict[str, Any]] = []
    worker = JudgeWorker(JudgeSettings(sample_rate=0.5), judge, out.append)
    stop = asyncio.Event()

    async def stop_when_done() -> None:
        while not expected <= {f["request_id"] for f in out}:
            await asyncio.sleep(0.1)
        stop.set()

    waiter = asyncio.create_task(stop_when_done())
    stats = await asyncio.wait_for(serve(worker, topics, stop, group=app, start="earliest"), 60)
    await waiter
    mine = [f for f in out if f["request_id"] in set(rids)]
    assert {f["request_id"] for f in mine} == expected and 3 <= len(expected) <= 17
    assert all(f["app"] == app and f["source"] == "judge" for f in mine)
    assert stats["judged"] >= len(expected)
