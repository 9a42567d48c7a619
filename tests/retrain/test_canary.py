"""Canary judgement: a canary is compared with the current version's live figures, never with nothing."""

from __future__ import annotations

import pytest

from llmpulse.config import ConfigError
from llmpulse.retrain.canary import VersionMetrics, judge_canary
from llmpulse.retrain.settings import CanaryPolicy, RetrainSettings

GOOD = VersionMetrics(n=400, n_labelled=120, accuracy=0.95, p99_ms=12.0, error_rate=0.0)


@pytest.mark.parametrize("current", [
    VersionMetrics(),  # no measured traffic at all
    VersionMetrics(n=10, n_labelled=3, accuracy=0.2, p99_ms=500.0, error_rate=0.5),
    VersionMetrics(n=400, n_labelled=0, p99_ms=12.0, error_rate=0.0),  # traffic, no labels
])
@pytest.mark.parametrize("on_no_evidence", ["promote", "rollback"])
def test_a_current_version_without_the_minimum_sample_is_no_evidence(
        current: VersionMetrics, on_no_evidence: str) -> None:
    policy = CanaryPolicy(min_duration_s=30, max_wait_s=300, on_no_evidence=on_no_evidence)
    early = judge_canary(GOOD, current, policy, elapsed_s=120.0)
    assert (early.decision, early.reasons) == ("wait", [])  # not promoted past min_duration_s
    late = judge_canary(GOOD, current, policy, elapsed_s=300.0)
    assert late.decision == on_no_evidence
    [reason] = late.reasons
    assert reason.startswith(f"no live evidence after 300 s (canary: 400 inferences, 120 labelled; "
                             f"current: {current.n} inferences, {current.n_labelled} labelled; "
                             f"each needs 50 and 30)")
    assert "the canary was not compared with the current version" in reason


def test_enough_evidence_on_both_sides_is_compared() -> None:
    policy = CanaryPolicy(min_duration_s=30)
    assert judge_canary(GOOD, GOOD, policy, elapsed_s=31.0).decision == "promote"
    worse = VersionMetrics(n=400, n_labelled=120, accuracy=0.80, p99_ms=12.0, error_rate=0.0)
    verdict = judge_canary(worse, GOOD, policy, elapsed_s=31.0)
    assert verdict.decision == "rollback" and verdict.reasons[0].startswith("accuracy 0.8000")


def test_a_figure_missing_on_promotion_is_said() -> None:
    policy = CanaryPolicy(min_duration_s=0, min_samples=0, min_labelled=0)
    unlabelled = VersionMetrics(n=400, p99_ms=12.0, error_rate=0.0)
    verdict = judge_canary(GOOD, unlabelled, policy, elapsed_s=1.0)
    assert (verdict.decision, verdict.reasons) == ("promote", ["not compared (a figure is missing): accuracy"])


@pytest.mark.parametrize("share", [1.0, 0.0, -0.1, float("nan"), 1.5])
def test_the_canary_share_is_within_0_1(share: float) -> None:
    with pytest.raises(ConfigError, match=r"canary.share: must be within \(0, 1\)"):
        CanaryPolicy(share=share)


@pytest.mark.parametrize("text", ["1", "1.0", "0", "nan"])
def test_the_canary_share_from_the_environment_is_within_0_1(text: str) -> None:
    with pytest.raises(ConfigError, match="LLMPULSE_CANARY_SHARE"):
        RetrainSettings.from_env({"LLMPULSE_CANARY_SHARE": text})
    assert RetrainSettings.from_env({"LLMPULSE_CANARY_SHARE": "0.99"}).canary.share == 0.99
