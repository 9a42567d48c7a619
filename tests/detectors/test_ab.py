"""ABComparison and its tests, checked against scipy and statsmodels on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest

from llmpulse.detectors.base import Batch
from llmpulse.detectors.quality import ABComparison
from llmpulse.detectors.quality.ab import control_arm
from llmpulse.detectors.quality.ab_stats import (
    bootstrap_quantile,
    mean_scores,
    mean_values,
    proportions,
)
from llmpulse.detectors.testing import synthetic_batch, synthetic_events


def test_mann_whitney_matches_scipy() -> None:
    rng = np.random.default_rng(11)
    x = np.round(rng.uniform(-1, 1, 137), 1)  # ties, as real scores have
    y = np.round(rng.uniform(-0.8, 1, 151), 1)
    got = mean_scores(x, y)
    ref = stats.mannwhitneyu(y, x, alternative="two-sided")
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert got.effect_size == pytest.approx(2 * ref.statistic / (x.size * y.size) - 1)
    welch = stats.ttest_ind(y, x, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert (got.ci_low, got.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


@pytest.mark.parametrize("counts", [(90, 100, 75, 100), (412, 500, 398, 480), (3, 40, 9, 35)])
def test_two_proportions_match_statsmodels(counts: tuple[int, int, int, int]) -> None:
    kc, nc, kt, nt = counts
    got = proportions(kc, nc, kt, nt)
    _, p = proportions_ztest([kt, kc], [nt, nc])
    assert got.p_value == pytest.approx(p, rel=1e-10)
    assert got.effect == pytest.approx(kt / nt - kc / nc)
    assert got.ci_low < got.effect < got.ci_high


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.gamma(2.0, 1e-3, 80), rng.gamma(2.2, 1e-3, 95)
    got = mean_values(x, y)
    ref = stats.ttest_ind(y, x, equal_var=False)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (got.ci_low, got.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_bootstrap_interval_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(3)
    x = rng.lognormal(6.4, 0.5, 400)
    y = rng.lognormal(6.6, 0.5, 400)
    got = bootstrap_quantile(x, y, np.random.default_rng(1), resamples=4000)

    def diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.quantile(b, 0.95, axis=axis) - np.quantile(a, 0.95, axis=axis)

    ref = stats.bootstrap((x, y), diff, n_resamples=4000, method="percentile",
                          random_state=np.random.default_rng(2), vectorized=True)
    # different draws: the two percentile intervals agree to Monte Carlo error
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert abs(got.ci_low - ref.confidence_interval.low) < 0.1 * width
    assert abs(got.ci_high - ref.confidence_interval.high) < 0.1 * width
    assert got.effect == pytest.approx(np.quantile(y, 0.95) - np.quantile(x, 0.95))
    # the same seed gives the same answer
    again = bootstrap_quantile(x, y, np.random.default_rng(1), resamples=4000)
    assert again == got


def test_holm_matches_statsmodels_in_the_detector() -> None:
    b = synthetic_batch(3000, seed=9, experiment="exp", effect=-0.1)
    out = [s for s in ABComparison().update(b) if s.signal != "ab.verdict"]
    raw = [s.detail["p_value"] for s in out]
    assert all(p is not None for p in raw)
    _, adj, _, _ = multipletests(raw, method="holm")
    assert [s.detail["p_holm"] for s in out] == pytest.approx(adj.tolist(), rel=1e-12)


def test_known_effect_is_found_worse_and_named() -> None:
    b = synthetic_batch(2000, seed=4, experiment="tone", effect=-0.4)
    out = {s.signal: s for s in ABComparison().update(b)}
    assert set(out) == {*ABComparison.signals}
    s = out["ab.feedback_score"]
    assert s.dimension == "experiment=tone"
    assert s.value < -0.2 and s.detail["verdict"] == "worse"
    assert s.detail["ci_high"] < 0
    assert out["ab.verdict"].value == 1.0 and out["ab.verdict"].detail["worse"] == ["feedback_score"]


def test_equal_arms_give_no_verdict() -> None:
    b = synthetic_batch(2000, seed=8, experiment="same")
    out = {s.signal: s for s in ABComparison().update(b)}
    assert out["ab.verdict"].value == 0.0
    assert all(s.detail["verdict"] in ("no difference", "better") for k, s in out.items() if k != "ab.verdict")


def test_few_events_never_count_as_worse() -> None:
    # a huge effect on 25 requests (and 13 scores) per arm: below min_n, nothing is tested
    b = synthetic_batch(50, seed=2, experiment="tiny", effect=-1.5)
    out = ABComparison(min_n=30).update(b)
    assert out and all(s.signal != "ab.verdict" for s in out)
    assert {s.detail["verdict"] for s in out} == {"too few"}
    assert all(s.detail["p_value"] is None for s in out)


def test_slower_variant_is_worse_on_latency() -> None:
    events = synthetic_events(1600, seed=6, experiment="speed")
    for ev in events:
        if ev["variant"] == "B":
            ev["latency_ms"] *= 1.6
    b = Batch.from_events(events)
    out = {s.signal: s for s in ABComparison().update(b)}
    lat = out["ab.latency_p95_ms"]
    assert lat.detail["verdict"] == "worse" and lat.detail["ci_low"] > 0
    assert "latency_p95_ms" in out["ab.verdict"].detail["worse"]
    # recomputing the same window draws the same bootstrap
    assert ABComparison().update(b)[3] == lat


def test_arms_from_prompt_version_and_more_than_two_arms() -> None:
    events = synthetic_events(1500, seed=1, experiment="p")
    for i, ev in enumerate(events):
        del ev["variant"]
        ev["prompt_version"] = ("v9", "v10", "v11")[(i // 2) % 3]
    out = ABComparison().update(Batch.from_events(events))
    dims = {s.dimension for s in out}
    assert dims == {"experiment=p,variant=v10", "experiment=p,variant=v11"}
    assert {s.detail["control"] for s in out} == {"v9"}


def test_control_arm_naming() -> None:
    assert control_arm(["treatment", "Baseline"]) == "Baseline"
    assert control_arm(["v2", "v10"]) == "v2"


def test_aa_false_positive_rate_is_bounded() -> None:
    # A/A: both arms from one distribution; alpha = 0.05 family-wise per window
    hits = 0
    runs = 40
    for seed in range(runs):
        b = synthetic_batch(600, seed=100 + seed, experiment="aa")
        v = [s for s in ABComparison(resamples=500).update(b) if s.signal == "ab.verdict"]
        hits += int(v[0].value > 0 or bool(v[0].detail["better"]))
    # binomial(40, 0.05): P(X >= 7) < 0.01, so this fails only if the test is miscalibrated
    assert hits <= 6, hits
    assert not math.isnan(hits)
