"""The simulator's output is pinned: same seed, same bytes.

A digest of the events of a few seeded runs with every incident kind on
(overlapping, one targeting a model, labelled and not, two chunk sizes).
A change to the generator that moves any event, field, float or id fails
here; if the change is intended, recompute the digests and say why in the
commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import pytest

from llmpulse.simulate import INCIDENT_KINDS, Incident, SupportAppSimulator

START = 1_700_000_000.0

ALL_INCIDENTS = [
    Incident("latency_spike", 5, 25, {"model": "gpt-4o-mini"}),
    Incident("prompt_drift", 10, 35),
    Incident("segment_quality_drop", 0, 40, {"segment": "language=de"}),
    Incident("hallucination_burst", 15, 30, {"share": "0.6"}),
    Incident("error_burst", 20, 28),
    Incident("prompt_rollout", 8, 38, {"refusal": "0.5"}),
]


def _digest(items: Iterable[tuple[Any, ...]]) -> str:
    h = hashlib.sha256()
    n = 0
    for item in items:
        row = [item[0], item[1]]
        if len(item) == 3:
            truth = item[2]
            row.append(None if truth is None else list(truth))
        h.update(json.dumps(row, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
        n += 1
    return f"{n}:{h.hexdigest()}"


def _flat(batches: Iterable[list[Any]]) -> Iterable[Any]:
    for batch in batches:
        yield from batch


def test_every_incident_kind_is_covered() -> None:
    assert {inc.kind for inc in ALL_INCIDENTS} == set(INCIDENT_KINDS)


@pytest.mark.parametrize(
    ("seed", "rate", "chunk_s", "labelled", "expected"),
    [
        (
            0,
            40.0,
            1.0,
            True,
            "4076:822e226d4a93ae713484537f2ef56df0344397d6e314ba4bc5857b9802c3618f",
        ),
        (
            7,
            25.0,
            1.0,
            False,
            "2621:06ec925132c7a379885188ca2bc4478896c02c1ffd91d379b8148044e1372d0b",
        ),
        (
            12345,
            60.0,
            2.5,
            False,
            "6177:1d2a7e9586695e9a829f31e5756928514fa1cbb53cedee8bb1e40aacf4f934bd",
        ),
    ],
)
def test_seeded_runs_are_byte_for_byte_stable(
    seed: int, rate: float, chunk_s: float, labelled: bool, expected: str
) -> None:
    sim = SupportAppSimulator(seed=seed, rate=rate, incidents=ALL_INCIDENTS, start_ts=START)
    if labelled:
        got = _digest(sim.labelled_events(45.0))
    else:
        got = _digest(_flat(sim.batches(45.0, chunk_s=chunk_s)))
    assert got == expected
