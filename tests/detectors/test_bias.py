from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    true_positive_rate,
)
from scipy import stats
from sklearn.metrics import accuracy_score
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from llmpulse.detectors.base import Batch
from llmpulse.detectors.bias import SegmentBias
from llmpulse.detectors.bias.stats import (
    adjust_pvalues,
    fisher_pvalues,
    newcombe_interval,
    welch_test,
    wilson_interval,
)
from llmpulse.detectors.testing import synthetic_batch

TOL = 1e-9


def _batch(
    seed: int,
    sizes: dict[str, int],
    *,
    refusal: dict[str, float] | None = None,
    attr: str = "region",
) -> Batch:
    """Random window: refusals, labels (70 % labelled), errors, scores, hallucinations."""
    rng = np.random.default_rng(seed)
    seg = np.concatenate([np.full(n, v, dtype=object) for v, n in sizes.items()])
    n = seg.size
    p_ref = np.array([(refusal or {}).get(v, 0.2) for v in seg])
    truth = rng.random(n) < p_ref
    flip = rng.random(n) < 0.15
    pred = truth ^ flip
    plabel = np.where(pred, "refusal", "answer").astype(object)
    flabel = np.where(truth, "refusal", "answer").astype(object)
    labelled = rng.random(n) < 0.7
    flabel[~labelled] = ""
    status = rng.choice(np.array(["ok", "error", "timeout"], dtype=object), n, p=[0.9, 0.07, 0.03])
    score = np.where(rng.random(n) < 0.6, rng.uniform(-1, 1, n), np.nan)
    hal = np.where(rng.random(n) < 0.5, (rng.random(n) < 0.1).astype(float), np.nan)
    cols: dict[str, np.ndarray] = {
        "ts": np.arange(n, dtype=float),
        "latency_ms": np.full(n, 100.0),
        f"segment.{attr}": seg,
        "prediction.label": plabel,
        "feedback.label": flabel,
        "status": status,
        "feedback.score": score,
        "feedback.hallucination": hal,
    }
    return Batch(cols, start=0.0, end=float(n))


def _by(sigs: list[Any]) -> dict[tuple[str, str], Any]:
    return {(s.signal, s.dimension): s for s in sigs}


def _mean(yt: np.ndarray, yp: np.ndarray) -> float:
    return float(np.mean(yt))


