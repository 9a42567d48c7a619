"""What the stack benchmarks share: a ``llmpulse up`` subprocess, its HTTP API, traffic.

>>> pool = event_pool(3)
>>> len(pool), "event_id" in pool[0], "latency_ms" in pool[0]
(3, False, True)
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmpulse.auth import stack_request
from llmpulse.harness import UpProcess, wait_for

__all__ = ["BENCH_ENV", "bench_stack", "event_pool", "finish", "paced_send", "post_sql",
           "stack_stats", "wait_for"]

BENCH_ENV = {"HF_HUB_OFFLINE": "1"}
"""A benchmark's stack never downloads a model at start."""


def bench_stack(root: Path, config_yaml: str, env: dict[str, str] | None = None) -> UpProcess:
    """``llmpulse up`` in ``root`` with ``config_yaml`` as its ``llmpulse.yaml``, not
    started; ``with bench_stack(...) as up:`` starts it and stops it (and its broker)."""
    return UpProcess(root, config_yaml=config_yaml, env={**BENCH_ENV, **(env or {})})


def post_sql(http: str, sql: str) -> list[dict[str, Any]]:
    return list(_retrying(lambda: stack_request(http, "/api/query", {"sql": sql},
                                                timeout=60))["rows"])


def stack_stats(http: str) -> dict[str, Any]:
    return dict(_retrying(lambda: stack_request(http, "/api/stats", timeout=30)))


def _retrying(call: Callable[[], Any], within_s: float = 60.0) -> Any:
    """``call()``, again while the stack answers 503 (a passing state it names: a
    rebalance, a store not answering), for up to ``within_s``; any other error raises."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(1.0)


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


def paced_send(send: Callable[..., Any], pool: list[dict[str, Any]], rate: float | None,
               seconds: float, *, tick: Callable[[float], None] | None = None,
               step: int = 500, clock: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep) -> tuple[int, float]:
    """Call ``send(**event)`` over ``pool`` (cycled) at ``rate`` events/s (``None``: as
    fast as it goes) for ``seconds``, ``step`` events at a time; ``tick(elapsed)``
    once a second. Returns (events sent, seconds spent sending).

    With a clock that only sleeping advances, 2,000 events/s for 0.05 s is 100
    events, ten at a time:

    >>> now = [0.0]
    >>> def sleep(s): now[0] += s
    >>> got = []
    >>> paced_send(lambda **ev: got.append(ev["i"]), [{"i": 0}, {"i": 1}], rate=2000,
    ...            seconds=0.05, step=10, clock=lambda: now[0], sleep=sleep)
    (100, 0.05)
    >>> got[:3], len(got)
    ([0, 1, 0], 100)
    """
    n_pool = len(pool)
    sent = 0
    t0 = clock()
    end = t0 + seconds
    next_tick = t0 + 1.0
    while True:
        now = clock()
        if now >= end:
            break
        if tick is not None and now >= next_tick:
            next_tick += 1.0
            tick(now - t0)
        if rate is not None and sent >= int((now - t0) * rate):
            sleep(min(0.002, step / rate, max(end - now, 0.0)))
            continue
        for _ in range(step):
            send(**pool[sent % n_pool])
            sent += 1
    return sent, clock() - t0


def finish(result: dict[str, Any], table: Callable[[dict[str, Any]], str],
           json_path: str | None) -> int:
    """End of a benchmark's command: its table on stdout, its figures as JSON in
    ``json_path`` when given; the exit status."""
    print(table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {json_path}")
    return 0
