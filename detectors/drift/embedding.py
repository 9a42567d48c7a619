"""Embedding drift: has what users ask (or what the model answers) changed topic?

Each window's prompts (``field="prompt"``, dimension ``embedding:prompt``) or
responses (``field="response"``, ``embedding:response``) are embedded with
all-MiniLM-L6-v2 and compared with a reference sample of embeddings by two
two-sample tests:

``drift.embedding_mmd``
    The unbiased estimate of the squared maximum mean discrepancy (Gretton et
    al., 2012) with an RBF kernel ``exp(-|x - y|^2 / (2 s^2))`` whose bandwidth
    ``s`` is the median pairwise distance of the pooled sample (the median
    heuristic). ``detail["p_value"]`` comes from a permutation test: the
    pooled sample is relabelled ``n_permutations`` times (seeded, all
    permutations in one matrix product over the kernel matrix) and
    ``p = (1 + #{MMD_perm >= MMD_obs}) / (1 + n_permutations)``;
    ``detail["drift"]`` is ``p_value < alpha``.
``drift.embedding_auc``
    The cross-validated ROC AUC of a domain classifier (L2 logistic
    regression, ``C=1``, stratified ``folds``-fold, out-of-fold scores) that
    tells reference embeddings from the window's. 0.5 means the two samples
    cannot be told apart; near 1 means a clear change. No p-value: rules
    threshold the value directly (0.75 is a sensible start).

Reference (as for the other drift tests; a
:class:`~llmpulse.detectors.drift.base.ReferencePolicy` is accepted too):
``reference="fixed"`` (default) freezes the first ``reference_size`` texts
seen as the baseline (windows that help fill it are not tested), or a
baseline given to :meth:`EmbeddingDrift.set_reference`;
``reference="rolling"`` compares each window with the previous
``reference_windows`` windows (subsampled to ``reference_size``).

Defaults and why: the embedder, not the test, is the bottleneck (a few hundred
texts per second per CPU core), so each window is sampled down to
``max_texts=256`` texts (seeded; ``detail["sampling_rate"]`` says how much was
kept, ``window_n`` and ``sampled_n`` the counts), the reference to
``reference_size=512``. The detector is
:class:`~llmpulse.detectors.base.Deferrable`: :meth:`EmbeddingDrift.prepare`
only draws a window's bounded sample (at most ``max(max_texts,
reference_size)`` texts), :meth:`EmbeddingDrift.complete` embeds it in
batches and runs the tests, so the signal engine can run the costly part off
the window close. Windows with fewer than
``min_texts=20`` texts emit no signal, since a two-sample test on a handful of
texts mostly measures noise; such windows do not become the reference either.
``n_permutations=200`` resolves p-values down to 0.005 for ``alpha=0.01``.
A window of at least ``reference_size`` texts fills the baseline at once.

Snapshots hold configuration and reference embeddings (float32, base64),
with the request id behind each row, and never the ONNX session; the embedder is injectable (``embedder=None`` means
:meth:`MiniLMEmbedder.default` on first use), and any object with
``embed(texts) -> (n, d) array`` will do.

An erasure (:meth:`EmbeddingDrift.forget_requests`) takes the rows of the
erased requests out of the reference, since an embedding can give its text
back in part; a fixed baseline that falls below ``reference_size`` is filled
up again from the next windows. A baseline given by
:meth:`EmbeddingDrift.set_reference` has no request ids and is kept.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> d = EmbeddingDrift(tests=("mmd",))
>>> d.update(synthetic_batch(600, seed=1))        # fills the 512-text baseline
[]
>>> sig = d.update(synthetic_batch(600, seed=2))[0]
>>> sig.signal, sig.dimension, sig.n, sig.detail["drift"]
('drift.embedding_mmd', 'embedding:prompt', 256, False)

Two seeded Gaussian samples, one shifted, through the tests directly:

>>> rng = np.random.default_rng(0)
>>> x, y = rng.normal(size=(60, 5)), rng.normal(size=(60, 5))
>>> round(mmd_permutation_test(x, y, rng=np.random.default_rng(1)).p_value, 3)
0.483
>>> round(mmd_permutation_test(x, y + 0.8, rng=np.random.default_rng(1)).p_value, 3)
0.005
>>> round(domain_classifier_auc(x, y + 0.8, rng=np.random.default_rng(1)), 2)
0.9
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy import optimize, special, stats

from llmpulse.detectors.base import Batch, Deferrable, Detector, Signal
from llmpulse.detectors.drift.base import ReferencePolicy

__all__ = [
    "EmbeddingDrift",
    "EmbeddingJob",
    "MMDResult",
    "TextEmbedder",
    "domain_classifier_auc",
    "median_bandwidth",
    "mmd2_unbiased",
    "mmd_permutation_test",
    "rbf_kernel",
]

_FIELDS = ("prompt", "response")
_TESTS = ("mmd", "auc")
_REFERENCES = ("fixed", "rolling")
_CONFIG = (
    "field",
    "tests",
    "reference",
    "reference_windows",
    "reference_size",
    "max_texts",
    "min_texts",
    "n_permutations",
    "alpha",
    "folds",
    "seed",
)


class TextEmbedder(Protocol):
    """What :class:`EmbeddingDrift` needs from an embedder: one row per text."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


