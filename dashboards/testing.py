"""A store filled for dashboards: given raw events plus signals, alerts, deployments.

Used by the tests, the browser check and anyone who wants to look at the
panels without running the pipeline. The caller gives the raw events
(``(topic, event)`` pairs, ``ts`` in epoch ms, as
:class:`~llmpulse.simulate.SupportAppSimulator` yields them;
:mod:`llmpulse.sample_data` does exactly that); the ``latency.*``,
``errors.rate``, ``tokens.output_per_s`` and ``cost.usd`` signals are computed
from those events per window with numpy; drift, bias, hallucination, quality
and ``llmpulse.*`` signals are seeded synthetic values with the detail keys
the detectors write.

>>> events = [("llmpulse.inference", {"event_id": f"e{i}", "request_id": f"r{i}",
...            "ts": 1_700_000_000_000 + 500 * i, "app": "support", "model": "m",
...            "model_version": "1", "latency_ms": 100.0 + i, "status": "ok",
...            "input_tokens": 10, "output_tokens": 20}) for i in range(120)]
>>> rows = fill_rows(events, seed=1, start_ts=1_700_000_000.0, duration_s=60)
>>> sorted(rows), len(rows["inference_events"])
(['alerts', 'audit_events', 'deadletter_events', 'deployments', 'feedback_events', 'inference_events', 'signals', 'spans'], 120)
>>> sorted({s["signal"].split(".")[0] for s in rows["signals"]})
['ab', 'agent', 'bias', 'cost', 'drift', 'errors', 'hallucination', 'latency', 'llmpulse', 'quality', 'tokens']
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["fill_rows", "fill_store"]


def _window_signals(events: list[dict[str, Any]], window_s: float) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        w = int(e["ts"] // window_s)
        groups[(w, e["app"], e["model"], e["model_version"])].append(e)
    out = []
    for (w, app, model, version), evs in sorted(groups.items()):
        ts = (w + 1) * window_s
        lat = np.array([e["latency_ms"] for e in evs])
        err = np.array([e["status"] != "ok" for e in evs])
        tok = float(sum(e["output_tokens"] for e in evs))
        cost = float(sum(e.get("cost_usd") or 0.0 for e in evs))
        base = {"ts": ts, "window_s": window_s, "app": app, "model": model,
                "model_version": version, "dimension": "", "n": len(evs)}
        for q, name in ((50, "latency.p50_ms"), (95, "latency.p95_ms"), (99, "latency.p99_ms")):
            out.append({**base, "signal": name, "value": float(np.percentile(lat, q)),
                        "detail": "{}"})
        out.append({**base, "signal": "errors.rate", "value": float(err.mean()),
                    "detail": json.dumps({"errors": int(err.sum())})})
        out.append({**base, "signal": "tokens.output_per_s", "value": tok / window_s,
                    "detail": "{}"})
        out.append({**base, "signal": "cost.usd", "value": cost, "detail": "{}"})
    return out


def _synthetic_signals(rng: np.random.Generator, start: float, end: float, window_s: float,
                       app: str, models: list[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    ends = np.arange(start + window_s, end + 1e-9, window_s)
    for ts in ends:
        for model, version in models:
            base = {"ts": float(ts), "window_s": window_s, "app": app, "model": model,
                    "model_version": version}
            for feat in ("input_tokens", "n_passages"):
                for test in ("psi", "ks"):
                    v = float(rng.gamma(2.0, 0.03))
                    p = float(rng.uniform(0, 1))
                    out.append({**base, "signal": f"drift.{test}", "dimension": feat,
                                "value": v, "n": 200,
                                "detail": json.dumps({"p_value": p, "drift": v > 0.1,
                                                      "report": f"/reports/{feat}-{int(ts)}.html"})})
            v = float(rng.gamma(2.0, 0.02))
            out.append({**base, "signal": "drift.mmd", "dimension": "embedding:prompt",
                        "value": v, "n": 128,
                        "detail": json.dumps({"p_value": float(rng.uniform()), "drift": v > 0.1})})
            for seg in ("language=en", "language=de", "region=eu"):
                gap = float(rng.normal(0, 0.05))
                half = float(rng.uniform(0.02, 0.08))
                out.append({**base, "signal": "bias.accuracy_gap", "dimension": seg,
                            "value": gap, "n": int(rng.integers(30, 300)),
                            "detail": json.dumps({"ci_low": gap - half, "ci_high": gap + half,
                                                  "p_value": float(rng.uniform()),
                                                  "significant": abs(gap) > half})})
            g = float(np.clip(rng.normal(0.8, 0.1), 0, 1))
            out.append({**base, "signal": "hallucination.groundedness_mean", "dimension": "",
                        "value": g, "n": 64, "detail": json.dumps({"scored": 64})})
            worst = [{"event_id": f"ev-{int(ts)}-{i}", "score": round(float(rng.uniform(0, 0.5)), 4),
                      "sentence": f"Plan {i} includes <b>{int(rng.integers(1, 99))} GB</b>.",
                      "span": "", "problems": ["number"]} for i in range(2)]
            out.append({**base, "signal": "hallucination.ungrounded_share", "dimension": "",
                        "value": float(rng.uniform(0, 0.3)), "n": 64,
                        "detail": json.dumps({"threshold": 0.5, "worst": worst})})
            out.append({**base, "signal": "hallucination.flagged_rate", "dimension": "",
                        "value": float(rng.uniform(0, 0.1)), "n": 20,
                        "detail": json.dumps({"flagged": 1})})
            out.append({**base, "signal": "quality.feedback_score", "dimension": "",
                        "value": float(rng.uniform(0.2, 0.9)), "n": 20, "detail": "{}"})
            out.append({**base, "signal": "quality.accuracy", "dimension": "",
                        "value": float(rng.uniform(0.8, 1.0)), "n": 20, "detail": "{}"})
        hb = {"ts": float(ts), "window_s": window_s, "app": "", "model": "", "model_version": ""}
        for topic in ("llmpulse.inference", "llmpulse.feedback"):
            out.append({**hb, "signal": "llmpulse.lag", "dimension": topic,
                        "value": float(rng.integers(0, 500)), "n": 1, "detail": "{}"})
            out.append({**hb, "signal": "llmpulse.events_per_s", "dimension": topic,
                        "value": float(rng.uniform(50, 400)), "n": 1, "detail": "{}"})
        out.append({**hb, "signal": "llmpulse.notify_failures", "dimension": "webhook",
                    "value": float(rng.integers(0, 2)), "n": 1, "detail": "{}"})
        out.append({**hb, "signal": "llmpulse.store_errors", "dimension": "inference_events",
                    "value": float(rng.integers(0, 2)), "n": 1, "detail": "{}"})
        jb = {**hb, "app": "llmpulse", "n": 40, "detail": '{"service": "judge"}'}
        out.append({**jb, "signal": "llmpulse.judge_graded", "dimension": "judge",
                    "value": float(rng.integers(20, 40))})
        for kind in ("timeout", "error", "malformed", "rate_limited", "over_budget", "queue_full"):
            out.append({**jb, "signal": "llmpulse.judge_failures", "dimension": kind,
                        "value": float(rng.integers(0, 4))})
        out.append({**jb, "signal": "llmpulse.judge_latency_s", "dimension": "judge",
                    "value": float(rng.uniform(0.5, 3.0))})
        out.append({**jb, "signal": "llmpulse.judge_spend_usd", "dimension": "judge",
                    "value": float(rng.uniform(0.1, 1.0))})
    return out


def _quality_signals(rng: np.random.Generator, start: float, end: float, window_s: float,
                     app: str, models: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Reference-overlap and A/B signals with the detail keys their detectors write."""
    out = []
    for ts in np.arange(start + window_s, end + 1e-9, window_s):
        for model, version in models:
            base = {"ts": float(ts), "window_s": window_s, "app": app, "model": model,
                    "model_version": version}
            for name in ("rouge_l", "bleu", "chrf"):
                worst = [{"event_id": f"ev-{int(ts)}-{i}", "request_id": f"rq-{int(ts)}-{i}",
                          "score": round(float(rng.uniform(0, 0.3)), 4),
                          "response": f"Try <i>restarting</i> ({i}).",
                          "reference": "Open Settings > Billing."} for i in range(2)]
                out.append({**base, "signal": f"quality.{name}", "dimension": "",
                            "value": float(rng.uniform(0.3, 0.8)), "n": 12,
                            "detail": json.dumps({"worst": worst, "p10": 0.1})})
            dim = "experiment=tone"
            worse = []
            for metric in ("feedback_score", "accuracy", "hallucination_rate",
                           "latency_p95_ms", "cost_per_request"):
                effect = float(rng.normal(0, 0.1))
                half = float(rng.uniform(0.02, 0.1))
                p = float(rng.uniform(0, 1))
                verdict = "worse" if p < 0.05 and effect < 0 else "no difference"
                if verdict == "worse":
                    worse.append(metric)
                out.append({**base, "signal": f"ab.{metric}", "dimension": dim, "value": effect,
                            "n": 120, "detail": json.dumps({
                                "control": "A", "treatment": "B", "n_control": 60,
                                "n_treatment": 60, "control_value": 0.5,
                                "treatment_value": 0.5 + effect, "ci_low": effect - half,
                                "ci_high": effect + half, "p_value": p, "p_holm": min(1.0, 5 * p),
                                "verdict": verdict})})
            out.append({**base, "signal": "ab.verdict", "dimension": dim,
                        "value": float(len(worse)), "n": 60,
                        "detail": json.dumps({"control": "A", "treatment": "B", "worse": worse})})
    return out


