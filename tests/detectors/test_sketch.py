from __future__ import annotations

import json

import numpy as np
import pytest

from llmpulse.detectors.sketch import DDSketch

QS = np.array([0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0])


def _distributions(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    return {
        "lognormal": rng.lognormal(np.log(600.0), 0.5, n),
        "lognormal_wide": rng.lognormal(3.0, 2.0, n),
        "pareto_heavy": (rng.pareto(1.1, n) + 1.0) * 50.0,
        "exponential": rng.exponential(200.0, n),
        "uniform": rng.uniform(1.0, 5000.0, n),
        "bimodal": np.concatenate([rng.normal(100, 5, n // 2), rng.normal(3000, 300, n - n // 2)]),
        "small_ints": rng.integers(1, 20, n).astype(float),
    }


@pytest.mark.parametrize("name", list(_distributions(10).keys()))
@pytest.mark.parametrize("n", [7, 1000, 50_000])
def test_relative_error_vs_numpy(name: str, n: int) -> None:
    x = _distributions(n)[name]
    s = DDSketch(relative_accuracy=0.01)
    s.add(x)
    est = s.quantiles(QS)
    exact = np.quantile(x, QS)
    rel = np.abs(est - exact) / np.abs(exact)
    assert rel.max() <= 0.01 + 1e-12, (name, n, rel.max())


def test_default_accuracy_keeps_half_percent() -> None:
    x = _distributions(20_000)["pareto_heavy"]
    s = DDSketch()
    s.add(x)
    rel = np.abs(s.quantiles(QS) / np.quantile(x, QS) - 1)
    assert rel.max() <= 0.005 + 1e-12


def test_merge_equals_single_sketch() -> None:
    x = _distributions(30_000)["lognormal_wide"]
    whole = DDSketch()
    whole.add(x)
    parts = [DDSketch() for _ in range(4)]
    for p, chunk in zip(parts, np.array_split(x, 4), strict=True):
        p.add(chunk)
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    assert merged.count == whole.count == x.size
    np.testing.assert_array_equal(merged.quantiles(QS), whole.quantiles(QS))
    assert merged.min == x.min() and merged.max == x.max()
    assert merged.sum == pytest.approx(x.sum())


def test_merge_into_empty_and_disjoint_ranges() -> None:
    a, b = DDSketch(), DDSketch()
    b.add([1.0, 2.0, 3.0])
    a.merge(b)
    assert a.count == 3
    c = DDSketch()
    c.add([1e6, 2e6])
    a.merge(c)
    x = np.array([1.0, 2.0, 3.0, 1e6, 2e6])
    np.testing.assert_allclose(a.quantiles(QS), np.quantile(x, QS), rtol=0.005)


def test_merge_rejects_other_accuracy() -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        DDSketch(0.01).merge(DDSketch(0.02))


def test_negative_and_zero_values() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 100, 5000), np.zeros(500)])
    s = DDSketch(0.01)
    s.add(x)
    est = s.quantiles([0.05, 0.3, 0.5, 0.7, 0.95])
    exact = np.quantile(x, [0.05, 0.3, 0.5, 0.7, 0.95])
    # Around zero, interpolating between a negative and a positive neighbour has
    # no relative bound; compare with an absolute tolerance there.
    np.testing.assert_allclose(est, exact, rtol=0.01, atol=1.0)


def test_nan_ignored_and_empty() -> None:
    s = DDSketch()
    assert np.isnan(s.quantiles([0.5])).all()
    s.add([np.nan, 5.0, np.nan])
    assert s.count == 1
    assert s.quantiles([0.5])[0] == pytest.approx(5.0, rel=0.005)


def test_collapse_keeps_tail_accuracy() -> None:
    rng = np.random.default_rng(9)
    x = rng.lognormal(0.0, 3.0, 20_000)  # spans ~1200 buckets at 1 %
    s = DDSketch(0.01, max_buckets=400)
    s.add(x[:10_000])
    s.add(x[10_000:])
    assert s._pos.counts.size <= 400
    assert s.count == x.size
    hi = [0.99, 0.999]
    np.testing.assert_allclose(s.quantiles(hi), np.quantile(x, hi), rtol=0.01)


def test_round_trip_json() -> None:
    x = _distributions(5000)["bimodal"]
    s = DDSketch()
    s.add(x)
    t = DDSketch.from_dict(json.loads(json.dumps(s.to_dict())))
    np.testing.assert_array_equal(t.quantiles(QS), s.quantiles(QS))
    assert t.count == s.count
    empty = DDSketch.from_dict(json.loads(json.dumps(DDSketch().to_dict())))
    assert empty.count == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        DDSketch(0.0)
    with pytest.raises(ValueError):
        DDSketch().quantiles([1.5])


def test_all_positive_ranks_read_directly_equal_the_general_path() -> None:
    """A sketch with only positive values reads its ranks straight from the positive
    store; the general path (negative store, zeros, positive store) gives the same
    values to the bit. An empty negative bucket sends the same sketch down that path."""
    rng = np.random.default_rng(5)
    qs = [0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0]
    for n in (1, 2, 15, 400):
        s = DDSketch()
        s.add(rng.lognormal(6.0, 1.0, n))
        direct = s.quantiles(qs)
        s._neg.counts = np.zeros(1, dtype=np.int64)  # holds nothing: only the path changes
        assert s.count == n
        assert s.quantiles(qs).tolist() == direct.tolist()
