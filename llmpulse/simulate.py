"""A simulated LLM customer-support application: ``llmpulse simulate``.

The demo, the tests and the benchmarks all drive the same seeded app: a
ticket router (``intent-router``), which classifies each question into an
intent, then an answer model (``gpt-4o-mini`` or a self-hosted
``llama-3.1-8b``) that answers from retrieved help-centre passages. Users
rate a share of the answers later; support agents label the true intent of
a share of the tickets.

Everything is drawn per chunk of event time with numpy, then event dicts are
assembled from precomputed text, so generation alone runs well above 100k
events per second on one core: ``SupportAppSimulator(rate=2000).batches``
measured 140k-185k events/s of CPU time (Python 3.11, shared 2-core machine,
three incidents active).

Scripted incidents change the traffic inside ``[start_s, end_s)`` seconds
after the simulation start, and :meth:`SupportAppSimulator.ground_truth`
says when they happened, in event time, so detection can be scored.

>>> sim = SupportAppSimulator(seed=1, rate=5, start_ts=1_700_000_000.0)
>>> events = list(sim.events(duration_s=60))
>>> [topic for topic, _ in events[:3]]
['llmpulse.inference', 'llmpulse.inference', 'llmpulse.inference']
>>> first = events[0][1]
>>> first["model"], first["prediction"]["label"], first["segment"]
('intent-router', 'account', {'region': 'us', 'language': 'en', 'tier': 'enterprise'})
>>> answer = events[1][1]
>>> answer["model"], answer["model_version"], answer["status"], answer["features"]["n_passages"]
('llama-3.1-8b', 'q4-2', 'ok', 3)
>>> answer["prompt"]
'I hit the storage limit on Free. What are my options? thx'
>>> print(answer["response"])
Sorry for the trouble. On Free you get 10 members and 2 GB of storage; going beyond 10 members requires an upgrade to Business. Is there anything else I can help you with?

Incidents come from strings such as the command line takes:

>>> Incident.parse("segment_quality_drop:30:90:segment=language=de")
Incident(kind='segment_quality_drop', start_s=30.0, end_s=90.0, params={'segment': 'language=de'})
"""

from __future__ import annotations

import argparse
import gc
import heapq
import re
import string
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

import numpy as np

from llmpulse import _sim_data as kb
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE

__all__ = [
    "INCIDENT_KINDS",
    "Incident",
    "MonitorLike",
    "SupportAppSimulator",
    "Truth",
    "configure",
    "run",
    "run_cli",
]

# -- incidents --------------------------------------------------------------

INCIDENT_KINDS: dict[str, dict[str, str]] = {
    "latency_spike": {
        "factor": "4",
        "model": "",
    },
    "prompt_drift": {
        "share": "0.75",
    },
    "segment_quality_drop": {
        "segment": "language=de",
    },
    "hallucination_burst": {
        "share": "0.35",
        "model": "",
    },
    "error_burst": {
        "rate": "0.25",
        "model": "",
    },
    "prompt_rollout": {
        "share": "0.5",
        "refusal": "0.3",
        "model": "",
    },
}
"""Incident kinds and their parameters with defaults (``model`` empty = all
answer models)."""

EXPECTED_SIGNALS: dict[str, tuple[str, ...]] = {
    "latency_spike": ("latency.p95_ms", "latency.p99_ms", "errors.rate"),
    "prompt_drift": ("drift.*",),
    "segment_quality_drop": ("bias.*", "quality.feedback_score", "quality.accuracy"),
    "hallucination_burst": ("hallucination.*", "quality.feedback_score"),
    "error_burst": ("errors.rate",),
    "prompt_rollout": ("ab.*",),
}
"""Signal families each incident kind should move, for scoring detection."""

_SEGMENT_VALUES: dict[str, tuple[str, ...]] = {
    "region": ("eu", "us", "apac", "latam"),
    "language": ("en", "de", "fr", "es", "ja"),
    "tier": ("free", "pro", "enterprise"),
}
_ANSWER_MODELS: tuple[tuple[str, str], ...] = (
    ("gpt-4o-mini", "2024-07-18"),
    ("llama-3.1-8b", "q4-2"),
)
ROUTER_MODEL = ("intent-router", "1")


def _as_float(spec: str, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"incident {spec!r}: {what} {text!r} is not a number") from None
    if value != value:
        raise ValueError(f"incident {spec!r}: {what} must not be NaN")
    return value


@dataclass(frozen=True, slots=True)
class Incident:
    """A scripted problem active from ``start_s`` to ``end_s`` seconds after
    the simulation start.

    ``kind`` is one of :data:`INCIDENT_KINDS`; ``params`` override its
    defaults (all text, as parsed from the command line):

    * ``latency_spike``: ``factor`` (latency multiplier, default 4), ``model``;
      also more timeouts.
    * ``prompt_drift``: ``share`` of requests that move to a new topic
      (developer and compliance questions: longer prompts, weaker retrieval).
    * ``segment_quality_drop``: ``segment`` as ``attribute=value`` (region,
      language or tier); worse answers, more escalations and a less accurate
      router for that segment.
    * ``hallucination_burst``: ``share`` of answers that go wrong in one of
      several ways, about evenly mixed: a changed number or date, an entity
      swap, a flipped negation or condition, an unsupported addition, a
      conflation (a value from another retrieved passage) or a fabricated
      policy (:data:`_HALLUCINATION_KINDS`).
    * ``error_burst``: ``rate`` of answer calls failing, ``model``.

    >>> Incident("latency_spike", 60, 120).param("factor")
    4.0
    >>> Incident("error_burst", 5, 1)
    Traceback (most recent call last):
    ...
    ValueError: incident 'error_burst:5:1': end 1 must be after start 5
    """

    kind: str
    start_s: float
    end_s: float
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_s", float(self.start_s))
        object.__setattr__(self, "end_s", float(self.end_s))
        object.__setattr__(self, "params", dict(self.params))
        spec = self.spec()
        if self.kind not in INCIDENT_KINDS:
            known = ", ".join(INCIDENT_KINDS)
            raise ValueError(f"incident {spec!r}: unknown kind {self.kind!r} (known: {known})")
        if self.start_s < 0:
            raise ValueError(f"incident {spec!r}: start {self.start_s:g} must be >= 0")
        if not self.end_s > self.start_s:
            raise ValueError(
                f"incident {spec!r}: end {self.end_s:g} must be after start {self.start_s:g}"
            )
        allowed = INCIDENT_KINDS[self.kind]
        for key, value in self.params.items():
            if key not in allowed:
                ok = ", ".join(allowed) or "none"
                raise ValueError(
                    f"incident {spec!r}: unknown parameter {key!r} for {self.kind} (known: {ok})"
                )
            self._check(spec, key, value)

    def _check(self, spec: str, key: str, value: str) -> None:
        if key in ("share", "rate", "refusal"):
            x = _as_float(spec, key, value)
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"incident {spec!r}: {key} {value!r} must be within 0..1")
        elif key == "factor":
            x = _as_float(spec, key, value)
            if not x > 0:
                raise ValueError(f"incident {spec!r}: factor {value!r} must be > 0")
        elif key == "model":
            names = [m for m, _ in _ANSWER_MODELS]
            if value and value not in names:
                raise ValueError(
                    f"incident {spec!r}: model {value!r} is not an answer model "
                    f"(known: {', '.join(names)})"
                )
        elif key == "segment":
            attr, sep, val = value.partition("=")
            if not sep or attr not in _SEGMENT_VALUES:
                raise ValueError(
                    f"incident {spec!r}: segment {value!r} must be attribute=value with "
                    f"attribute one of {', '.join(_SEGMENT_VALUES)}"
                )
            if val not in _SEGMENT_VALUES[attr]:
                raise ValueError(
                    f"incident {spec!r}: segment value {val!r} unknown for {attr} "
                    f"(known: {', '.join(_SEGMENT_VALUES[attr])})"
                )

    @classmethod
    def parse(cls, spec: str) -> Incident:
        """``kind:start:end[:key=value]...`` (seconds from simulation start).

        >>> Incident.parse("latency_spike:60:120:factor=6")
        Incident(kind='latency_spike', start_s=60.0, end_s=120.0, params={'factor': '6'})
        >>> Incident.parse("latency_spike:sixty:120")
        Traceback (most recent call last):
        ...
        ValueError: incident 'latency_spike:sixty:120': start 'sixty' is not a number
        """
        parts = spec.strip().split(":")
        if len(parts) < 3 or not parts[0]:
            raise ValueError(
                f"incident {spec!r}: expected kind:start:end[:key=value...], "
                f"e.g. latency_spike:60:120"
            )
        kind = parts[0]
        if kind not in INCIDENT_KINDS:
            known = ", ".join(INCIDENT_KINDS)
            raise ValueError(f"incident {spec!r}: unknown kind {kind!r} (known: {known})")
        start = _as_float(spec, "start", parts[1])
        end = _as_float(spec, "end", parts[2])
        params: dict[str, str] = {}
        for part in parts[3:]:
            key, sep, value = part.partition("=")
            if not sep or not key:
                raise ValueError(f"incident {spec!r}: parameter {part!r} must be key=value")
            params[key] = value
        return cls(kind, start, end, params)

    def spec(self) -> str:
        """The incident as a command-line string (inverse of :meth:`parse`)."""
        extra = "".join(f":{k}={v}" for k, v in self.params.items())
        return f"{self.kind}:{self.start_s:g}:{self.end_s:g}{extra}"

    def param(self, key: str) -> Any:
        """A parameter, typed: floats for numbers, text otherwise."""
        value = self.params.get(key, INCIDENT_KINDS[self.kind][key])
        if key in ("share", "rate", "factor", "refusal"):
            return float(value)
        return value


