from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from river import drift
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from llmpulse.detectors.base import Batch
from llmpulse.detectors.latency import (
    CostTotal,
    ErrorRates,
    LatencyChange,
    LatencyPercentiles,
    LogLatencyChange,
    TokenThroughput,
)
from llmpulse.detectors.testing import synthetic_batch

ALL = [LatencyPercentiles, ErrorRates, TokenThroughput, CostTotal, LatencyChange]


def _latency_batch(
    lat: np.ndarray, *, start: float = 0.0, rate: float = 100.0, **cols: np.ndarray
) -> Batch:
    n = lat.size
    ts = start + np.arange(n) / rate
    columns: dict[str, np.ndarray] = {"ts": ts, "latency_ms": np.asarray(lat, dtype=np.float64)}
    columns.update(cols)
    return Batch(columns, start=start, end=start + n / rate)


def _sigs(sigs):  # type: ignore[no-untyped-def]
    return {(s.signal, s.dimension): s for s in sigs}


# -- shared contract on the synthetic stream ----------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_contract_deterministic_and_round_trip(cls: type) -> None:
    d1, d2 = cls(), cls()
    for seed in range(2):
        b = synthetic_batch(600, seed=seed, start=1e9 + 6 * seed)
        assert d1.update(b) == d2.update(b)
        for s in d1.update(b):
            json.dumps(s.detail)
    state = pickle.loads(pickle.dumps(d1.snapshot()))
    fresh = cls()
    fresh.restore(state)
    nxt = synthetic_batch(600, seed=7, start=1e9 + 20, latency_scale=3.0)
    assert fresh.update(nxt) == d1.update(nxt)


# -- LatencyPercentiles ---------------------------------------------------------


def test_percentiles_exact_equal_numpy() -> None:
    b = synthetic_batch(2000, seed=11)
    sigs = _sigs(LatencyPercentiles().update(b))
    lat, ttft = b.numeric("latency_ms"), b.numeric("ttft_ms")
    for q, name in [(0.5, "50"), (0.95, "95"), (0.99, "99")]:
        assert sigs[(f"latency.p{name}_ms", "")].value == np.quantile(lat, q)
        assert sigs[(f"latency.ttft_p{name}_ms", "")].value == np.quantile(ttft, q)
        assert sigs[(f"latency.p{name}_ms", "")].n == 2000
    assert sigs[("latency.p99_ms", "")].detail["method"] == "exact"


def test_percentiles_status_filter_and_nan() -> None:
    lat = np.array([100.0, 200.0, np.nan, 5000.0] * 50)
    status = np.array(["ok", "ok", "ok", "timeout"] * 50, dtype=object)
    sigs = _sigs(
        LatencyPercentiles(statuses=("ok",), ttft=False).update(_latency_batch(lat, status=status))
    )
    assert sigs[("latency.p50_ms", "")].n == 100
    assert sigs[("latency.p99_ms", "")].value == np.quantile([100.0, 200.0] * 50, 0.99)
    all_sigs = _sigs(LatencyPercentiles(ttft=False).update(_latency_batch(lat, status=status)))
    assert all_sigs[("latency.p99_ms", "")].value == 5000.0  # timeouts move the tail


def test_percentiles_small_window_guard() -> None:
    sigs = LatencyPercentiles(ttft=False).update(_latency_batch(np.arange(1.0, 51.0)))
    names = [s.signal for s in sigs]
    assert names == ["latency.p50_ms", "latency.p95_ms"]  # p99 needs 100 events
    assert sigs[0].detail["suppressed"] == ["latency.p99_ms"]
    assert LatencyPercentiles().update(_latency_batch(np.array([]))) == []


def test_percentiles_custom_quantile_names() -> None:
    sigs = LatencyPercentiles((0.999,), ttft=False).update(_latency_batch(np.arange(2000.0)))
    assert [s.signal for s in sigs] == ["latency.p99.9_ms"]


