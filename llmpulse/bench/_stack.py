"""What the stack benchmarks share: a ``llmpulse up`` subprocess, its HTTP API, traffic.

>>> pool = event_pool(3)
>>> len(pool), "event_id" in pool[0], "latency_ms" in pool[0]
(3, False, True)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from llmpulse.auth import stack_request
from llmpulse.broker_record import stop_recorded_broker
from llmpulse.stack import wait_for_endpoints

__all__ = ["event_pool", "finish", "paced_send", "post_sql", "running_stack", "stack_stats", "wait_for"]


@contextlib.contextmanager
def running_stack(root: Path, config_yaml: str, env: Mapping[str, str] | None = None,
                  timeout: float = 120.0) -> Iterator[dict[str, Any]]:
    """``llmpulse up`` in ``root`` (config from ``root/llmpulse.yaml``); yields its endpoints
    and stops it with SIGTERM (SIGKILL if it does not end within a minute)."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    full_env.update({"LLMPULSE_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **(env or {})})
    (root / "llmpulse.yaml").write_text(config_yaml)
    log = open(root / "up.log", "wb")  # noqa: SIM115 - closed after the process ends
    proc = subprocess.Popen([sys.executable, "-m", "llmpulse.cli", "up"], env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
    try:
        try:
            ep = wait_for_endpoints(proc, data_dir, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; see {root / 'up.log'}") from None
        yield ep
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        # a killed ``up`` leaves its embedded broker running (it holds unstored events)
        stop_recorded_broker(data_dir)


def post_sql(http: str, sql: str) -> list[dict[str, Any]]:
    return list(stack_request(http, "/api/query", {"sql": sql}, timeout=60)["rows"])


def stack_stats(http: str) -> dict[str, Any]:
    return dict(stack_request(http, "/api/stats", timeout=30))


def event_pool(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """Realistic inference events without ids, time or app: the shim stamps those per call."""
    from llmpulse.simulate import SupportAppSimulator

    sim = SupportAppSimulator(seed=seed, rate=2000.0, start_ts=time.time() - 60)
    out: list[dict[str, Any]] = []
    for topic, ev in sim.events(duration_s=n / 2000.0 + 5):
        if topic != "llmpulse.inference":
            continue
        ev = dict(ev)
        for k in ("event_id", "request_id", "ts", "app"):
            ev.pop(k, None)
        out.append(ev)
        if len(out) >= n:
            break
    return out


def wait_for(fn: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    """Call ``fn`` until it returns something true (returned); TimeoutError naming ``what``.

    >>> wait_for(lambda: 42, 1, "an answer")
    42
    >>> wait_for(lambda: None, 0.1, "nothing", every=0.05)
    Traceback (most recent call last):
    ...
    TimeoutError: timed out after 0.1 s waiting for nothing
    """
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def paced_send(send: Callable[..., Any], pool: list[dict[str, Any]], rate: float | None,
               seconds: float, *, tick: Callable[[float], None] | None = None,
               step: int = 500) -> tuple[int, float]:
    """Call ``send(**event)`` over ``pool`` (cycled) at ``rate`` events/s (``None``: as
    fast as it goes) for ``seconds``, ``step`` events at a time; ``tick(elapsed)``
    once a second. Returns (events sent, seconds spent sending).

    >>> got = []
    >>> sent, spent = paced_send(lambda **ev: got.append(ev["i"]), [{"i": 0}, {"i": 1}],
    ...                          rate=2000, seconds=0.05, step=10)
    >>> 50 <= sent <= 120 and got[:3] == [0, 1, 0] and spent >= 0.05
    True
    """
    n_pool = len(pool)
    sent = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    next_tick = t0 + 1.0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if tick is not None and now >= next_tick:
            next_tick += 1.0
            tick(now - t0)
        if rate is not None and sent >= int((now - t0) * rate):
            time.sleep(min(0.002, step / rate))
            continue
        for _ in range(step):
            send(**pool[sent % n_pool])
            sent += 1
    return sent, time.perf_counter() - t0


def finish(result: dict[str, Any], table: Callable[[dict[str, Any]], str],
           json_path: str | None) -> int:
    """End of a benchmark's command: its table on stdout, its figures as JSON in
    ``json_path`` when given; the exit status."""
    print(table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {json_path}")
    return 0