class Truth(NamedTuple):
    """What really happened to one inference (not part of the event)."""

    intent: str
    hallucinated: bool = False
    change: str = ""
    """One of :data:`_HALLUCINATION_KINDS` when hallucinated: number | date | name |
    negation | condition | claim | conflation | fabricated."""
    refusal: bool = False
    incidents: tuple[str, ...] = ()
    """Kinds of the incidents that affected this request (its segment, its model)."""


# -- knowledge base, compiled once ------------------------------------------

_MARKER = re.compile(r"\[\[(neg|cond):([^|\]]*)\|([^\]]*)\]\]")
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")
_KB_SEED = 20240718
_VARIANTS = 8


def _slots_of(text: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(text) if f]


def _numbers(text: str) -> set[str]:
    return set(_NUMBERS.findall(text))


_HALLUCINATION_KINDS: tuple[str, ...] = (
    "number", "date", "name", "negation", "condition", "claim", "conflation", "fabricated",
)
"""What a hallucinated answer does: changes a number, date or name (entity
swap), flips a negation or a condition, adds an unsupported claim, conflates
a value from another retrieved passage, or states a fabricated policy."""


def _shape(value: str) -> str:
    """A value's form with digits masked: "$18" and "$24" share one, "2 GB" and "14" do not."""
    return re.sub(r"\d+(?:[.,]\d+)*", "0", value)


def _conflations(value: str, passage: str, others: Sequence[Mapping[str, str]]) -> list[str]:
    """Values of the same form from the other retrieved passages that this
    fact's passage does not contain.

    >>> _conflations("$18", "costs $18 or $12", [{"fee": "$25", "days": "30"}, {"price": "$12"}])
    ['$25']
    """
    own = _numbers(passage)
    out = [
        v for vals in others for v in vals.values()
        if _shape(v) == _shape(value) and _numbers(v) and not _numbers(v) <= own
    ]
    return sorted(dict.fromkeys(out))


