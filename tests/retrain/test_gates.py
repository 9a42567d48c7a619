"""Gates refuse a worse model with recorded reasons; nothing is deployed then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmpulse.retrain.gates import (
    GateConfig,
    evaluate,
    latency_gate,
    onnx_checker_gate,
    parity_gate,
)
from llmpulse.retrain.registry import ModelRegistry, RegistryError, sha256_file
from llmpulse.retrain.release import release
from llmpulse.retrain.serving import LoadedModel
from llmpulse.retrain.trainer import Artifact, Dataset


@pytest.fixture
def loader(artifact: Artifact, bad_artifact: Artifact, loaded: LoadedModel, loaded_bad: LoadedModel) -> Any:
    """Sessions loaded once per test session (loading 90 MB graphs is the slow part),
    found by content: the registry hands the gates its own copies of the files."""
    by_sha = {sha256_file(artifact.path): loaded, sha256_file(bad_artifact.path): loaded_bad}
    return lambda path, version: by_sha[sha256_file(path)]


@pytest.fixture(scope="module")
def gate_set(split: tuple[Dataset, Dataset]) -> Dataset:
    """A small held-out set: enough for the overall and the largest segment gates."""
    return split[1].subset(range(80))


def _fixed_latency(cand: float, cur: float | None) -> Any:
    return lambda c, p: (cand, cur if p is not None else None)


def test_shuffled_head_is_refused_with_reasons(
    artifact: Artifact, bad_artifact: Artifact, gate_set: Dataset, loader: Any
) -> None:
    cfg = GateConfig(min_segment_size=25)
    report = evaluate(bad_artifact, gate_set, current_path=artifact.path, config=cfg,
                      latency_probe=_fixed_latency(10.0, 10.0), loader=loader)
    assert not report.passed
    failed = {r.gate: r for r in report.failures}
    assert "accuracy" in failed
    acc = failed["accuracy"]
    assert isinstance(acc.measured, float) and isinstance(acc.limit, float)
    assert acc.measured < acc.limit and "below" in acc.reason
    assert any(g.startswith("accuracy[") for g in failed)  # segments too
    # The bad model is still a faithful export of its own head: parity and checker pass.
    assert {"onnx_checker", "parity", "latency_p99"}.isdisjoint(failed)
    assert report.metrics["current_accuracy"] > report.metrics["accuracy"]


def test_release_rejects_a_worse_model_and_keeps_serving_the_current(
    artifact: Artifact, bad_artifact: Artifact, gate_set: Dataset, tmp_path: Path,
    loader: Any,
) -> None:
    reg = ModelRegistry(tmp_path)
    probe = _fixed_latency(10.0, 10.0)
    good = release(reg, "router", artifact, gate_set, latency_probe=probe, loader=loader)
    assert good.report.passed and good.deployed
    assert [d.stage for d in good.deployments] == ["promoted"]
    assert reg.current("router").version == "1"  # type: ignore[union-attr]
    bad = release(reg, "router", bad_artifact, gate_set, trigger="alert-7", latency_probe=probe,
                  loader=loader)
    assert not bad.deployed
    assert bad.version.stage == "rejected" and bad.version.lineage["parent"] == "1"
    assert {r["gate"] for r in bad.version.reasons} >= {"accuracy"}
    assert all({"gate", "measured", "limit", "reason"} <= set(r) for r in bad.version.reasons)
    assert reg.current("router").version == "1"  # type: ignore[union-attr]
    assert bad.rows()[0]["stage"] == "rejected"


def test_a_candidate_the_gates_could_not_judge_is_rejected_not_left_deployable(
    artifact: Artifact, bad_artifact: Artifact, gate_set: Dataset, tmp_path: Path,
    loader: Any,
) -> None:
    reg = ModelRegistry(tmp_path)
    release(reg, "router", artifact, gate_set, latency_probe=_fixed_latency(10.0, 10.0),
            loader=loader)

    def broken_probe(candidate: Any, current: Any | None) -> tuple[float, float | None]:
        raise RuntimeError("probe crashed")

    with pytest.raises(RuntimeError, match="probe crashed"):
        release(reg, "router", bad_artifact, gate_set, latency_probe=broken_probe, loader=loader)
    v2 = reg.get("router", "2")
    assert v2.stage == "rejected" and "the gates failed to run" in v2.reasons[0]["reason"]
    with pytest.raises(RegistryError, match="rejected by a gate"):
        reg.deploy("router", "2")  # by hand, as `llmpulse deploy router 2` would
    assert reg.current("router").version == "1"  # type: ignore[union-attr]


@pytest.mark.parametrize("share", [float("nan"), -0.5, 1.0, 7.0])
def test_a_release_refuses_a_share_that_is_no_canary(
    artifact: Artifact, gate_set: Dataset, tmp_path: Path, share: float,
) -> None:
    reg = ModelRegistry(tmp_path)  # NaN read as "promote" before (nan > 0 is False)
    with pytest.raises(RegistryError, match="canary share"):
        release(reg, "router", artifact, gate_set, canary_share=share)
    assert reg.current("router") is None and reg.versions("router") == []


def test_slower_candidate_fails_latency_gate(
    artifact: Artifact, gate_set: Dataset, loader: Any
) -> None:
    report = evaluate(artifact, gate_set, current_path=artifact.path,
                      latency_probe=_fixed_latency(50.0, 20.0), loader=loader)
    (fail,) = report.failures
    assert (fail.gate, fail.measured, fail.limit) == ("latency_p99", 50.0, 27.0)
    assert latency_gate(26.9, 20.0).passed


def test_parity_gate_catches_a_reference_that_disagrees(
    artifact: Artifact, bad_artifact: Artifact, gate_set: Dataset, loader: Any
) -> None:
    lying = Artifact(artifact.path, artifact.labels, "test", bad_artifact.reference)
    report = evaluate(lying, gate_set, latency_probe=_fixed_latency(1.0, None), loader=loader)
    assert [r.gate for r in report.failures] == ["parity"]
    assert report.failures[0].measured > 0.1  # type: ignore[operator]
    no_ref = Artifact(artifact.path, artifact.labels, "test", None)
    r = evaluate(no_ref, gate_set, latency_probe=_fixed_latency(1.0, None), loader=loader)
    assert [x.reason for x in r.failures] == ["no framework reference to compare with (the trainer gave none)"]
    assert parity_gate(np.zeros((2, 2)), np.zeros((3, 2))).reason.startswith("shapes differ")


def test_onnx_checker_gate_on_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a model")
    r = onnx_checker_gate(broken)
    assert (r.gate, r.passed, r.measured) == ("onnx_checker", False, "invalid")
    art = Artifact(broken, ("a",), "test", None)
    report = evaluate(art, Dataset(("x",), ("a",)))
    assert [x.gate for x in report.results] == ["onnx_checker"] and not report.passed
