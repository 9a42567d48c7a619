"""One shared test for every detector: found automatically, same checks for all.

For each concrete :class:`llmpulse.detectors.base.Detector` subclass in the package:
constructible with no arguments, runs on a seeded synthetic stream, is
deterministic, returns well-formed signals (contract names, JSON-able
detail), and its state round-trips through snapshot/restore. A detector that
no expected-result test under tests/detectors names fails here too.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

import llmpulse.detectors
from llmpulse.detectors.base import Detector, Mergeable, Signal
from llmpulse.detectors.testing import synthetic_batch

NAME = re.compile(r"^[a-z_]+\.[a-z0-9_]+$")
TESTS = Path(__file__).parent


def _all_detectors() -> list[type[Detector]]:
    for mod in pkgutil.walk_packages(llmpulse.detectors.__path__, "llmpulse.detectors."):
        if ".data" in mod.name or mod.name.endswith(("__main__", ".train")):
            continue
        importlib.import_module(mod.name)
    found: dict[str, type[Detector]] = {}
    stack = list(Detector.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if inspect.isabstract(cls) or cls.__name__.startswith("_"):
            continue
        if not cls.__module__.startswith("llmpulse.detectors."):
            continue
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


DETECTORS = _all_detectors()


def _windows(n: int = 3, size: int = 400):
    # the third window is slower and shifted, so stateful detectors have something to see
    return [
        synthetic_batch(size, seed=s, start=1_700_000_000.0 + 10 * s, rate=size / 10,
                        latency_scale=1.0 if s < 2 else 3.0)
        for s in range(n)
    ]


def _canon(signals: list[Signal]) -> bytes:
    rows = [s.to_row() for s in signals]
    return orjson.dumps(rows, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def test_detectors_were_found() -> None:
    families = {c.__module__.split(".")[2] for c in DETECTORS}
    assert {"latency", "drift", "bias", "hallucination"} <= families, families


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_detector_contract(cls: type[Detector]) -> None:
    windows = _windows()
    a, b = cls(), cls()
    out_a = [a.update(w) for w in windows[:2]]
    out_b = [b.update(w) for w in windows[:2]]
    assert [_canon(x) for x in out_a] == [_canon(x) for x in out_b], "not deterministic"
    for signals in out_a:
        assert isinstance(signals, list)
        for s in signals:
            assert isinstance(s, Signal)
            assert NAME.match(s.signal), s.signal
            assert s.n >= 0
            assert s.ts == windows[0].end or s.ts == windows[1].end
            orjson.dumps(dict(s.detail))  # JSON-able detail
    # state round-trips: a restored detector continues exactly like the original
    state = a.snapshot()
    pickle.loads(pickle.dumps(state))
    c = cls()
    c.restore(state)
    assert _canon(c.update(windows[2])) == _canon(a.update(windows[2])), "restore differs"


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_detector_has_expected_result_tests(cls: type[Detector]) -> None:
    texts = [p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name]
    assert any(re.search(rf"\b{cls.__name__}\b", t) for t in texts), (
        f"{cls.__name__} has no expected-result test under tests/detectors/"
    )


def _representative_windows() -> list:
    # healthy (drift tests take their reference from the first ones), slowed down
    # and shifted, and an A/B experiment with an effect: something for every family
    out = [
        synthetic_batch(400, seed=s, start=1_700_000_000.0 + 10 * s, rate=40,
                        latency_scale=1.0 if s < 3 else 3.0)
        for s in range(5)
    ]
    out.append(synthetic_batch(400, seed=5, start=1_700_000_050.0, rate=40, experiment="prompt-v2",
                               effect=0.3))
    return out


def _windows_for(cls: type[Detector]) -> list:
    """The representative windows a detector reads: spans for the agent-trace
    detector (it reads traced steps, not events), events for every other one."""
    from llmpulse.detectors.agent import AgentSteps, span_batch
    from tests.detectors.test_agent import _traces

    if issubclass(cls, AgentSteps):
        rows = _traces(40, seed=3, loop_every=5)
        return [span_batch(rows, start=0.0, end=1000.0)]
    return _representative_windows()


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_detector_emits_only_the_names_it_declares(cls: type[Detector]) -> None:
    det = cls()
    assert det.signals, f"{cls.__name__} declares no signal names (Detector.signals)"
    assert all(NAME.match(n) for n in det.signals), det.signals
    undeclared = _undeclared(det, _windows_for(cls))
    assert not undeclared, f"{cls.__name__} emits undeclared {undeclared}"


def _undeclared(det: Detector, windows: list) -> list[str]:
    emitted: set[str] = set()
    for window in windows:
        emitted |= {s.signal for s in det.update(window)}
    return sorted(emitted - set(det.signals))


def test_the_declaration_check_catches_a_misspelt_emission() -> None:
    class Misspelt(Detector):
        signals = ("latency.p99_ms",)

        def update(self, batch):
            return [batch.signal("latency.p99ms", 1.0, n=len(batch))]

    assert _undeclared(Misspelt(), _windows(1)) == ["latency.p99ms"]


def test_the_shipped_detectors_emit_something_on_the_representative_windows() -> None:
    # guards the test above against windows on which nothing is emitted at all
    silent = []
    for cls in DETECTORS:
        det = cls()
        if not any([det.update(w) for w in _windows_for(cls)]):
            silent.append(cls.__name__)
    # these need judge grades or reference answers, which the synthetic stream has not
    assert set(silent) <= {"JudgeAgreement", "ReferenceOverlap", "SemanticSimilarity"}, silent


def test_a_mergeable_detector_must_emit() -> None:
    from llmpulse.detectors.base import Mergeable

    class NoEmit(Detector, Mergeable):
        signals = ("errors.rate",)

        def update(self, batch):
            return []

        def merge(self, other):
            pass

    with pytest.raises(TypeError, match="emit"):
        NoEmit()  # type: ignore[abstract]


@pytest.mark.parametrize("cls", [c for c in DETECTORS if issubclass(c, Mergeable)],
                         ids=lambda c: c.__name__)
def test_merged_halves_emit_what_the_whole_window_gives(cls: type[Detector]) -> None:
    window = _representative_windows()[-1]
    idx = np.arange(len(window))
    whole = {(s.signal, s.dimension): s for s in cls().update(window)}
    a, b = cls(), cls()
    a.update(window.select(idx % 2 == 0))
    b.update(window.select(idx % 2 == 1))
    a.merge(b)  # type: ignore[attr-defined]
    merged = {(s.signal, s.dimension): s for s in a.emit(start=window.start, end=window.end)}  # type: ignore[attr-defined]
    assert whole and set(merged) == set(whole)
    for k, s in whole.items():
        assert merged[k].n == s.n, k
        assert merged[k].value == pytest.approx(s.value, rel=0.01, abs=1e-9), k


def test_a_labelled_signal_keeps_every_other_field() -> None:
    """``Signal.labelled`` builds the signal field by field: a field it missed, or
    one added later, would be lost or shifted."""
    import dataclasses

    from llmpulse.detectors.base import Signal

    values = {"signal": "s", "value": 2.5, "n": 7, "dimension": "d", "ts": 11.0,
              "window_s": 5.0, "app": "old", "model": "old", "model_version": "old",
              "detail": {"k": 1}}
    assert set(values) == {f.name for f in dataclasses.fields(Signal)}
    sig = Signal(**values)
    got = sig.labelled(app="a", model="m", model_version="1")
    assert got == dataclasses.replace(sig, app="a", model="m", model_version="1")
    assert got.detail is sig.detail
