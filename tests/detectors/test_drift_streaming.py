"""Streaming change detection: CUSUM against its plain recursion, river
wrappers against river, calibrated detection goals, and drift.change."""

from __future__ import annotations

import json

import numpy as np
import pytest
from river import drift

from llmpulse.detectors.base import Batch
from llmpulse.detectors.drift import Adwin, Cusum, Kswin, PageHinkley, StreamingChange

CALIBRATED = [Cusum, Adwin, PageHinkley]


def _plain_cusum(x: np.ndarray, k: float, h: float) -> list[int]:
    up = lo = 0.0
    hits = []
    for i, v in enumerate(x):
        up = max(0.0, up + v - k)
        lo = max(0.0, lo - v - k)
        if up > h or lo > h:
            hits.append(i)
            up = lo = 0.0
    return hits


def _shifted(seed: int, before: int, after: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, before), rng.normal(shift, 1, after)])


def test_vectorised_cusum_matches_the_plain_recursion_across_calls():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 3000), rng.normal(0.8, 1, 2000), rng.normal(-0.6, 1, 2000)])
    expected = _plain_cusum(x, 0.25, 8.0)
    d = Cusum(h=8.0)
    got = []
    for i in range(0, x.size, 700):  # windows that cut runs in the middle
        got += [i + h for h in d.update_many(x[i : i + 700])]
    assert got == expected and len(expected) > 20


def test_cusum_standardises_with_mean_and_sd():
    x = _shifted(1, 2000, 1000, 1.0)
    assert Cusum(mean=500.0, sd=20.0).update_many(500.0 + 20.0 * x) == Cusum().update_many(x)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (Adwin(mean=3.0, sd=2.0), drift.ADWIN()),
        (PageHinkley(mean=3.0, sd=2.0), drift.PageHinkley(delta=0.25, threshold=24.0, alpha=1.0)),
        (Kswin(mean=3.0, sd=2.0), drift.KSWIN(alpha=1e-7, window_size=400, stat_size=100, seed=0)),
    ],
)
def test_river_wrappers_match_river_on_standardised_values(ours, theirs):
    x = _shifted(2, 1500, 800, 1.0)
    expected = []
    for i, v in enumerate(x):
        theirs.update(float(v))
        if theirs.drift_detected:
            expected.append(i)
    assert ours.update_many(3.0 + 2.0 * x) == expected and expected


@pytest.mark.parametrize("cls", CALIBRATED)
def test_calibrated_detectors_find_a_one_sd_shift_within_1000_events(cls):
    for seed in range(5):
        d = cls()
        hits = d.update_many(_shifted(seed, 3000, 1000, 1.0))
        assert hits and 3000 <= hits[0] < 4000, (seed, hits[:3])


@pytest.mark.parametrize("cls", CALIBRATED)
def test_calibrated_detectors_stay_quiet_on_a_stationary_stream(cls):
    x = np.random.default_rng(42).normal(size=60_000)
    assert cls().update_many(x) == []


def test_kswin_finds_a_one_sd_shift_and_stays_quiet_on_a_short_stream():
    assert Kswin().update_many(np.random.default_rng(5).normal(size=3000)) == []
    hits = Kswin().update_many(_shifted(6, 800, 700, 1.0))
    assert hits and 800 <= hits[0] < 1500


def test_river_defaults_need_the_recalibration():
    # why PageHinkley ships other defaults: river's alarm on stationary noise
    x = np.random.default_rng(42).normal(size=20_000)
    river_ph = drift.PageHinkley()
    alarms = 0
    for v in x:
        river_ph.update(float(v))
        alarms += river_ph.drift_detected
    assert alarms >= 5
    assert PageHinkley().update_many(x) == []


@pytest.mark.parametrize("cls", [Cusum, Adwin, PageHinkley, Kswin])
def test_change_detector_state_round_trips_through_json(cls):
    x = _shifted(3, 1200, 600, 1.0)
    d = cls()
    d.update_many(x[:1000])
    fresh = cls()
    fresh.restore(json.loads(json.dumps(d.snapshot())))
    assert fresh.update_many(x[1000:]) == d.update_many(x[1000:])


# -- the window detector ------------------------------------------------------------------


def _windows(x: np.ndarray, size: int = 500, col: str = "x") -> list[Batch]:
    return [
        Batch({col: x[i : i + size], "ts": np.arange(i, min(i + size, x.size), dtype=float)},
              start=float(i), end=float(i + size))
        for i in range(0, x.size, size)
    ]


@pytest.mark.parametrize("method", ["cusum", "adwin", "page_hinkley"])
def test_streaming_change_reports_a_shift_once_with_its_position(method):
    x = _shifted(4, 6000, 3000, 1.0)
    d = StreamingChange(["x"], method=method)
    out = [s for b in _windows(x) for s in d.update(b)]
    assert len(out) == 1
    [sig] = out
    assert sig.signal == "drift.change" and sig.dimension == "x" and sig.value == 1.0
    assert 6000 <= sig.detail["change_ts"] < 7000
    assert sig.detail["change_ts"] == 6000 + sig.detail["positions"][0]
    assert sig.detail["reference_n"] == 2000 and sig.detail["method"] == method
    json.dumps(sig.to_row())


def test_without_rebaseline_a_lasting_shift_keeps_firing():
    x = _shifted(4, 3000, 2000, 1.0)
    d = StreamingChange(["x"], rebaseline=False)
    out = [s for b in _windows(x) for s in d.update(b)]
    assert sum(s.value for s in out) > 10


def test_rank_standardisation_keeps_skewed_features_quiet():
    # log-normal latencies: the long tail alone pushes a moments-standardised
    # CUSUM over its threshold; normal scores of ranks do not care.
    x = np.random.default_rng(9).lognormal(6.0, 1.0, 40_000)
    rank = StreamingChange(["latency_ms"])
    moments = StreamingChange(["latency_ms"], standardise="moments")
    rank_out = [s for b in _windows(x, col="latency_ms") for s in rank.update(b)]
    mom_out = [s for b in _windows(x, col="latency_ms") for s in moments.update(b)]
    assert rank_out == []
    assert len(mom_out) >= 1


def test_streaming_change_snapshot_round_trips_mid_reference_and_mid_run():
    x = _shifted(5, 4000, 2000, 0.7)
    windows = _windows(x, 700)
    for cut in (2, 4):  # while collecting the reference, then while detecting
        d = StreamingChange(["x"])
        for b in windows[:cut]:
            d.update(b)
        fresh = StreamingChange()
        fresh.restore(json.loads(json.dumps(d.snapshot())))
        rest_a = [s for b in windows[cut:] for s in d.update(b)]
        rest_b = [s for b in windows[cut:] for s in fresh.update(b)]
        assert rest_a == rest_b and len(rest_a) == 1


def test_streaming_change_rejects_unknown_settings():
    with pytest.raises(ValueError, match="method"):
        StreamingChange(method="ewma")
    with pytest.raises(ValueError, match="standardise"):
        StreamingChange(standardise="zscore")  # type: ignore[arg-type]
