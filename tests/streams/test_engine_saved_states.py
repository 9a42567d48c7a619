"""A save copies only the detectors that ran since the last one; what it gives is the same."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmpulse.detectors.testing import synthetic_events
from llmpulse.streams.engine import SignalEngine, default_detectors
from llmpulse.streams.windows import WindowSpec

T0 = 1_700_000_000_000


def _engine() -> SignalEngine:
    return SignalEngine(default_detectors(),
                        {fam: WindowSpec(10, 5) for fam in default_detectors()},
                        clock=lambda: T0 / 1000)


def _events(groups: int, start_ms: int, n: int, seed: int) -> list[dict[str, Any]]:
    return [{**ev, "model_version": f"v{i % groups}", "ts": start_ms + i * 20}
            for i, ev in enumerate(synthetic_events(n, seed=seed))]


def _plain(x: Any) -> Any:
    """Comparable form of detector state (arrays, NaN, nested objects)."""
    if isinstance(x, np.ndarray):
        return ("array", _plain(x.tolist()))
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_plain(v) for v in x])
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, (str, bytes, int, float, bool, type(None), np.generic)):
        return x.item() if isinstance(x, np.generic) else x
    if callable(x) and hasattr(x, "__qualname__"):
        return ("callable", x.__qualname__)
    if hasattr(x, "__dict__"):
        return (type(x).__name__, _plain(vars(x)))
    return repr(x)


def _fresh(engine: SignalEngine) -> dict[Any, Any]:
    """Every group's detector states as a snapshot without kept copies computes them."""
    return {(fam, g): _plain([d.snapshot() for d in dets])
            for (fam, g), dets in engine._instances.items()}


def _states(snapshot: dict[str, Any]) -> dict[Any, Any]:
    return {(fam, tuple(g)): _plain(states) for fam, g, states in snapshot["detectors"]}


def test_saved_detector_states_are_those_of_the_detectors_now() -> None:
    eng = _engine()
    eng.add_inference(_events(6, T0, 1200, seed=1))
    eng.advance(now=T0 / 1000 + 60)  # every window closes: every group's detectors ran
    first = eng.snapshot()
    kept = _states(first)
    assert kept == _fresh(eng)
    assert {g[2] for _, g in kept} == {f"v{i}" for i in range(6)}
    # what a caller does with a snapshot does not reach the next one
    for _, _, states in first["detectors"]:
        states.clear()
    assert _states(eng.snapshot()) == _fresh(eng) == kept
    # two groups get a new window: their states change, the others are the kept ones
    eng.add_inference([e for e in _events(6, T0 + 60_000, 1200, seed=2)
                       if e["model_version"] in ("v1", "v4")])
    eng.advance(now=T0 / 1000 + 200)
    second = _states(eng.snapshot())
    assert second == _fresh(eng)
    assert {k[1][2] for k, v in second.items() if kept.get(k) != v} == {"v1", "v4"}
    # a group's share handed to another engine carries the same states
    part = _states(eng.snapshot_groups({b"support/router/v1"}))
    assert part == {k: v for k, v in _fresh(eng).items() if k[1][2] == "v1"}
    # and a restored engine saves what it was given
    other = _engine()
    other.restore(eng.snapshot())
    assert _states(other.snapshot()) == second
