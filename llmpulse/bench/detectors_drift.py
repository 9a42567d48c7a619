"""Quality and speed of the numeric/categorical drift detectors.

Seeded synthetic streams with known change points, fed in windows of 500
events after a 2,000-event reference:

* detection delay: a stationary N(0, 1) stream changes at a known event
  (mid-window) to a mean shift of 0.25, 0.5 or 1 sd, a variance change
  (sd x 1.5) or, for categorical detectors, a category-mix change (four
  languages, uniform -> 40/20/20/20). Delay = events after the change until
  the detector knows: the end of the first flagged window for window tests,
  the event at which it fired for streaming detectors (whose signal leaves
  at that window's end). Median over seeds, and the share detected within
  3,000 events.
* false alarms per 100k events on stationary streams (after the reference).
* throughput: ``update`` on windows of 500 synthetic events with every
  default feature, in events/s, and per feature column; the ratio is against
  a baseline that only sorts each feature column of the same windows (the
  least any rank test does), run in the same process.

Goal: shifts >= 0.5 sd found within 1,000 events with <= 1 false alarm per
100k events; >= 200k events/s per core.

Run: ``python -m llmpulse.bench.detectors_drift [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector
from llmpulse.detectors.drift import (
    ChiSquare,
    JensenShannonDistance,
    KolmogorovSmirnov,
    PopulationStabilityIndex,
    ReferencePolicy,
    StreamingChange,
    WassersteinDistance,
)
from llmpulse.detectors.drift.base import default_features, feature_values
from llmpulse.detectors.testing import synthetic_batch

__all__ = ["format_table", "run"]

WINDOW = 500
REFERENCE = 2000
PRE = 3250  # stationary events between the reference and the change (mid-window)
POST = 3000
LANGS = np.array(["en", "de", "fr", "es"], dtype=object)

NUMERIC_SCENARIOS: dict[str, tuple[float, float]] = {
    "shift_0.25sd": (0.25, 1.0),
    "shift_0.5sd": (0.5, 1.0),
    "shift_1sd": (1.0, 1.0),
    "variance_x1.5": (0.0, 1.5),
}


def _window_tests() -> dict[str, Callable[[], Detector]]:
    out: dict[str, Callable[[], Detector]] = {}
    for name, cls in (
        ("psi", PopulationStabilityIndex),
        ("ks", KolmogorovSmirnov),
        ("wasserstein", WassersteinDistance),
        ("jensen_shannon", JensenShannonDistance),
    ):
        out[f"{name}/fixed"] = functools.partial(cls, ["x"], reference=ReferencePolicy.fixed(REFERENCE))
        out[f"{name}/rolling4"] = functools.partial(cls, ["x"], reference=ReferencePolicy.rolling(4))
    return out


def _categorical_tests() -> dict[str, Callable[[], Detector]]:
    out: dict[str, Callable[[], Detector]] = {}
    for name, cls in (
        ("chi_square", ChiSquare),
        ("psi", PopulationStabilityIndex),
        ("jensen_shannon", JensenShannonDistance),
    ):
        out[f"{name}/fixed"] = functools.partial(cls, ["x"], reference=ReferencePolicy.fixed(REFERENCE))
        out[f"{name}/rolling4"] = functools.partial(cls, ["x"], reference=ReferencePolicy.rolling(4))
    return out


def _streaming() -> dict[str, Callable[[], Detector]]:
    return {
        "cusum": lambda: StreamingChange(["x"], method="cusum"),
        "adwin": lambda: StreamingChange(["x"], method="adwin"),
        "page_hinkley": lambda: StreamingChange(["x"], method="page_hinkley"),
        "page_hinkley (river defaults)": lambda: StreamingChange(
            ["x"], method="page_hinkley",
            params={"delta": 0.005, "threshold": 50.0, "alpha": 0.9999},
        ),
        "kswin": lambda: StreamingChange(["x"], method="kswin"),
    }


def _alarms(detector: Detector, x: np.ndarray) -> list[int]:
    """Event indices at which ``detector`` raised an alarm, feeding windows of
    ``WINDOW``; a window test's alarm is at its window's last event."""
    hits: list[int] = []
    for i in range(0, x.size, WINDOW):
        chunk = x[i : i + WINDOW]
        b = Batch({"x": chunk}, start=float(i), end=float(i + chunk.size))
        for s in detector.update(b):
            if s.signal == "drift.change":
                hits += [i + p for p in s.detail["positions"]]
            elif s.detail["drift"]:
                hits.append(i + chunk.size - 1)
    return hits


def _stream(rng: np.random.Generator, n: int, kind: str, change: tuple[float, float] | None,
            at: int) -> np.ndarray:
    if kind == "categorical":
        x = rng.choice(LANGS, n)
        if change is not None:
            x[at:] = rng.choice(LANGS, n - at, p=[0.4, 0.2, 0.2, 0.2])
        return x
    x = rng.normal(0.0, 1.0, n)
    if change is not None:
        mean, sd = change
        x[at:] = rng.normal(mean, sd, n - at)
    return x


def _quality(make: Callable[[], Detector], kind: str, scenarios: dict[str, Any], seeds: int,
             stationary_events: int) -> dict[str, Any]:
    at = REFERENCE + PRE
    out: dict[str, Any] = {}
    for name, change in scenarios.items():
        delays = []
        for seed in range(seeds):
            x = _stream(np.random.default_rng(1000 + seed), at + POST, kind, change, at)
            after = [h - at for h in _alarms(make(), x) if h >= at]
            delays.append(after[0] + 1 if after else None)
        found = [d for d in delays if d is not None]
        out[name] = {
            "median_delay": float(np.median(found)) if found else None,
            "detected": len(found) / seeds,
            "within_1000": sum(d <= 1000 for d in found) / seeds,
        }
    alarms = 0
    done = 0
    per_seed = max(stationary_events // 4, 20_000)
    seed = 0
    while done < stationary_events:
        n = min(per_seed, stationary_events - done)
        x = _stream(np.random.default_rng(5000 + seed), REFERENCE + n, kind, None, 0)
        alarms += sum(h >= REFERENCE for h in _alarms(make(), x))
        done += n
        seed += 1
    out["false_alarms_per_100k"] = alarms / done * 100_000
    out["stationary_events"] = done
    return out


def _throughput(quick: bool) -> dict[str, Any]:
    n_windows = 8 if quick else 24
    ref = synthetic_batch(REFERENCE, seed=0)
    windows = [synthetic_batch(WINDOW, seed=s + 1, start=1_700_000_000.0 + 10 * s) for s in range(n_windows)]
    events = n_windows * WINDOW

    def sort_baseline() -> float:
        t = time.perf_counter()
        for b in windows:
            for name in default_features(b, ("numeric", "categorical")):
                found = feature_values(b, name)
                if found is not None:
                    np.sort(found[0])
        return time.perf_counter() - t

    makers: dict[str, Callable[[], Detector]] = {
        "psi": PopulationStabilityIndex,
        "ks": KolmogorovSmirnov,
        "ks (exact=False)": lambda: KolmogorovSmirnov(exact=False),
        "wasserstein": WassersteinDistance,
        "jensen_shannon": JensenShannonDistance,
        "chi_square": ChiSquare,
        "change/cusum": StreamingChange,
        "change/adwin": lambda: StreamingChange(method="adwin"),
        "change/page_hinkley": lambda: StreamingChange(method="page_hinkley"),
    }
    base = min(sort_baseline() for _ in range(3))
    out: dict[str, Any] = {"baseline_sort_s": base, "events": events}
    for name, make in makers.items():
        best = float("inf")
        columns = 0
        for _ in range(3):
            d = make()
            if isinstance(d, StreamingChange):
                d.reference_size = REFERENCE
                d.update(ref)
            else:
                d.update(ref)  # fills the fixed 2,000-value baseline
            t = time.perf_counter()
            columns = sum(len(d.update(b)) for b in windows)
            best = min(best, time.perf_counter() - t)
        n_features = len({*default_features(windows[0], getattr(d, "kinds", ("numeric",)))})
        out[name] = {
            "events_per_s": events / best,
            "column_events_per_s": events * n_features / best,
            "features": n_features,
            "signals": columns,
            "time_vs_sort_baseline": best / base,
        }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Detection delays, false alarms and throughput (JSON-serialisable)."""
    seeds = 5 if quick else 20
    stationary = 200_000 if quick else 1_000_000
    result: dict[str, Any] = {
        "window": WINDOW,
        "reference": REFERENCE,
        "seeds": seeds,
        "change_at": REFERENCE + PRE,
        "numeric": {},
        "categorical": {},
        "streaming": {},
    }
    for name, make in _window_tests().items():
        result["numeric"][name] = _quality(make, "numeric", NUMERIC_SCENARIOS, seeds, stationary)
    for name, make in _categorical_tests().items():
        result["categorical"][name] = _quality(
            make, "categorical", {"category_mix": True}, seeds, stationary
        )
    for name, make in _streaming().items():
        slow = name == "kswin"  # a scipy KS test per event: a few thousand events/s
        result["streaming"][name] = _quality(
            make, "numeric", NUMERIC_SCENARIOS, 3 if slow else seeds,
            (20_000 if quick else 60_000) if slow else stationary,
        )
    result["throughput"] = _throughput(quick)
    return result


