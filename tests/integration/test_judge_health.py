"""A judge that fails, is slow, answers garbage or is rate-limited is counted, and the counts
reach the health dashboard: the judge service (real openai client against a local
OpenAI-compatible server that misbehaves on cue) reports on llmpulse.health through the
real broker, the running stack turns the reports into llmpulse.judge_* signals, and the
embedded dashboard serves them."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from typing import Any

import pytest
from aiohttp import web

from llmpulse.judge import JudgeSettings, JudgeWorker, OpenAIJudge, kafka_reporter, serve
from llmpulse.monitor import Monitor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VERDICT = {"groundedness": 0.9, "relevance": 0.8, "correctness": 0.75, "rationale": "Supported."}
ANSWERS = {  # answer text -> what the stub judge does with it
    "Refunds take five working days.": "ok", "Refunds take five days.": "ok",
    "Refunds take a week.": "ok", "busy one": "429", "busy two": "429", "boom": "500",
    "garbled": "malformed", "slow one": "slow",
}


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    what = ANSWERS.get(body["messages"][-1]["content"].rsplit("Answer:\n", 1)[-1], "ok")
    if what == "slow":
        await asyncio.sleep(8.0)
    if what == "500":
        return web.json_response({"error": {"message": "boom"}}, status=500)
    if what == "429":
        return web.json_response({"error": {"message": "slow down"}}, status=429)
    content = "Looks fine to me." if what == "malformed" else json.dumps(VERDICT)
    return web.json_response({
        "id": "c1", "object": "chat.completion", "created": int(time.time()), "model": "judge-1",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 400, "completion_tokens": 100, "total_tokens": 500},
    })


def _panel(sp: Any, pid: int) -> dict[str, float]:
    rows = sp.get(f"/dashboards/health/panel/{pid}.json?from=now-1h&to=now")["rows"]
    out: dict[str, float] = defaultdict(float)
    for r in rows:
        out[r["series"]] += r["value"]
    return dict(out)


async def test_judge_failures_reach_the_health_dashboard(stack_factory, tmp_path) -> None:
    d = tmp_path / "judge"
    d.mkdir()
    (d / "llmpulse.yaml").write_text("signals:\n  poll_s: 0.5\n  snapshot_s: 0\n")
    sp = stack_factory(d).start(timeout=120)
    bootstrap = sp.endpoints["kafka"]

    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "judge-1", timeout_s=10)
    report, close_reports = kafka_reporter(bootstrap)
    try:
        with Monitor(app="judged-app", bootstrap=bootstrap) as mon:
            for text in ANSWERS:
                mon.inference(model="m", model_version="1", latency_ms=5.0, status="ok",
                              input_tokens=1, output_tokens=1, prompt="How long do refunds take?",
                              response=text, context=["Refunds take five working days."])
            assert mon.flush(30)
            settings = JudgeSettings(sample_rate=1.0, timeout_s=4.0, concurrency=4,
                                     health_every_s=1.0)
            worker = JudgeWorker(settings, judge, lambda f: mon.feedback(**f))
            stop = asyncio.Event()

            async def stop_when_done() -> None:
                c = worker.counts
                while sum(c[k] for k in ("judged", "timeout", "error", "malformed",
                                         "rate_limited")) < len(ANSWERS):
                    await asyncio.sleep(0.1)
                stop.set()

            waiter = asyncio.create_task(stop_when_done())
            final = await asyncio.wait_for(
                serve(worker, bootstrap, stop, group="judge-health-test", start="earliest",
                      report=report, instance="test-judge", log=lambda _: None), 90)
            await waiter
            assert mon.flush(30)
    finally:
        undelivered = close_reports(10.0)
        await judge.close()
        await runner.cleanup()
    assert undelivered == 0
    assert {k: final[k] for k in ("judged", "rate_limited", "error", "malformed", "timeout")} == {
        "judged": 3, "rate_limited": 2, "error": 1, "malformed": 1, "timeout": 1}

    want = {"rate_limited": 2.0, "error": 1.0, "malformed": 1.0, "timeout": 1.0,
            "over_budget": 0.0, "queue_full": 0.0}
    deadline = time.monotonic() + 90
    failures: dict[str, float] = {}
    while time.monotonic() < deadline:
        failures = _panel(sp, 7)
        if failures == want:
            break
        await asyncio.sleep(1.0)
    assert failures == want, sp.log()
    assert _panel(sp, 8) == {"judge": 3.0}
    latency = _panel(sp, 9)
    assert set(latency) == {"judge"} and latency["judge"] > 0
    page = sp.get("/dashboards/health/panel/7.json?from=now-1h&to=now")
    assert {r["series"] for r in page["rows"]} >= {"rate_limited", "timeout"}
    # the judge's grades are stored as feedback of its own source
    judged = sp.sql("SELECT count() AS c FROM feedback_events FINAL WHERE source = 'judge'")
    assert judged[0]["c"] == 3
