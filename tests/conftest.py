"""Shared fixtures: the real embedded broker and the real stack, on free ports.

Every process a fixture starts is stopped by its pid in teardown.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from llmpulse.broker import EmbeddedBroker
from llmpulse.cluster import ClusterSettings, LocalCluster, S3TestServer
from llmpulse.harness import UpProcess, child_env

ROOT = Path(__file__).resolve().parent.parent
"""The checkout (subprocesses of the tests put it on their PYTHONPATH)."""


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the session (topics are per-test names or recreated)."""
    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    """A local S3-compatible server (moto, from the ``test`` extra) for the session."""
    with S3TestServer(log_path=tmp_path_factory.mktemp("s3") / "moto.log") as s3:
        yield s3


@pytest.fixture
def cluster(s3_server: S3TestServer, tmp_path: Path) -> Iterator[LocalCluster]:
    """Three Tansu brokers over the session's S3 server, under a cluster id of the
    test's own (so each test sees an empty log); stopped by pid."""
    settings = ClusterSettings(brokers=3, cluster_id=f"test-{uuid.uuid4().hex[:16]}")
    with LocalCluster(s3_server.storage, settings, log_dir=tmp_path / "cluster") as c:
        yield c


class StackProcess(UpProcess):
    """``llmpulse up`` for a test (:class:`llmpulse.harness.UpProcess`): data in
    ``data_dir``, ``llmpulse.yaml`` and the logs in its parent."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(data_dir.parent, data_dir=data_dir, env=env)


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return child_env(data_dir, extra)


def module_stack(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[StackProcess]:
    """One ``llmpulse up`` for a whole test module (a module-scoped fixture yields from
    this): started with the test environment, stopped by pid at the end (killed if the
    clean stop fails, with the broker it leaves behind)."""
    d = tmp_path_factory.mktemp(name) / "data"
    d.mkdir()
    sp = StackProcess(d, stack_env(d)).start(timeout=180)
    yield sp
    sp.close()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    """Build (and later tear down) ``llmpulse up`` subprocesses in tmp dirs."""
    made: list[StackProcess] = []

    def make(data_dir: Path | None = None, **env: str) -> StackProcess:
        d = data_dir or (tmp_path / f"data{len(made)}")
        d.mkdir(parents=True, exist_ok=True)
        sp = StackProcess(d, env)
        made.append(sp)
        return sp

    yield make
    for sp in made:
        sp.close()  # stops it by pid, and the embedded broker a killed ``up`` left running


@pytest.fixture
def stack(stack_factory: Any) -> Iterator[StackProcess]:
    """A running embedded stack (its own broker and store)."""
    sp = stack_factory().start()
    yield sp
