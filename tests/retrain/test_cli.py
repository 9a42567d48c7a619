"""``llmpulse deploy`` / ``rollback``: the canary share is checked, and a model server that
could not be updated is an error that says what the registry and the server each hold."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from llmpulse.retrain.cli import (
    SERVER_NOT_UPDATED,
    configure_deploy,
    configure_retrain,
    configure_rollback,
    run_deploy,
    run_rollback,
)
from llmpulse.retrain.registry import ModelRegistry
from llmpulse.retrain.serving import LoadedModel, ModelServer
from llmpulse.retrain.trainer import Artifact

MODEL = "router"


def _args(configure: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)  # type: ignore[operator]
    return parser.parse_args(argv)


@pytest.mark.parametrize("share", ["nan", "-0.5", "7", "1", "inf", "half"])
@pytest.mark.parametrize("configure", [configure_deploy, configure_retrain])
def test_the_canary_flag_is_a_share_within_0_1(
        share: str, configure: object, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [MODEL, "2"] if configure is configure_deploy else []
    with pytest.raises(SystemExit) as exc:
        _args(configure, [*argv, "--canary", share])
    assert exc.value.code == 2 and "--canary" in capsys.readouterr().err
    assert _args(configure, [*argv, "--canary", "0.25"]).canary == 0.25


@pytest.fixture
def registry(tmp_path: Path, artifact: Artifact) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "data")
    reg.register(MODEL, artifact.path)
    broken = tmp_path / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx graph: no server can load it")
    reg.register(MODEL, broken)
    reg.deploy(MODEL, "1")
    return reg


@pytest.mark.parametrize("share", [float("nan"), -0.5, 7.0, 1.0])
def test_deploy_refuses_a_share_outside_0_1_without_parsing(
        registry: ModelRegistry, share: float, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(model=MODEL, version="2", canary=share, trigger="manual",
                              data_dir=str(registry.root.parent), serve_url=None, json=False)
    assert run_deploy(args) == 2
    assert "--canary must be 0 (promote) or a share within (0, 1)" in capsys.readouterr().err
    assert registry.current(MODEL).version == "1"  # type: ignore[union-attr]
    assert registry.get(MODEL, "2").stage == "candidate"


async def test_deploy_exits_non_zero_when_the_server_keeps_the_old_version(
        registry: ModelRegistry, loaded: LoadedModel, capsys: pytest.CaptureFixture[str]) -> None:
    # the real model server on this loop, over HTTP; the commands block in a thread
    http = TestServer(ModelServer(loaded, max_wait_ms=0).app(), host="127.0.0.1")
    await http.start_server()
    try:
        await _deploy_then_rollback(registry, str(http.make_url("")).rstrip("/"), capsys)
    finally:
        await http.close()


async def _deploy_then_rollback(registry: ModelRegistry, server_url: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    data = str(registry.root.parent)
    code = await asyncio.to_thread(run_deploy, _args(
        configure_deploy, [MODEL, "2", "--data-dir", data, "--serve-url", server_url]))
    err = capsys.readouterr().err
    assert code == SERVER_NOT_UPDATED != 0
    assert "the registry changed but the model server did not" in err
    assert "the registry now says router version 2 is current (was 1)" in err
    assert f"the server at {server_url} was not updated (HTTP 500: swap failed" in err
    assert err.rstrip().endswith("it still serves version 1")
    assert registry.current(MODEL).version == "2"  # type: ignore[union-attr]
    # rolling back to what the server still serves succeeds, with exit 0
    code = await asyncio.to_thread(run_rollback, _args(
        configure_rollback, [MODEL, "--data-dir", data, "--serve-url", server_url]))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"server at {server_url} now serves version 1" in out.out


def test_a_server_that_does_not_answer_is_an_error_too(
        registry: ModelRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    registry.register(MODEL, registry.get(MODEL, "1").artifact, version="3")
    data = str(registry.root.parent)
    code = run_deploy(_args(configure_deploy, [MODEL, "3", "--canary", "0.2", "--data-dir", data,
                                               "--serve-url", url]))
    err = capsys.readouterr().err
    assert code == SERVER_NOT_UPDATED
    assert "the registry now says router version 3 serves 20% as a canary beside version 1" in err
    assert "what it serves is unknown (it does not answer /health)" in err
    assert registry.canary(MODEL).version == "3"  # type: ignore[union-attr]
    assert run_deploy(_args(configure_deploy, [MODEL, "3", "--data-dir", data, "--serve-url", url])) \
        == SERVER_NOT_UPDATED
    capsys.readouterr()
    code = run_rollback(_args(configure_rollback, [MODEL, "--data-dir", data, "--serve-url", url]))
    assert code == SERVER_NOT_UPDATED
    assert "the registry now says router version 1 is current (was 3)" in capsys.readouterr().err