@pytest.mark.parametrize(
    "name",
    ["lognormal", "pareto", "wide_lognormal", "exponential", "bimodal"],
)
def test_percentiles_sketch_within_one_percent(name: str) -> None:
    rng = np.random.default_rng(5)
    n = 10_000
    lat = {
        "lognormal": rng.lognormal(np.log(600), 0.5, n),
        "pareto": (rng.pareto(1.2, n) + 1) * 100.0,
        "wide_lognormal": rng.lognormal(5, 2.0, n),
        "exponential": rng.exponential(300.0, n),
        "bimodal": np.where(
            rng.random(n) < 0.9, rng.normal(200, 10, n), rng.normal(30_000, 500, n)
        ),
    }[name]
    b = _latency_batch(lat, ttft_ms=lat * 0.1)
    exact = _sigs(LatencyPercentiles().update(b))
    sketched = _sigs(LatencyPercentiles(sketch=True).update(b))
    assert exact.keys() == sketched.keys()
    for key, s in exact.items():
        assert abs(sketched[key].value / s.value - 1) <= 0.01
        assert sketched[key].detail["method"] == "ddsketch"


@pytest.mark.parametrize("sketch", [False, True])
def test_percentiles_merge_across_partitions(sketch: bool) -> None:
    b = synthetic_batch(3000, seed=21)
    part = np.arange(3000) % 3
    parts = [LatencyPercentiles(sketch=sketch) for _ in range(3)]
    for i, d in enumerate(parts):
        d.update(b.select(part == i))
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    merged = _sigs(parts[0].emit())
    whole = _sigs(LatencyPercentiles(sketch=sketch).update(b))
    assert merged.keys() == whole.keys()
    for key, s in whole.items():
        assert merged[key].n == s.n
        if sketch:
            assert merged[key].value == s.value  # same buckets, same answer
        else:
            assert merged[key].value == pytest.approx(s.value, rel=1e-12)
    assert merged[("latency.p50_ms", "")].ts == pytest.approx(b.select(part == 2).end)


def test_percentiles_sketch_snapshot_is_json() -> None:
    d = LatencyPercentiles(sketch=True)
    d.update(synthetic_batch(500, seed=2))
    state = json.loads(json.dumps(d.snapshot()))
    e = LatencyPercentiles()
    e.restore(state)
    assert e.emit() == d.emit()


# -- ErrorRates ---------------------------------------------------------------


def test_error_rates_values_and_wilson_reference() -> None:
    status = np.array(["ok"] * 950 + ["error"] * 35 + ["timeout"] * 15, dtype=object)
    etype = np.array([""] * 950 + ["rate_limit"] * 30 + [""] * 5 + [""] * 15, dtype=object)
    b = _latency_batch(np.full(1000, 100.0), status=status, error_type=etype)
    sigs = _sigs(ErrorRates().update(b))
    err, tout = sigs[("errors.rate", "")], sigs[("errors.timeout_rate", "")]
    assert (err.value, err.n, err.detail["count"]) == (0.035, 1000, 35)
    assert tout.value == 0.015
    lo, hi = proportion_confint(35, 1000, alpha=0.05, method="wilson")
    assert err.detail["ci_low"] == pytest.approx(lo, abs=1e-12)
    assert err.detail["ci_high"] == pytest.approx(hi, abs=1e-12)
    ci = stats.binomtest(15, 1000).proportion_ci(0.95, method="wilson")
    assert tout.detail["ci_low"] == pytest.approx(ci.low, abs=1e-12)
    assert tout.detail["ci_high"] == pytest.approx(ci.high, abs=1e-12)
    assert err.detail["error_types"] == {"rate_limit": 30, "unknown": 5}


def test_error_rates_min_n_and_zero_errors() -> None:
    small = _latency_batch(np.ones(5), status=np.array(["error"] * 5, dtype=object))
    assert ErrorRates().update(small) == []
    clean = _latency_batch(np.ones(40), status=np.array(["ok"] * 40, dtype=object))
    s = _sigs(ErrorRates().update(clean))[("errors.rate", "")]
    assert s.value == 0.0 and s.detail["ci_low"] == 0.0
    assert s.detail["ci_high"] == pytest.approx(proportion_confint(0, 40, method="wilson")[1])


