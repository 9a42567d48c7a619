"""Hallucination signals without an LLM call per event.

* :class:`GroundednessScorer` checks a response against its retrieved
  context sentence by sentence, and the specifics in each sentence
  (numbers, amounts, dates, names, conditions, negations), and says why a
  response is not grounded;
* :mod:`~llmpulse.detectors.hallucination.uncertainty` summarises token log-probabilities;
* :class:`HallucinationSignals` is the window detector emitting
  ``hallucination.*`` signals, with the worst examples in ``detail``.

>>> GroundednessScorer().score("It costs $30.", ["The fee is $25."]).grounded
False
"""

from __future__ import annotations

from llmpulse.detectors.hallucination.evaluation import auroc
from llmpulse.detectors.hallucination.groundedness import (
    Groundedness,
    GroundednessScorer,
    SentenceCheck,
)
from llmpulse.detectors.hallucination.signals import HallucinationSignals
from llmpulse.detectors.hallucination.uncertainty import logprob_stats, window_logprob_stats

__all__ = [
    "Groundedness",
    "GroundednessScorer",
    "HallucinationSignals",
    "SentenceCheck",
    "auroc",
    "logprob_stats",
    "window_logprob_stats",
]
