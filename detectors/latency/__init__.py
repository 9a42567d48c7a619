"""Latency and reliability detectors: percentiles, errors, throughput, cost, change.

One detector per module; all are window :class:`~detectors.base.Detector`
classes, and all but :class:`LatencyChange` are
:class:`~detectors.base.Mergeable` (partial windows fold together).
"""

from __future__ import annotations

from detectors.latency.change import LatencyChange, LogLatencyChange
from detectors.latency.cost import CostTotal
from detectors.latency.errors import ErrorRates
from detectors.latency.percentiles import LatencyPercentiles
from detectors.latency.throughput import TokenThroughput

__all__ = [
    "CostTotal",
    "ErrorRates",
    "LatencyChange",
    "LatencyPercentiles",
    "LogLatencyChange",
    "TokenThroughput",
]
