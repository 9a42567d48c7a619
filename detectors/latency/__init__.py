"""Latency and reliability detectors: percentiles, errors, throughput, cost, change.

One detector per module; all are window :class:`~llmpulse.detectors.base.Detector`
classes, and all but :class:`LatencyChange` are
:class:`~llmpulse.detectors.base.Mergeable` (partial windows fold together).
"""

from __future__ import annotations

from llmpulse.detectors.latency.change import LatencyChange, LogLatencyChange
from llmpulse.detectors.latency.cost import CostTotal
from llmpulse.detectors.latency.errors import ErrorRates
from llmpulse.detectors.latency.percentiles import LatencyPercentiles
from llmpulse.detectors.latency.throughput import TokenThroughput

__all__ = [
    "CostTotal",
    "ErrorRates",
    "LatencyChange",
    "LatencyPercentiles",
    "LogLatencyChange",
    "TokenThroughput",
]
