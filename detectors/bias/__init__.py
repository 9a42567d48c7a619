"""Bias detectors: gaps of outcomes, quality and reliability across segments."""

from __future__ import annotations

from llmpulse.detectors.bias.segments import SegmentBias

__all__ = ["SegmentBias"]
