"""Registry: versions, lineage, deploy and rollback, rows of the deployments table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmpulse.retrain.registry import STAGES, ModelRegistry, RegistryError, sha256_file


def _artifact(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "model.onnx").write_bytes(name.encode() * 10)
    (d / "head.npz").write_bytes(b"head")
    return d / "model.onnx"


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    t = iter(range(1_700_000_000, 1_700_001_000))
    return ModelRegistry(tmp_path / "data", clock=lambda: float(next(t)))


def test_deploy_and_rollback_lineage(reg: ModelRegistry, tmp_path: Path) -> None:
    a, b, c = (_artifact(tmp_path, n) for n in "abc")
    v1 = reg.register("router", a, metrics={"accuracy": 0.9}, data_window=(1.0, 2.0))
    assert reg.current("router") is None
    d1 = reg.deploy("router", v1.version)
    assert (d1.version, d1.previous_version, d1.stage) == ("1", "", "promoted")
    v2 = reg.register("router", b, trigger="alert-1")
    assert v2.lineage == {"data_window": None, "trigger": "alert-1", "parent": "1"}
    reg.deploy("router", "2", trigger="alert-1")
    v3 = reg.register("router", c, trigger="alert-2")
    reg.deploy("router", "3")
    assert v3.lineage["parent"] == "2"
    r = reg.rollback("router", trigger="alert-3")
    assert (r.version, r.previous_version, r.stage) == ("2", "3", "rolled_back")
    assert r.metrics["rolled_back_version"] == "3"
    assert reg.current("router").version == "2"  # type: ignore[union-attr]
    # A second rollback skips nothing wrongly: 2 is withdrawn and 1 comes back.
    r2 = reg.rollback("router")
    assert (r2.version, r2.previous_version) == ("1", "2")
    assert [v.stage for v in reg.versions("router")] == ["promoted", "rolled_back", "rolled_back"]
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        reg.rollback("router")
    stages = [d.stage for d in reg.deployments("router")]
    assert stages == ["promoted", "promoted", "promoted", "rolled_back", "rolled_back"]
    # The file on disk is the whole truth: a new registry object reads the same state.
    again = ModelRegistry(reg.root.parent)
    assert again.current("router").version == "1"  # type: ignore[union-attr]
    assert json.loads((reg.root / "router.json").read_text())["history"] == ["1", "2", "3", "2", "1"]


def test_artifacts_are_copied_and_verified(reg: ModelRegistry, tmp_path: Path) -> None:
    a = _artifact(tmp_path, "a")
    v = reg.register("m", a)
    stored = Path(v.artifact)
    assert stored != a and stored.parent == reg.root / "m" / "1"
    assert (stored.parent / "head.npz").read_bytes() == b"head"
    assert v.sha256 == sha256_file(a)
    stored.unlink()
    stored.write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="changed since it was registered"):
        reg.deploy("m", "1")
    assert reg.current("m") is None


def test_rejected_versions_are_never_deployed(reg: ModelRegistry, tmp_path: Path) -> None:
    reg.register("m", _artifact(tmp_path, "a"))
    reg.deploy("m", "1")
    reg.register("m", _artifact(tmp_path, "b"))
    reason = {"gate": "accuracy", "passed": False, "measured": 0.2, "limit": 0.9, "reason": "worse"}
    d = reg.reject("m", "2", [reason])
    assert (d.stage, d.version, d.metrics["rejected_version"]) == ("rejected", "1", "2")
    assert reg.get("m", "2").reasons == [reason]
    with pytest.raises(RegistryError, match="rejected by a gate \\(worse\\)"):
        reg.deploy("m", "2")
    with pytest.raises(RegistryError, match="rejected"):
        reg.start_canary("m", "2", share=0.1)
    assert reg.current("m").version == "1"  # type: ignore[union-attr]


def test_canary_stage_and_errors(reg: ModelRegistry, tmp_path: Path) -> None:
    reg.register("m", _artifact(tmp_path, "a"))
    reg.deploy("m", "1")
    reg.register("m", _artifact(tmp_path, "b"))
    d = reg.start_canary("m", "2", share=0.1, trigger="alert-9")
    assert (d.stage, d.version, d.previous_version, d.metrics["share"]) == ("canary", "2", "1", 0.1)
    assert reg.canary("m").version == "2"  # type: ignore[union-attr]
    assert reg.current("m").version == "1"  # type: ignore[union-attr]
    reg.deploy("m", "2")
    assert reg.canary("m") is None and reg.current("m").version == "2"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="already current"):
        reg.deploy("m", "2")
    with pytest.raises(RegistryError, match="no version"):
        reg.deploy("m", "9")
    with pytest.raises(RegistryError, match="model name"):
        reg.register("../evil", tmp_path / "a" / "model.onnx")
    with pytest.raises(RegistryError, match="unknown stage"):
        reg.set_stage("m", "1", "shipped")
    assert set(STAGES) == {"candidate", "canary", "promoted", "rolled_back", "rejected"}


def test_rows_fit_the_deployments_table(reg: ModelRegistry, tmp_path: Path) -> None:
    from llmpulse.store import DDL, Store

    reg.register("m", _artifact(tmp_path, "a"))
    reg.register("m", _artifact(tmp_path, "b"))
    rows = [reg.deploy("m", "1").row(), reg.deploy("m", "2", trigger="alert-1").row(),
            reg.rollback("m").row()]
    columns = re.findall(r"^\s{4}(\w+) ", DDL["deployments"], re.MULTILINE)
    assert sorted(rows[0]) == sorted(columns)
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        payload = b"\n".join(json.dumps(r).encode() for r in rows)
        assert store.insert_json("deployments", payload) == 3
        got = store.query(
            "SELECT version, previous_version, trigger, stage, metrics FROM deployments FINAL ORDER BY ts"
        )
    finally:
        store.close()
    assert [(g["version"], g["previous_version"], g["stage"]) for g in got] == [
        ("1", "", "promoted"), ("2", "1", "promoted"), ("1", "2", "rolled_back")]
    assert json.loads(got[2]["metrics"]) == {"rolled_back_version": "2"}


def test_a_name_ending_in_a_newline_is_refused(reg: ModelRegistry, tmp_path: Path) -> None:
    a = _artifact(tmp_path, "a")
    for name in ("router\n", "router\n.json", "\nrouter"):
        with pytest.raises(RegistryError, match="model name"):
            reg.register(name, a)
    with pytest.raises(RegistryError, match="version"):
        reg.register("router", a, version="1\n")
    assert not reg.root.exists() or not any("\n" in p.name for p in reg.root.rglob("*"))


@pytest.mark.parametrize("text", [
    "[]", "null", "{}", '"router"',
    '{"model": "m", "current": null, "history": [], "versions": [1], "deployments": []}',
    '{"model": "m", "current": "3", "history": [], "versions": [], "deployments": []}',
    '{"model": "m", "current": null, "history": [], "versions": '
    '[{"version": "1", "artifact": "a", "sha256": "x", "stage": "live"}], "deployments": []}',
    '{"model": "m", "current": null, "history": [], "versions": [], "deployments": [{"a": 1}]}',
])
def test_a_registry_file_of_the_wrong_shape_is_a_registry_error(
        reg: ModelRegistry, tmp_path: Path, text: str) -> None:
    reg.root.mkdir(parents=True)
    (reg.root / "m.json").write_text(text)
    for read in (reg.current, reg.versions, reg.canary, reg.deployments, reg.rollback):
        with pytest.raises(RegistryError, match="is not a model registry"):
            read("m")
    with pytest.raises(RegistryError, match="is not a model registry"):
        reg.register("m", _artifact(tmp_path, "a"))
    assert (reg.root / "m.json").read_text() == text  # left as it was


def test_one_canary_at_a_time_and_never_the_current_version(reg: ModelRegistry, tmp_path: Path) -> None:
    for n in "abc":
        reg.register("m", _artifact(tmp_path, n))
    reg.deploy("m", "1")
    with pytest.raises(RegistryError, match="is the current version"):
        reg.start_canary("m", "1", share=0.1)
    assert reg.get("m", "1").stage == "promoted" and reg.canary("m") is None
    reg.start_canary("m", "2", share=0.1)
    for version in ("3", "2"):
        with pytest.raises(RegistryError, match="version 2 of m is already a canary"):
            reg.start_canary("m", version, share=0.1)
    assert [v.stage for v in reg.versions("m")] == ["promoted", "canary", "candidate"]
    reg.abort_canary("m", "2")
    reg.start_canary("m", "3", share=0.2)
    assert reg.canary("m").version == "3"  # type: ignore[union-attr]
    assert reg.current("m").version == "1"  # type: ignore[union-attr]


@pytest.mark.parametrize("share", [float("nan"), 0.0, 1.0, -0.2, 7.0, float("inf")])
def test_a_canary_share_outside_0_1_is_refused(reg: ModelRegistry, tmp_path: Path, share: float) -> None:
    reg.register("m", _artifact(tmp_path, "a"))
    reg.deploy("m", "1")
    reg.register("m", _artifact(tmp_path, "b"))
    with pytest.raises(RegistryError, match=r"canary share must be within \(0, 1\)"):
        reg.start_canary("m", "2", share=share)
    assert reg.get("m", "2").stage == "candidate" and len(reg.deployments("m")) == 1