def test_error_rates_merge() -> None:
    b = synthetic_batch(1500, seed=31)
    a, c = ErrorRates(), ErrorRates()
    a.update(b.select(np.arange(1500) < 700))
    c.update(b.select(np.arange(1500) >= 700))
    a.merge(c)
    assert a.emit() == ErrorRates().update(b)


# -- TokenThroughput and CostTotal -----------------------------------------------


def test_throughput_is_aggregate_of_ok_events() -> None:
    b = synthetic_batch(1000, seed=12)
    s = TokenThroughput().update(b)[0]
    ok = b.strings("status") == "ok"
    tok, lat, ttft = (
        b.numeric("output_tokens")[ok],
        b.numeric("latency_ms")[ok],
        b.numeric("ttft_ms")[ok],
    )
    assert s.signal == "tokens.output_per_s"
    assert s.n == int(ok.sum())
    assert s.value == pytest.approx(tok.sum() / (lat.sum() / 1000.0), rel=1e-12)
    assert s.detail["decode_per_s"] == pytest.approx(
        tok.sum() / ((lat - ttft).sum() / 1000.0), rel=1e-12
    )


def test_throughput_empty_and_merge() -> None:
    b = _latency_batch(
        np.ones(3), status=np.array(["error"] * 3, dtype=object), output_tokens=np.ones(3)
    )
    assert TokenThroughput().update(b) == []
    full = synthetic_batch(900, seed=3)
    a, c = TokenThroughput(), TokenThroughput()
    a.update(full.select(np.arange(900) % 2 == 0))
    c.update(full.select(np.arange(900) % 2 == 1))
    a.merge(c)
    assert a.emit()[0].value == pytest.approx(TokenThroughput().update(full)[0].value, rel=1e-12)


def test_cost_total() -> None:
    cost = np.array([0.01, 0.02, np.nan, 0.03])
    b = _latency_batch(np.ones(4), cost_usd=cost)
    sigs = _sigs(CostTotal().update(b))
    assert sigs[("cost.usd", "")].value == pytest.approx(0.06)
    assert sigs[("cost.usd", "")].n == 3
    assert sigs[("cost.usd", "")].detail["n_events"] == 4
    assert sigs[("cost.usd_per_request", "")].value == pytest.approx(0.02)
    assert CostTotal().update(_latency_batch(np.ones(3))) == []
    full = synthetic_batch(500, seed=6)
    a, c = CostTotal(), CostTotal()
    a.update(full.select(np.arange(500) < 123))
    c.update(full.select(np.arange(500) >= 123))
    a.merge(c)
    assert a.emit()[0].value == pytest.approx(np.nansum(full.numeric("cost_usd")), rel=1e-12)


# -- change detection -----------------------------------------------------------


def _slowdown(
    seed: int, pre: int, sigma: float, factor: float = 2.0, post: int = 2000
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.lognormal(6.0, sigma, pre), factor * rng.lognormal(6.0, sigma, post)]
    )


@pytest.mark.parametrize("method", ["page_hinkley", "adwin"])
@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_two_x_slowdown_detected_within_few_hundred(method: str, sigma: float) -> None:
    for seed in range(5):
        x = _slowdown(seed, 3000, sigma)
        hits = LogLatencyChange(method).update_many(x)
        assert hits, (method, sigma, seed)
        assert 3000 <= hits[0] < 3300, (method, sigma, seed, hits)


@pytest.mark.parametrize("method", ["page_hinkley", "adwin"])
def test_no_false_alarm_on_healthy_traffic(method: str) -> None:
    rng = np.random.default_rng(123)
    x = rng.lognormal(6.0, 0.7, 100_000)
    assert LogLatencyChange(method).update_many(x) == []


