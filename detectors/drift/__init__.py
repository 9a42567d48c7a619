"""Drift: has the distribution of what the application sees or says moved?

Window tests (one signal per feature per window, against a reference, see
:class:`ReferencePolicy`):

=========================  =======================  ===============  ==========================
detector                   signal                   kinds            drift when (default)
=========================  =======================  ===============  ==========================
PopulationStabilityIndex   ``drift.psi``            numeric, categ.  value >= 0.15
KolmogorovSmirnov          ``drift.ks``             numeric          p-value < 0.001
WassersteinDistance        ``drift.wasserstein``    numeric          value >= 0.2 (in ref. sd)
JensenShannonDistance      ``drift.jensen_shannon`` numeric, categ.  value >= 0.12
ChiSquare                  ``drift.chi_square``     categorical      p-value < 0.001
=========================  =======================  ===============  ==========================

Streaming change detection: :class:`StreamingChange` emits ``drift.change``
from an online detector (:class:`Cusum` by default; :class:`Adwin`,
:class:`PageHinkley`, :class:`Kswin` from river). :class:`EvidentlyDriftReport`
saves an Evidently report when a window test crosses its threshold.
:class:`EmbeddingDrift` (``drift.embedding_<test>`` on
``embedding:<field>``) tests the texts themselves.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> d = KolmogorovSmirnov(reference=ReferencePolicy.fixed(1000))
>>> d.update(synthetic_batch(1000, seed=0))
[]
>>> sorted(s.dimension for s in d.update(synthetic_batch(500, seed=1)))[:3]
['context_passages', 'feature.prompt_chars', 'input_tokens']
"""

from __future__ import annotations

from llmpulse.detectors.drift.adwin import Adwin
from llmpulse.detectors.drift.base import ReferencePolicy, WindowDriftTest
from llmpulse.detectors.drift.change import StreamingChange
from llmpulse.detectors.drift.chi_square import ChiSquare
from llmpulse.detectors.drift.cusum import Cusum
from llmpulse.detectors.drift.embedding import EmbeddingDrift
from llmpulse.detectors.drift.jensen_shannon import JensenShannonDistance
from llmpulse.detectors.drift.ks import KolmogorovSmirnov
from llmpulse.detectors.drift.kswin import Kswin
from llmpulse.detectors.drift.page_hinkley import PageHinkley
from llmpulse.detectors.drift.psi import PopulationStabilityIndex
from llmpulse.detectors.drift.report import EvidentlyDriftReport
from llmpulse.detectors.drift.wasserstein import WassersteinDistance

__all__ = [
    "Adwin",
    "ChiSquare",
    "Cusum",
    "EmbeddingDrift",
    "EvidentlyDriftReport",
    "JensenShannonDistance",
    "KolmogorovSmirnov",
    "Kswin",
    "PageHinkley",
    "PopulationStabilityIndex",
    "ReferencePolicy",
    "StreamingChange",
    "WassersteinDistance",
    "WindowDriftTest",
]
