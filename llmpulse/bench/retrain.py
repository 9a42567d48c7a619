"""Benchmark: the closed loop, from a retrain request to a promoted version.

One process, an embedded store (chDB) in a temporary directory, no broker:

1. the reference version ``1`` of ``intent-router`` is trained, registered and
   promoted (``bootstrap_s``);
2. it serves drifted tickets (``prompt_drift``, 75 % of requests on the new
   topics) through a :class:`~llmpulse.retrain.serving.ModelServer` on the CPU (or
   CUDA) provider; predictions and true labels go to the store;
3. a retrain request for the window is handled by
   :class:`~llmpulse.retrain.service.RetrainService`: dataset from the store, training
   (MiniLM head), gates (real latency measurement), canary at 30 % watched on
   live traffic for at least 30 s (10 s with ``--quick``), promotion;
4. the versions before and after are scored on held-out drifted tickets
   (another simulator seed; no ticket whose text was ever stored or is in the
   reference training data).

Figures: ``request_to_promoted_s`` (goal: at most 300 s on this machine) with
its parts (dataset, training, gates, canary), held-out accuracy before and
after with their ratio, next to the majority-intent baseline, and the gates'
own held-out figures; the accuracy on the (trained-on) live traffic is shown
for contrast only; plus the refused mislabelled candidate (``bad_case``).

Run ``python -m llmpulse.bench.retrain [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "run"]

GOAL_S = 300.0


async def _run(tmp: Path, quick: bool) -> dict[str, Any]:
    from llmpulse.closed_loop import StoreMonitor, run_closed_loop
    from llmpulse.retrain.reference import train_reference
    from llmpulse.retrain.registry import ModelRegistry
    from llmpulse.retrain.service import RetrainService
    from llmpulse.retrain.serving import LoadedModel, ModelServer
    from llmpulse.retrain.settings import CanaryPolicy, RetrainSettings
    from llmpulse.store import Store

    store = await asyncio.to_thread(Store.open, f"chdb://{tmp}/store")
    try:
        registry = ModelRegistry(tmp)
        t0 = time.perf_counter()
        ref, _ = await asyncio.to_thread(train_reference, registry)
        bootstrap_s = time.perf_counter() - t0
        canary = CanaryPolicy(share=0.3, min_duration_s=10.0 if quick else 30.0, min_samples=30,
                              min_labelled=20, max_wait_s=180.0, poll_s=1.0)
        service = RetrainService(store, registry, settings=RetrainSettings(canary=canary),
                                 work_dir=tmp / "work")
        monitor = StoreMonitor(store)
        loaded = await asyncio.to_thread(LoadedModel, ref.artifact, ref.version)
        async with ModelServer(loaded, name="intent-router", monitor=monitor) as server:
            service.server = server
            loop = await run_closed_loop(service, server, monitor, seed=7,
                                         n_drift=400 if quick else 800, rate=80.0,
                                         flush=monitor.flush, bad_case=True)
        rows = await asyncio.to_thread(
            store.query, "SELECT stage, count() AS n FROM deployments FINAL GROUP BY stage")
    finally:
        await asyncio.to_thread(store.close)
    before, after = loop["accuracy_before"], loop["accuracy_after"]
    return {
        "provider": loaded.provider,
        "quick": quick,
        "bootstrap_s": round(bootstrap_s, 3),
        "request_to_promoted_s": loop["request_to_final_s"] if loop["stage"] == "promoted" else None,
        "goal_s": GOAL_S,
        "stage": loop["stage"],
        "timings": loop["timings"],
        "accuracy_before": before,
        "accuracy_after": after,
        "accuracy_ratio": round(after / before, 3) if before and after else None,
        "heldout": loop["heldout"],
        "gates_accuracy": loop["gates_accuracy"],
        "accuracy_on_training_traffic": loop["accuracy_on_training_traffic"],
        "versions": [loop["version_before"], loop["version_after"]],
        "canary": loop["canary"],
        "gates": loop["gates"],
        "bad_case": loop.get("bad_case"),
        "deployments": {r["stage"]: int(r["n"]) for r in rows},
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the loop once and return its figures (JSON-serialisable)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-retrain-") as tmp:
        return asyncio.run(_run(Path(tmp), quick))


def format_table(result: dict[str, Any]) -> str:
    t = result["timings"]
    total = result["request_to_promoted_s"]
    lines = [
        f"closed loop on {result['provider']} ({'quick' if result['quick'] else 'full'})",
        "",
        f"bootstrap reference v1          {result['bootstrap_s']:8.1f} s",
        f"request -> {result['stage']:<20} {total if total is not None else float('nan'):8.1f} s"
        f"   (goal <= {result['goal_s']:.0f} s)",
    ]
    for k in ("dataset_s", "train_s", "gates_s", "canary_s"):
        if k in t:
            lines.append(f"  {k[:-2]:<29} {t[k]:8.1f} s")
    lines += [
        "",
        f"accuracy on {result['heldout']['n']} held-out tickets v{result['versions'][0]} "
        f"{result['accuracy_before']}  ->  v{result['versions'][1]} {result['accuracy_after']}"
        f"   (x{result['accuracy_ratio']}; majority-intent baseline "
        f"{result['heldout']['majority_baseline']})",
        f"  of which {result['heldout']['n_new_intents']} on the new intents    "
        + "  ->  ".join(f"v{v} {a}" for v, a in
                        result['heldout']['accuracy_new_intents_by_version'].items()),
        f"gates' held-out slice           candidate {result['gates_accuracy']['candidate']}"
        f", current {result['gates_accuracy']['current']} ({result['gates_accuracy']['n']} tickets)",
        f"on the training traffic         {result['accuracy_on_training_traffic']['before']}"
        f"  ->  {result['accuracy_on_training_traffic']['after']}   (seen in training: not a score)",
    ]
    bad = result.get("bad_case")
    if bad:
        lines.append(f"mislabelled candidate           {bad['stage']}: {bad['reason'][:90]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="a shorter canary and less traffic")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
