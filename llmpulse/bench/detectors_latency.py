"""Benchmark: latency and reliability detectors.

Figures:

* throughput (events/s, one core) of each detector's ``update`` on windows
  of 10,000 events, and as a ratio to a baseline in the same process: one
  ``numpy.quantile`` call for p50/p95/p99 on the same column;
* relative error of the DDSketch percentiles against ``numpy.quantile`` on
  several latency shapes (log-normal, wide log-normal, Pareto tail,
  bimodal), default relative accuracy 0.5 % (promise: <= 1 %);
* change detection: false alarms on healthy log-normal traffic and the
  delay (events) to detect a 2x slowdown, with the shipped defaults.

Run: ``python -m llmpulse.bench.detectors_latency [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch
from llmpulse.detectors.latency import (
    CostTotal,
    ErrorRates,
    LatencyChange,
    LatencyPercentiles,
    LogLatencyChange,
    TokenThroughput,
)

__all__ = ["format_table", "run"]

WINDOW = 10_000


def _window(seed: int, n: int = WINDOW, start: float = 0.0) -> Batch:
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(np.log(600.0), 0.5, n)
    status = rng.choice(np.array(["ok", "error", "timeout"], dtype=object), n, p=[0.97, 0.02, 0.01])
    etype = np.where(status == "error", "upstream", "").astype(object)
    cols = {
        "ts": start + np.sort(rng.uniform(0, n / 100.0, n)),
        "latency_ms": lat,
        "ttft_ms": lat * 0.2,
        "status": status,
        "error_type": etype,
        "output_tokens": rng.integers(5, 400, n).astype(float),
        "input_tokens": rng.integers(20, 800, n).astype(float),
        "cost_usd": rng.uniform(1e-4, 3e-3, n),
    }
    return Batch(cols, start=start, end=start + n / 100.0)


def _rate(fn: Callable[[Batch], Any], windows: list[Batch], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in windows:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return sum(len(b) for b in windows) / best


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; ``quick`` shrinks every loop for CI smoke runs."""
    n_windows = 3 if quick else 10
    repeat = 2 if quick else 3
    windows = [_window(s, start=100.0 * s) for s in range(n_windows)]

    def baseline(b: Batch) -> None:
        np.quantile(b.numeric("latency_ms"), [0.5, 0.95, 0.99])

    base = _rate(baseline, windows, repeat)
    detectors: dict[str, Callable[[], Any]] = {
        "LatencyPercentiles": LatencyPercentiles,
        "LatencyPercentiles(sketch)": lambda: LatencyPercentiles(sketch=True),
        "ErrorRates": ErrorRates,
        "TokenThroughput": TokenThroughput,
        "CostTotal": CostTotal,
        "LatencyChange": LatencyChange,
        "LatencyChange(adwin)": lambda: LatencyChange("adwin"),
    }
    throughput = {}
    for name, make in detectors.items():
        d = make()
        eps = _rate(d.update, windows, repeat)
        throughput[name] = {"events_per_s": eps, "ratio_to_numpy_quantile": eps / base}

    rng = np.random.default_rng(0)
    n = 20_000 if quick else 200_000
    shapes = {
        "lognormal": rng.lognormal(np.log(600.0), 0.5, n),
        "lognormal_wide": rng.lognormal(5.0, 2.0, n),
        "pareto_1.2": (rng.pareto(1.2, n) + 1.0) * 100.0,
        "bimodal": np.where(
            rng.random(n) < 0.9, rng.normal(200, 10, n), rng.normal(30_000, 500, n)
        ),
    }
    qs = np.array([0.5, 0.9, 0.95, 0.99, 0.999])
    from llmpulse.detectors.sketch import DDSketch

    sketch_err = {}
    for name, x in shapes.items():
        parts = [DDSketch() for _ in range(4)]
        for p, chunk in zip(parts, np.array_split(x, 4), strict=True):
            p.add(chunk)
        for p in parts[1:]:
            parts[0].merge(p)
        est, exact = parts[0].quantiles(qs), np.quantile(x, qs)
        sketch_err[name] = float(np.max(np.abs(est / exact - 1)))

    seeds = 2 if quick else 5
    healthy_n = 20_000 if quick else 100_000
    change: dict[str, Any] = {}
    for method in ("page_hinkley", "adwin"):
        for sigma in (0.5, 1.0):
            fa = 0
            delays = []
            for s in range(seeds):
                r = np.random.default_rng(s)
                fa += len(LogLatencyChange(method).update_many(r.lognormal(6.0, sigma, healthy_n)))
                x = np.concatenate(
                    [r.lognormal(6.0, sigma, 3000), 2 * r.lognormal(6.0, sigma, 2000)]
                )
                hits = [h - 3000 for h in LogLatencyChange(method).update_many(x) if h >= 3000]
                delays.append(hits[0] if hits else None)
            found = [d for d in delays if d is not None]
            change[f"{method}/sigma={sigma}"] = {
                "healthy_events": seeds * healthy_n,
                "false_alarms": fa,
                "detected": f"{len(found)}/{len(delays)}",
                "median_delay_events": float(np.median(found)) if found else None,
                "max_delay_events": int(max(found)) if found else None,
            }
    return {
        "window_events": WINDOW,
        "windows": n_windows,
        "baseline_numpy_quantile_events_per_s": base,
        "throughput": throughput,
        "sketch_max_relative_error": sketch_err,
        "sketch_relative_accuracy": 0.005,
        "change_detection": change,
    }


def format_table(result: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run`'s result."""
    lines = [
        f"windows of {result['window_events']} events; baseline numpy.quantile "
        f"{result['baseline_numpy_quantile_events_per_s']:,.0f} events/s",
        f"{'detector':<28} {'events/s':>14} {'x baseline':>11}",
    ]
    for name, r in result["throughput"].items():
        lines.append(
            f"{name:<28} {r['events_per_s']:>14,.0f} {r['ratio_to_numpy_quantile']:>11.3f}"
        )
    lines.append("")
    lines.append(f"DDSketch (a={result['sketch_relative_accuracy']}) max relative error vs numpy:")
    for name, e in result["sketch_max_relative_error"].items():
        lines.append(f"  {name:<20} {e:.5f}")
    lines.append("")
    lines.append(
        f"{'change detection':<28} {'healthy':>9} {'false al.':>9} {'found':>6} {'median':>7} {'max':>5}"
    )
    for name, r in result["change_detection"].items():
        lines.append(
            f"{name:<28} {r['healthy_events']:>9} {r['false_alarms']:>9} {r['detected']:>6} "
            f"{r['median_delay_events']!s:>7} {r['max_delay_events']!s:>5}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the result as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    args = parser.parse_args()
    result = run(quick=args.quick)
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