def _render(template: str, values: Mapping[str, str], flip: int = -1) -> str:
    count = -1

    def pick(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return m.group(3) if count == flip else m.group(2)

    return _MARKER.sub(pick, template).format(**values)


class _KB:
    """Flat tables of texts, indexed by numpy arrays in the hot path."""

    def __init__(self) -> None:
        import random

        rnd = random.Random(_KB_SEED)
        rnd2 = random.Random(_KB_SEED + 1)  # draws added later, kept apart from ``rnd``
        intents = kb.INTENTS
        self.questions: list[str] = []
        self.responses: list[str] = []
        self.change: list[str] = []
        contexts: list[list[str]] = []
        scen_intent: list[int] = []
        q_range: list[tuple[int, int]] = []
        f_range: list[tuple[int, int]] = []
        h_range: list[tuple[int, int]] = []
        claims = kb.CLAIMS
        for intent_id, intent in enumerate(intents):
            facts = [i for i, f in enumerate(kb.FACTS) if f.intent == intent]
            for fi in facts:
                fact = kb.FACTS[fi]
                used = set(_slots_of(fact.passage))
                for t in fact.questions + fact.answers:
                    used.update(_slots_of(_MARKER.sub(r"\2 \3", t)))
                for _ in range(_VARIANTS):
                    values = {s: rnd.choice(kb.SLOTS[s][1]) for s in sorted(used)}
                    passage = fact.passage.format(**values)
                    others = [j for j in range(len(kb.FACTS)) if j != fi]
                    same = [j for j in others if kb.FACTS[j].intent == intent]
                    n_more = rnd.choice((1, 1, 2, 2, 3))
                    pool = same + rnd.sample(others, 3)
                    picked = rnd.sample(pool, min(n_more, len(pool)))
                    filled = [self._random_passage(rnd, j) for j in dict.fromkeys(picked)]
                    ctx = [text for text, _ in filled]
                    other_values = [v for _, v in filled]
                    ctx.insert(rnd.randrange(len(ctx) + 1), passage)
                    whole = " ".join(ctx)
                    contexts.append(ctx)
                    scen_intent.append(intent_id)
                    q0 = len(self.questions)
                    self.questions.extend(q.format(**values) for q in fact.questions)
                    q_range.append((q0, len(self.questions) - q0))
                    r0 = len(self.responses)
                    for a in fact.answers:
                        self._add(_render(a, values), "")
                    self._add(f"According to our help centre: {passage}", "")
                    f_range.append((r0, len(self.responses) - r0))
                    h0 = len(self.responses)
                    # every way this answer can go wrong, by kind; drawn from
                    # ``rnd`` exactly as before, so the rest of the KB is unchanged
                    wrong: dict[str, list[str]] = {}
                    for a in fact.answers:
                        good = _render(a, values)
                        for slot in sorted(set(_slots_of(_MARKER.sub(r"\2", a)))):
                            kind, choices = kb.SLOTS[slot]
                            alts = [
                                c
                                for c in choices
                                if c != values[slot]
                                and (
                                    c not in whole
                                    if kind == "name"
                                    else not _numbers(c) <= _numbers(whole)
                                )
                            ]
                            if alts:
                                changed = dict(values, **{slot: rnd.choice(alts)})
                                wrong.setdefault(kind, []).append(_render(a, changed))
                            # conflation: a value of another retrieved passage
                            # (it is in the context, but about something else)
                            if kind == "number":
                                mixed = _conflations(values[slot], passage, other_values)
                                if mixed:
                                    changed = dict(values, **{slot: rnd2.choice(mixed)})
                                    wrong.setdefault("conflation", []).append(_render(a, changed))
                        markers = _MARKER.findall(a)
                        for k, (mkind, _, _) in enumerate(markers):
                            wrong.setdefault("negation" if mkind == "neg" else "condition", []).append(
                                _render(a, values, flip=k)
                            )
                        wrong.setdefault("claim", []).append(f"{good} {rnd.choice(claims[intent])}")
                    wrong["fabricated"] = list(kb.FABRICATED[intent])
                    # at most two of each kind, so no kind dominates the mix
                    for kind in _HALLUCINATION_KINDS:
                        texts = wrong.get(kind, [])
                        for text in rnd2.sample(texts, min(2, len(texts))):
                            self._add(text, kind)
                    h_range.append((h0, len(self.responses) - h0))
        self.refusal0 = len(self.responses)
        for text in kb.REFUSALS:
            self._add(text, "")
        self.n_refusals = len(kb.REFUSALS)
        self.contexts = contexts
        self.scen_intent = np.asarray(scen_intent)
        self.ctx_chars = np.asarray([sum(len(p) for p in c) for c in contexts])
        self.n_passages = np.asarray([len(c) for c in contexts])
        self.q_start, self.q_count = (np.asarray(x) for x in zip(*q_range, strict=True))
        self.f_start, self.f_count = (np.asarray(x) for x in zip(*f_range, strict=True))
        self.h_start, self.h_count = (np.asarray(x) for x in zip(*h_range, strict=True))
        self.resp_len = np.asarray([len(r) for r in self.responses])
        order = self.scen_intent
        self.i_start = np.searchsorted(order, np.arange(len(intents)))
        self.i_count = np.bincount(order, minlength=len(intents))
        self.opener_len = np.asarray([len(p) for p in kb.OPENERS])
        self.closer_len = np.asarray([len(p) for p in kb.CLOSERS])
        self.prefix_len = np.asarray([len(p) for p in kb.PREFIXES])
        self.suffix_len = np.asarray([len(s) for s in kb.SUFFIXES])
        self.q_len = np.asarray([len(q) for q in self.questions])

    def _add(self, text: str, change: str) -> None:
        self.responses.append(text)
        self.change.append(change)

    @staticmethod
    def _random_passage(rnd: Any, fi: int) -> tuple[str, dict[str, str]]:
        fact = kb.FACTS[fi]
        values = {s: rnd.choice(kb.SLOTS[s][1]) for s in _slots_of(fact.passage)}
        return fact.passage.format(**values), values


@lru_cache(maxsize=1)
def _kb() -> _KB:
    return _KB()


# -- the traffic model --------------------------------------------------------

_REGION_P = np.array([0.38, 0.34, 0.18, 0.10])
# language given region (rows: eu, us, apac, latam; columns as _SEGMENT_VALUES)
_LANG_P = np.array(
    [
        [0.40, 0.30, 0.18, 0.12, 0.00],
        [0.86, 0.00, 0.00, 0.14, 0.00],
        [0.68, 0.00, 0.00, 0.00, 0.32],
        [0.22, 0.00, 0.00, 0.78, 0.00],
    ]
)
_TIER_P = np.array([0.6, 0.3, 0.1])
_LLAMA_SHARE = 0.25
# per answer model: ttft median ms, ms per output token, $ per input token, $ per output token,
# base hallucination rate
_MODEL_TTFT = np.array([320.0, 170.0])
_MODEL_MS_PER_TOKEN = np.array([13.0, 24.0])
_MODEL_PRICE_IN = np.array([0.15e-6, 0.03e-6])
_MODEL_PRICE_OUT = np.array([0.60e-6, 0.06e-6])
_MODEL_HALLUCINATION = np.array([0.02, 0.05])
_SYSTEM_TOKENS = 210
_TAIL_SHARE = 0.03
_TIMEOUT_MS = 30_000.0
_BASE_TIMEOUT = 0.002
_BASE_ERROR = 0.006
_ROUTER_ERROR = 0.001
_BASE_REFUSAL = 0.015
_ROUTER_ACCURACY = 0.92
_N_LOGPROBS = 8
_ERROR_TYPES = ("rate_limit", "server_error", "content_filter", "context_length_exceeded")
_ERROR_P = np.array([0.4, 0.35, 0.15, 0.10])
_BURST_ERROR_P = np.array([0.3, 0.7, 0.0, 0.0])
_COMMENT_SHARE = 0.12
_FLAG_HALLUCINATED = 0.45
_FLAG_FAITHFUL = 0.01


def _pick(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    return np.searchsorted(np.cumsum(p), rng.random(n) * p.sum(), side="right")


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` random version-4 UUID strings, formatted in one numpy pass."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    chars = np.full((n, 36), ord("-"), dtype=np.uint8)
    chars[:, _UUID_DIGITS] = _HEX[nibbles]
    text = chars.tobytes().decode("ascii")
    return [text[o : o + 36] for o in range(0, 36 * n, 36)]


def _request_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` ids ``req_`` + 16 hex digits."""
    nibbles = rng.integers(0, 16, (n, 16), dtype=np.uint8)
    chars = np.empty((n, 20), dtype=np.uint8)
    chars[:, :4] = np.frombuffer(b"req_", dtype=np.uint8)
    chars[:, 4:] = _HEX[nibbles]
    text = chars.tobytes().decode("ascii")
    return [text[o : o + 20] for o in range(0, 20 * n, 20)]


Item = tuple[str, dict[str, Any]]
LabelledItem = tuple[str, dict[str, Any], "Truth | None"]


class SupportAppSimulator:
    """A seeded customer-support LLM app emitting ``inference/v1`` and
    ``feedback/v1`` events in event-time order.

    ``rate`` is user requests per second (Poisson); each request yields a
    router inference and an answer inference, and with probability
    ``feedback_share`` each gets a feedback event ``feedback_delay_s``
    (median, log-normal, 1 s to 15 min) later. Feedback that would land after
    the simulated duration is not emitted. The stream is a function of
    ``seed``, ``start_ts`` (epoch seconds, default now), the configuration and
    ``chunk_s``; IDs also depend on ``start_ts`` so that two runs never share
    an ``event_id``.

    >>> sim = SupportAppSimulator(seed=3, rate=50, start_ts=1_700_000_000.0,
    ...     incidents=[Incident("latency_spike", 10, 20)])
    >>> batches = list(sim.batches(duration_s=30))
    >>> len(batches), sum(len(b) for b in batches)
    (30, 3310)
    >>> sim.ground_truth()[0]["start_ts"], sim.ground_truth()[0]["end_ts"]
    (1700000010.0, 1700000020.0)
    """

    def __init__(
        self,
        seed: int = 0,
        rate: float = 200.0,
        incidents: Sequence[Incident] = (),
        start_ts: float | None = None,
        feedback_share: float = 0.3,
        feedback_delay_s: float = 20.0,
        app: str = "support-assistant",
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
        if not 0.0 <= feedback_share <= 1.0:
            raise ValueError(f"feedback_share must be within 0..1, got {feedback_share!r}")
        if not feedback_delay_s > 0:
            raise ValueError(f"feedback_delay_s must be > 0, got {feedback_delay_s!r}")
        self.seed = seed
        self.rate = float(rate)
        self.incidents = tuple(incidents)
        self.start_ts = time.time() if start_ts is None else float(start_ts)
        self.feedback_share = float(feedback_share)
        self.feedback_delay_s = float(feedback_delay_s)
        self.app = app
        self._kb = _kb()

    # -- public -------------------------------------------------------------

    def ground_truth(self) -> list[dict[str, Any]]:
        """The scripted incidents in event time (epoch seconds), for scoring."""
        out = []
        for inc in self.incidents:
            model = inc.params.get("model", "")
            if inc.kind in ("prompt_drift", "segment_quality_drop"):
                models = [*_ANSWER_MODELS, ROUTER_MODEL]
            else:
                models = [m for m in _ANSWER_MODELS if not model or m[0] == model]
            out.append(
                {
                    "kind": inc.kind,
                    "spec": inc.spec(),
                    "start_s": inc.start_s,
                    "end_s": inc.end_s,
                    "start_ts": self.start_ts + inc.start_s,
                    "end_ts": self.start_ts + inc.end_s,
                    "params": {k: inc.param(k) for k in INCIDENT_KINDS[inc.kind]},
                    "models": [list(m) for m in models],
                    "signals": list(EXPECTED_SIGNALS[inc.kind]),
                }
            )
        return out

    def events(self, duration_s: float) -> Iterator[Item]:
        """``(topic, event)`` pairs in event-time order."""
        for batch in self.batches(duration_s):
            yield from batch

    def labelled_events(self, duration_s: float) -> Iterator[LabelledItem]:
        """``(topic, event, truth)``: :class:`Truth` for inferences, None for feedback.

        The same events as :meth:`events`, with what really happened to each:

        >>> sim = SupportAppSimulator(seed=2, rate=20, start_ts=1_700_000_000.0,
        ...     incidents=[Incident("hallucination_burst", 0, 60, {"share": "1"})])
        >>> ev, truth = next((ev, t) for _, ev, t in sim.labelled_events(60)
        ...                  if t is not None and t.change == "number")
        >>> truth
        Truth(intent='integration', hallucinated=True, change='number', refusal=False, incidents=('hallucination_burst',))
        >>> print(ev["context"][1])
        Webhooks are retried 8 times with exponential backoff over 48 hours. Endpoints must respond within 15 seconds with a 2xx status, otherwise the delivery counts as failed. Webhook payloads are signed with HMAC-SHA256.
        >>> print(ev["response"])
        Failed webhook deliveries are retried 8 times with exponential backoff over 72 hours. Your endpoint has to answer with a 2xx within 15 seconds or the attempt counts as failed. Payloads are signed with HMAC-SHA256, so verify the signature header. Let me know if you have any other questions.
        """
        for batch in self._chunks(duration_s, 1.0, labelled=True):
            yield from batch

    def batches(self, duration_s: float, chunk_s: float = 1.0) -> Iterator[list[Item]]:
        """One list of ``(topic, event)`` per ``chunk_s`` of event time."""
        return self._chunks(duration_s, chunk_s, labelled=False)

    # -- generation -----------------------------------------------------------

    def _chunks(self, duration_s: float, chunk_s: float, *, labelled: bool) -> Iterator[list[Any]]:
        if not chunk_s > 0:
            raise ValueError(f"chunk_s must be > 0, got {chunk_s!r}")
        rng = np.random.default_rng(self.seed)
        start_ms = int(round(self.start_ts * 1000))
        ids = np.random.default_rng([self.seed & 0xFFFFFFFF, start_ms])
        pending: list[tuple[int, int, Any]] = []  # (ts, seq, item) beyond the chunk
        seq = 0
        n_chunks = int(np.ceil(duration_s / chunk_s))
        for c in range(n_chunks):
            t0 = c * chunk_s
            t1 = min(duration_s, t0 + chunk_s)
            end_ms = start_ms + int(round(t1 * 1000))
            # Building ~10^5 dicts a second makes the cyclic collector run
            # constantly for nothing (no cycles are created): pause it.
            gc_was_on = gc.isenabled()
            gc.disable()
            try:
                items, keys, later = self._chunk(rng, ids, t0, t1, start_ms, labelled)
                for ts, item in later:
                    seq += 1
                    heapq.heappush(pending, (ts, seq, item))
                due_keys = []
                while pending and pending[0][0] < end_ms:
                    ts, _, item = heapq.heappop(pending)
                    items.append(item)
                    due_keys.append(ts)
                if due_keys:
                    keys = np.concatenate([keys, np.asarray(due_keys, dtype=np.int64)])
                order = np.argsort(keys, kind="stable")
                split = int(np.searchsorted(keys[order], end_ms))
                for i in order[split:].tolist():
                    seq += 1
                    heapq.heappush(pending, (int(keys[i]), seq, items[i]))
                out = [items[i] for i in order[:split].tolist()]
            finally:
                if gc_was_on:
                    gc.enable()
            yield out

    def _active(self, t: np.ndarray) -> list[tuple[int, Incident, np.ndarray]]:
        return [
            (bit, inc, (t >= inc.start_s) & (t < inc.end_s))
            for bit, inc in enumerate(self.incidents)
            if inc.start_s <= t[-1] and inc.end_s > t[0]
        ]

    def _chunk(
        self,
        rng: np.random.Generator,
        ids: np.random.Generator,
        t0: float,
        t1: float,
        start_ms: int,
        labelled: bool,
    ) -> tuple[list[Any], np.ndarray, list[tuple[int, Any]]]:
        """Items of requests arriving in ``[t0, t1)`` with their event times
        (router then answer, per request), and feedback items due later."""
        n = int(rng.poisson(self.rate * (t1 - t0)))
        if n == 0:
            return [], np.zeros(0, dtype=np.int64), []
        d = _draw(rng, n, t0, t1, self.feedback_share, self.feedback_delay_s)
        fx = _Effects.quiet(n, d.model)
        segments = {"region": d.region, "language": d.language, "tier": d.tier}
        for bit, inc, on in self._active(d.t):
            fx.apply(bit, inc, on, d.model, segments)
        c = _content(self._kb, d, fx)
        a = _answers(self._kb, d, fx, c)
        r = _routing(d, fx, c.intent)
        f = _feedback(d, fx, a)
        kinds = [inc.kind for inc in self.incidents]
        return _assemble(self._kb, self.app, kinds, labelled, ids, start_ms, d, fx, c, a, r, f)


# -- one chunk of requests, step by step ------------------------------------------
#
# The random draws come first, all of them and always in the same order, so that
# an incident changes what the draws mean and never which numbers are drawn: the
# traffic outside an incident's window is the same with and without it.


@dataclass(frozen=True, slots=True)
class _Draws:
    """Every random number one chunk of ``n`` requests uses, one array per use."""

    t: np.ndarray
    region: np.ndarray
    language: np.ndarray
    tier: np.ndarray
    model: np.ndarray
    u_drift: np.ndarray
    u_intent: np.ndarray
    u_scen: np.ndarray
    u_q: np.ndarray
    prefix: np.ndarray
    suffix: np.ndarray
    opener: np.ndarray
    closer: np.ndarray
    turn: np.ndarray
    retrieval: np.ndarray
    u_refuse: np.ndarray
    u_halluc: np.ndarray
    u_hpick: np.ndarray
    u_fpick: np.ndarray
    u_error: np.ndarray
    u_timeout: np.ndarray
    error_kind: np.ndarray
    burst_kind: np.ndarray
    ttft: np.ndarray
    per_token: np.ndarray
    out_noise: np.ndarray
    tail: np.ndarray
    err_latency: np.ndarray
    router_latency: np.ndarray
    u_router: np.ndarray
    u_router_err: np.ndarray
    wrong_shift: np.ndarray
    score_ok: np.ndarray
    score_wrong: np.ndarray
    logprob: np.ndarray
    fb_answer: np.ndarray
    fb_router: np.ndarray
    delay_a: np.ndarray
    delay_r: np.ndarray
    fb_noise: np.ndarray
    u_flag: np.ndarray
    u_comment: np.ndarray
    comment_pick: np.ndarray


def _draw(
    rng: np.random.Generator,
    n: int,
    t0: float,
    t1: float,
    feedback_share: float,
    feedback_delay_s: float,
) -> _Draws:
    """The draws of ``n`` requests arriving in ``[t0, t1)`` (the order is the stream)."""
    t = np.sort(rng.uniform(t0, t1, n))
    region = _pick(rng, _REGION_P, n)
    cum = np.cumsum(_LANG_P, axis=1)[region]
    language = (rng.random(n)[:, None] >= cum).sum(axis=1)
    tier = _pick(rng, _TIER_P, n)
    model = (rng.random(n) < _LLAMA_SHARE).astype(np.int64)
    u_drift = rng.random(n)
    u_intent = rng.random(n)
    u_scen = rng.random(n)
    u_q = rng.random(n)
    prefix = rng.integers(0, len(kb.PREFIXES), n)
    suffix = rng.integers(0, len(kb.SUFFIXES), n)
    opener = rng.integers(0, len(kb.OPENERS), n)
    closer = rng.integers(0, len(kb.CLOSERS), n)
    turn = np.minimum(rng.geometric(0.6, n), 8)
    retrieval = rng.normal(0.78, 0.06, n)
    u_refuse = rng.random(n)
    u_halluc = rng.random(n)
    u_hpick = rng.random(n)
    u_fpick = rng.random(n)
    u_error = rng.random(n)
    u_timeout = rng.random(n)
    error_kind = _pick(rng, _ERROR_P, n)
    burst_kind = _pick(rng, _BURST_ERROR_P, n)
    ttft = rng.lognormal(0.0, 0.35, n)
    per_token = rng.lognormal(0.0, 0.15, n)
    out_noise = rng.lognormal(0.0, 0.12, n)
    tail = np.where(rng.random(n) < _TAIL_SHARE, 1.0 + 2.0 * rng.pareto(1.5, n), 1.0)
    err_latency = rng.lognormal(np.log(380.0), 0.6, n)
    router_latency = rng.lognormal(np.log(14.0), 0.35, n)
    u_router = rng.random(n)
    u_router_err = rng.random(n)
    wrong_shift = rng.integers(1, len(kb.INTENTS), n)
    score_ok = rng.beta(9.0, 1.6, n)
    score_wrong = rng.beta(3.0, 3.0, n)
    logprob = -rng.exponential(1.0, (n, _N_LOGPROBS))
    fb_answer = rng.random(n) < feedback_share
    fb_router = rng.random(n) < feedback_share
    delay_a = np.clip(rng.lognormal(np.log(feedback_delay_s), 1.0, n), 1.0, 900.0)
    delay_r = np.clip(rng.lognormal(np.log(feedback_delay_s), 1.0, n), 1.0, 900.0)
    fb_noise = rng.normal(0.0, 1.0, n)
    u_flag = rng.random(n)
    u_comment = rng.random(n)
    comment_pick = rng.integers(0, 1 << 30, n)
    return _Draws(
        t, region, language, tier, model, u_drift, u_intent, u_scen, u_q, prefix, suffix,
        opener, closer, turn, retrieval, u_refuse, u_halluc, u_hpick, u_fpick, u_error,
        u_timeout, error_kind, burst_kind, ttft, per_token, out_noise, tail, err_latency,
        router_latency, u_router, u_router_err, wrong_shift, score_ok, score_wrong, logprob,
        fb_answer, fb_router, delay_a, delay_r, fb_noise, u_flag, u_comment, comment_pick,
    )  # fmt: skip


@dataclass(slots=True)
class _Effects:
    """What the active incidents do to each request of a chunk (quiet = nothing)."""

    n: int
    drift_share: np.ndarray
    latency_factor: np.ndarray
    extra_timeout: np.ndarray
    halluc_p: np.ndarray
    error_p: np.ndarray
    burst: np.ndarray
    seg_drop: np.ndarray
    rollout: np.ndarray
    rollout_b: np.ndarray
    rollout_refusal: np.ndarray
    flags: np.ndarray  # bit i set: incident i applies to the request

    @classmethod
    def quiet(cls, n: int, model: np.ndarray) -> _Effects:
        return cls(
            n=n,
            drift_share=np.zeros(n),
            latency_factor=np.ones(n),
            extra_timeout=np.zeros(n),
            halluc_p=_MODEL_HALLUCINATION[model],
            error_p=np.full(n, _BASE_ERROR),
            burst=np.zeros(n, dtype=bool),
            seg_drop=np.zeros(n, dtype=bool),
            rollout=np.zeros(n, dtype=bool),
            rollout_b=np.zeros(n, dtype=bool),
            rollout_refusal=np.zeros(n),
            flags=np.zeros(n, dtype=np.int64),
        )

    def apply(
        self,
        bit: int,
        inc: Incident,
        on: np.ndarray,
        model: np.ndarray,
        segments: Mapping[str, np.ndarray],
    ) -> None:
        """Apply incident number ``bit``, active on the mask ``on`` (before targeting)."""
        target = inc.params.get("model", "")
        if target:
            on = on & (model == [m for m, _ in _ANSWER_MODELS].index(target))
        if inc.kind == "segment_quality_drop":
            attr, _, val = inc.param("segment").partition("=")
            on = on & (segments[attr] == _SEGMENT_VALUES[attr].index(val))
        self.flags |= on.astype(np.int64) << bit
        _INCIDENT_EFFECTS[inc.kind](self, inc, on)


def _latency_spike(fx: _Effects, inc: Incident, on: np.ndarray) -> None:
    fx.latency_factor = np.where(on, fx.latency_factor * inc.param("factor"), fx.latency_factor)
    fx.extra_timeout = np.where(on, 0.03, fx.extra_timeout)


def _prompt_drift(fx: _Effects, inc: Incident, on: np.ndarray) -> None:
    fx.drift_share = np.where(on, inc.param("share"), fx.drift_share)


def _segment_quality_drop(fx: _Effects, inc: Incident, on: np.ndarray) -> None:
    fx.seg_drop |= on


def _hallucination_burst(fx: _Effects, inc: Incident, on: np.ndarray) -> None:
    fx.halluc_p = np.where(on, np.maximum(fx.halluc_p, inc.param("share")), fx.halluc_p)


def _error_burst(fx: _Effects, inc: Incident, on: np.ndarray) -> None:
    fx.error_p = np.where(on, np.maximum(fx.error_p, inc.param("rate")), fx.error_p)
    fx.burst |= on


def _prompt_rollout(fx: _Effects, inc: Incident, on: np.ndarray) -> None:
    # arms by a low-discrepancy sequence over the chunk: no random draw, so
    # the rest of the traffic is the same as without the incident
    b = on & ((np.arange(fx.n) * 0.6180339887) % 1.0 < inc.param("share"))
    fx.rollout |= on
    fx.rollout_b |= b
    fx.rollout_refusal = np.where(b, inc.param("refusal"), fx.rollout_refusal)


_INCIDENT_EFFECTS: dict[str, Callable[[_Effects, Incident, np.ndarray], None]] = {
    "latency_spike": _latency_spike,
    "prompt_drift": _prompt_drift,
    "segment_quality_drop": _segment_quality_drop,
    "hallucination_burst": _hallucination_burst,
    "error_burst": _error_burst,
    "prompt_rollout": _prompt_rollout,
}


class _Content(NamedTuple):
    """What each request asks: intent, scenario, question, prompt size."""

    intent: np.ndarray
    scen: np.ndarray
    qi: np.ndarray
    retrieval: np.ndarray
    prompt_chars: np.ndarray
    in_tokens: np.ndarray


def _content(k: _KB, d: _Draws, fx: _Effects) -> _Content:
    drifted = d.u_drift < fx.drift_share
    intent = np.where(
        drifted,
        _pick_u(d.u_intent, kb.DRIFT_INTENT_MIX),
        _pick_u(d.u_intent, kb.BASE_INTENT_MIX),
    )
    scen = k.i_start[intent] + (d.u_scen * k.i_count[intent]).astype(np.int64)
    qi = k.q_start[scen] + (d.u_q * k.q_count[scen]).astype(np.int64)
    retrieval = np.clip(np.where(drifted, d.retrieval - 0.16, d.retrieval), 0.05, 0.99)
    prompt_chars = k.prefix_len[d.prefix] + k.q_len[qi] + k.suffix_len[d.suffix]
    in_tokens = _SYSTEM_TOKENS + (prompt_chars + k.ctx_chars[scen]) // 4 + 40 * (d.turn - 1)
    return _Content(intent, scen, qi, retrieval, prompt_chars, in_tokens)


class _Answers(NamedTuple):
    """How each answer call went: outcome, chosen response, tokens, latency, cost."""

    is_error: np.ndarray
    ok: np.ndarray
    refused: np.ndarray
    halluc: np.ndarray
    resp: np.ndarray
    out_tokens: np.ndarray
    latency: np.ndarray
    ttft_ms: np.ndarray
    cost: np.ndarray
    etype: np.ndarray
    logprob: np.ndarray


def _answers(k: _KB, d: _Draws, fx: _Effects, c: _Content) -> _Answers:
    model = d.model
    is_error = d.u_error < fx.error_p
    is_timeout = ~is_error & (d.u_timeout < _BASE_TIMEOUT + fx.extra_timeout)
    refusal_p = np.where(fx.seg_drop, 0.3, _BASE_REFUSAL)
    refusal_p = np.maximum(refusal_p, fx.rollout_refusal)
    refused = ~is_error & (d.u_refuse < refusal_p)
    halluc = ~is_error & ~refused & (d.u_halluc < fx.halluc_p)
    resp = np.where(
        halluc,
        k.h_start[c.scen] + (d.u_hpick * k.h_count[c.scen]).astype(np.int64),
        k.f_start[c.scen] + (d.u_fpick * k.f_count[c.scen]).astype(np.int64),
    )
    resp = np.where(refused, k.refusal0 + (d.u_hpick * k.n_refusals).astype(np.int64), resp)
    resp_chars = k.resp_len[resp] + np.where(
        refused, 0, k.opener_len[d.opener] + k.closer_len[d.closer]
    )
    out_tokens = np.maximum(1, (resp_chars / 4.0 * d.out_noise).astype(np.int64))

    ttft_ms = _MODEL_TTFT[model] * d.ttft * fx.latency_factor
    latency = ttft_ms + out_tokens * _MODEL_MS_PER_TOKEN[model] * d.per_token * fx.latency_factor
    latency = latency * d.tail
    is_timeout |= ~is_error & (latency >= _TIMEOUT_MS)
    latency = np.where(is_timeout, _TIMEOUT_MS, latency)
    latency = np.where(is_error, d.err_latency, latency)
    ok = ~is_error & ~is_timeout
    out_tokens = np.where(ok, out_tokens, 0)
    cost = np.where(
        is_error,
        0.0,
        c.in_tokens * _MODEL_PRICE_IN[model] + out_tokens * _MODEL_PRICE_OUT[model],
    )
    etype = np.where(fx.burst & is_error, d.burst_kind, d.error_kind)
    logprob = d.logprob * np.where(halluc, 0.55, 0.12)[:, None]
    return _Answers(
        is_error, ok, refused, halluc, resp, out_tokens, latency, ttft_ms, cost, etype, logprob
    )


class _Routing(NamedTuple):
    """The intent router's call per request."""

    predicted: np.ndarray
    score: np.ndarray
    error: np.ndarray


def _routing(d: _Draws, fx: _Effects, intent: np.ndarray) -> _Routing:
    router_acc = np.where(fx.seg_drop, 0.55, _ROUTER_ACCURACY)
    router_ok = d.u_router < router_acc
    predicted = np.where(router_ok, intent, (intent + d.wrong_shift) % len(kb.INTENTS))
    score = np.where(router_ok, d.score_ok, d.score_wrong)
    return _Routing(predicted, score, d.u_router_err < _ROUTER_ERROR)


class _Feedback(NamedTuple):
    """What a user who gives feedback on the answer says."""

    score: np.ndarray
    flagged: np.ndarray
    has_comment: np.ndarray


def _feedback(d: _Draws, fx: _Effects, a: _Answers) -> _Feedback:
    quality = np.where(
        ~a.ok,
        -0.6,
        np.where(a.halluc, -0.2, np.where(a.refused, -0.3, 0.6)),
    ) - np.where(fx.seg_drop & ~a.refused, 0.6, 0.0)
    score = np.clip(quality + d.fb_noise * np.where(a.ok, 0.3, 0.25), -1.0, 1.0)
    flagged = d.u_flag < np.where(a.halluc, _FLAG_HALLUCINATED, _FLAG_FAITHFUL)
    has_comment = d.u_comment < np.where(flagged, 0.4, _COMMENT_SHARE)
    return _Feedback(score, flagged, has_comment)


def _comment_pool(is_ok: bool, flagged: bool, score: float) -> Sequence[str]:
    if not is_ok:
        return kb.COMMENTS_ERROR
    if flagged:
        return kb.COMMENTS_HALLUCINATION
    return kb.COMMENTS_GOOD if score >= 0.2 else kb.COMMENTS_BAD


def _router_event(
    event_id: str,
    request_id: str,
    ts: int,
    app: str,
    latency_ms: float,
    in_tokens: int,
    prompt: str,
    segment: dict[str, str],
    prompt_chars: int,
    turn: int,
    error: bool,
    label: str,
    score: float,
) -> dict[str, Any]:
    """The intent router's inference (request id ``<request>-route``)."""
    r_model, r_version = ROUTER_MODEL
    rev: dict[str, Any] = {
        "event_id": event_id,
        "request_id": request_id + "-route",
        "ts": ts,
        "app": app,
        "model": r_model,
        "model_version": r_version,
        "latency_ms": latency_ms,
        "status": "ok",
        "input_tokens": in_tokens - _SYSTEM_TOKENS,
        "output_tokens": 1,
        "prompt": prompt,
        "segment": segment,
        "features": {"prompt_chars": prompt_chars, "turn": turn},
    }
    if error:
        rev["status"] = "error"
        rev["error_type"] = "server_error"
        rev["output_tokens"] = 0
    else:
        rev["prediction"] = {"label": label, "score": score}
    return rev


def _set_arm(aev: dict[str, Any], b_arm: bool) -> None:
    """Mark an answer as served by arm A or B of the prompt rollout."""
    aev["experiment"] = "prompt-rollout"
    aev["variant"] = "B" if b_arm else "A"
    aev["prompt_version"] = "v2" if b_arm else "v1"


def _set_answered(aev: dict[str, Any], ttft_ms: float, response: str, logprobs: list[float]) -> None:
    """The fields only a successful answer has."""
    aev["ttft_ms"] = ttft_ms
    aev["response"] = response
    aev["token_logprobs"] = logprobs


def _answer_feedback(
    event_id: str, request_id: str, ts: int, app: str, score: float, flagged: bool
) -> dict[str, Any]:
    """A user's rating of an answer (and whether they flagged it as made up)."""
    return {
        "event_id": event_id,
        "request_id": request_id,
        "ts": ts,
        "app": app,
        "score": score,
        "hallucination": flagged,
    }


def _assemble(
    k: _KB,
    app: str,
    kinds: Sequence[str],
    labelled: bool,
    ids: np.random.Generator,
    start_ms: int,
    d: _Draws,
    fx: _Effects,
    c: _Content,
    a: _Answers,
    rt: _Routing,
    f: _Feedback,
) -> tuple[list[Any], np.ndarray, list[tuple[int, Any]]]:
    """The events of one chunk: router and answer inferences now, feedback later."""
    n = len(d.t)
    n_fb_a = int(d.fb_answer.sum())
    n_fb_r = int(d.fb_router.sum())
    uu = _uuids(ids, 2 * n + n_fb_a + n_fb_r)
    rids = _request_ids(ids, n)
    ts_ms = (start_ms + np.floor(d.t * 1000)).astype(np.int64)
    router_ms = np.round(d.router_latency, 2)
    ans_ts_ms = (ts_ms + np.ceil(router_ms)).astype(np.int64)
    ans_ts = ans_ts_ms.tolist()
    ts_list = ts_ms.tolist()

    questions = k.questions
    responses = k.responses
    contexts = k.contexts
    prefixes = kb.PREFIXES
    openers = kb.OPENERS
    closers = kb.CLOSERS
    suffixes = kb.SUFFIXES
    regions = _SEGMENT_VALUES["region"]
    languages = _SEGMENT_VALUES["language"]
    tiers = _SEGMENT_VALUES["tier"]
    intents = kb.INTENTS
    models = _ANSWER_MODELS

    now: list[Any] = []
    later: list[tuple[int, Any]] = []
    cols = zip(
        ts_list,
        ans_ts,
        rids,
        d.region.tolist(),
        d.language.tolist(),
        d.tier.tolist(),
        d.model.tolist(),
        c.intent.tolist(),
        c.scen.tolist(),
        c.qi.tolist(),
        d.prefix.tolist(),
        d.suffix.tolist(),
        d.opener.tolist(),
        d.closer.tolist(),
        a.resp.tolist(),
        c.in_tokens.tolist(),
        a.out_tokens.tolist(),
        c.prompt_chars.tolist(),
        np.round(c.retrieval, 3).tolist(),
        d.turn.tolist(),
        np.round(a.latency, 2).tolist(),
        np.round(np.minimum(a.ttft_ms, a.latency), 2).tolist(),
        a.ok.tolist(),
        a.is_error.tolist(),
        a.etype.tolist(),
        np.round(a.cost, 8).tolist(),
        np.round(a.logprob, 4).tolist(),
        router_ms.tolist(),
        rt.predicted.tolist(),
        np.round(rt.score, 4).tolist(),
        rt.error.tolist(),
        strict=True,
    )
    fb_a_list = d.fb_answer.tolist()
    fb_r_list = d.fb_router.tolist()
    fb_a_ts = (ans_ts_ms + np.round(d.delay_a * 1000)).astype(np.int64).tolist()
    fb_r_ts = (ts_ms + np.round(d.delay_r * 1000)).astype(np.int64).tolist()
    fb_score_l = np.round(f.score, 2).tolist()
    flagged_l = f.flagged.tolist()
    comment_l = f.has_comment.tolist()
    comment_pick_l = d.comment_pick.tolist()
    refused_l = a.refused.tolist()
    halluc_l = a.halluc.tolist()
    flags_l = fx.flags.tolist()
    rollout_l = fx.rollout.tolist()
    rollout_b_l = fx.rollout_b.tolist()
    change = k.change
    u = 0
    for i, (
        ts,
        ats,
        rid,
        rg,
        lg,
        tr,
        m,
        it,
        sc,
        q,
        pf,
        sf,
        op,
        cl,
        r,
        tin,
        tout,
        pchars,
        ret,
        trn,
        lat,
        tt,
        is_ok,
        is_err,
        et,
        cst,
        lp,
        rlat,
        pred,
        rscore,
        rerr,
    ) in enumerate(cols):
        prompt = prefixes[pf] + questions[q] + suffixes[sf]
        seg = {"region": regions[rg], "language": languages[lg], "tier": tiers[tr]}
        rev = _router_event(
            uu[u], rid, ts, app, rlat, tin, prompt, seg, pchars, trn, rerr, intents[pred], rscore
        )
        mname, mver = models[m]
        aev: dict[str, Any] = {
            "event_id": uu[u + 1],
            "request_id": rid,
            "ts": ats,
            "app": app,
            "model": mname,
            "model_version": mver,
            "latency_ms": lat,
            "status": "ok",
            "input_tokens": tin,
            "output_tokens": tout,
            "cost_usd": cst,
            "prompt": prompt,
            "context": list(contexts[sc]),
            "segment": dict(seg),
            "features": {
                "prompt_chars": pchars,
                "n_passages": len(contexts[sc]),
                "retrieval_score": ret,
                "turn": trn,
            },
        }
        u += 2
        if rollout_l[i]:
            _set_arm(aev, rollout_b_l[i])
        if is_ok:
            response = responses[r] if refused_l[i] else openers[op] + responses[r] + closers[cl]
            _set_answered(aev, tt, response, lp)
        elif is_err:
            aev["status"] = "error"
            aev["error_type"] = _ERROR_TYPES[et]
        else:
            aev["status"] = "timeout"
        if labelled:
            active = tuple(kinds[b] for b in range(len(kinds)) if flags_l[i] >> b & 1)
            h = halluc_l[i] and is_ok
            now.append((TOPIC_INFERENCE, rev, Truth(intents[it], incidents=active)))
            now.append(
                (
                    TOPIC_INFERENCE,
                    aev,
                    Truth(
                        intents[it],
                        hallucinated=h,
                        change=change[r] if h else "",
                        refusal=refused_l[i],
                        incidents=active,
                    ),
                )
            )
        else:
            now.append((TOPIC_INFERENCE, rev))
            now.append((TOPIC_INFERENCE, aev))
        if fb_a_list[i]:
            fts = fb_a_ts[i]
            fev = _answer_feedback(uu[u], rid, fts, app, fb_score_l[i], flagged_l[i])
            u += 1
            if comment_l[i]:
                pool = _comment_pool(is_ok, flagged_l[i], fb_score_l[i])
                fev["comment"] = pool[comment_pick_l[i] % len(pool)]
            later.append(
                (fts, (TOPIC_FEEDBACK, fev, None) if labelled else (TOPIC_FEEDBACK, fev))
            )
        if fb_r_list[i]:
            fts = fb_r_ts[i]
            fev = {
                "event_id": uu[u],
                "request_id": rid + "-route",
                "ts": fts,
                "app": app,
                "label": intents[it],
            }
            u += 1
            later.append(
                (fts, (TOPIC_FEEDBACK, fev, None) if labelled else (TOPIC_FEEDBACK, fev))
            )
    return now, np.stack([ts_ms, ans_ts_ms], axis=1).ravel(), later


def _pick_u(u: np.ndarray, p: Sequence[float]) -> np.ndarray:
    cum = np.cumsum(p)
    return np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(p) - 1)


# -- driving a monitor ---------------------------------------------------------


class MonitorLike(Protocol):
    """What :func:`run` needs from a :class:`llmpulse.Monitor`."""

    def inference(self, **event: Any) -> Any: ...

    def feedback(self, **event: Any) -> Any: ...

    def flush(self) -> Any: ...


def run(
    monitor: MonitorLike,
    sim: SupportAppSimulator,
    duration_s: float,
    *,
    realtime: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[dict[str, Any]], None] | None = None,
    chunk_s: float = 1.0,
) -> dict[str, Any]:
    """Send ``duration_s`` of simulated traffic through ``monitor``.

    With ``realtime`` each chunk of event time is sent once the wall clock
    has reached its end (so events are never from the future when
    ``sim.start_ts`` is now); otherwise as fast as possible. ``progress`` is
    called after each chunk with running counts. Returns the counts, the
    wall time and the ground truth.

    >>> class Sink:
    ...     def __init__(self): self.n = {"inference": 0, "feedback": 0}
    ...     def inference(self, **ev): self.n["inference"] += 1
    ...     def feedback(self, **ev): self.n["feedback"] += 1
    ...     def flush(self): pass
    >>> now = [0.0]   # a fake clock that sleeping advances
    >>> def sleep(s): now[0] += s
    >>> sim = SupportAppSimulator(seed=0, rate=20, start_ts=1_700_000_000.0)
    >>> out = run(Sink(), sim, 5, clock=lambda: now[0], sleep=sleep)
    >>> out["inference"], out["feedback"], out["wall_s"]
    (186, 2, 5.0)
    """
    counts = {"inference": 0, "feedback": 0, "chunks": 0}
    t_begin = clock()
    send_inference = monitor.inference
    send_feedback = monitor.feedback
    for c, batch in enumerate(sim.batches(duration_s, chunk_s)):
        if realtime:
            due = min(duration_s, (c + 1) * chunk_s)
            wait = due - (clock() - t_begin)
            if wait > 0:
                sleep(wait)
        for topic, ev in batch:
            if topic == TOPIC_INFERENCE:
                send_inference(**ev)
                counts["inference"] += 1
            else:
                send_feedback(**ev)
                counts["feedback"] += 1
        counts["chunks"] += 1
        if progress is not None:
            progress(
                {**counts, "sim_s": min(duration_s, (c + 1) * chunk_s), "duration_s": duration_s}
            )
    monitor.flush()
    return {
        **counts,
        "duration_s": float(duration_s),
        "wall_s": clock() - t_begin,
        "incidents": sim.ground_truth(),
    }


