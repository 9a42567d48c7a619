"""The LLM judge with the real openai client against a local OpenAI-compatible server
that is slow, fails, answers malformed JSON or rate-limits on cue."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from llmpulse.events import validate_feedback
from llmpulse.judge import JudgeSettings, JudgeWorker, OpenAIJudge

SEEN = web.AppKey("seen", list)
VERDICT = {"groundedness": 0.9, "relevance": 0.8, "correctness": 0.75, "rationale": "Supported."}


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    answer = body["messages"][-1]["content"].rsplit("Answer:\n", 1)[-1]
    request.app[SEEN].append(answer)
    if "slow" in answer:
        await asyncio.sleep(3.0)
    if "boom" in answer:
        return web.json_response({"error": {"message": "boom"}}, status=500)
    if "busy" in answer:
        return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}},
                                 status=429)
    content = "I think it is fine." if "garbled" in answer else json.dumps(
        {**VERDICT, "groundedness": 0.2} if "made up" in answer else VERDICT)
    return web.json_response({
        "id": "c1", "object": "chat.completion", "created": int(time.time()), "model": "judge-1",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 400, "completion_tokens": 100, "total_tokens": 500},
    })


@pytest.fixture
async def judge_url() -> AsyncIterator[tuple[str, list[str]]]:
    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/v1/chat/completions", _chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", app[SEEN]
    await runner.cleanup()


def _event(i: int, response: str, app: str = "support") -> dict[str, Any]:
    return {"request_id": f"r{i}", "app": app, "status": "ok", "prompt": "How long do refunds take?",
            "response": response, "context": ["Refunds take five working days."]}


async def test_grades_become_judge_feedback_and_failures_are_counted(judge_url) -> None:
    url, seen = judge_url
    out: list[dict[str, Any]] = []
    judge = OpenAIJudge(url, "judge-1", timeout_s=10)
    worker = JudgeWorker(JudgeSettings(sample_rate=1.0, timeout_s=1.0, concurrency=3), judge,
                         out.append)
    answers = ["Refunds take five working days.", "Refunds take 30 days, made up.", "slow one",
               "boom", "garbled", "busy"]
    for i, a in enumerate(answers):
        assert worker.submit(_event(i, a))
    worker.submit({**_event(99, ""), "status": "error"})
    await worker.drain()
    await judge.close()
    stats = worker.stats()
    assert {k: stats[k] for k in ("judged", "timeout", "error", "malformed", "rate_limited",
                                  "no_response")} == {
        "judged": 2, "timeout": 1, "error": 1, "malformed": 1, "rate_limited": 1, "no_response": 1}
    assert len(seen) == 6
    by = {f["request_id"]: f for f in out}
    assert by["r0"]["judge"]["groundedness"] == 0.9 and by["r0"]["score"] == pytest.approx(0.5)
    assert by["r1"]["hallucination"] is True and by["r0"]["hallucination"] is False
    # the judge-free groundedness of the same answer rides along, for the agreement signal
    assert by["r0"]["judge"]["groundedness_free"] > by["r1"]["judge"]["groundedness_free"]
    for f in out:  # what the worker emits passes the feedback contract
        validate_feedback({"event_id": "f", "ts": int(time.time() * 1000), **f})
        assert f["source"] == "judge"


async def test_sampling_per_app_and_budget_cap(judge_url) -> None:
    url, seen = judge_url
    out: list[dict[str, Any]] = []
    judge = OpenAIJudge(url, "judge-1")
    # 500 tokens at 0.002 USD/1k = 0.001 USD per grade; cap 0.003 USD/h: three grades
    settings = JudgeSettings(sample_rate=0.0, app_rates={"checkout": 1.0},
                             cost_cap_usd_per_hour=0.003, concurrency=1)
    worker = JudgeWorker(settings, judge, out.append, groundedness=lambda r, c: 0.5)
    for i in range(20):
        worker.submit(_event(i, "Refunds take five working days.", app="support"))
    for i in range(20, 30):
        worker.submit(_event(i, "Refunds take five working days.", app="checkout"))
        await asyncio.sleep(0)
    await worker.drain()
    await judge.close()
    stats = worker.stats()
    assert stats["sampled"] == 10  # only the app sampled at 1.0
    assert stats["judged"] == 3 and stats["over_budget"] == 7
    assert stats["spent_usd_last_hour"] == pytest.approx(0.003)
    assert len(seen) == 3


async def test_queue_bound_drops_instead_of_waiting(judge_url) -> None:
    url, _ = judge_url
    judge = OpenAIJudge(url, "judge-1")
    worker = JudgeWorker(JudgeSettings(sample_rate=1.0, max_queue=2, timeout_s=0.2), judge,
                         lambda f: None)
    took = [worker.submit(_event(i, "slow answer")) for i in range(5)]
    assert took == [True, True, False, False, False]
    await worker.drain()
    await judge.close()
    assert worker.stats()["queue_full"] == 3 and worker.stats()["timeout"] == 2


async def test_back_to_back_health_reports_all_reach_the_store(judge_url, tmp_path) -> None:
    """The last periodic report and the one at stop are often sent within the same
    millisecond; the ``signals`` table keeps one row per (signal, dimension, ts) at
    millisecond precision, so both reports must still be stored and summed."""
    from llmpulse.store import Store
    from llmpulse.streams.service_health import health_signals
    from llmpulse.streams.signals import signal_row

    url, _ = judge_url
    judge = OpenAIJudge(url, "judge-1", timeout_s=10)
    worker = JudgeWorker(JudgeSettings(sample_rate=1.0, timeout_s=0.5), judge, lambda f: None)
    worker.submit(_event(1, "busy"))
    await worker.drain()
    t = float(int(time.time()))
    first = worker.health_report("h", now=t + 0.1001)  # carries the rate-limited answer
    worker.submit(_event(2, "slow one"))
    await worker.drain()
    second = worker.health_report("h", now=t + 0.1003)  # same millisecond: carries the timeout
    third = worker.health_report("h", now=t + 0.1004)  # nothing new, sent at stop
    await judge.close()
    assert first.ts < second.ts < third.ts
    assert (first.counts["rate_limited"], second.counts["timeout"]) == (1, 1)

    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        for rec in (first, second, third):  # one insert per report, as the worker stores them
            rows = [signal_row(s) for s in health_signals(rec)]
            store.insert_rows("signals", rows)
        got = {r["dimension"]: r["value"] for r in store.query(
            "SELECT dimension, sum(value) AS value FROM signals FINAL "
            "WHERE signal = 'llmpulse.judge_failures' GROUP BY dimension")}
    finally:
        store.close()
    assert got == {"timeout": 1.0, "rate_limited": 1.0, "error": 0.0, "malformed": 0.0,
                   "over_budget": 0.0, "queue_full": 0.0}
