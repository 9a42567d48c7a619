"""The cluster benchmark's scaling case end to end: two workers on the three-broker
cluster take in every event offered, once, none of them late, and the case reports
freshness and CPU from what really ran (the figures themselves are the benchmark's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmpulse.bench._stack import event_pool
from llmpulse.bench.cluster import _scaling_case

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_on_the_cluster_take_every_event_once_and_none_late(tmp_path: Path) -> None:
    case = _scaling_case(tmp_path, 2, event_pool(2000), rate=300.0, seconds=15.0)
    assert case["sent"] > 0 and case["shim_dropped"] == 0
    # each event reaches exactly one worker's engine: none lost, none taken twice
    assert case["engine_events"] == case["sent"], case
    assert case["late_dropped"] == 0, case
    # the hold after the group formed ended when the group had forwarded what waited
    assert case["holds_ended_early"] >= 1, case
    # 15 s of traffic holds at least one whole 5 s window that closed while it flowed
    assert case["freshness"] and all(f["windows"] > 0 for f in case["freshness"].values()), case
    assert case["worker_cpu_s"] > 0 and case["all_cpu_s"] > case["worker_cpu_s"]
