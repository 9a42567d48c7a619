"""``llmpulse up`` in a subprocess, for tests and benchmarks.

One way to run the stack from outside: :class:`UpProcess` starts
``python -m llmpulse.cli up`` in a directory of its own (``llmpulse.yaml``
is read from there), on free ports (the HTTP port and the embedded broker's
are picked by ``up``), and is ready once ``<data-dir>/endpoints.json`` is
written and ``/health`` answers. Each start's output goes to its own log
file, whose tail is in every error. It stops by pid: SIGTERM, SIGKILL if
that does not end it in time, or SIGINT to its whole process group, as a
Ctrl-C in a terminal does (``new_session=True``). :meth:`UpProcess.close`
also stops the embedded broker a killed ``up`` leaves behind (the broker
outlives a crash so that a restart loses nothing; see
:mod:`llmpulse.broker_record`).

The child runs the code this process imported: the folder holding the
``llmpulse`` package goes first on its ``PYTHONPATH``.

>>> up = UpProcess(Path("/tmp/x"), env={"LLMPULSE_KAFKA": "127.0.0.1:9092"})
>>> up.data_dir, up.env["LLMPULSE_DATA_DIR"], up.env["LLMPULSE_KAFKA"], up.running
(PosixPath('/tmp/x/data'), '/tmp/x/data', '127.0.0.1:9092', False)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import llmpulse
from llmpulse.auth import stack_request
from llmpulse.broker_record import stop_recorded_broker
from llmpulse.secret import Secret
from llmpulse.stack import read_endpoints

__all__ = ["UpError", "UpProcess", "child_env", "wait_for"]

T = TypeVar("T")

SOURCE_ROOT = Path(llmpulse.__file__).resolve().parent.parent
"""The folder holding the ``llmpulse`` package this process runs."""


class UpError(RuntimeError):
    """``llmpulse up`` did not start; the message ends with its log's tail."""