def format_table(result: dict[str, Any]) -> str:
    """Human-readable tables of :func:`run`'s result."""
    lines = [
        f"windows of {result['window']} events, reference {result['reference']}, "
        f"{result['seeds']} seeds, change at event {result['change_at']}",
        "",
    ]

    def cell(r: dict[str, Any]) -> str:
        if r["median_delay"] is None:
            return "missed"
        return f"{r['median_delay']:.0f} ({r['within_1000']:.0%})"

    for group, scen in (("numeric", list(NUMERIC_SCENARIOS)), ("streaming", list(NUMERIC_SCENARIOS)),
                        ("categorical", ["category_mix"])):
        lines.append(f"{group}: median delay in events (share found within 1,000), false alarms/100k")
        header = f"{'detector':32}" + "".join(f"{s:>16}" for s in scen) + f"{'FA/100k':>10}"
        lines.append(header)
        for name, r in result[group].items():
            lines.append(
                f"{name:32}" + "".join(f"{cell(r[s]):>16}" for s in scen)
                + f"{r['false_alarms_per_100k']:>10.2f}"
            )
        lines.append("")
    tp = result["throughput"]
    lines.append(f"throughput on {tp['events']} synthetic events (windows of {result['window']}, default features)")
    lines.append(f"{'detector':24}{'events/s':>12}{'col-events/s':>14}{'features':>10}{'x sort':>8}")
    for name, r in tp.items():
        if isinstance(r, dict):
            lines.append(
                f"{name:24}{r['events_per_s']:>12,.0f}{r['column_events_per_s']:>14,.0f}"
                f"{r['features']:>10}{r['time_vs_sort_baseline']:>8.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
