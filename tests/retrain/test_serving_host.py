"""The stack's model server follows the registry: ``llmpulse deploy`` and ``llmpulse
rollback`` run from a shell change only the registry, and the stack went on serving
the old version while the registry and the dashboards named the new one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmpulse.retrain.reference import REFERENCE_MODEL
from llmpulse.retrain.registry import ModelRegistry, ModelVersion
from llmpulse.retrain.serving import LoadedModel, ModelServer
from llmpulse.retrain.serving_host import ServingHost
from llmpulse.retrain.trainer import Artifact


class _Service:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.server: ModelServer | None = None
        self.busy = False
        self.counters: dict[str, int] = {}

    async def bootstrap(self, model: str) -> Any:
        raise AssertionError("not needed")


async def _serving(reg: ModelRegistry, version: ModelVersion,
                   ) -> tuple[_Service, ServingHost, ModelServer]:
    """The stack's host over ``reg``, its server started on ``version``."""
    svc = _Service(reg)
    host = ServingHost(svc, app=None, settings=None, enabled=True)
    server = ModelServer(LoadedModel(version.artifact, version.version,
                                     providers=["CPUExecutionProvider"]), name=REFERENCE_MODEL)
    await server.start()
    svc.server = server
    return svc, host, server


@pytest.mark.slow
async def test_deploy_canary_and_rollback_from_a_shell_reach_the_served_model(
        tmp_path: Path, artifact: Artifact, bad_artifact: Artifact) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = reg.register(REFERENCE_MODEL, artifact.path)
    reg.deploy(REFERENCE_MODEL, v1.version)
    v2 = reg.register(REFERENCE_MODEL, bad_artifact.path)
    svc, host, server = await _serving(reg, v1)
    try:
        assert await host.follow() is None  # the registry and the server agree
        reg.start_canary(REFERENCE_MODEL, v2.version, share=0.25)  # deploy --canary 0.25
        assert "serves 25% as a canary" in (await host.follow() or "")
        assert server.canary is not None and server.canary.version == v2.version
        assert server.canary_share == 0.25
        reg.deploy(REFERENCE_MODEL, v2.version)  # deploy
        await host.follow()
        assert server.active.version == v2.version and server.canary is None
        svc.busy = True  # a retrain drives the server itself meanwhile
        reg.rollback(REFERENCE_MODEL)
        assert await host.follow() is None and server.active.version == v2.version
        svc.busy = False
        assert "version 1 now serves" in (await host.follow() or "")  # rollback
        assert server.active.version == v1.version and host.followed == 3
    finally:
        await server.close()


@pytest.mark.slow
async def test_a_registered_version_whose_artifact_changed_is_not_served(
        tmp_path: Path, artifact: Artifact, bad_artifact: Artifact,
        caplog: pytest.LogCaptureFixture) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = reg.register(REFERENCE_MODEL, artifact.path)
    reg.deploy(REFERENCE_MODEL, v1.version)
    v2 = reg.register(REFERENCE_MODEL, bad_artifact.path)
    reg.deploy(REFERENCE_MODEL, v2.version)
    changed = Path(reg.get(REFERENCE_MODEL, v2.version).artifact)
    changed.unlink()  # a hard link to the shared fixture's file: replaced, not written
    changed.write_bytes(b"tampered")
    _svc, host, server = await _serving(reg, v1)
    try:
        assert await host.follow() is None and await host.follow() is None
        assert server.active.version == v1.version
    finally:
        await server.close()
    errors = [r for r in caplog.records if "was not loaded" in r.getMessage()]
    assert len(errors) == 1 and "sha256" in errors[0].getMessage()  # logged once


@pytest.mark.slow
async def test_a_hand_edited_canary_share_is_no_canary_not_an_error_every_2_s(
        tmp_path: Path, artifact: Artifact, bad_artifact: Artifact) -> None:
    import json

    reg = ModelRegistry(tmp_path)
    v1 = reg.register(REFERENCE_MODEL, artifact.path)
    reg.deploy(REFERENCE_MODEL, v1.version)
    v2 = reg.register(REFERENCE_MODEL, bad_artifact.path)
    reg.start_canary(REFERENCE_MODEL, v2.version, share=0.25)
    path = tmp_path / "registry" / f"{REFERENCE_MODEL}.json"
    state = json.loads(path.read_text())
    for d in state["deployments"]:
        if d["stage"] == "canary":
            d["metrics"]["share"] = "half"
    path.write_text(json.dumps(state))
    _svc, host, server = await _serving(reg, v1)
    try:
        assert await host.follow() is None  # raised ValueError, logged by the timer each time
        assert server.canary is None and server.active.version == v1.version
    finally:
        await server.close()
