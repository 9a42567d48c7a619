"""Detectors: pure computation that turns windows of events into signals.

Nothing in this package imports Kafka, Faust or ClickHouse.
"""

from __future__ import annotations

from llmpulse.detectors.base import Batch, ChangeDetector, Detector, Mergeable, Signal

__all__ = ["Batch", "ChangeDetector", "Detector", "Mergeable", "Signal"]
