"""Seeded synthetic events for detector tests, examples and benchmarks.

Ships inside the package (as bytewax ships its testing sources) so users can
check their own detectors against the same streams.

>>> events = synthetic_events(3, seed=7)
>>> len(events), sorted(events[0])[:4]
(3, ['app', 'context', 'cost_usd', 'event_id'])
>>> synthetic_batch(200, seed=1).numeric("latency_ms").shape
(200,)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch

__all__ = ["synthetic_batch", "synthetic_events"]

_REGIONS = ("eu", "us", "apac")
_LANGS = ("en", "de", "fr", "es")
_TIERS = ("free", "pro", "enterprise")
_INTENTS = ("billing", "refund", "shipping", "account", "technical")


def synthetic_events(
    n: int,
    *,
    seed: int = 0,
    start: float = 1_700_000_000.0,
    rate: float = 100.0,
    latency_scale: float = 1.0,
    with_feedback: bool = True,
    experiment: str | None = None,
    effect: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` healthy ``inference/v1`` events (feedback joined on half of them).

    Latencies are log-normal (median ~600 ms), 2 % errors, 1 % timeouts;
    ``latency_scale`` multiplies latencies, to script a slowdown. With
    ``experiment``, events alternate in pairs between variants ``A`` and
    ``B`` (prompt versions ``1`` and ``2``), and ``effect`` is added to
    variant B's feedback scores (clipped to -1..1).
    """
    rng = np.random.default_rng(seed)
    ts = start + np.sort(rng.uniform(0, n / rate, n))
    latency = rng.lognormal(np.log(600.0), 0.5, n) * latency_scale
    status = rng.choice(["ok", "error", "timeout"], n, p=[0.97, 0.02, 0.01])
    tin = rng.integers(20, 800, n)
    tout = rng.integers(5, 400, n)
    region = rng.choice(_REGIONS, n)
    lang = rng.choice(_LANGS, n)
    tier = rng.choice(_TIERS, n)
    intent = rng.choice(_INTENTS, n)
    score = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < 0.9
    events: list[dict[str, Any]] = []
    for i in range(n):
        label = str(intent[i]) if correct[i] else str(_INTENTS[(i + 1) % len(_INTENTS)])
        ev: dict[str, Any] = {
            "event_id": f"e{seed}-{i}",
            "request_id": f"r{seed}-{i}",
            "ts": int(ts[i] * 1000),
            "app": "support",
            "model": "router",
            "model_version": "1",
            "latency_ms": float(latency[i]),
            "ttft_ms": float(latency[i] * 0.2),
            "status": str(status[i]),
            "input_tokens": int(tin[i]),
            "output_tokens": int(tout[i]),
            "cost_usd": float(tin[i] * 1e-6 + tout[i] * 3e-6),
            "prompt": f"question {i} about {intent[i]}",
            "response": f"answer {i} about {intent[i]}",
            "context": [f"passage about {intent[i]}"],
            "token_logprobs": [float(x) for x in -rng.exponential(0.3, 5)],
            "prediction": {"label": label, "score": float(score[i])},
            "segment": {"region": str(region[i]), "language": str(lang[i]), "tier": str(tier[i])},
            "features": {"prompt_chars": float(len(str(intent[i])) * 3 + tin[i])},
        }
        arm_b = experiment is not None and (i // 2) % 2 == 1
        if experiment is not None:
            ev["experiment"] = experiment
            ev["variant"] = "B" if arm_b else "A"
            ev["prompt_version"] = "2" if arm_b else "1"
        if with_feedback and i % 2 == 0:
            shift = effect if arm_b else 0.0
            ev["feedback"] = {
                "score": float(np.clip(rng.uniform(-0.2, 1.0) + shift, -1.0, 1.0)),
                "label": str(intent[i]),
                "hallucination": bool(rng.random() < 0.05),
            }
        events.append(ev)
    return events


def synthetic_batch(n: int = 1000, *, seed: int = 0, **kwargs: Any) -> Batch:
    """:func:`synthetic_events` as a :class:`~llmpulse.detectors.base.Batch`."""
    events = synthetic_events(n, seed=seed, **kwargs)
    start = kwargs.get("start", 1_700_000_000.0)
    return Batch.from_events(events, start=start, end=start + n / kwargs.get("rate", 100.0))
