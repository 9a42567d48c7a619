"""The closed loop on the ticket router, driven by simulated traffic.

Drifted tickets go through the served router (its accuracy drops on the new
topics), the retraining service builds a dataset from the store, trains,
gates, canaries and promotes a new version, and a deliberately worse
candidate (mislabelled training data) is refused. ``llmpulse demo`` runs it
inside the stack (:func:`run_demo_loop`); ``llmpulse bench retrain`` runs it
on a bare store without a broker (:func:`run_closed_loop` with a
:class:`StoreMonitor`).

The accuracy it reports before and after the retrain is measured on
held-out tickets: drawn from another seed of the simulator, and none whose
text was ever stored (so none could be in a training set) or is in the
reference version's training data. Live traffic repeats the drift phase's
tickets, which the retrain trains on; its accuracy is reported separately,
as ``accuracy_on_training_traffic``. Held-out tickets are distinct texts, and
the new topics (``integration``, ``privacy``) have fewer phrasings than the
launch-time ones, so they are rarer among held-out tickets than in the
traffic; their accuracy is reported on its own
(``heldout["accuracy_new_intents_by_version"]``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from llmpulse.retrain.reference import LAUNCH_INTENTS, REFERENCE_MODEL, reference_dataset
from llmpulse.retrain.registry import ModelRegistry
from llmpulse.retrain.service import RetrainService
from llmpulse.retrain.serving import LoadedModel
from llmpulse.retrain.settings import CanaryPolicy
from llmpulse.retrain.trainer import HeadTrainer, Trainer
from llmpulse.router_data import Ticket, drifted_tickets, heldout_tickets

__all__ = [
    "StoreMonitor",
    "drive_traffic",
    "heldout_accuracy",
    "run_closed_loop",
    "run_demo_loop",
]

HELDOUT_SEED_OFFSET = 1000
"""The held-out tickets' simulator seed is the loop's seed plus this."""


class StoreMonitor:
    """A :class:`~llmpulse.retrain.serving.MonitorLike` that writes events straight into a store.

    For runs without a broker (the benchmark): events are buffered and
    inserted on :meth:`flush` (blocking).
    """

    def __init__(self, store: Any, app: str = "llmpulse-serving") -> None:
        self.store = store
        self.app = app
        self._inf: list[bytes] = []
        self._fb: list[bytes] = []

    def _stamp(self, ev: dict[str, Any]) -> dict[str, Any]:
        ev.setdefault("event_id", uuid.uuid4().hex)
        ev.setdefault("ts", int(time.time() * 1000))
        ev.setdefault("app", self.app)
        return ev

    def inference(self, **ev: Any) -> str:
        import orjson

        self._inf.append(orjson.dumps(self._stamp(ev)))
        return str(ev["request_id"])

    def feedback(self, **ev: Any) -> str:
        import orjson

        self._fb.append(orjson.dumps(self._stamp(ev)))
        return str(ev["event_id"])

    def flush(self) -> None:
        inf, self._inf = self._inf, []
        fb, self._fb = self._fb, []
        if inf:
            self.store.insert_json("inference_ingest", b"\n".join(inf))
        if fb:
            self.store.insert_json("feedback_ingest", b"\n".join(fb))


async def drive_traffic(
    server: Any,
    feedback: Any,
    tickets: Sequence[Ticket],
    *,
    rate: float = 50.0,
    stop: asyncio.Event | None = None,
    flush: Callable[[], Any] | None = None,
    tag: str = "drift",
) -> dict[str, Any]:
    """Send ``tickets`` through ``server`` (cycling until ``stop`` is set, if given) at
    ``rate`` requests/s, with their true label as feedback; accuracy per version answered."""
    per_version: dict[str, list[int]] = {}
    i = 0
    t0 = time.monotonic()
    run = uuid.uuid4().hex[:8]
    while True:
        if stop is None and i >= len(tickets):
            break
        if stop is not None and stop.is_set():
            break
        batch = []
        for _ in range(max(1, int(rate / 10))):
            prompt, label, seg = tickets[i % len(tickets)]
            batch.append((f"{tag}-{run}-{i}", prompt, label, seg))
            i += 1
            if stop is None and i >= len(tickets):
                break
        preds = await asyncio.gather(*[server.predict([p], request_id=rid, segment=seg)
                                       for rid, p, _, seg in batch])
        for (rid, _p, label, _s), pred in zip(batch, preds, strict=True):
            feedback.feedback(request_id=rid, label=label)
            c = per_version.setdefault(pred.model_version, [0, 0])
            c[0] += int(pred.labels[0] == label)
            c[1] += 1
        if flush is not None:
            await asyncio.to_thread(flush)
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
    return {
        "n": sum(c[1] for c in per_version.values()),
        "accuracy_by_version": {v: round(c[0] / c[1], 4) for v, c in per_version.items() if c[1]},
    }


async def _wait_labelled(store: Any, model: str, since: float, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(
            store.query,
            "SELECT count() AS n FROM inference_events AS i FINAL INNER JOIN "
            "(SELECT DISTINCT request_id FROM feedback_events FINAL WHERE label IS NOT NULL "
            "AND ts >= fromUnixTimestamp64Milli({s:Int64}, 'UTC')) AS f USING (request_id) "
            "WHERE i.model = {m:String} AND i.ts >= fromUnixTimestamp64Milli({s:Int64}, 'UTC')",
            {"m": model, "s": int(since * 1000)},
        )
        got = int(rows[0]["n"])
        if got >= n:
            return got
        await asyncio.sleep(0.5)
    return got




def _predicted(model: Any, tickets: Sequence[Ticket], batch: int = 32) -> list[str]:
    labels = list(model.labels)
    out: list[str] = []
    for i in range(0, len(tickets), batch):
        probs, _ = model.predict_proba([t[0] for t in tickets[i : i + batch]])
        out.extend(labels[int(j)] for j in probs.argmax(axis=1))
    return out


def heldout_accuracy(model: Any, tickets: Sequence[Ticket], *, batch: int = 32) -> float | None:
    """Accuracy of a :class:`~llmpulse.retrain.serving.LoadedModel` on ``tickets`` (no events sent)."""
    if not tickets:
        return None
    pred = _predicted(model, tickets, batch)
    return round(sum(p == t[1] for p, t in zip(pred, tickets, strict=True)) / len(tickets), 4)


def _majority_baseline(tickets: Sequence[Ticket]) -> float | None:
    """Accuracy of always answering the most frequent intent of ``tickets`` (an upper bound
    for a constant answer: it is chosen knowing the held-out labels)."""
    if not tickets:
        return None
    return round(Counter(t[1] for t in tickets).most_common(1)[0][1] / len(tickets), 4)


def _stored_prompts(store: Any, model: str) -> set[str]:
    rows = store.query("SELECT DISTINCT prompt FROM inference_events FINAL WHERE model = {m:String}",
                       {"m": model})
    return {str(r["prompt"]) for r in rows if r["prompt"] is not None}


def _measure_heldout(store: Any, registry: ModelRegistry, model: str, versions: Sequence[str],
                     *, seed: int, n: int, seen: set[str]) -> dict[str, Any]:
    """Accuracy of each registered version on the same held-out tickets (blocking)."""
    exclude = seen | _stored_prompts(store, model) | set(reference_dataset().texts)
    tickets = heldout_tickets(seed, n, exclude=exclude, share=0.75)
    new = [i for i, t in enumerate(tickets) if t[1] not in LAUNCH_INTENTS]
    acc: dict[str, float | None] = {}
    acc_new: dict[str, float | None] = {}
    for v in dict.fromkeys(versions):
        mv = registry.get(model, v)
        loaded = LoadedModel(mv.artifact, mv.version)
        try:
            pred = _predicted(loaded, tickets)
        finally:
            loaded.close()
        hits = [p == t[1] for p, t in zip(pred, tickets, strict=True)]
        acc[v] = round(sum(hits) / len(hits), 4) if hits else None
        acc_new[v] = round(sum(hits[i] for i in new) / len(new), 4) if new else None
    return {"n": len(tickets), "seed": seed, "accuracy_by_version": acc,
            "n_new_intents": len(new), "accuracy_new_intents_by_version": acc_new,
            "majority_baseline": _majority_baseline(tickets),
            "intents": dict(Counter(t[1] for t in tickets))}


async def run_closed_loop(
    service: RetrainService,
    server: Any,
    feedback: Any,
    *,
    seed: int = 7,
    n_drift: int = 600,
    n_heldout: int = 300,
    rate: float = 60.0,
    flush: Callable[[], Any] | None = None,
    alert_wait_s: float = 0.0,
    bad_case: bool = True,
    bad_trainer: Callable[[], Trainer] | None = None,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Drift → (alert) → retrain → gates → canary → promote, then a refused bad model.

    ``server`` serves the current version (its monitor sends the predictions
    to the store), ``feedback`` sends the true labels (a :class:`llmpulse.Monitor`
    or :class:`StoreMonitor`). With ``alert_wait_s`` the loop waits that long
    for a retrain request from the alert rules; otherwise (or if none comes) it
    sends the request itself, as ``llmpulse retrain`` would.

    ``accuracy_before`` and ``accuracy_after`` are the versions' accuracy on
    ``n_heldout`` held-out tickets (see the module docstring), next to the
    majority-intent baseline on the same tickets; ``gates`` holds the gates'
    own held-out figures. ``bad_trainer`` makes the trainer of the worse
    candidate (default: :class:`~llmpulse.retrain.trainer.HeadTrainer` with 60 % of the
    labels wrong).
    """
    say = progress or (lambda _m: None)
    model = REFERENCE_MODEL
    tickets = drifted_tickets(seed, n_drift, share=0.75)
    t_start = time.time()
    v_before = server.active.version
    say(f"drift: {len(tickets)} tickets through {model} version {v_before}")
    before = await drive_traffic(server, feedback, tickets, rate=rate, flush=flush, tag="drift")
    live_before = before["accuracy_by_version"].get(v_before)
    say(f"accuracy of version {v_before} on the drifted traffic: {live_before}")
    min_rows = service.settings.dataset.min_recent
    await _wait_labelled(service.store, model, t_start - 1, min(len(tickets) // 2, 4 * min_rows), 30.0)
    # the drift phase's own window: later traffic repeats these tickets, and the
    # dataset keeps evaluation texts out of training
    t_drift_end = time.time()

    stop = asyncio.Event()

    async def canary_traffic() -> dict[str, Any]:
        # Live traffic starts with the canary: during training and the latency
        # gate it would only add noise to the measurement on a small machine.
        while not stop.is_set() and server.canary is None:
            await asyncio.sleep(0.2)
        return await drive_traffic(server, feedback, tickets, rate=rate, stop=stop, flush=flush,
                                   tag="live")

    live = asyncio.ensure_future(canary_traffic())
    try:
        outcome = None
        t_req = time.time()
        if alert_wait_s > 0:
            say(f"waiting up to {alert_wait_s:g} s for an alert to request a retrain")
            while outcome is None or outcome.request.get("model") != model:
                outcome = await service.wait_handled(max(0.1, alert_wait_s - (time.time() - t_req)))
                if outcome is None or time.time() - t_req >= alert_wait_s:
                    break
        if outcome is None or outcome.request.get("model") != model:
            req = {"request_id": f"demo-{uuid.uuid4().hex[:12]}", "model": model,
                   "model_version": v_before, "app": "demo", "alert_id": "demo-drift",
                   "rule": "accuracy-low", "signal": "quality.accuracy",
                   "window": {"start": t_start - 1, "end": t_drift_end}, "ts": time.time()}
            say("retrain requested")
            t_req = time.time()
            outcome = await service.handle(req)
        t_done = time.time()
    finally:
        stop.set()
        await live
    say(f"retrain: {outcome.stage} version {outcome.version}" +
        (f" ({outcome.reason})" if outcome.reason else ""))
    after = await drive_traffic(server, feedback, tickets[: max(100, len(tickets) // 3)],
                                rate=rate, flush=flush, tag="after")
    v_after = server.active.version
    live_after = after["accuracy_by_version"].get(v_after)
    if flush is not None:
        await asyncio.to_thread(flush)
    held = await asyncio.to_thread(
        _measure_heldout, service.store, service.registry, model, [v_before, v_after],
        seed=seed + HELDOUT_SEED_OFFSET, n=n_heldout, seen={t[0] for t in tickets})
    acc_before = held["accuracy_by_version"].get(v_before)
    acc_after = held["accuracy_by_version"].get(v_after)
    say(f"held-out accuracy ({held['n']} tickets never trained on): version {v_before} "
        f"{acc_before} -> version {v_after} {acc_after} (majority baseline "
        f"{held['majority_baseline']})")
    gate_metrics = outcome.metrics.get("gates", {}).get("metrics", {})
    result: dict[str, Any] = {
        "stage": outcome.stage,
        "version_before": v_before,
        "version_after": v_after,
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "heldout": held,
        "accuracy_on_training_traffic": {"before": live_before, "after": live_after},
        "gates_accuracy": {"candidate": gate_metrics.get("accuracy"),
                           "current": gate_metrics.get("current_accuracy"),
                           "n": gate_metrics.get("n_eval")},
        "request_to_final_s": round(t_done - t_req, 3),
        "timings": {k: round(v, 3) for k, v in outcome.timings.items()},
        "gates": [(r["gate"], r["passed"]) for r in outcome.metrics.get("gates", {}).get("results", [])],
        "canary": outcome.metrics.get("canary"),
        "reason": outcome.reason,
    }
    if bad_case:
        saved = service.trainer_factory
        make_bad = bad_trainer or (lambda: HeadTrainer(label_noise=0.6))
        service.trainer_factory = lambda req: make_bad()
        try:
            bad = await service.handle({
                "request_id": f"demo-{uuid.uuid4().hex[:12]}", "model": model,
                "model_version": server.active.version, "app": "demo",
                "alert_id": "demo-mislabelled", "rule": "accuracy-low",
                "signal": "quality.accuracy", "window": {"start": t_start - 1, "end": t_drift_end},
                "ts": time.time()})
        finally:
            service.trainer_factory = saved
        say(f"mislabelled candidate: {bad.stage} ({bad.reason})")
        result["bad_case"] = {"stage": bad.stage, "version": bad.version, "reason": bad.reason}
    return result


async def run_demo_loop(
    service: RetrainService,
    *,
    seed: int = 7,
    n_drift: int = 600,
    n_heldout: int = 300,
    rate: float = 60.0,
    alert_wait_s: float = 0.0,
    canary: CanaryPolicy | None = None,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """The closed loop inside a running stack (``llmpulse demo``).

    ``service`` is the stack's retraining service (returned by
    :func:`llmpulse.retrain.service.attach_retrain`). Serving is started if it is not
    running; feedback labels go through a :class:`llmpulse.Monitor` on the
    stack's broker. ``canary`` defaults to a short demo canary (30 % for at
    least 10 s with 20 labelled answers).
    """
    from llmpulse.monitor import Monitor

    host = service.host
    if host is None:
        raise RuntimeError("the service is not attached to a stack: use run_closed_loop")
    server = service.server or await host.start()
    saved = service.settings
    service.settings = replace(saved, canary=canary or CanaryPolicy(
        share=0.3, min_duration_s=10.0, min_samples=30, min_labelled=20, max_wait_s=120.0,
        poll_s=1.0))
    fb = Monitor(app="llmpulse-demo", bootstrap=host.bootstrap_servers(), strict=False,
                 security=host.settings.kafka_security)
    try:
        return await run_closed_loop(service, server, fb, seed=seed, n_drift=n_drift,
                                     n_heldout=n_heldout, rate=rate, flush=fb.flush,
                                     alert_wait_s=alert_wait_s, progress=progress)
    finally:
        service.settings = saved
        await asyncio.to_thread(fb.close)
