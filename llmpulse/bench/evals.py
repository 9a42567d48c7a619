"""Online evaluation: A/B calibration and power, reference metrics throughput.

A/B (``ABComparison`` as shipped: alpha 0.05 Holm-corrected over five
metrics, min_n 30, 2000 bootstrap draws) on simulated windows whose
distributions were not used to build or tune the detector: feedback scores
are thumbs (-1, 0, +1 with ties, not the uniform scores of the unit tests),
latencies log-normal with a 2 % tail of 20-30 s timeouts, accuracy 85 %,
hallucination flags 5 %, costs gamma-distributed.

* A/A: both arms from the same distributions. The false-positive rate per
  metric, and family-wise (any metric significant, either direction), is the
  share of windows with a verdict; it should be at most alpha (0.05).
* A/B: the treatment is worse by a stated effect on each metric at once
  (thumbs-up share 0.55 -> 0.45, accuracy 0.85 -> 0.80, hallucination
  0.05 -> 0.09, latency x1.3, cost x1.15); power = share of windows where that
  metric is found significantly worse.
* Baseline: the rule people write without statistics, "treatment mean worse
  than control by more than 5 %" (p95 for latency), on the same windows.

Reference metrics: ROUGE-L + BLEU + chrF pairs scored per second by
``ReferenceOverlap`` on the simulator's answers against other answers.

Judge: grades per second of ``JudgeWorker`` (concurrency 4, the real
``openai`` client) against a local OpenAI-compatible server that answers
after ``judge_delay_s`` (50 ms), with the judge-free groundedness computed for
each; the ceiling is concurrency / delay = 80 grades/s.

    llmpulse bench evals [--quick] [--json FILE]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch
from llmpulse.detectors.quality.ab import METRICS, ABComparison

__all__ = ["format_table", "run", "simulate_window"]

HIGHER_IS_WORSE = {"hallucination_rate", "latency_p95_ms", "cost_per_request"}


def simulate_window(rng: np.random.Generator, n: int, worse: bool) -> Batch:
    """One window with ``n`` requests per arm (A control, B treatment); feedback on all."""
    arms = np.array(["A"] * n + ["B"] * n, dtype=object)
    b = np.arange(2 * n) >= n
    up = np.where(b & worse, 0.45, 0.55)
    u = rng.random(2 * n)
    score = np.where(u < up, 1.0, np.where(u < up + 0.15, 0.0, -1.0))
    acc = rng.random(2 * n) < np.where(b & worse, 0.80, 0.85)
    hal = rng.random(2 * n) < np.where(b & worse, 0.09, 0.05)
    lat = rng.lognormal(np.log(900.0), 0.45, 2 * n)
    lat = np.where(rng.random(2 * n) < 0.02, rng.uniform(20_000, 30_000, 2 * n), lat)
    lat = lat * np.where(b & worse, 1.3, 1.0)
    cost = rng.gamma(4.0, 0.0005, 2 * n) * np.where(b & worse, 1.15, 1.0)
    truth = np.array(["x"] * (2 * n), dtype=object)
    pred = np.where(acc, "x", "y").astype(object)
    cols = {
        "experiment": np.array(["exp"] * (2 * n), dtype=object),
        "variant": arms,
        "prompt_version": np.array([""] * (2 * n), dtype=object),
        "feedback.score": score,
        "prediction.label": pred,
        "feedback.label": truth,
        "feedback.hallucination": hal.astype(np.float64),
        "latency_ms": lat,
        "cost_usd": cost,
    }
    return Batch(cols, start=0.0, end=60.0)


def _naive(batch: Batch) -> dict[str, bool]:
    """Worse by more than 5 % relative, no test."""
    b = batch.strings("variant") == "B"
    out = {}
    vals = {
        "feedback_score": batch.numeric("feedback.score"),
        "accuracy": (batch.strings("prediction.label") == batch.strings("feedback.label")) * 1.0,
        "hallucination_rate": batch.numeric("feedback.hallucination"),
        "cost_per_request": batch.numeric("cost_usd"),
    }
    for m, v in vals.items():
        c, t = float(v[~b].mean()), float(v[b].mean())
        out[m] = t > c * 1.05 if m in HIGHER_IS_WORSE else t < c - abs(c) * 0.05
    lat = batch.numeric("latency_ms")
    out["latency_p95_ms"] = float(np.quantile(lat[b], 0.95)) > 1.05 * float(np.quantile(lat[~b], 0.95))
    return out


def _rates(n: int, seeds: range, worse: bool) -> dict[str, Any]:
    det = ABComparison()
    hits = dict.fromkeys(METRICS, 0)
    flagged = dict.fromkeys(METRICS, 0)
    naive = dict.fromkeys(METRICS, 0)
    family = 0
    t0 = time.perf_counter()
    for seed in seeds:
        batch = simulate_window(np.random.default_rng([seed, n, int(worse)]), n, worse)
        out = {s.signal[3:]: s for s in det.update(batch) if s.signal != "ab.verdict"}
        any_sig = False
        for m in METRICS:
            verdict = out[m].detail["verdict"]
            hits[m] += verdict == "worse"
            flagged[m] += verdict in ("worse", "better")
            any_sig |= verdict in ("worse", "better")
        family += any_sig
        for m, bad in _naive(batch).items():
            naive[m] += bad
    k = len(seeds)
    return {
        "n_per_arm": n,
        "windows": k,
        "worse_rate": {m: hits[m] / k for m in METRICS},
        "significant_rate": {m: flagged[m] / k for m in METRICS},
        "familywise_rate": family / k,
        "naive_worse_rate": {m: naive[m] / k for m in METRICS},
        "seconds_per_window": (time.perf_counter() - t0) / k,
    }


def _reference_throughput(pairs: int) -> dict[str, Any]:
    from llmpulse.detectors.quality.reference import ReferenceOverlap
    from llmpulse.events import TOPIC_INFERENCE
    from llmpulse.simulate import SupportAppSimulator

    sim = SupportAppSimulator(seed=5, rate=50, start_ts=1_700_000_000.0)
    answers = [e["response"] for t, e in sim.events(pairs / 50 + 5)
               if t == TOPIC_INFERENCE and e.get("response")][: pairs + 1]
    events = [{"ts": 1_700_000_000_000 + i, "event_id": f"e{i}", "response": answers[i],
               "feedback": {"reference": answers[i + 1] if i % 2 else answers[i]}}
              for i in range(len(answers) - 1)]
    batch = Batch.from_events(events, start=1_700_000_000.0, end=1_700_000_060.0)
    det = ReferenceOverlap(max_scored=len(events))
    det.update(Batch.from_events(events[:2], start=batch.start, end=batch.end))  # imports, tables
    t0 = time.perf_counter()
    out = det.update(batch)
    dt = time.perf_counter() - t0
    mean_chars = float(np.mean([len(a) for a in answers]))
    return {"pairs": out[0].n, "pairs_per_s": out[0].n / dt, "mean_answer_chars": mean_chars}


def _judge_throughput(n: int, delay_s: float = 0.05, concurrency: int = 4) -> dict[str, Any]:
    import asyncio
    import json

    from aiohttp import web

    from llmpulse.judge import JudgeSettings, JudgeWorker, OpenAIJudge

    verdict = json.dumps({"groundedness": 0.8, "relevance": 0.9, "correctness": 0.7,
                          "rationale": "Supported by the context."})

    async def chat(request: web.Request) -> web.Response:
        await request.json()
        await asyncio.sleep(delay_s)
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 0, "model": "stub",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": verdict}}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340}})

    async def main() -> dict[str, Any]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "stub")
        out: list[dict[str, Any]] = []
        worker = JudgeWorker(JudgeSettings(sample_rate=1.0, concurrency=concurrency,
                                           cost_cap_usd_per_hour=1e9), judge, out.append)
        events = [{"request_id": f"r{i}", "app": "a", "status": "ok",
                   "prompt": "How long do refunds take?",
                   "response": f"Refunds take {i % 9 + 1} working days.",
                   "context": ["Refunds take five working days after we receive the item."]}
                  for i in range(n)]
        worker.submit(events[0])
        await worker.drain()  # connection, scorer
        t0 = time.perf_counter()
        for ev in events[1:]:
            worker.submit(ev)
        await worker.drain()
        dt = time.perf_counter() - t0
        await judge.close()
        await runner.cleanup()
        return {"grades": len(out) - 1, "grades_per_s": (len(out) - 1) / dt,
                "delay_s": delay_s, "concurrency": concurrency,
                "ceiling_per_s": concurrency / delay_s, "failures": {
                    k: v for k, v in worker.stats().items()
                    if k in ("timeout", "error", "malformed", "rate_limited") and v}}

    return asyncio.run(main())


def run(quick: bool = False) -> dict[str, Any]:
    seeds = range(40) if quick else range(400)
    sizes = (50, 200) if quick else (50, 200, 1000)
    return {
        "alpha": ABComparison().alpha,
        "aa": [_rates(n, seeds, worse=False) for n in sizes],
        "ab": [_rates(n, range(10_000, 10_000 + len(seeds)), worse=True) for n in sizes],
        "reference": _reference_throughput(100 if quick else 1000),
        "judge": _judge_throughput(50 if quick else 400),
    }


def format_table(r: dict[str, Any]) -> str:
    short = {"feedback_score": "score", "accuracy": "acc", "hallucination_rate": "halluc",
             "latency_p95_ms": "p95", "cost_per_request": "cost"}
    head = "  ".join(f"{short[m]:>7}" for m in METRICS)
    lines = [f"A/B comparison, alpha {r['alpha']} Holm-corrected over {len(METRICS)} metrics"]
    lines.append(f"{'':34}{head}  family")
    for row in r["aa"]:
        sig = "  ".join(f"{row['significant_rate'][m]:7.3f}" for m in METRICS)
        lines.append(f"A/A false positives, n={row['n_per_arm']:<5} "
                     f"{'':8}{sig}  {row['familywise_rate']:6.3f}   ({row['windows']} windows)")
        nv = "  ".join(f"{row['naive_worse_rate'][m]:7.3f}" for m in METRICS)
        lines.append(f"  baseline '5 % worse', n={row['n_per_arm']:<5}{'':7}{nv}")
    for row in r["ab"]:
        pw = "  ".join(f"{row['worse_rate'][m]:7.3f}" for m in METRICS)
        lines.append(f"A/B power (found worse), n={row['n_per_arm']:<5}{'':4}{pw}   "
                     f"({row['seconds_per_window'] * 1000:.0f} ms/window)")
        nv = "  ".join(f"{row['naive_worse_rate'][m]:7.3f}" for m in METRICS)
        lines.append(f"  baseline '5 % worse', n={row['n_per_arm']:<5}{'':7}{nv}")
    ref = r["reference"]
    lines.append(f"reference metrics: {ref['pairs_per_s']:.0f} pairs/s (ROUGE-L+BLEU+chrF, "
                 f"{ref['pairs']} pairs, answers of {ref['mean_answer_chars']:.0f} chars)")
    j = r["judge"]
    lines.append(f"judge: {j['grades_per_s']:.1f} grades/s ({j['grades']} grades, concurrency "
                 f"{j['concurrency']}, stub answering in {j['delay_s'] * 1000:.0f} ms: ceiling "
                 f"{j['ceiling_per_s']:.0f}/s; failures {j['failures'] or 0})")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run()))