# -- agreement with fairlearn ---------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_equal_fairlearn(seed: int) -> None:
    sizes = {"eu": 700, "us": 500, "apac": 450, "latam": 400}
    b = _batch(seed, sizes, refusal={"eu": 0.2, "us": 0.25, "apac": 0.3, "latam": 0.15})
    sigs = _by(SegmentBias(min_n=30).update(b))
    seg = b.strings("segment.region")
    pos = b.strings("prediction.label") == "refusal"
    flabel, plabel = b.strings("feedback.label"), b.strings("prediction.label")
    lab = flabel != ""

    dp = demographic_parity_difference(pos, pos, sensitive_features=seg)
    assert abs(sigs[("bias.demographic_parity_difference", "region")].value - dp) < TOL
    di = demographic_parity_ratio(pos, pos, sensitive_features=seg)
    assert abs(sigs[("bias.disparate_impact_ratio", "region")].value - di) < TOL
    eo = equalized_odds_difference(flabel[lab] == "refusal", pos[lab], sensitive_features=seg[lab])
    assert abs(sigs[("bias.equalized_odds_difference", "region")].value - eo) < TOL

    frames = {
        "bias.demographic_parity_difference": MetricFrame(
            metrics=_mean, y_true=pos.astype(float), y_pred=pos, sensitive_features=seg
        ),
        "bias.accuracy_gap": MetricFrame(
            metrics=accuracy_score,
            y_true=flabel[lab],
            y_pred=plabel[lab],
            sensitive_features=seg[lab],
        ),
        "bias.error_rate_gap": MetricFrame(
            metrics=_mean,
            y_true=(b.strings("status") != "ok").astype(float),
            y_pred=pos,
            sensitive_features=seg,
        ),
    }
    score = b.numeric("feedback.score")
    has = ~np.isnan(score)
    frames["bias.feedback_score_gap"] = MetricFrame(
        metrics=_mean, y_true=score[has], y_pred=score[has], sensitive_features=seg[has]
    )
    hal = b.numeric("feedback.hallucination")
    hh = ~np.isnan(hal)
    frames["bias.hallucination_rate_gap"] = MetricFrame(
        metrics=_mean, y_true=hal[hh], y_pred=hal[hh], sensitive_features=seg[hh]
    )
    assert sigs[("bias.demographic_parity_difference", "region=eu")].n == 700
    assert sigs[("bias.feedback_score_gap", "region=eu")].n == int((has & (seg == "eu")).sum())
    for name, mf in frames.items():
        assert abs(sigs[(name, "region")].value - mf.difference()) < TOL, name
        for group, value in mf.by_group.items():
            s = sigs[(name, f"region={group}")]
            assert abs(s.value - (value - mf.overall)) < TOL, (name, group)
        seg_n = [sigs[(name, f"region={g}")].n for g in mf.by_group.index]
        assert sigs[(name, "region")].n == sum(seg_n)

    eo_frame = MetricFrame(
        metrics={"tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=flabel[lab] == "refusal",
        y_pred=pos[lab],
        sensitive_features=seg[lab],
    )
    gaps = (eo_frame.by_group - eo_frame.overall).abs().max(axis=1)
    for group, value in gaps.items():
        assert abs(sigs[("bias.equalized_odds_difference", f"region={group}")].value - value) < TOL


def test_small_segment_gets_no_signal_and_is_left_out() -> None:
    b = _batch(5, {"big1": 600, "big2": 500, "tiny": 12}, refusal={"tiny": 0.9})
    sigs = _by(SegmentBias(min_n=30).update(b))
    assert not any(dim == "region=tiny" for _, dim in sigs)
    keep = b.strings("segment.region") != "tiny"
    pos = b.strings("prediction.label") == "refusal"
    dp = demographic_parity_difference(
        pos[keep], pos[keep], sensitive_features=b.strings("segment.region")[keep]
    )
    s = sigs[("bias.demographic_parity_difference", "region")]
    assert abs(s.value - dp) < TOL
    assert s.n == 1100 and s.detail["excluded_small"] == 1


def test_single_eligible_segment_gives_nothing() -> None:
    b = _batch(6, {"big": 500, "tiny": 10})
    assert SegmentBias().update(b) == []


def test_equalized_odds_needs_both_label_classes() -> None:
    b = _batch(7, {"a": 200, "b": 200}, refusal={"a": 0.02, "b": 0.02})
    sigs = _by(SegmentBias(min_n=30).update(b))
    # ~3 label-positive rows per segment: too few for a TPR.
    assert ("bias.equalized_odds_difference", "region") not in sigs
    assert ("bias.demographic_parity_difference", "region") in sigs


# -- significance and the multiple-comparison guard -----------------------------


def test_real_disparity_is_significant_and_located() -> None:
    b = _batch(8, {"eu": 800, "us": 800, "apac": 800}, refusal={"apac": 0.45})
    sigs = _by(SegmentBias().update(b))
    apac = sigs[("bias.demographic_parity_difference", "region=apac")]
    assert apac.detail["significant"] and apac.value > 0.1
    assert apac.detail["ci_low"] <= apac.value <= apac.detail["ci_high"]
    assert sigs[("bias.demographic_parity_difference", "region")].detail["significant"]
    assert sigs[("bias.disparate_impact_ratio", "region")].value < 0.8
    for s in sigs.values():
        json.dumps(s.detail)


def test_no_disparity_no_significant_signals_over_many_windows() -> None:
    rng = np.random.default_rng(99)
    significant = total = 0
    for w in range(60):
        k = int(rng.integers(3, 8))
        sizes = {f"s{i}": int(rng.integers(20, 120)) for i in range(k)}
        sigs = SegmentBias(min_n=30).update(_batch(1000 + w, sizes))
        total += len(sigs)
        significant += sum(s.detail["significant"] for s in sigs)
    assert total > 500
    assert significant == 0


def test_pvalues_adjusted_over_the_whole_window() -> None:
    b = _batch(9, {"eu": 500, "us": 400, "apac": 300}, refusal={"apac": 0.4})
    sigs = SegmentBias().update(b)
    seg = [s for s in sigs if "=" in s.dimension]
    raw = np.array([np.nan if s.detail["p_value"] is None else s.detail["p_value"] for s in seg])
    ok = ~np.isnan(raw)
    ref = multipletests(raw[ok], method="holm")[1]
    got = np.array([s.detail["p_adjusted"] for s in seg])[ok]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert {s.detail["family_size"] for s in sigs} == {int(ok.sum())}
    bh = SegmentBias(correction="bh").update(b)
    got_bh = np.array([s.detail["p_adjusted"] for s in bh if "=" in s.dimension])[ok]
    np.testing.assert_allclose(got_bh, multipletests(raw[ok], method="fdr_bh")[1], rtol=1e-12)


# -- configuration, merge, state ---------------------------------------------------


def test_outcome_status_and_attribute_selection() -> None:
    b = synthetic_batch(3000, seed=4)
    d = SegmentBias(
        ["tier"], outcome="status", positive_label="error", metrics=["demographic_parity"]
    )
    sigs = d.update(b)
    assert {s.signal for s in sigs} == {
        "bias.demographic_parity_difference",
        "bias.disparate_impact_ratio",
    }
    assert {s.dimension.split("=")[0] for s in sigs} == {"tier"}
    err = b.strings("status") == "error"
    dp = demographic_parity_difference(err, err, sensitive_features=b.strings("segment.tier"))
    assert abs(_by(sigs)[("bias.demographic_parity_difference", "tier")].value - dp) < TOL


def test_merge_equals_whole_window() -> None:
    b = _batch(10, {"eu": 400, "us": 300, "apac": 200}, refusal={"apac": 0.4})
    idx = np.arange(len(b))
    a, c = SegmentBias(), SegmentBias()
    a.update(b.select(idx % 2 == 0))
    c.update(b.select((idx % 2 == 1) & (b.strings("segment.region") != "eu")))
    e = SegmentBias()
    e.update(b.select((idx % 2 == 1) & (b.strings("segment.region") == "eu")))
    a.merge(c)
    a.merge(e)
    merged, whole = _by(a.emit()), _by(SegmentBias().update(b))
    assert merged.keys() == whole.keys()
    for key, s in whole.items():
        assert merged[key].value == pytest.approx(s.value, abs=1e-12)
        assert merged[key].n == s.n
        assert merged[key].detail["significant"] == s.detail["significant"]


@pytest.mark.parametrize("sizes", [{"eu": 40, "us": 35, "apac": 3}, {"eu": 400, "us": 300, "apac": 200}])
def test_small_window_path_gives_the_same_tables_as_the_large_one(
    sizes: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small window is grouped in plain Python and summed with one ``np.add.at``,
    a large one with pandas and a bincount per column: the same tables, bit for bit."""
    import llmpulse.detectors.bias.segments as seg

    b = _batch(13, sizes, refusal={"apac": 0.4})
    results = []
    for small in (0, 10**9):
        monkeypatch.setattr(seg, "_SMALL_FACTORIZE", small)
        monkeypatch.setattr(seg, "_SMALL_SUMS", small)
        d = SegmentBias(min_n=3)
        sigs = d.update(b)
        results.append((d.snapshot(), sigs))
    (state_large, sigs_large), (state_small, sigs_small) = results
    assert state_small == state_large
    assert sigs_small == sigs_large and sigs_small


def test_snapshot_is_json_and_round_trips() -> None:
    d = SegmentBias(["region"], min_n=20)
    d.update(_batch(11, {"a": 100, "b": 90}))
    state = json.loads(json.dumps(d.snapshot()))
    e = SegmentBias()
    e.restore(state)
    assert e.emit() == d.emit()
    nxt = _batch(12, {"a": 50, "b": 60, "c": 70})
    assert e.update(nxt) == d.update(nxt)
    assert pickle.loads(pickle.dumps(d.snapshot())) == d.snapshot()


def test_contract_on_synthetic_stream() -> None:
    d1, d2 = SegmentBias(), SegmentBias()
    b = synthetic_batch(1500, seed=3)
    s1 = d1.update(b)
    assert s1 == d2.update(b)
    assert any(s.signal == "bias.accuracy_gap" for s in s1)
    assert not any(s.detail["significant"] for s in s1)  # the synthetic stream is fair


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="metrics"):
        SegmentBias(metrics=["vibes"])
    with pytest.raises(ValueError, match="correction"):
        SegmentBias(correction="bonferroni")


# -- statistics helpers against references ------------------------------------------


def test_wilson_matches_statsmodels() -> None:
    k = np.array([0, 1, 5, 50, 99, 100])
    n = np.array([100, 100, 30, 100, 100, 100])
    lo, hi = wilson_interval(k, n, 0.9)
    for i in range(k.size):
        rlo, rhi = proportion_confint(int(k[i]), int(n[i]), alpha=0.1, method="wilson")
        assert lo[i] == pytest.approx(rlo, abs=1e-12) and hi[i] == pytest.approx(rhi, abs=1e-12)
    assert np.isnan(wilson_interval(np.array([0]), np.array([0]))[0]).all()


def test_newcombe_matches_statsmodels() -> None:
    for k1, n1, k2, n2 in [(30, 100, 20, 100), (3, 40, 50, 900), (0, 35, 10, 500)]:
        lo, hi = newcombe_interval(np.array([k1]), np.array([n1]), np.array([k2]), np.array([n2]))
        rlo, rhi = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
        assert lo[0] == pytest.approx(rlo, abs=1e-12) and hi[0] == pytest.approx(rhi, abs=1e-12)


def test_fisher_and_welch_match_scipy() -> None:
    rng = np.random.default_rng(0)
    n1 = rng.integers(1, 150, 300)
    n2 = rng.integers(1, 2000, 300)
    rate = rng.uniform(0, 0.5, 300)
    k1, k2 = rng.binomial(n1, rate), rng.binomial(n2, rate)
    k1[:3], n1[:3], k2[:3], n2[:3] = (
        [5, 0, 0],
        [10, 0, 0],
        [5, 4, 0],
        [10, 9, 7],
    )  # ties, empty rows
    got = fisher_pvalues(k1, n1, k2, n2)
    ref = [
        stats.fisher_exact([[a, b - a], [c, d - c]]).pvalue
        for a, b, c, d in zip(k1, n1, k2, n2, strict=True)
    ]
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    x, y = rng.normal(0.2, 1.0, 40), rng.normal(0.0, 2.0, 300)
    pw, lo, hi = welch_test(x.mean(), x.var(ddof=1), x.size, y.mean(), y.var(ddof=1), y.size)
    ref = stats.ttest_ind(x, y, equal_var=False)
    ci = ref.confidence_interval()
    assert float(pw) == pytest.approx(ref.pvalue, rel=1e-10)
    assert float(lo) == pytest.approx(ci.low, rel=1e-10) and float(hi) == pytest.approx(
        ci.high, rel=1e-10
    )


def test_adjust_pvalues_match_statsmodels() -> None:
    p = np.random.default_rng(2).uniform(0, 0.2, 25)
    np.testing.assert_allclose(
        adjust_pvalues(p, "holm"), multipletests(p, method="holm")[1], rtol=1e-12
    )
    np.testing.assert_allclose(
        adjust_pvalues(p, "bh"), multipletests(p, method="fdr_bh")[1], rtol=1e-12
    )