# -- statistics --------------------------------------------------------------


def _sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xx = np.einsum("ij,ij->i", x, x)
    yy = np.einsum("ij,ij->i", y, y)
    d2 = xx[:, None] + yy[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d2, 0.0)


def median_bandwidth(z: np.ndarray) -> float:
    """Median pairwise Euclidean distance between distinct rows of ``z`` (1.0 if all equal).

    >>> median_bandwidth(np.array([[0.0], [1.0], [3.0]]))
    2.0
    """
    z = np.asarray(z, dtype=np.float64)
    d2 = _sq_distances(z, z)
    iu = np.triu_indices(len(z), k=1)
    med = float(np.median(np.sqrt(d2[iu]))) if iu[0].size else 0.0
    return med if med > 0.0 else 1.0


def rbf_kernel(x: np.ndarray, y: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(-|x_i - y_j|^2 / (2 bandwidth^2))`` for every pair of rows.

    >>> rbf_kernel(np.array([[0.0], [1.0]]), np.array([[0.0]]), 1.0).round(4).tolist()
    [[1.0], [0.6065]]
    """
    d2 = _sq_distances(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return np.exp(-d2 / (2.0 * bandwidth * bandwidth))


def _mmd2_many(k0: np.ndarray, s: np.ndarray, n: int, m: int) -> np.ndarray:
    # k0 is the pooled kernel matrix with a zero diagonal, s one 0/1 row per
    # labelling (1 = first sample); all labellings in one matrix product.
    u = s @ k0
    xx = np.einsum("pj,pj->p", u, s)
    xy = u.sum(axis=1) - xx
    yy = k0.sum() - xx - 2.0 * xy
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between the rows of ``x`` and ``y`` with an RBF kernel.

    ``bandwidth`` defaults to :func:`median_bandwidth` of the pooled rows.

    >>> x = np.array([[0.0], [1.0], [2.0]])
    >>> round(mmd2_unbiased(x, x + 5.0, bandwidth=1.0), 4)
    0.8963
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 rows per sample, got {n} and {m}")
    z = np.concatenate([x, y])
    bw = median_bandwidth(z) if bandwidth is None else float(bandwidth)
    k0 = rbf_kernel(z, z, bw)
    np.fill_diagonal(k0, 0.0)
    labels = np.zeros((1, n + m))
    labels[0, :n] = 1.0
    return float(_mmd2_many(k0, labels, n, m)[0])


@dataclass(frozen=True, slots=True)
class MMDResult:
    """An MMD permutation test: statistic, p-value and the bandwidth used."""

    mmd2: float
    p_value: float
    bandwidth: float
    n_permutations: int


def mmd_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_permutations: int = 200,
    rng: np.random.Generator | None = None,
    bandwidth: float | None = None,
) -> MMDResult:
    """Unbiased MMD² of ``x`` vs ``y`` and its permutation p-value.

    The kernel matrix of the pooled sample is computed once; random
    relabellings (``n_permutations``, drawn from ``rng``) are evaluated
    together, 256 per matrix product.

    >>> rng = np.random.default_rng(3)
    >>> res = mmd_permutation_test(rng.normal(size=(40, 3)), rng.normal(1.0, size=(40, 3)),
    ...                            rng=np.random.default_rng(0))
    >>> res.p_value, res.n_permutations, round(res.mmd2, 3)
    (0.004975124378109453, 200, 0.232)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 rows per sample, got {n} and {m}")
    rng = rng if rng is not None else np.random.default_rng(0)
    z = np.concatenate([x, y])
    bw = median_bandwidth(z) if bandwidth is None else float(bandwidth)
    k0 = rbf_kernel(z, z, bw)
    np.fill_diagonal(k0, 0.0)
    observed_labels = np.zeros((1, n + m))
    observed_labels[0, :n] = 1.0
    observed = float(_mmd2_many(k0, observed_labels, n, m)[0])
    exceed = 0
    done = 0
    while done < n_permutations:
        p = min(256, n_permutations - done)
        picks = np.argpartition(rng.random((p, n + m)), n - 1, axis=1)[:, :n]
        labels = np.zeros((p, n + m))
        np.put_along_axis(labels, picks, 1.0, axis=1)
        # a tiny tolerance so permutations equal to the observation count as ties
        exceed += int(np.count_nonzero(_mmd2_many(k0, labels, n, m) >= observed - 1e-12))
        done += p
    p_value = (1.0 + exceed) / (1.0 + n_permutations)
    return MMDResult(mmd2=observed, p_value=p_value, bandwidth=bw, n_permutations=n_permutations)


def _fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    # sklearn's objective: C * sum(log loss) + |w|^2 / 2, intercept unpenalised.
    # Newton-CG with exact Hessian-vector products converges in ~10 steps,
    # far quicker than quasi-Newton methods in 384 dimensions.
    d = x.shape[1]
    sign = 2.0 * y - 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (x @ theta[:d] + theta[d])
        value = c * float(np.logaddexp(0.0, -margin).sum()) + 0.5 * float(theta[:d] @ theta[:d])
        g = -c * sign * special.expit(-margin)  # d loss / d (x w + b)
        grad = np.empty(d + 1)
        grad[:d] = x.T @ g + theta[:d]
        grad[d] = g.sum()
        return value, grad

    def hessp(theta: np.ndarray, v: np.ndarray) -> np.ndarray:
        p = special.expit(x @ theta[:d] + theta[d])
        t = c * p * (1.0 - p) * (x @ v[:d] + v[d])
        out = np.empty(d + 1)
        out[:d] = x.T @ t + v[:d]
        out[d] = t.sum()
        return out

    res = optimize.minimize(
        loss,
        np.zeros(d + 1),
        jac=True,
        hessp=hessp,
        method="Newton-CG",
        options={"xtol": 1e-8, "maxiter": 200},
    )
    return res.x[:d], float(res.x[d])


def _stratified_folds(labels: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    fold_of = np.empty(len(labels), dtype=np.intp)
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        fold_of[rng.permutation(idx)] = np.arange(idx.size) % folds
    return fold_of


def _roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = stats.rankdata(scores)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def domain_classifier_auc(
    x: np.ndarray,
    y: np.ndarray,
    *,
    folds: int = 5,
    c: float = 1.0,
    rng: np.random.Generator | None = None,
) -> float:
    """Cross-validated ROC AUC of a logistic regression telling rows of ``y`` from ``x``.

    Stratified ``folds``-fold split drawn from ``rng``; the AUC is computed
    on the pooled out-of-fold scores (Mann-Whitney, ties counted half).

    >>> rng = np.random.default_rng(5)
    >>> x = rng.normal(size=(80, 4))
    >>> round(domain_classifier_auc(x, rng.normal(size=(80, 4)), rng=np.random.default_rng(0)), 2)
    0.47
    >>> round(domain_classifier_auc(x, rng.normal(1.0, size=(80, 4)), rng=np.random.default_rng(0)), 2)
    0.9
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if min(len(x), len(y)) < folds:
        raise ValueError(f"each sample needs at least {folds} rows, got {len(x)} and {len(y)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    z = np.concatenate([x, y])
    labels = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    fold_of = _stratified_folds(labels, folds, rng)
    scores = np.empty(len(z))
    for f in range(folds):
        test = fold_of == f
        w, b = _fit_logistic(z[~test], labels[~test], c)
        scores[test] = z[test] @ w + b
    return _roc_auc(labels, scores)


# -- detector ----------------------------------------------------------------


def _pack(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {
        "dtype": "float32",
        "shape": list(a.shape),
        "b64": base64.b64encode(a.tobytes()).decode(),
    }


def _unpack(d: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(d["b64"])
    return np.frombuffer(raw, dtype=np.float32).reshape(d["shape"]).copy()


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    """One window's work for :meth:`EmbeddingDrift.complete`: its ordinal, a bounded
    sample of its texts, how many texts it had and its bounds (picklable); ``ids``,
    the request id of each text, lets an erasure take texts out of a waiting job."""

    window: int
    texts: tuple[str, ...]
    window_n: int
    start: float
    end: float
    ids: tuple[str, ...] = ()


class EmbeddingDrift(Detector, Deferrable):
    """MMD permutation test and domain-classifier AUC on sentence embeddings of a text field.

    See the module docstring for the method and defaults. ``embedder`` is any
    object with ``embed(texts) -> (n, d) array``; ``None`` means the shared
    :class:`~llmpulse.detectors.embedding.MiniLMEmbedder`, built on first use.

    >>> d = EmbeddingDrift(field="response", tests=("auc",), reference="rolling")
    >>> d.dimension, d.signals
    ('embedding:response', ('drift.embedding_auc',))
    """

    signals: tuple[str, ...] = ("drift.embedding_mmd", "drift.embedding_auc")

    def __init__(
        self,
        field: str = "prompt",
        *,
        tests: Sequence[str] = ("mmd", "auc"),
        reference: str | ReferencePolicy = "fixed",
        reference_windows: int = 3,
        reference_size: int = 512,
        max_texts: int = 256,
        min_texts: int = 20,
        n_permutations: int = 200,
        alpha: float = 0.01,
        folds: int = 5,
        seed: int = 0,
        embedder: TextEmbedder | None = None,
    ) -> None:
        if field not in _FIELDS:
            raise ValueError(f"field must be one of {_FIELDS}, got {field!r}")
        tests = tuple(tests)
        if not tests or any(t not in _TESTS for t in tests):
            raise ValueError(f"tests must be a non-empty subset of {_TESTS}, got {tests!r}")
        if isinstance(reference, ReferencePolicy):
            reference_windows = reference.windows
            if reference.mode == "fixed":
                reference_size = reference.size
            reference = reference.mode
        if reference not in _REFERENCES:
            raise ValueError(f"reference must be one of {_REFERENCES}, got {reference!r}")
        if min_texts < max(2, folds):
            raise ValueError(f"min_texts must be at least max(2, folds)={max(2, folds)}")
        if max_texts < min_texts or reference_size < min_texts:
            raise ValueError("max_texts and reference_size must be at least min_texts")
        self.field = field
        self.tests = tests
        self.reference = reference
        self.reference_windows = int(reference_windows)
        self.reference_size = int(reference_size)
        self.max_texts = int(max_texts)
        self.min_texts = int(min_texts)
        self.n_permutations = int(n_permutations)
        self.alpha = float(alpha)
        self.folds = int(folds)
        self.seed = int(seed)
        self.signals = tuple(f"drift.embedding_{t}" for t in tests)
        self._embedder = embedder
        self._window = 0
        self._reference: np.ndarray | None = None
        self._reference_ids: list[str] = []
        self._frozen = False
        self._history: list[np.ndarray] = []
        self._history_ids: list[list[str]] = []

    @property
    def dimension(self) -> str:
        return f"embedding:{self.field}"

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            from llmpulse.detectors.embedding import MiniLMEmbedder

            self._embedder = MiniLMEmbedder.default()
        return self._embedder

    def set_reference(self, texts: Sequence[str]) -> None:
        """Use these baseline texts as the fixed reference (sampled to ``reference_size``)."""
        clean = [t for t in texts if isinstance(t, str) and t]
        rng = np.random.default_rng([self.seed, 2**31])
        self.set_reference_embeddings(self._embed_sample(clean, self.reference_size, rng)[0])

    def set_reference_embeddings(self, embeddings: np.ndarray) -> None:
        """Use precomputed embeddings (one row per text) as the fixed reference."""
        ref = np.asarray(embeddings, dtype=np.float32)
        if ref.ndim != 2 or len(ref) < self.min_texts:
            raise ValueError(f"reference needs at least min_texts={self.min_texts} rows")
        if self.reference == "fixed":
            self._reference, self._reference_ids = ref, [""] * len(ref)
            self._frozen = True
        else:
            self._history, self._history_ids = [ref], [[""] * len(ref)]

    def snapshot(self) -> dict[str, Any]:
        """Configuration, window count and reference embeddings; JSON-able, no embedder."""
        config = {name: getattr(self, name) for name in _CONFIG}
        config["tests"] = list(self.tests)
        return {
            "config": config,
            "window": self._window,
            "reference": None if self._reference is None else _pack(self._reference),
            "reference_ids": list(self._reference_ids),
            "frozen": self._frozen,
            "history": [_pack(h) for h in self._history],
            "history_ids": [list(ids) for ids in self._history_ids],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot`, keeping this instance's embedder."""
        embedder = self._embedder
        self.__init__(**state["config"], embedder=embedder)  # type: ignore[misc]
        self._window = int(state["window"])
        ref = state["reference"]
        self._reference = None if ref is None else _unpack(ref)
        self._frozen = bool(state["frozen"])
        self._history = [_unpack(h) for h in state["history"]]
        # a snapshot from before ids were kept: its rows cannot be matched to requests
        n = 0 if self._reference is None else len(self._reference)
        self._reference_ids = [str(i) for i in state.get("reference_ids") or [""] * n]
        self._history_ids = [[str(i) for i in ids] for ids in state.get("history_ids")
                             or [[""] * len(h) for h in self._history]]

    def update(self, batch: Batch) -> list[Signal]:
        return self.complete(self.prepare(batch))

    def prepare(self, batch: Batch) -> EmbeddingJob | None:
        """The window's texts, sampled (seeded) to the most one window embeds:
        ``max(max_texts, reference_size)``. Cheap: no embedding here."""
        rids = batch.strings("request_id")
        pairs = [(t, str(r)) for t, r in zip(batch.texts(self.field), rids, strict=True)
                 if isinstance(t, str) and t]
        self._window += 1
        if len(pairs) < self.min_texts:
            return None
        cap = max(self.max_texts, self.reference_size)
        window_n = len(pairs)
        if window_n > cap:
            keep = np.sort(np.random.default_rng([self.seed, self._window, 1]).choice(
                window_n, cap, replace=False))
            pairs = [pairs[i] for i in keep]
        return EmbeddingJob(self._window, tuple(t for t, _ in pairs), window_n, batch.start,
                            batch.end, tuple(r for _, r in pairs))

    def forget(self, job: EmbeddingJob | None, request_ids: AbstractSet[str]
               ) -> tuple[EmbeddingJob | None, int]:
        """The job without the texts of ``request_ids``; a job left with fewer than
        ``min_texts`` texts is dropped (None). A job saved before ids were kept
        has none to match: it is dropped whole, text and all."""
        if job is None:
            return None, 0
        ids = getattr(job, "ids", ())
        if len(ids) != len(job.texts):
            return None, len(job.texts)
        kept = [(t, r) for t, r in zip(job.texts, ids, strict=True) if r not in request_ids]
        gone = len(job.texts) - len(kept)
        if not gone:
            return job, 0
        if len(kept) < self.min_texts:
            return None, gone
        return replace(job, texts=tuple(t for t, _ in kept), ids=tuple(r for _, r in kept),
                       window_n=max(len(kept), job.window_n - gone)), gone

    def complete(self, job: EmbeddingJob | None) -> list[Signal]:
        """Embed a prepared window's sample and test it against the reference."""
        if job is None:
            return []
        texts = list(job.texts)
        ids = list(job.ids) if len(job.ids) == len(texts) else [""] * len(texts)
        kept = len(texts) / job.window_n  # what prepare kept; the tests' sampling comes on top
        window = Batch({}, start=job.start, end=job.end)
        rng = np.random.default_rng([self.seed, job.window])
        if self.reference == "fixed" and not self._reference_ready():
            have = 0 if self._reference is None else len(self._reference)
            sample, _, picked = self._embed_sample(texts, self.reference_size - have, rng)
            parts = [sample] if self._reference is None else [self._reference, sample]
            self._reference = np.concatenate(parts)
            self._reference_ids += [ids[i] for i in picked]
            return []  # windows that fill the baseline are not tested
        reference = self._current_reference(rng)
        if reference is None:
            first, _, picked = self._embed_sample(texts, self.max_texts, rng)
            self._history, self._history_ids = [first], [[ids[i] for i in picked]]
            return []
        current, rate, picked = self._embed_sample(texts, self.max_texts, rng)
        common: dict[str, Any] = {
            "field": self.field,
            "reference": self.reference,
            "reference_n": len(reference),
            "window_n": job.window_n,
            "sampled_n": len(current),
            "sampling_rate": rate * kept,
        }
        out: list[Signal] = []
        if "mmd" in self.tests:
            res = mmd_permutation_test(
                reference, current, n_permutations=self.n_permutations, rng=rng
            )
            detail = {
                **common,
                "p_value": res.p_value,
                "drift": bool(res.p_value < self.alpha),
                "threshold": self.alpha,
                "threshold_on": "p_value",
                "bandwidth": res.bandwidth,
                "permutations": res.n_permutations,
            }
            out.append(
                window.signal(
                    "drift.embedding_mmd",
                    res.mmd2,
                    n=len(current),
                    dimension=self.dimension,
                    detail=detail,
                )
            )
        if "auc" in self.tests:
            auc = domain_classifier_auc(reference, current, folds=self.folds, rng=rng)
            out.append(
                window.signal(
                    "drift.embedding_auc",
                    auc,
                    n=len(current),
                    dimension=self.dimension,
                    detail={**common, "folds": self.folds},
                )
            )
        if self.reference == "rolling":
            self._history = [*self._history, current][-self.reference_windows :]
            self._history_ids = [*self._history_ids, [ids[i] for i in picked]][
                -self.reference_windows :]
        return out

    def forget_requests(self, request_ids: AbstractSet[str]) -> int:
        """Take the reference rows embedded from ``request_ids``' texts out (an
        erasure); how many went. A fixed baseline left short fills up again from the
        next windows."""
        gone = 0
        if self._reference is not None and request_ids:
            keep = [i for i, r in enumerate(self._reference_ids)
                    if not r or r not in request_ids]  # "": a given baseline's row
            if len(keep) < len(self._reference):
                gone += len(self._reference) - len(keep)
                self._reference = self._reference[keep] if keep else None
                self._reference_ids = [self._reference_ids[i] for i in keep]
                self._frozen = False
        history, history_ids = [], []
        for h, ids in zip(self._history, self._history_ids, strict=True):
            keep = [i for i, r in enumerate(ids) if not r or r not in request_ids]
            gone += len(ids) - len(keep)
            if keep:
                history.append(h[keep])
                history_ids.append([ids[i] for i in keep])
        self._history, self._history_ids = history, history_ids
        return gone

    def _reference_ready(self) -> bool:
        if self._reference is None:
            return False
        return self._frozen or len(self._reference) >= self.reference_size

    def _current_reference(self, rng: np.random.Generator) -> np.ndarray | None:
        if self.reference == "fixed":
            return self._reference
        if not self._history:
            return None
        pool = np.concatenate(self._history)
        if len(pool) > self.reference_size:
            pool = pool[np.sort(rng.choice(len(pool), self.reference_size, replace=False))]
        return pool

    def _embed_sample(
        self, texts: Sequence[str], cap: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, float, list[int]]:
        """Embeddings of at most ``cap`` of ``texts`` (seeded), the share kept, and
        which texts they are (indices into ``texts``)."""
        rate = 1.0
        keep = list(range(len(texts)))
        if len(texts) > cap:
            rate = cap / len(texts)
            keep = [int(i) for i in np.sort(rng.choice(len(texts), cap, replace=False))]
            texts = [texts[i] for i in keep]
        emb = np.asarray(self.embedder.embed(list(texts)), dtype=np.float32)
        return emb, rate, keep
