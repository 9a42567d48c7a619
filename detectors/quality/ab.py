"""``ab.<metric>``: the variants of an experiment compared, per window.

Events tagged with ``experiment`` are split into arms by ``variant`` (or by
``prompt_version`` when an experiment has no variants). One arm is the
control: the one named ``control``, ``baseline`` or ``a`` (any case), else
the first in natural order (``v2`` before ``v10``). Every other arm is
compared with it on each metric:

=========================  ==========================  =====================
signal                     data                        test
=========================  ==========================  =====================
``ab.feedback_score``      ``feedback.score``          Mann-Whitney U
``ab.accuracy``            prediction vs feedback      two-proportion z
                           label
``ab.hallucination_rate``  ``feedback.hallucination``  two-proportion z
``ab.latency_p95_ms``      ``latency_ms``              bootstrap of the p95
``ab.cost_per_request``    ``cost_usd``                Welch t
=========================  ==========================  =====================

The value is the effect, treatment minus control, in the metric's unit;
``detail`` has both arms' values and sizes, the effect size, the confidence
interval, the raw p-value and the Holm-adjusted one (over the metrics tested
for that pair of arms in the window), and the verdict ``worse``, ``better``,
``no difference`` or ``too few`` (either arm under ``min_n``: no test, no
p-value, never counted as worse). ``ab.verdict`` sums up a pair: its value is
the number of metrics on which the treatment is significantly worse after
Holm's correction, ``n`` the smaller arm, the metric names in ``detail``; a
rule ``ab.verdict >= 1`` pages on a worse rollout.

The dimension is ``experiment=<name>``, with ``,variant=<arm>`` added when the
experiment has more than two arms. Arms are compared within one
(app, model, model_version) group: an experiment whose arms are different
model versions is not compared here.

The bootstrap draws from a generator seeded by ``seed``, the experiment and
the window end, so a recomputed window gives the same result.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> b = synthetic_batch(2000, seed=4, experiment="tone", effect=-0.4)
>>> out = {s.signal: s for s in ABComparison().update(b)}
>>> s = out["ab.feedback_score"]
>>> s.dimension, s.detail["control"], s.detail["treatment"], s.detail["verdict"]
('experiment=tone', 'A', 'B', 'worse')
>>> out["ab.verdict"].value, out["ab.verdict"].detail["worse"]
(1.0, ['feedback_score'])
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Signal
from llmpulse.detectors.bias.stats import adjust_pvalues
from llmpulse.detectors.quality.ab_stats import (
    ArmComparison,
    bootstrap_quantile,
    mean_scores,
    mean_values,
    proportions,
)

__all__ = ["ABComparison", "METRICS"]

METRICS: tuple[str, ...] = (
    "feedback_score",
    "accuracy",
    "hallucination_rate",
    "latency_p95_ms",
    "cost_per_request",
)

HIGHER_IS_WORSE = frozenset({"hallucination_rate", "latency_p95_ms", "cost_per_request"})
CONTROL_NAMES = ("control", "baseline", "a")


def _natural(text: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def control_arm(arms: Sequence[str]) -> str:
    """The control among ``arms``.

    >>> control_arm(["v10", "v9"]), control_arm(["B", "A"]), control_arm(["new", "Control"])
    ('v9', 'A', 'Control')
    """
    for name in CONTROL_NAMES:
        for arm in arms:
            if arm.lower() == name:
                return arm
    return sorted(arms, key=_natural)[0]


class ABComparison(Detector):
    """Every experiment's arms against its control, per metric, Holm-corrected.

    ``alpha``: family-wise level per pair of arms in a window; ``min_n``: the
    fewest observations each arm needs on a metric for it to be tested
    (rates and scores count rows with that feedback); ``resamples``: bootstrap
    draws for the latency quantile.
    """

    signals = (*(f"ab.{m}" for m in METRICS), "ab.verdict")

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        min_n: int = 30,
        resamples: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
        if min_n < 2:
            raise ValueError(f"min_n: must be >= 2, got {min_n}")
        self.alpha = float(alpha)
        self.min_n = int(min_n)
        self.resamples = int(resamples)
        self.confidence = float(confidence)
        self.seed = int(seed)

    def update(self, batch: Batch) -> list[Signal]:
        if len(batch) == 0 or not batch.has("experiment"):
            return []
        exp = batch.strings("experiment")
        if not np.any(exp != ""):
            return []
        arm = batch.strings("variant").copy()
        missing = arm == ""
        arm[missing] = batch.strings("prompt_version")[missing]
        out: list[Signal] = []
        for name in sorted(set(exp.tolist()) - {""}):
            in_exp = (exp == name) & (arm != "")
            arms = sorted(set(arm[in_exp].tolist()), key=_natural)
            if len(arms) < 2:
                continue
            ctrl = control_arm(arms)
            for treat in [a for a in arms if a != ctrl]:
                dim = f"experiment={name}" if len(arms) == 2 else f"experiment={name},variant={treat}"
                out += self._compare(batch, in_exp & (arm == ctrl), in_exp & (arm == treat),
                                     name, ctrl, treat, dim)
        return out

    def _compare(
        self, batch: Batch, c: np.ndarray, t: np.ndarray,
        name: str, ctrl: str, treat: str, dim: str,
    ) -> list[Signal]:
        results: dict[str, ArmComparison] = {}
        score = batch.numeric("feedback.score")
        sc, st = score[c], score[t]
        results["feedback_score"] = self._gate(
            sc[~np.isnan(sc)], st[~np.isnan(st)], lambda x, y: mean_scores(x, y, self.confidence),
            "mann-whitney")
        pred = batch.strings("prediction.label")
        truth = batch.strings("feedback.label")
        has = (pred != "") & (truth != "")
        correct = has & (pred == truth)
        results["accuracy"] = self._rate(correct, has, c, t)
        flag = batch.numeric("feedback.hallucination")
        known = ~np.isnan(flag)
        results["hallucination_rate"] = self._rate(known & (flag > 0.5), known, c, t)
        lat = batch.numeric("latency_ms")
        lc, lt = lat[c], lat[t]
        rng = np.random.default_rng(
            [self.seed, zlib.crc32(f"{name}\0{treat}".encode()), int(round(batch.end * 1000))]
        )
        results["latency_p95_ms"] = self._gate(
            lc[~np.isnan(lc)], lt[~np.isnan(lt)],
            lambda x, y: bootstrap_quantile(x, y, rng, resamples=self.resamples,
                                            confidence=self.confidence),
            "bootstrap")
        cost = batch.numeric("cost_usd")
        cc, ct = cost[c], cost[t]
        results["cost_per_request"] = self._gate(
            cc[~np.isnan(cc)], ct[~np.isnan(ct)], lambda x, y: mean_values(x, y, self.confidence),
            "welch-t")

        present = [m for m in METRICS if results[m].n_control or results[m].n_treatment]
        raw = np.array([results[m].p_value for m in present], dtype=np.float64)
        adj = dict(zip(present, adjust_pvalues(raw, "holm").tolist(), strict=True))
        out: list[Signal] = []
        worse: list[str] = []
        better: list[str] = []
        tested_n: list[int] = []
        for m in present:
            r = results[m]
            p_holm = adj[m]
            if math.isnan(r.p_value):
                verdict = "too few"
            else:
                tested_n.append(min(r.n_control, r.n_treatment))
                if p_holm <= self.alpha and r.effect != 0:
                    bad = (r.effect > 0) == (m in HIGHER_IS_WORSE)
                    verdict = "worse" if bad else "better"
                    (worse if bad else better).append(m)
                else:
                    verdict = "no difference"
            detail = {
                **r.to_dict(),
                "control_value": _num(r.control),
                "treatment_value": _num(r.treatment),
                "control": ctrl,
                "treatment": treat,
                "experiment": name,
                "p_holm": None if math.isnan(p_holm) else p_holm,
                "alpha": self.alpha,
                "confidence": self.confidence,
                "min_n": self.min_n,
                "verdict": verdict,
            }
            value = r.effect if not math.isnan(r.effect) else 0.0
            out.append(batch.signal(f"ab.{m}", value, n=r.n_control + r.n_treatment,
                                    dimension=dim, detail=detail))
        if tested_n:
            out.append(batch.signal(
                "ab.verdict", float(len(worse)), n=min(tested_n), dimension=dim,
                detail={"control": ctrl, "treatment": treat, "experiment": name,
                        "worse": worse, "better": better, "alpha": self.alpha,
                        "tested": len(tested_n)},
            ))
        return out

    def _gate(self, x: np.ndarray, y: np.ndarray, test: Any, name: str) -> ArmComparison:
        if x.size < self.min_n or y.size < self.min_n:
            nan = math.nan
            summary = (lambda a: float(np.quantile(a, 0.95))) if name == "bootstrap" else np.mean
            cx = float(summary(x)) if x.size else nan
            cy = float(summary(y)) if y.size else nan
            return ArmComparison(cx, cy, cy - cx, nan, nan, nan, nan, name, int(x.size), int(y.size))
        result: ArmComparison = test(x, y)
        return result

    def _rate(self, hit: np.ndarray, has: np.ndarray, c: np.ndarray, t: np.ndarray) -> ArmComparison:
        nc, nt = int(np.count_nonzero(has & c)), int(np.count_nonzero(has & t))
        kc, kt = int(np.count_nonzero(hit & c)), int(np.count_nonzero(hit & t))
        if nc < self.min_n or nt < self.min_n:
            nan = math.nan
            pc = kc / nc if nc else nan
            pt = kt / nt if nt else nan
            return ArmComparison(pc, pt, pt - pc, nan, nan, nan, nan, "two-proportion-z", nc, nt)
        return proportions(kc, nc, kt, nt, self.confidence)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x
