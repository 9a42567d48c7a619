"""The closed loop of llmpulse.closed_loop on a real embedded store and a real model server,
without a broker (predictions and labels written straight into the store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmpulse.closed_loop import (
    HELDOUT_SEED_OFFSET,
    StoreMonitor,
    heldout_accuracy,
    run_closed_loop,
)
from llmpulse.retrain.reference import reference_dataset, train_reference
from llmpulse.retrain.registry import ModelRegistry
from llmpulse.retrain.service import RetrainService
from llmpulse.retrain.serving import LoadedModel, ModelServer
from llmpulse.retrain.settings import CanaryPolicy, RetrainSettings
from llmpulse.retrain.trainer import HeadTrainer, MemoEmbedder
from llmpulse.router_data import drifted_tickets, heldout_tickets
from llmpulse.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "intent-router"
SEED, N_DRIFT, N_HELDOUT = 5, 300, 150


def test_closed_loop_improves_held_out_accuracy_and_refuses_a_worse_model(
        tmp_path: Path, embedder: MemoEmbedder, encoder_path: Path) -> None:
    trainer = HeadTrainer(encoder_path=encoder_path, embedder=embedder)
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        registry = ModelRegistry(tmp_path)
        ref = reference_dataset()
        v1, _ = train_reference(registry, data=ref.subset(range(0, len(ref), 2)), trainer=trainer,
                                work_dir=tmp_path / "ref")
        # latency (the gate's timing, the canary's live p99) is the benchmark's business,
        # not this test's: on a loaded machine it decides by chance
        canary = CanaryPolicy(share=0.3, min_duration_s=5.0, min_samples=30, min_labelled=20,
                              max_wait_s=120.0, poll_s=1.0, latency_margin=1000.0)
        service = RetrainService(store, registry, settings=RetrainSettings(canary=canary),
                                 trainer_factory=lambda req: trainer, work_dir=tmp_path / "work",
                                 latency_probe=lambda cand, cur: (5.0, 5.0))
        monitor = StoreMonitor(store)
        lines: list[str] = []

        async def loop() -> dict:
            loaded = LoadedModel(v1.artifact, v1.version, providers=["CPUExecutionProvider"])
            async with ModelServer(loaded, name=MODEL, monitor=monitor) as server:
                service.server = server
                return await run_closed_loop(service, server, monitor, seed=SEED, n_drift=N_DRIFT,
                                             n_heldout=N_HELDOUT, rate=80.0, flush=monitor.flush,
                                             progress=lines.append, bad_trainer=lambda: HeadTrainer(
                                                 encoder_path=encoder_path, embedder=embedder,
                                                 label_noise=0.6))

        res = asyncio.run(loop())
        assert res["stage"] == "promoted", res["reason"]
        assert (res["version_before"], res["version_after"]) == ("1", "2")
        held = res["heldout"]
        assert held["n"] == N_HELDOUT and held["seed"] == SEED + HELDOUT_SEED_OFFSET
        assert res["accuracy_after"] > res["accuracy_before"]
        assert res["accuracy_after"] > held["majority_baseline"]
        # version 1 never learned the new intents; the retrained version did
        new = held["accuracy_new_intents_by_version"]
        assert held["n_new_intents"] > 0 and new["1"] == 0.0 and new["2"] > 0.5
        gates = res["gates_accuracy"]
        assert gates["n"] > 0 and gates["candidate"] > gates["current"]
        assert res["bad_case"]["stage"] == "rejected" and "accuracy" in res["bad_case"]["reason"]
        assert any(ln.startswith("held-out accuracy (150 tickets never trained on)") for ln in lines)

        # the held-out tickets were never stored (so no training set held them), and the
        # figures are those versions' accuracy on exactly these tickets
        stored = {r["prompt"] for r in store.query(
            "SELECT DISTINCT prompt FROM inference_events FINAL WHERE model = 'intent-router'")}
        training = {t[0] for t in drifted_tickets(SEED, N_DRIFT, share=0.75)}
        assert training <= stored
        tickets = heldout_tickets(SEED + HELDOUT_SEED_OFFSET, N_HELDOUT,
                                  exclude=stored | training | set(ref.texts), share=0.75)
        assert not {t[0] for t in tickets} & stored
        for v, key in (("1", "accuracy_before"), ("2", "accuracy_after")):
            mv = registry.get(MODEL, v)
            loaded = LoadedModel(mv.artifact, v, providers=["CPUExecutionProvider"])
            assert heldout_accuracy(loaded, tickets) == res[key]
    finally:
        store.close()
