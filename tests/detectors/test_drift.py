"""Window drift tests: values against scipy/numpy on the same data, reference
policies, guards, state round-trips and expected detections."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from llmpulse.detectors.base import Batch
from llmpulse.detectors.drift import (
    ChiSquare,
    JensenShannonDistance,
    KolmogorovSmirnov,
    PopulationStabilityIndex,
    ReferencePolicy,
    WassersteinDistance,
)
from llmpulse.detectors.drift.base import binned_percents, feature_values, value_counts
from llmpulse.detectors.testing import synthetic_batch

NUMERIC = [PopulationStabilityIndex, KolmogorovSmirnov, WassersteinDistance, JensenShannonDistance]
CATEGORICAL = [PopulationStabilityIndex, JensenShannonDistance, ChiSquare]
ALL = [PopulationStabilityIndex, KolmogorovSmirnov, WassersteinDistance, JensenShannonDistance, ChiSquare]


def _batch(start: float, **cols: np.ndarray) -> Batch:
    return Batch(cols, start=start, end=start + 60.0)


def _one(detector, ref: np.ndarray, cur: np.ndarray):
    assert detector.features == ("x",)
    detector.set_reference({"x": ref})
    [sig] = detector.update(_batch(0.0, x=cur))
    return sig


@pytest.fixture
def numeric_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.lognormal(6.0, 0.5, 2000), rng.lognormal(6.1, 0.55, 500)


@pytest.fixture
def categorical_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12)
    ref = rng.choice(["en", "de", "fr", "es"], 2000, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    cur = rng.choice(["en", "de", "fr", "it"], 500, p=[0.5, 0.2, 0.2, 0.1]).astype(object)
    return ref, cur


# -- against reference implementations ----------------------------------------------


def test_psi_matches_numpy_psi_on_sturges_bins(numeric_pair):
    ref, cur = numeric_pair
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    p = np.histogram(ref, edges)[0] / ref.size
    q = np.histogram(cur, edges)[0] / cur.size
    p = np.where(p == 0, 1e-4, p)
    q = np.where(q == 0, 1e-4, q)
    expected = float(np.sum((p - q) * np.log(p / q)))
    sig = _one(PopulationStabilityIndex(["x"]), ref, cur)
    assert sig.value == pytest.approx(expected, rel=1e-12)
    assert sig.detail["bins"] == edges.size - 1


def test_ks_matches_scipy(numeric_pair):
    ref, cur = numeric_pair
    res = stats.ks_2samp(ref, cur)
    sig = _one(KolmogorovSmirnov(["x"]), ref, cur)
    assert sig.value == pytest.approx(res.statistic, abs=1e-15)
    assert sig.detail["p_value"] == pytest.approx(res.pvalue, rel=1e-12)


def test_wasserstein_matches_scipy_normalised_by_reference_sd(numeric_pair):
    ref, cur = numeric_pair
    raw = stats.wasserstein_distance(ref, cur)
    sig = _one(WassersteinDistance(["x"]), ref, cur)
    assert sig.detail["distance"] == pytest.approx(raw, rel=1e-12)
    assert sig.value == pytest.approx(raw / np.std(ref), rel=1e-12)


def test_jensen_shannon_matches_scipy(numeric_pair, categorical_pair):
    ref, cur = numeric_pair
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    p = np.histogram(ref, edges)[0] / ref.size
    q = np.histogram(cur, edges)[0] / cur.size
    assert _one(JensenShannonDistance(["x"]), ref, cur).value == pytest.approx(
        distance.jensenshannon(p, q), rel=1e-12
    )
    cref, ccur = categorical_pair
    keys = sorted(set(cref) | set(ccur))
    p = np.array([np.mean(cref == k) for k in keys])
    q = np.array([np.mean(ccur == k) for k in keys])
    assert _one(JensenShannonDistance(["x"]), cref, ccur).value == pytest.approx(
        distance.jensenshannon(p, q), rel=1e-12
    )


def test_chi_square_matches_scipy_contingency(categorical_pair):
    ref, cur = categorical_pair
    keys = sorted(set(ref) | set(cur))
    table = np.array([[np.sum(ref == k) for k in keys], [np.sum(cur == k) for k in keys]])
    stat, p, dof, _ = stats.chi2_contingency(table, correction=False)
    sig = _one(ChiSquare(["x"]), ref, cur)
    assert sig.value == pytest.approx(stat, rel=1e-12)
    assert sig.detail["p_value"] == pytest.approx(p, rel=1e-9)
    assert sig.detail["dof"] == dof == 4
    assert sig.detail["cramers_v"] == pytest.approx(np.sqrt(stat / table.sum()))


def test_low_cardinality_numeric_is_binned_per_value():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 5, 2000).astype(float)
    cur = rng.integers(0, 6, 500).astype(float)
    p, q = binned_percents(ref, cur, "numeric", fill_zeroes=False)
    assert p.size == 6
    np.testing.assert_allclose(q, np.bincount(cur.astype(int), minlength=6) / 500)
    assert p[5] == 0.0


# -- reference policy ----------------------------------------------------------------


def test_fixed_reference_is_the_first_n_values_and_is_frozen():
    rng = np.random.default_rng(0)
    d = KolmogorovSmirnov(["x"], reference=ReferencePolicy.fixed(1200))
    first = rng.normal(size=1000)
    second = rng.normal(size=1000)
    assert d.update(_batch(0, x=first)) == []
    # the window that completes the baseline is not tested
    assert d.update(_batch(60, x=second)) == []
    cur = rng.normal(size=500)
    [sig] = d.update(_batch(120, x=cur))
    assert sig.detail["reference_n"] == 1200
    assert sig.detail["reference"] == "fixed"
    expected = stats.ks_2samp(np.concatenate([first, second[:200]]), cur)
    assert sig.detail["p_value"] == pytest.approx(expected.pvalue)
    [again] = d.update(_batch(180, x=cur))
    assert again.detail["reference_n"] == 1200


def test_rolling_reference_is_the_previous_k_windows():
    rng = np.random.default_rng(1)
    d = WassersteinDistance(["x"], reference=ReferencePolicy.rolling(2))
    w = [rng.normal(size=300) for _ in range(2)] + [rng.normal(3.0, 1.0, 300) for _ in range(3)]
    assert d.update(_batch(0, x=w[0])) == []
    assert d.update(_batch(60, x=w[1])) == []
    [jump] = d.update(_batch(120, x=w[2]))
    assert jump.detail["reference_n"] == 600 and jump.detail["drift"]
    assert jump.value == pytest.approx(
        stats.wasserstein_distance(np.concatenate(w[:2]), w[2]) / np.std(np.concatenate(w[:2]))
    )
    d.update(_batch(180, x=w[3]))
    # the shifted level is now the reference: a rolling reference absorbs it
    [settled] = d.update(_batch(240, x=w[4]))
    assert not settled.detail["drift"]


def test_explicit_reference_from_a_batch():
    ref = synthetic_batch(1000, seed=0)
    d = ChiSquare()
    d.set_reference(ref)
    dims = {s.dimension for s in d.update(synthetic_batch(500, seed=1))}
    assert dims == {"model", "prediction.label", "segment.language", "segment.region", "segment.tier"}


def test_policy_validation():
    with pytest.raises(ValueError, match="mode"):
        ReferencePolicy("sliding")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ReferencePolicy.rolling(0)


# -- features and guards -----------------------------------------------------------------


def test_default_features_cover_derived_and_prefixed_columns():
    d = PopulationStabilityIndex(reference=ReferencePolicy.fixed(1000))
    assert d.update(synthetic_batch(1000, seed=0)) == []
    dims = {s.dimension for s in d.update(synthetic_batch(600, seed=5))}
    assert {"latency_ms", "input_tokens", "output_tokens", "prompt_chars", "response_chars",
            "context_passages", "feature.prompt_chars", "model", "prediction.label",
            "segment.language", "segment.region", "segment.tier"} == dims


def test_derived_text_features():
    b = Batch.from_events(
        [
            {"ts": 1000, "prompt": "abc", "response": "hello", "context": ["p1", "p2"]},
            {"ts": 2000, "prompt": None, "response": "", "context": None},
        ]
    )
    np.testing.assert_array_equal(feature_values(b, "prompt_chars")[0], [3.0])
    np.testing.assert_array_equal(feature_values(b, "response_chars")[0], [5.0, 0.0])
    np.testing.assert_array_equal(feature_values(b, "context_passages")[0], [2.0])


def test_small_windows_get_no_signal_but_still_feed_a_rolling_reference():
    rng = np.random.default_rng(2)
    d = PopulationStabilityIndex(["x"], reference=ReferencePolicy.rolling(1), min_window=50)
    d.update(_batch(0, x=rng.normal(size=500)))
    assert d.update(_batch(60, x=rng.normal(size=49))) == []
    [sig] = d.update(_batch(120, x=rng.normal(size=50)))
    assert sig.detail["reference_n"] == 49
    assert sig.detail["min_window"] == 50 and sig.n == 50


def test_missing_values_are_dropped():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=1000)
    cur = rng.normal(size=200)
    holes = cur.copy()
    holes[::4] = np.nan
    sig = _one(KolmogorovSmirnov(["x"]), ref, holes)
    assert sig.detail["window_n"] == 150
    assert sig.detail["p_value"] == pytest.approx(stats.ks_2samp(ref, cur[np.isfinite(holes)]).pvalue)


# -- expected results ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", NUMERIC)
def test_numeric_detectors_flag_a_one_sd_shift_and_not_a_stationary_stream(cls):
    rng = np.random.default_rng(7)
    d = cls(["x"])
    d.update(_batch(0, x=rng.normal(size=2000)))
    quiet = [d.update(_batch(60 * (i + 1), x=rng.normal(size=500)))[0] for i in range(20)]
    assert not any(s.detail["drift"] for s in quiet)
    [shifted] = d.update(_batch(3600, x=rng.normal(1.0, 1.0, 500)))
    assert shifted.detail["drift"]
    assert shifted.signal == cls.signals[0]


@pytest.mark.parametrize("cls", CATEGORICAL)
def test_categorical_detectors_flag_a_mix_change_and_not_a_stationary_stream(cls):
    rng = np.random.default_rng(8)
    langs = np.array(["en", "de", "fr", "es"], dtype=object)
    d = cls(["segment.language"])
    d.update(_batch(0, **{"segment.language": rng.choice(langs, 2000)}))
    quiet = [d.update(_batch(60 * (i + 1), **{"segment.language": rng.choice(langs, 500)}))[0]
             for i in range(20)]
    assert not any(s.detail["drift"] for s in quiet)
    mixed = rng.choice(langs, 500, p=[0.55, 0.15, 0.15, 0.15])
    [changed] = d.update(_batch(3600, **{"segment.language": mixed}))
    assert changed.detail["drift"] and changed.dimension == "segment.language"


@pytest.mark.parametrize("cls", ALL)
def test_snapshot_is_json_and_restores_the_same_signals(cls):
    d = cls(reference=ReferencePolicy.rolling(2))
    for seed in range(3):
        d.update(synthetic_batch(300, seed=seed))
    state = json.loads(json.dumps(d.snapshot()))
    fresh = cls()
    fresh.restore(state)
    nxt = synthetic_batch(300, seed=9, latency_scale=1.5)
    a, b = d.update(nxt), fresh.update(nxt)
    assert a == b and a
    for s in a:
        json.dumps(s.to_row())


@pytest.mark.parametrize("cls", ALL)
def test_detail_names_threshold_and_sizes(cls):
    d = cls(reference=ReferencePolicy.fixed(500))
    d.update(synthetic_batch(500, seed=0))
    sig = d.update(synthetic_batch(400, seed=1))[0]
    assert sig.detail["reference_n"] == 500 and sig.detail["window_n"] == sig.n == 400
    assert sig.detail["threshold"] == d.threshold
    assert sig.detail["threshold_on"] in ("value", "p_value")
    if sig.detail["threshold_on"] == "p_value":
        assert 0.0 <= sig.detail["p_value"] <= 1.0


def test_asymptotic_ks_matches_scipy_asymp(numeric_pair):
    ref, cur = numeric_pair
    res = stats.ks_2samp(ref, cur, method="asymp")
    d = KolmogorovSmirnov(["x"], exact=False)
    sig = _one(d, ref, cur)
    assert sig.value == pytest.approx(res.statistic, abs=1e-12)
    assert sig.detail["p_value"] == pytest.approx(res.pvalue, rel=1e-9)
    fresh = KolmogorovSmirnov()
    fresh.restore(json.loads(json.dumps(d.snapshot())))
    assert fresh.exact is False


def _value_counts_by_sorting(values):
    keys, counts = np.unique(values, return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize("n", [1, 7, 5000, 20000])
def test_value_counts_equal_numpy_unique_keys_counts_and_order(n):
    rng = np.random.default_rng(n)
    labels = np.array(["billing", "technical", "account", "other", "Refund", "é", ""], dtype=object)
    cases = [
        rng.choice(labels, n),
        rng.choice(labels[:2], n),
        np.array([f"v{i}" for i in rng.integers(0, 500, n)], dtype=object),
        rng.integers(0, 6, n).astype(float),
        rng.normal(size=n),
    ]
    for values in cases:
        got = value_counts(values)
        want = _value_counts_by_sorting(values)
        assert got == want
        assert list(got) == list(want)
        assert all(type(v) is int for v in got.values())
    assert value_counts(np.array([], dtype=object)) == {}


def test_categorical_psi_and_chi_square_unchanged_by_counting_method(categorical_pair):
    ref, cur = categorical_pair
    p, q = binned_percents(ref, cur, "categorical", fill_zeroes=False)
    ref_counts = _value_counts_by_sorting(ref)
    cur_counts = _value_counts_by_sorting(cur)
    keys = list(ref_counts.keys() | cur_counts.keys())
    np.testing.assert_array_equal(p, np.array([ref_counts.get(k, 0) for k in keys]) / ref.size)
    np.testing.assert_array_equal(q, np.array([cur_counts.get(k, 0) for k in keys]) / cur.size)


def test_a_window_s_feature_values_are_read_once_and_cannot_be_changed() -> None:
    """The drift tests of a family share the present values of the window they read:
    the same array for the same batch, a fresh one for another batch (even one with
    the same columns), and read-only, so one test cannot change what another sees."""
    a, b = synthetic_batch(50, seed=1), synthetic_batch(50, seed=2)
    first = feature_values(a, "latency_ms")
    assert first is not None and feature_values(a, "latency_ms") is first
    other = feature_values(b, "latency_ms")
    assert other is not None and other[0] is not first[0]
    assert not np.array_equal(other[0], first[0])
    again = feature_values(a, "latency_ms")  # read again after another window
    assert again is not None and np.array_equal(again[0], first[0])
    with pytest.raises(ValueError, match="read-only"):
        first[0][0] = 0.0
    assert feature_values(a, "nope") is None and feature_values(a, "nope") is None