# -- command line ----------------------------------------------------------------

_INCIDENT_HELP = """\
incidents (--incident KIND:START:END[:KEY=VALUE]..., seconds from the start):
  latency_spike:60:120[:factor=4][:model=gpt-4o-mini]   slower answers, more timeouts
  prompt_drift:60:180[:share=0.75]         questions move to a new topic
  segment_quality_drop:30:90[:segment=language=de]   worse answers for one segment
  hallucination_burst:60:120[:share=0.35][:model=...]   answers contradict the context (mixed kinds)
  error_burst:60:90[:rate=0.25][:model=...]   failing answer calls
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``llmpulse simulate`` flags to ``parser``.

    >>> p = argparse.ArgumentParser()
    >>> configure(p)
    >>> a = p.parse_args(["--incident", "latency_spike:60:120", "--fast"])
    >>> a.incident[0].kind, a.realtime, a.rate
    ('latency_spike', False, 200.0)
    """
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _INCIDENT_HELP
    parser.add_argument("--rate", type=float, default=200.0, help="user requests per second")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same traffic")
    parser.add_argument(
        "--incident",
        type=_incident_arg,
        action="append",
        default=[],
        metavar="KIND:START:END[:K=V]",
        help="scripted incident (repeatable), see below",
    )
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    parser.add_argument("--app", default="support-assistant", help="app name on the events")
    parser.add_argument(
        "--feedback-share", type=float, default=0.3, help="share of requests that get feedback"
    )
    parser.add_argument(
        "--feedback-delay", type=float, default=20.0, help="median feedback delay in seconds"
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="pace events to the wall clock (default)",
    )
    pace.add_argument(
        "--fast",
        dest="realtime",
        action="store_false",
        help="send as fast as possible, event times ending now",
    )


