"""Quality from feedback: accuracy against labels, user scores, user flags,
overlap with reference answers, and A/B comparisons of an experiment's arms.

These detectors read the columns that exist only once feedback has been
joined onto its inference (``feedback.label``, ``feedback.score``,
``feedback.hallucination``); the streaming layer feeds them the window's
inferences that received feedback and recomputes them when late feedback
arrives. Their state is a handful of counts and sums, so partial windows
merge exactly (:class:`~llmpulse.detectors.base.Mergeable`).

>>> from llmpulse.detectors.testing import synthetic_batch
>>> b = synthetic_batch(400, seed=3)
>>> [(s.signal, round(s.value, 3), s.n) for d in (LabelAccuracy(), FeedbackScore(), UserFlaggedRate())
...  for s in d.update(b)]
[('quality.accuracy', 0.96, 200), ('quality.feedback_score', 0.386, 200), ('hallucination.flagged_rate', 0.07, 200)]
"""

from __future__ import annotations

from llmpulse.detectors.quality.ab import ABComparison
from llmpulse.detectors.quality.accuracy import LabelAccuracy
from llmpulse.detectors.quality.feedback_score import FeedbackScore
from llmpulse.detectors.quality.flags import UserFlaggedRate
from llmpulse.detectors.quality.judge_agreement import JudgeAgreement
from llmpulse.detectors.quality.reference import ReferenceOverlap
from llmpulse.detectors.quality.semantic import SemanticSimilarity

__all__ = [
    "ABComparison",
    "FeedbackScore",
    "JudgeAgreement",
    "LabelAccuracy",
    "ReferenceOverlap",
    "SemanticSimilarity",
    "UserFlaggedRate",
]
