"""Embedding drift: MMD and domain-classifier AUC checked against references, then on topic streams."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist, pdist

from llmpulse.detectors.base import Batch
from llmpulse.detectors.drift import embedding as emb_drift
from llmpulse.detectors.drift.base import ReferencePolicy
from llmpulse.detectors.drift.embedding import (
    EmbeddingDrift,
    domain_classifier_auc,
    median_bandwidth,
    mmd2_unbiased,
    mmd_permutation_test,
)
from llmpulse.detectors.embedding import MiniLMEmbedder
from llmpulse.detectors.embedding.topics import prompt_windows, topic_stream
from llmpulse.detectors.testing import synthetic_batch

BILLING = {"billing": 1.0}


class CachingEmbedder:
    """MiniLM with a memo: topic streams repeat texts, so the suite embeds each once."""

    def __init__(self, inner: MiniLMEmbedder) -> None:
        self.inner = inner
        self.memo: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self.memo})
        if missing:
            self.memo.update(zip(missing, self.inner.embed(missing), strict=True))
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


@pytest.fixture(scope="module")
def embedder() -> CachingEmbedder:
    return CachingEmbedder(MiniLMEmbedder.default())


# -- reference implementations ------------------------------------------------


def reference_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² with plain loops over scipy distances."""
    k = lambda a, b: math.exp(-(float(cdist(a[None], b[None])[0, 0]) ** 2) / (2 * bandwidth**2))  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_median_bandwidth_matches_scipy_pdist() -> None:
    z = np.random.default_rng(1).normal(size=(40, 6))
    assert median_bandwidth(z) == pytest.approx(float(np.median(pdist(z))), rel=1e-9)
    assert median_bandwidth(np.ones((5, 3))) == 1.0  # degenerate sample: no zero bandwidth


def test_mmd_matches_double_loop_reference() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(23, 4)), rng.normal(0.3, 1.2, size=(17, 4))
    bw = float(np.median(pdist(np.concatenate([x, y]))))
    expected = reference_mmd2(x, y, bw)
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    res = mmd_permutation_test(x, y, rng=np.random.default_rng(0))
    assert res.mmd2 == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert res.bandwidth == pytest.approx(bw, rel=1e-9)
    assert mmd2_unbiased(x, y, bandwidth=0.7) == pytest.approx(reference_mmd2(x, y, 0.7), rel=1e-9)


def test_vectorised_permutations_match_relabelled_reference() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 3)), rng.normal(size=(7, 3))
    z = np.concatenate([x, y])
    k0 = emb_drift.rbf_kernel(z, z, 1.3)
    np.fill_diagonal(k0, 0.0)
    labels = np.zeros((4, 16))
    for row in range(4):
        labels[row, rng.choice(16, 9, replace=False)] = 1.0
    got = emb_drift._mmd2_many(k0, labels, 9, 7)
    for row in range(4):
        mask = labels[row] == 1.0
        assert got[row] == pytest.approx(
            reference_mmd2(z[mask], z[~mask], 1.3), rel=1e-9, abs=1e-12
        )


def test_permutation_p_values_are_calibrated_under_no_drift() -> None:
    p = np.array(
        [
            mmd_permutation_test(
                np.random.default_rng([s, 0]).normal(size=(25, 3)),
                np.random.default_rng([s, 1]).normal(size=(25, 3)),
                n_permutations=99,
                rng=np.random.default_rng([s, 2]),
            ).p_value
            for s in range(400)
        ]
    )
    assert np.mean(p < 0.01) <= 0.025
    assert 0.02 <= np.mean(p < 0.05) <= 0.085
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert p.min() >= 1 / 100  # p = (1 + exceed) / (1 + permutations) is never zero


def test_permutation_test_has_power() -> None:
    rng = np.random.default_rng(4)
    res = mmd_permutation_test(rng.normal(size=(30, 3)), rng.normal(0.8, size=(30, 3)), rng=rng)
    assert res.p_value < 0.01 and res.mmd2 > 0.05


def test_logistic_fit_and_auc_match_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(70, 8)), rng.normal(0.4, size=(50, 8))
    z = np.concatenate([x, y])
    labels = np.r_[np.zeros(70), np.ones(50)]
    w, b = emb_drift._fit_logistic(z, labels, 1.0)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, labels)
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-5)
    assert b == pytest.approx(float(ref.intercept_[0]), abs=1e-5)

    folds = emb_drift._stratified_folds(labels, 5, np.random.default_rng(9))
    assert sorted(np.bincount(folds[labels == 1])) == [10] * 5  # stratified
    scores = np.empty(len(z))
    for f in range(5):
        fit = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(
            z[folds != f], labels[folds != f]
        )
        scores[folds == f] = fit.decision_function(z[folds == f])
    expected = roc_auc_score(labels, scores)
    assert domain_classifier_auc(x, y, rng=np.random.default_rng(9)) == pytest.approx(
        expected, abs=1e-6
    )

    tied = np.array([0.1, 0.1, 0.5, 0.5, 0.9, 0.2])
    tlab = np.array([0, 1, 0, 1, 1, 0])
    assert emb_drift._roc_auc(tlab, tied) == pytest.approx(roc_auc_score(tlab, tied))