def test_mode_up_ignores_speedup_and_both_sees_it() -> None:
    x = _slowdown(4, 3000, 0.5, factor=0.5)
    assert LogLatencyChange().update_many(x) == []
    hits = LogLatencyChange(mode="both").update_many(x)
    assert hits and 3000 <= hits[0] < 3300


def test_page_hinkley_matches_river_on_standardised_values() -> None:
    x = _slowdown(8, 2000, 0.6)
    d = LogLatencyChange(clip=None, warmup=100)
    ours = d.update_many(x)
    y = np.log(x)
    center = np.median(y[:100])
    scale = np.median(np.abs(y[:100] - center)) * 1.482602218505602
    ref = drift.PageHinkley(min_instances=30, delta=0.25, threshold=50.0, alpha=1.0, mode="up")
    first = next(
        i for i, v in enumerate((y - center) / scale) if (ref.update(v), ref.drift_detected)[1]
    )
    assert ours[0] == first
    assert d.hit_baselines_ms[0] == pytest.approx(np.exp(center))


def test_update_and_update_many_agree() -> None:
    x = _slowdown(2, 700, 0.5, post=600)
    one = LogLatencyChange()
    hits = []
    for i, v in enumerate(x):
        one.update(float(v))
        if one.drift_detected:
            hits.append(i)
    chunked = LogLatencyChange()
    pos: list[int] = []
    for off in range(0, x.size, 97):
        pos.extend(off + h for h in chunked.update_many(x[off : off + 97]))
    assert hits == LogLatencyChange().update_many(x) == pos
    assert len(hits) == 1


def test_latency_change_window_detector() -> None:
    rng = np.random.default_rng(0)
    d = LatencyChange()
    for w in range(10):  # 10 healthy windows of 1,000 events
        assert d.update(_latency_batch(rng.lognormal(6.0, 0.5, 1000), start=10.0 * w)) == []
    slow = np.concatenate([rng.lognormal(6.0, 0.5, 400), 2 * rng.lognormal(6.0, 0.5, 600)])
    # Shuffle event order: the detector must sort by event time.
    b = _latency_batch(slow, start=100.0)
    perm = rng.permutation(1000)
    shuffled = Batch(
        {"ts": b.numeric("ts")[perm], "latency_ms": slow[perm]}, start=100.0, end=110.0
    )
    sigs = d.update(shuffled)
    assert len(sigs) == 1
    s = sigs[0]
    assert s.signal == "latency.change" and s.value == 1.0 and s.n == 1000
    assert 400 <= s.detail["position"] < 500
    assert s.detail["ts"] == pytest.approx(100.0 + s.detail["position"] / 100.0)
    assert s.detail["detector"] == "PageHinkley" and s.detail["direction"] == "up"
    assert s.detail["median_before_ms"] == pytest.approx(np.exp(6.0), rel=0.1)
    assert 1.6 < s.detail["ratio"] < 2.5
    json.dumps(s.detail)


def test_latency_change_survives_restart_mid_stream() -> None:
    rng = np.random.default_rng(1)
    windows = [rng.lognormal(6.0, 0.5, 500) for _ in range(4)] + [2 * rng.lognormal(6.0, 0.5, 500)]
    a = LatencyChange()
    for w, x in enumerate(windows[:3]):
        a.update(_latency_batch(x, start=5.0 * w))
    b = LatencyChange()
    b.restore(pickle.loads(pickle.dumps(a.snapshot())))
    emitted = []
    for w, x in enumerate(windows[3:], start=3):
        got = a.update(_latency_batch(x, start=5.0 * w))
        assert got == b.update(_latency_batch(x, start=5.0 * w))
        emitted.append(len(got))
    assert emitted == [0, 1]
    assert b.update(_latency_batch(windows[0] * 2, start=30.0)) == a.update(
        _latency_batch(windows[0] * 2, start=30.0)
    )


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="method"):
        LogLatencyChange("cusum")
    with pytest.raises(ValueError, match="quantiles"):
        LatencyPercentiles((1.5,))