def wait_for(fn: Callable[[], T | None], timeout: float, what: str, every: float = 0.5) -> T:
    """Call ``fn`` until it returns something true (returned); TimeoutError naming ``what``.

    >>> wait_for(lambda: 42, 1, "an answer")
    42
    >>> wait_for(lambda: None, 0, "nothing")
    Traceback (most recent call last):
    ...
    TimeoutError: timed out after 0 s waiting for nothing
    """
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def child_env(data_dir: Path, extra: Mapping[str, str] | None = None,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an ``llmpulse up`` child: ``base`` (default this
    process's) without any ``LLMPULSE_*`` setting, then the data directory, the
    source root first on ``PYTHONPATH``, then ``extra``.

    >>> env = child_env(Path("/d"), {"LLMPULSE_RULES": "r.yaml"},
    ...                 base={"LLMPULSE_KAFKA": "x:1", "HOME": "/h", "PYTHONPATH": "/p"})
    >>> env["LLMPULSE_DATA_DIR"], env["LLMPULSE_RULES"], "LLMPULSE_KAFKA" in env, env["HOME"]
    ('/d', 'r.yaml', False, '/h')
    >>> env["PYTHONPATH"] == os.pathsep.join([str(SOURCE_ROOT), "/p"])
    True
    """
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith("LLMPULSE_")}
    env["LLMPULSE_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


class UpProcess:
    """``llmpulse up`` in ``root`` (its working directory; ``llmpulse.yaml`` there is
    its configuration), data in ``data_dir`` (default ``root/data``).

    ``env``: settings on top of :func:`child_env`; ``config_yaml``: written to
    ``root/llmpulse.yaml`` at construction; ``token``: sent by :meth:`get` and
    :meth:`sql` (a stack with API tokens); ``new_session``: run it in a process
    group of its own, so :meth:`interrupt` can signal the group as a terminal does.
    It can be started again after a stop or a kill (:attr:`starts` counts them).
    """

    def __init__(self, root: Path, *, data_dir: Path | None = None,
                 env: Mapping[str, str] | None = None, config_yaml: str | None = None,
                 token: Secret | None = None, new_session: bool = False) -> None:
        self.root = Path(root)
        self.data_dir = Path(data_dir) if data_dir is not None else self.root / "data"
        self.env = child_env(self.data_dir, env)
        self.token = token
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, Any] = {}
        self.log_path: Path | None = None
        self.logs: list[Path] = []
        self.starts = 0
        self.ready_s: float | None = None
        """Seconds the last start took to be ready."""
        if config_yaml is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "llmpulse.yaml").write_text(config_yaml)

    # -- life cycle -----------------------------------------------------------

    def start(self, timeout: float = 120.0) -> UpProcess:
        """Start and wait until it is ready (itself); :class:`UpError` if it exits
        first or is not ready in ``timeout`` seconds (then it is killed)."""
        if self.running:
            raise UpError(f"llmpulse up already runs (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "endpoints.json").unlink(missing_ok=True)  # left by a killed run
        self.starts += 1
        self.log_path = self.root / f"up-{self.starts}-{int(time.time() * 1000)}.log"
        self.logs.append(self.log_path)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmpulse.cli", "up"], env=self.env, cwd=str(self.root),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=self.new_session)
        try:
            self.endpoints = self._wait_ready(timeout)
        except UpError:
            self.kill()
            raise
        self.ready_s = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        ep: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UpError(f"llmpulse up exited {self.proc.returncode}: {self.log()}")
            if ep is None:
                ep = read_endpoints(self.data_dir)
                if ep is not None and ep.get("pid") != self.proc.pid:
                    ep = None  # another process's file
            if ep is not None and self._answers(str(ep["http"])):
                return ep
            time.sleep(0.1)
        raise UpError(f"llmpulse up not ready in {timeout:g} s: {self.log()}")

    def _answers(self, http: str) -> bool:
        try:
            stack_request(http, "/health", token=self.token, timeout=5)
        except urllib.error.HTTPError:
            return True  # it answers (a stack with tokens may refuse an anonymous probe)
        except OSError:
            return False
        return True

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (it drains, flushes and closes); its exit status.
        SIGKILL if it has not ended in ``timeout`` seconds, then TimeoutExpired."""
        return self._signal_and_wait(signal.SIGTERM, timeout, group=False)

    def interrupt(self, timeout: float = 60.0) -> int:
        """SIGINT to its whole process group, as Ctrl-C in a terminal does (needs
        ``new_session``); its exit status. SIGKILL after ``timeout`` seconds."""
        if not self.new_session:
            raise UpError("interrupt() signals the process group: start with new_session=True")
        return self._signal_and_wait(signal.SIGINT, timeout, group=True)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float, *, group: bool) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is not None:
            return self.proc.returncode
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL (a crash: the embedded broker stays up with what it holds)."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        """Stop it (kill if the stop fails) and the embedded broker it left running."""
        try:
            self.stop()
        except Exception:
            self.kill()
        stop_recorded_broker(self.data_dir)

    def __enter__(self) -> UpProcess:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()  # a start that failed may have left its broker running
                raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- reading it -------------------------------------------------------------

    def log(self, tail: int = 3000) -> str:
        """The last ``tail`` characters of the current start's output."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]

    @property
    def http(self) -> str:
        return str(self.endpoints["http"])

    @property
    def kafka(self) -> str:
        return str(self.endpoints["kafka"])

    def get(self, path: str, timeout: float = 10.0) -> Any:
        return stack_request(self.http, path, token=self.token, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        return dict(self.get("/api/stats", timeout=30))

    def sql(self, sql: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Rows of one SELECT through ``/api/query``."""
        return list(stack_request(self.http, "/api/query", {"sql": sql}, token=self.token,
                                  timeout=timeout)["rows"])

    def wait_stored(self, topic: str, n: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until ``n`` events of ``topic`` are stored or dead-lettered; the stats."""
        stats: dict[str, Any] = {}

        def done() -> bool:
            nonlocal stats
            stats = self.stats()
            return bool(stats["stored"].get(topic, 0) + stats["dead_lettered"].get(topic, 0) >= n)

        try:
            wait_for(done, timeout, f"{n} events processed on {topic}", every=0.2)
        except TimeoutError:
            raise AssertionError(f"only {stats} of {n} events processed on {topic} "
                                 f"in {timeout:g} s") from None
        return stats