# -- the detector on MiniLM embeddings -----------------------------------------

WINDOW = 100


def run_stream(detector: EmbeddingDrift, prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Per window (from the second on): MMD p-value and AUC, by window index."""
    out = []
    for i, window in enumerate(prompt_windows(prompts, WINDOW)):
        sigs = {s.signal: s for s in detector.update(window)}
        if sigs:
            out.append(
                {
                    "window": i,
                    "p": sigs["drift.embedding_mmd"].detail["p_value"],
                    "drift": sigs["drift.embedding_mmd"].detail["drift"],
                    "auc": sigs["drift.embedding_auc"].value,
                }
            )
    return out


def test_new_topic_is_detected_in_the_first_window_after_the_change(
    embedder: CachingEmbedder,
) -> None:
    prompts = topic_stream(1000, 650, before=BILLING, after={"crypto": 1.0}, seed=11)
    rows = run_stream(EmbeddingDrift(embedder=embedder, reference_size=200), prompts)
    flagged = [r["window"] for r in rows if r["drift"]]
    # window 6 holds events 600..699, half of them after the change at 650
    assert flagged == [6, 7, 8, 9]
    assert all(r["auc"] > 0.75 for r in rows if r["window"] >= 7)
    assert all(r["auc"] < 0.65 for r in rows if r["window"] < 6)


def test_subtle_change_is_detected_within_two_windows(embedder: CachingEmbedder) -> None:
    after = {"billing": 0.7, "addons": 0.3}
    prompts = topic_stream(1000, 600, before=BILLING, after=after, seed=12)
    rows = run_stream(EmbeddingDrift(embedder=embedder, reference_size=200), prompts)
    first = min(r["window"] for r in rows if r["drift"])
    assert first in (6, 7)  # change at event 600 = start of window 6
    assert not any(r["drift"] for r in rows if r["window"] < 6)


def test_stationary_streams_raise_no_false_alarms(embedder: CachingEmbedder) -> None:
    flagged = 0
    tested = 0
    for seed in range(2):
        rows = run_stream(
            EmbeddingDrift(embedder=embedder, reference_size=200),
            topic_stream(1200, 1200, before=BILLING, after=BILLING, seed=100 + seed),
        )
        tested += len(rows)
        flagged += sum(r["drift"] for r in rows)
    assert tested == 20  # windows 0 and 1 fill the baseline
    assert flagged == 0


def test_rolling_reference_adapts_after_a_change(embedder: CachingEmbedder) -> None:
    prompts = topic_stream(1200, 500, before=BILLING, after={"crypto": 1.0}, seed=13)
    rows = run_stream(
        EmbeddingDrift(embedder=embedder, reference="rolling", reference_windows=2), prompts
    )
    flagged = [r["window"] for r in rows if r["drift"]]
    assert flagged[0] == 5  # the first all-crypto window
    assert not any(r["drift"] for r in rows if r["window"] >= 8)  # the new topic is the norm now


def test_sampling_rate_and_sample_sizes_in_detail(embedder: CachingEmbedder) -> None:
    prompts = topic_stream(600, 600, before=BILLING, after=BILLING, seed=14)
    d = EmbeddingDrift(embedder=embedder, max_texts=100, reference_size=150, tests=("mmd",))
    assert d.update(prompt_windows(prompts[:300], 300)[0]) == []
    (sig,) = d.update(prompt_windows(prompts[300:], 300)[0])
    assert sig.n == 100
    assert sig.dimension == "embedding:prompt"
    assert sig.detail["sampling_rate"] == pytest.approx(1 / 3)
    assert sig.detail["reference_n"] == 150 and sig.detail["window_n"] == 300
    json.dumps(sig.detail)  # plain JSON types only


def test_small_windows_are_guarded(embedder: CachingEmbedder) -> None:
    prompts = topic_stream(300, 300, before=BILLING, after=BILLING, seed=15)
    d = EmbeddingDrift(embedder=embedder, min_texts=20, reference_size=100)
    assert d.update(prompt_windows(prompts[:10], 10)[0]) == []  # too small to become the reference
    assert d.snapshot()["reference"] is None
    assert d.update(prompt_windows(prompts[10:110], 100)[0]) == []  # reference
    assert d.update(prompt_windows(prompts[110:120], 10)[0]) == []  # too small to test
    assert len(d.update(prompt_windows(prompts[120:220], 100)[0])) == 2


def test_fixed_baseline_fills_over_several_windows(embedder: CachingEmbedder) -> None:
    prompts = topic_stream(400, 400, before=BILLING, after=BILLING, seed=19)
    windows = prompt_windows(prompts, WINDOW)
    d = EmbeddingDrift(embedder=embedder, reference=ReferencePolicy.fixed(250), tests=("mmd",))
    assert [d.update(w) for w in windows[:3]] == [[], [], []]  # 100 + 100 + 50 texts
    (sig,) = d.update(windows[3])
    assert sig.detail["reference_n"] == 250 and sig.detail["reference"] == "fixed"
    rolling = EmbeddingDrift(reference=ReferencePolicy.rolling(2))
    assert (rolling.reference, rolling.reference_windows) == ("rolling", 2)


def test_response_field_and_explicit_baseline(embedder: CachingEmbedder) -> None:
    events = [
        {"ts": 1000 * (1_700_000_000 + i), "prompt": "x", "response": r}
        for i, r in enumerate(topic_stream(60, 0, before=BILLING, after={"crypto": 1.0}, seed=16))
    ]
    batch = Batch.from_events(events)
    d = EmbeddingDrift(field="response", tests=("mmd",), embedder=embedder)
    d.set_reference(topic_stream(200, 200, before=BILLING, after=BILLING, seed=17))
    (sig,) = d.update(batch)  # a baseline was given: the first window is already tested
    assert sig.dimension == "embedding:response" and sig.detail["drift"] is True


def test_snapshot_round_trips_through_json(embedder: CachingEmbedder) -> None:
    for reference in ("fixed", "rolling"):
        prompts = topic_stream(400, 250, before=BILLING, after={"addons": 1.0}, seed=18)
        windows = prompt_windows(prompts, WINDOW)
        d = EmbeddingDrift(
            embedder=embedder, reference=reference, reference_size=150, seed=3, n_permutations=99
        )
        for w in windows[:3]:
            d.update(w)
        state = json.loads(json.dumps(d.snapshot()))
        fresh = EmbeddingDrift(embedder=embedder)
        fresh.restore(state)
        assert fresh.reference == reference and fresh.n_permutations == 99
        assert fresh.update(windows[3]) == d.update(windows[3])


def test_default_construction_on_synthetic_batches() -> None:
    d = EmbeddingDrift()
    assert d.update(synthetic_batch(600, seed=1)) == []
    sigs = d.update(synthetic_batch(600, seed=2))
    assert [s.signal for s in sigs] == ["drift.embedding_mmd", "drift.embedding_auc"]
    assert sigs[0].detail["drift"] is False and 0.3 < sigs[1].value < 0.7
    assert sigs[0].n == 256 and sigs[0].detail["reference_n"] == 512


@pytest.mark.parametrize(
    "kwargs",
    [
        {"field": "context"},
        {"tests": ()},
        {"tests": ("ks",)},
        {"reference": "sliding"},
        {"min_texts": 1},
    ],
)
def test_bad_configuration_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EmbeddingDrift(**kwargs)  # type: ignore[arg-type]


def test_erasure_takes_the_requests_rows_out_of_the_reference(embedder: CachingEmbedder) -> None:
    prompts = topic_stream(400, 400, before=BILLING, after=BILLING, seed=20)

    def window(lo: int, hi: int) -> Batch:
        return Batch.from_events([{"ts": 1000 * (1_700_000_000 + i), "request_id": f"r{i}",
                                   "prompt": prompts[i]} for i in range(lo, hi)])

    def held(state: dict[str, Any]) -> list[str]:
        return [*state["reference_ids"], *(i for ids in state["history_ids"] for i in ids)]

    for reference, size in (("fixed", 150), ("rolling", 250)):
        d = EmbeddingDrift(embedder=embedder, reference=reference, reference_size=size,
                           reference_windows=2, tests=("mmd",))
        d.update(window(0, 100))
        d.update(window(100, 200))
        before = held(d.snapshot())
        assert len(before) == len(set(before)) == (150 if reference == "fixed" else 200)
        victims = set(before[::5]) | {"r-never-seen"}
        assert d.forget_requests(victims) == len(before[::5]) == (30 if reference == "fixed" else 40)
        state = json.loads(json.dumps(d.snapshot()))
        assert not victims & set(held(state)) and len(held(state)) == len(before) - len(victims) + 1
        fresh = EmbeddingDrift(embedder=embedder)
        fresh.restore(state)
        assert fresh.forget_requests(victims) == 0
        if reference == "fixed":  # the short baseline fills up again before it is used
            assert d.update(window(200, 300)) == []
            (sig,) = d.update(window(300, 400))
            assert sig.detail["reference_n"] == 150
        else:
            (sig,) = d.update(window(200, 300))
            assert sig.detail["reference_n"] == 160
    given = EmbeddingDrift(embedder=embedder, tests=("mmd",))
    given.set_reference(prompts[:100])
    assert given.forget_requests({"r1", ""}) == 0  # a baseline given by hand has no requests
