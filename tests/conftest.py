"""Shared fixtures: the real embedded broker and the real stack, on free ports.

Every process a fixture starts is stopped by its pid in teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmpulse.auth import stack_request
from llmpulse.broker import EmbeddedBroker
from llmpulse.broker_record import stop_recorded_broker
from llmpulse.secret import Secret
from llmpulse.stack import wait_for_endpoints

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One Tansu broker for the session (topics are per-test names or recreated)."""
    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


@dataclass
class StackProcess:
    """``llmpulse up`` running in a subprocess, with helpers to read it."""

    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None
    token: Secret | None = None
    """Sent by :meth:`get` and :meth:`sql` (a stack with API tokens)."""

    def start(self, timeout: float = 60.0) -> StackProcess:
        ep_path = self.data_dir / "endpoints.json"
        if ep_path.exists():
            ep_path.unlink()  # left by a killed run
        self.log_path = self.data_dir.parent / f"up-{int(time.time() * 1000)}.log"
        logf = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmpulse.cli", "up"],
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=str(self.data_dir.parent),
        )
        try:
            self.endpoints = wait_for_endpoints(self.proc, self.data_dir, timeout)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}: {self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""

    def get(self, path: str) -> Any:
        return stack_request(self.endpoints["http"], path, token=self.token, timeout=10)

    def sql(self, sql: str) -> list[dict[str, Any]]:
        return list(stack_request(self.endpoints["http"], "/api/query", {"sql": sql},
                                  token=self.token, timeout=30)["rows"])

    def wait_stored(self, topic: str, n: int, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            stats = self.get("/api/stats")
            done = stats["stored"].get(topic, 0) + stats["dead_lettered"].get(topic, 0)
            if done >= n:
                return stats
            time.sleep(0.2)
        raise AssertionError(f"only {stats} of {n} events processed on {topic} in {timeout} s")

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    env["LLMPULSE_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    """Build (and later tear down) ``llmpulse up`` subprocesses in tmp dirs."""
    made: list[StackProcess] = []

    def make(data_dir: Path | None = None, **env: str) -> StackProcess:
        d = data_dir or (tmp_path / f"data{len(made)}")
        d.mkdir(parents=True, exist_ok=True)
        sp = StackProcess(d, stack_env(d, **env))
        made.append(sp)
        return sp

    yield make
    for sp in made:
        try:
            sp.stop()
        except Exception:
            sp.kill()
        # the embedded broker outlives a killed ``up`` (so that it loses nothing): stop it by pid
        stop_recorded_broker(sp.data_dir)


@pytest.fixture
def stack(stack_factory: Any) -> Iterator[StackProcess]:
    """A running embedded stack (its own broker and store)."""
    sp = stack_factory().start()
    yield sp