def _incident_arg(text: str) -> Incident:
    try:
        return Incident.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_cli(args: argparse.Namespace) -> int:
    """``llmpulse simulate``: drive a :class:`llmpulse.Monitor` with the app."""
    from llmpulse.monitor import Monitor

    duration = float(args.duration)
    # Fast runs end now, so no event lies in the future where ingest rejects it.
    start = time.time() if args.realtime else time.time() - duration
    try:
        sim = SupportAppSimulator(
            seed=args.seed,
            rate=args.rate,
            incidents=args.incident,
            start_ts=start,
            feedback_share=args.feedback_share,
            feedback_delay_s=args.feedback_delay,
            app=args.app,
        )
    except ValueError as exc:
        print(f"llmpulse simulate: {exc}", file=sys.stderr)
        return 2
    monitor = Monitor(app=args.app, bootstrap=args.bootstrap)

    def show(p: dict[str, Any]) -> None:
        print(
            f"\r{p['sim_s']:7.0f}/{p['duration_s']:.0f} s  "
            f"{p['inference']:>9} inferences  {p['feedback']:>8} feedback",
            end="",
            file=sys.stderr,
            flush=True,
        )

    try:
        out = run(monitor, sim, duration, realtime=args.realtime, progress=show)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        close = getattr(monitor, "close", None)
        if callable(close):
            close()
    print(file=sys.stderr)
    print(
        f"sent {out['inference']} inference and {out['feedback']} feedback events "
        f"in {out['wall_s']:.1f} s"
    )
    for inc in out["incidents"]:
        print(f"incident {inc['spec']}: event time {inc['start_ts']:.0f}..{inc['end_ts']:.0f}")
    return 0