def _agent_rows(rng: np.random.Generator, start: float, end: float, window_s: float,
                app: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``spans`` rows of seeded agent traces (one every 5 s: an agent, LLM calls, tool
    calls, a retrieval; every seventh loops on ``search``) and their ``agent.*``
    signals, computed per window by the detector itself."""
    from llmpulse.detectors.agent import AgentSteps, span_batch

    spans: list[dict[str, Any]] = []
    t0 = start + 1.0
    n = 0
    while t0 < end - 5.0:
        tid = f"{int(rng.integers(1, 2**62)):016x}{n:016x}"
        steps: list[tuple[str, str, float]] = [("llm", "", float(rng.gamma(3, 150)))]
        calls = 6 if n % 7 == 3 else int(rng.integers(1, 3))
        steps += [("tool", "search", float(rng.gamma(2, 60))) for _ in range(calls)]
        steps += [("retrieval", "", float(rng.gamma(2, 20))), ("tool", "fetch_page", 80.0),
                  ("llm", "", float(rng.gamma(3, 200)))]
        t = t0 + 0.005
        children = []
        for i, (step, tool, ms) in enumerate(steps):
            failed = step == "tool" and rng.random() < 0.08
            children.append(_span_row(
                tid, f"{n:08x}{i + 1:08x}", f"{n:08x}00000000", app, t, ms, step, tool,
                "error" if failed else "ok", (int(rng.integers(50, 400)),
                                              int(rng.integers(5, 120))) if step == "llm" else (0, 0)))
            t += ms / 1000.0 + 0.002
        spans.append(_span_row(tid, f"{n:08x}00000000", "", app, t0, (t - t0) * 1000.0, "agent",
                               "", "ok", (0, 0)))
        spans += children
        t0 += 5.0
        n += 1
    signals: list[dict[str, Any]] = []
    by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in spans:
        by_window[int(r["end_ts"] // window_s)].append(r)
    for w, rows in sorted(by_window.items()):
        for sig in AgentSteps().update(span_batch(rows, start=w * window_s,
                                                  end=(w + 1) * window_s)):
            row = sig.labelled(app=app, model="", model_version="").to_row()
            row["detail"] = json.dumps(row["detail"])
            signals.append(row)
    return spans, signals


def _span_row(tid: str, sid: str, parent: str, app: str, ts: float, ms: float, step: str,
              tool: str, status: str, tokens: tuple[int, int]) -> dict[str, Any]:
    op = {"llm": "chat", "tool": "execute_tool", "agent": "invoke_agent",
          "retrieval": "retrieval"}[step]
    row: dict[str, Any] = {
        "trace_id": tid, "span_id": sid, "parent_span_id": parent, "ts": ts,
        "end_ts": ts + ms / 1000.0, "duration_ms": ms, "app": app,
        "name": f"{op} {tool or ('researcher' if step == 'agent' else step)}",
        "kind": "SPAN_KIND_CLIENT" if step == "llm" else "SPAN_KIND_INTERNAL",
        "scope": "llmpulse.dashboards.testing", "step": step, "operation": op,
        "provider": "openai" if step == "llm" else "",
        "model": "gpt-4o" if step == "llm" else "",
        "tool_name": tool, "agent_name": "researcher" if step == "agent" else "",
        "status": status, "error_type": "TimeoutError" if status == "error" else "",
        "input_tokens": tokens[0], "output_tokens": tokens[1],
        "finish_reasons": ["stop"] if step == "llm" else [], "response_id": "",
        "event_id": "", "attributes": {},
    }
    if step == "llm":  # priced as OpenLIT prices it (span_batch reads cost_usd)
        row["cost_usd"] = round((tokens[0] * 2.5 + tokens[1] * 10.0) / 1e6, 8)
        row["attributes"] = {"gen_ai.usage.cost": str(row["cost_usd"])}
    return row


def fill_rows(
    events: Iterable[tuple[str, Mapping[str, Any]]], *, seed: int = 0,
    start_ts: float = 1_700_000_000.0, duration_s: float = 600.0, window_s: float = 30.0,
) -> dict[str, list[dict[str, Any]]]:
    """Rows for every table, keyed by table name (``ts`` in epoch seconds).

    ``events``: ``(topic, event)`` pairs from ``start_ts`` for ``duration_s``
    seconds, at least one inference; ``seed`` drives the synthetic rows.
    """
    from llmpulse.events import TOPIC_INFERENCE

    inference: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    for topic, e in events:
        row = dict(e)
        row["ts"] = row["ts"] / 1000.0
        (inference if topic == TOPIC_INFERENCE else feedback).append(row)
    if not inference:
        raise ValueError("fill_rows needs at least one inference event")
    rng = np.random.default_rng(seed)
    end = start_ts + duration_s
    app = inference[0]["app"]
    models = sorted({(e["model"], e["model_version"]) for e in inference})
    signals = _window_signals(inference, window_s)
    signals += _synthetic_signals(rng, start_ts, end, window_s, app, models)
    signals += _quality_signals(np.random.default_rng(seed + 1), start_ts, end, window_s, app,
                                models)
    spans, agent_signals = _agent_rows(np.random.default_rng(seed + 2), start_ts, end, window_s,
                                       app)
    signals += agent_signals
    for i, row in enumerate(inference):  # half the traffic in a prompt experiment
        row["prompt_version"] = "v2" if i % 4 == 1 else "v1"
        if i % 2:
            row["experiment"] = "tone"
            row["variant"] = "B" if i % 4 == 1 else "A"
    _link_worst(signals, inference)
    alerts, deployments = [], []
    for i, (sev, state) in enumerate((("critical", "firing"), ("warning", "resolved"),
                                      ("warning", "firing"))):
        t0 = start_ts + duration_s * (0.3 + 0.2 * i)
        model, version = models[i % len(models)]
        alerts.append({
            "alert_id": f"alert-{seed}-{i}", "rule": ["latency_p95", "error_rate", "drift"][i],
            "state": state, "severity": sev, "app": app, "model": model,
            "model_version": version, "signal": ["latency.p95_ms", "errors.rate", "drift.psi"][i],
            "dimension": "" if i < 2 else "input_tokens", "value": 1.5 + i,
            "threshold": 1.0 + i, "started_at": t0, "updated_at": t0 + 30,
            "resolved_at": t0 + 60 if state == "resolved" else None,
            "summary": f"{model}: threshold broken ({i})", "detail": "{}",
        })
    for i, stage in enumerate(("canary", "promoted", "canary", "rolled_back")):
        model, version = models[0]
        deployments.append({
            "deployment_id": f"dep-{seed}-{i // 2}", "model": model,
            "version": f"{version}-r{i // 2 + 1}", "previous_version": version,
            "trigger": f"alert-{seed}-0" if i < 2 else "manual", "stage": stage,
            "metrics": json.dumps({"accuracy": 0.9 - 0.05 * i}),
            "ts": start_ts + duration_s * (0.55 + 0.1 * i),
        })
    deadletters = [{"ts": start_ts + duration_s * (0.1 + 0.05 * i), "topic": "llmpulse.inference",
                    "partition": i % 2, "offset": 100 + i,
                    "reason": "latency_ms: must be >= 0" if i % 2 else "not valid JSON",
                    "payload": "{}"} for i in range(6)]
    audit = [{"ts": start_ts + duration_s * (0.2 + 0.1 * i), "action": action, "actor": actor,
              "outcome": outcome, "target": target, "remote": "127.0.0.1",
              "detail": json.dumps({"total": i})}
             for i, (action, actor, outcome, target) in enumerate((
                 ("erase", "ops", "ok", "app:staging"),
                 ("retrain", "retrain-service", "ok", models[0][0]),
                 ("deploy", "retrain-service", "ok", f"{models[0][0]}:{models[0][1]}-r1"),
                 ("auth_failed", "anonymous", "denied", "/api/admin/erase"),
                 ("rollback", "cli", "ok", models[0][0])))]
    return {"inference_events": inference, "feedback_events": feedback, "signals": signals,
            "alerts": alerts, "deployments": deployments, "deadletter_events": deadletters,
            "audit_events": audit, "spans": spans}


def _link_worst(signals: list[dict[str, Any]], inference: list[dict[str, Any]]) -> None:
    """Point each worst example at a stored event of its window (its prompt columns join)."""
    events = sorted(inference, key=lambda e: e["ts"])
    times = [e["ts"] for e in events]
    for row in signals:
        if '"worst"' not in row.get("detail", ""):
            continue
        detail = json.loads(row["detail"])
        lo = bisect.bisect_left(times, row["ts"] - row.get("window_s", 30.0))
        hi = bisect.bisect_right(times, row["ts"])
        if hi <= lo:
            continue
        for i, example in enumerate(detail.get("worst", [])):
            example["event_id"] = events[lo + (i * 7) % (hi - lo)]["event_id"]
        row["detail"] = json.dumps(detail)


def fill_store(store: Any, events: Iterable[tuple[str, Mapping[str, Any]]],
               **kwargs: Any) -> dict[str, int]:
    """Insert :func:`fill_rows` into an open :class:`~llmpulse.store.Store`; rows per table."""
    return {table: store.insert_rows(table, rows)
            for table, rows in fill_rows(events, **kwargs).items()}
