"""An optional LLM judge: sampled, budgeted, off the ingest path.

``llmpulse judge --endpoint http://host/v1 --model m`` runs as its own
process. It reads ``llmpulse.inference`` with a consumer group of its own
(so ingestion never waits for it), picks a sample of the answers, asks an
OpenAI-compatible chat endpoint (or any async callable) to grade each one
and sends the grades back as ``feedback/v1`` events with ``source=judge``:

* ``judge``: ``groundedness``, ``relevance``, ``correctness`` (0..1, the
  judge's) and ``groundedness_free``, llmpulse's own judge-free groundedness
  score of the same answer, so the pipeline can measure their agreement
  (``judge.agreement_*`` signals);
* ``score`` = 2 x correctness - 1, ``hallucination`` = groundedness < 0.5,
  ``comment`` = the judge's rationale.

Limits (:class:`JudgeSettings`): a sampling rate per app (by a hash of the
``request_id``, so a replay picks the same requests), a cost cap per hour
(token usage x price; requests are refused while the last hour's spend is at
the cap), a concurrency limit, a timeout per request and a bounded queue. A
judge that fails, times out, answers with something that is not the
expected JSON, rate-limits (HTTP 429) or is over budget is counted
(:meth:`JudgeWorker.stats`) and skipped; nothing it does can block or stop
ingestion, which does not know it exists.

>>> s = JudgeSettings(sample_rate=0.1, app_rates={"checkout": 1.0})
>>> s.rate_for("checkout"), s.rate_for("support")
(1.0, 0.1)
>>> JudgeSettings(concurrency=0)
Traceback (most recent call last):
...
llmpulse.judge.JudgeError: judge.concurrency: must be >= 1, got 0
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "JudgeError",
    "JudgeSettings",
    "JudgeVerdict",
    "JudgeWorker",
    "MalformedVerdict",
    "OpenAIJudge",
    "HourlyBudget",
    "configure",
    "parse_verdict",
    "run_cli",
    "sampled",
    "serve",
]

SCORES = ("groundedness", "relevance", "correctness")

PROMPT = """You grade one answer of an assistant. Reply with JSON only:
{"groundedness": <0..1, how well the context supports the answer>,
 "relevance": <0..1, how well the answer addresses the question>,
 "correctness": <0..1, how likely the answer is correct>,
 "rationale": "<one or two sentences>"}"""


class JudgeError(ValueError):
    """A judge setting is not usable; the message names the key."""


class MalformedVerdict(ValueError):
    """The judge answered, but not with the JSON asked for."""


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """The judge's limits. Prices are USD per 1000 tokens (prompt + completion)."""

    sample_rate: float = 0.05
    app_rates: Mapping[str, float] = field(default_factory=dict)
    cost_cap_usd_per_hour: float = 1.0
    price_per_1k_tokens: float = 0.002
    concurrency: int = 4
    timeout_s: float = 30.0
    max_queue: int = 1000

    def __post_init__(self) -> None:
        for key, rate in [("sample_rate", self.sample_rate),
                          *((f"app_rates.{k}", v) for k, v in self.app_rates.items())]:
            if not 0.0 <= rate <= 1.0:
                raise JudgeError(f"judge.{key}: must be within 0..1, got {rate!r}")
        if not self.cost_cap_usd_per_hour >= 0:
            raise JudgeError(f"judge.cost_cap_usd_per_hour: must be >= 0, got {self.cost_cap_usd_per_hour!r}")
        if not self.price_per_1k_tokens >= 0:
            raise JudgeError(f"judge.price_per_1k_tokens: must be >= 0, got {self.price_per_1k_tokens!r}")
        if self.concurrency < 1:
            raise JudgeError(f"judge.concurrency: must be >= 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise JudgeError(f"judge.timeout_s: must be > 0, got {self.timeout_s!r}")
        if self.max_queue < 1:
            raise JudgeError(f"judge.max_queue: must be >= 1, got {self.max_queue}")

    def rate_for(self, app: str) -> float:
        return float(self.app_rates.get(app, self.sample_rate))


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is in a ``rate`` sample (the same answer every time).

    >>> sum(sampled(f"r{i}", 0.1) for i in range(10_000))
    1041
    """
    if rate >= 1.0:
        return True
    return zlib.crc32(request_id.encode()) < rate * 2**32


class HourlyBudget:
    """Spend over the last hour against a cap; the clock is injected.

    >>> now = [0.0]
    >>> b = HourlyBudget(1.0, clock=lambda: now[0])
    >>> b.add(0.7); b.available()
    True
    >>> b.add(0.4); b.available(), round(b.spent(), 2)
    (False, 1.1)
    >>> now[0] = 3601.0; b.available()
    True
    """

    def __init__(self, cap_usd: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap_usd = float(cap_usd)
        self.clock = clock
        self._spend: deque[tuple[float, float]] = deque()
        self._total = 0.0

    def _expire(self) -> None:
        horizon = self.clock() - 3600.0
        while self._spend and self._spend[0][0] <= horizon:
            self._total -= self._spend.popleft()[1]

    def spent(self) -> float:
        self._expire()
        return max(0.0, self._total)

    def available(self) -> bool:
        return self.spent() < self.cap_usd

    def add(self, usd: float) -> None:
        self._spend.append((self.clock(), usd))
        self._total += usd


@dataclass(frozen=True, slots=True)
class JudgeVerdict:
    groundedness: float
    relevance: float
    correctness: float
    rationale: str
    tokens: int = 0


def parse_verdict(text: str, tokens: int = 0) -> JudgeVerdict:
    """The judge's JSON answer (a fenced code block is accepted), checked.

    >>> parse_verdict('{"groundedness": 1, "relevance": 0.5, "correctness": 0.9, "rationale": "ok"}')
    JudgeVerdict(groundedness=1.0, relevance=0.5, correctness=0.9, rationale='ok', tokens=0)
    >>> parse_verdict('{"groundedness": "high"}')
    Traceback (most recent call last):
    ...
    llmpulse.judge.MalformedVerdict: groundedness: expected a number in 0..1, got 'high'
    """
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(body)
    except ValueError:
        raise MalformedVerdict(f"not JSON: {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise MalformedVerdict("expected a JSON object")
    vals: dict[str, float] = {}
    for key in SCORES:
        v: Any = obj.get(key)
        if type(v) not in (int, float) or not 0 <= v <= 1:
            raise MalformedVerdict(f"{key}: expected a number in 0..1, got {v!r}")
        vals[key] = float(v)
    rationale = obj.get("rationale", "")
    if not isinstance(rationale, str):
        raise MalformedVerdict("rationale: expected a string")
    return JudgeVerdict(vals["groundedness"], vals["relevance"], vals["correctness"],
                        rationale[:2000], int(tokens))


Judge = Callable[[Mapping[str, Any]], Awaitable[JudgeVerdict]]
"""Grades one inference event (prompt, response, context)."""


class OpenAIJudge:
    """A judge behind an OpenAI-compatible chat endpoint (``openai.AsyncOpenAI``).

    No retries: a failed or rate-limited request is counted and skipped, the
    next sampled answer is the next attempt.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str = "unused",
                 timeout_s: float = 30.0) -> None:
        try:
            import openai
        except ImportError:
            raise JudgeError("judge.endpoint: needs the openai client: pip install 'llmpulse[eval]'") from None
        self.model = model
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "unused",
                                          timeout=timeout_s, max_retries=0)

    async def __call__(self, event: Mapping[str, Any]) -> JudgeVerdict:
        ctx = "\n".join(event.get("context") or []) or "(none)"
        user = (f"Question:\n{event.get('prompt') or '(none)'}\n\nContext:\n{ctx}\n\n"
                f"Answer:\n{event.get('response') or ''}")
        resp = await self._client.chat.completions.create(
            model=self.model, temperature=0.0,
            messages=[{"role": "system", "content": PROMPT}, {"role": "user", "content": user}],
        )
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        tokens = int(getattr(resp.usage, "total_tokens", 0) or 0)
        return parse_verdict(text, tokens)

    async def close(self) -> None:
        await self._client.close()


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in type(exc).__name__:
        return "timeout"
    if isinstance(exc, MalformedVerdict):
        return "malformed"
    if getattr(exc, "status_code", None) == 429 or type(exc).__name__ == "RateLimitError":
        return "rate_limited"
    return "error"


class JudgeWorker:
    """Samples inference events, grades them with ``judge`` within the limits and
    hands each grade to ``emit`` as a ``feedback/v1`` event's fields.

    ``groundedness`` scores the judge-free groundedness (default: the shipped
    :class:`~detectors.hallucination.groundedness.GroundednessScorer`).
    """

    def __init__(
        self,
        settings: JudgeSettings,
        judge: Judge,
        emit: Callable[[dict[str, Any]], object],
        *,
        groundedness: Callable[[str, list[str]], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.judge = judge
        self.emit = emit
        self.budget = HourlyBudget(settings.cost_cap_usd_per_hour, clock=clock)
        self._sem = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._groundedness = groundedness
        self.counts: dict[str, int] = dict.fromkeys(
            ("seen", "sampled", "judged", "timeout", "error", "malformed", "rate_limited",
             "over_budget", "queue_full", "no_response"), 0)
        self.seconds = 0.0

    def _free_score(self, response: str, context: list[str]) -> float | None:
        if not context:
            return None
        if self._groundedness is None:
            from detectors.hallucination.groundedness import GroundednessScorer

            scorer = GroundednessScorer()
            self._groundedness = lambda r, c: scorer.score(r, c).score
        return float(self._groundedness(response, context))

    def submit(self, event: Mapping[str, Any]) -> bool:
        """Consider one validated inference event; True if a grade was scheduled.
        Never waits: a full queue or a spent budget skips the event (counted)."""
        c = self.counts
        c["seen"] += 1
        if not sampled(str(event.get("request_id", "")), self.settings.rate_for(str(event.get("app", "")))):
            return False
        c["sampled"] += 1
        if event.get("status") != "ok" or not event.get("response"):
            c["no_response"] += 1
            return False
        if not self.budget.available():
            c["over_budget"] += 1
            return False
        if len(self._tasks) >= self.settings.max_queue:
            c["queue_full"] += 1
            return False
        task = asyncio.get_running_loop().create_task(self._grade(dict(event)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _grade(self, event: dict[str, Any]) -> None:
        async with self._sem:
            if not self.budget.available():  # the spend may have grown while queued
                self.counts["over_budget"] += 1
                return
            t0 = time.perf_counter()
            try:
                verdict = await asyncio.wait_for(self.judge(event), self.settings.timeout_s)
            except Exception as exc:  # every failure is counted; none stops the worker
                self.counts[_failure_kind(exc)] += 1
                return
            finally:
                self.seconds += time.perf_counter() - t0
        self.budget.add(verdict.tokens / 1000.0 * self.settings.price_per_1k_tokens)
        scores = {k: getattr(verdict, k) for k in SCORES}
        free = self._free_score(str(event["response"]), list(event.get("context") or []))
        if free is not None and not math.isnan(free):
            scores["groundedness_free"] = min(1.0, max(0.0, free))
        self.counts["judged"] += 1
        self.emit({
            "request_id": event["request_id"],
            **({"app": event["app"]} if event.get("app") else {}),
            "source": "judge",
            "judge": scores,
            "score": 2.0 * verdict.correctness - 1.0,
            "hallucination": verdict.groundedness < 0.5,
            "comment": verdict.rationale,
        })

    async def drain(self) -> None:
        """Wait for every scheduled grade."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "in_flight": len(self._tasks),
                "spent_usd_last_hour": round(self.budget.spent(), 6),
                "judge_seconds": round(self.seconds, 3)}


async def serve(
    worker: JudgeWorker,
    bootstrap: str,
    stop: asyncio.Event,
    *,
    group: str = "llmpulse-judge",
    start: str = "latest",
    stats_every_s: float = 60.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Read ``llmpulse.inference`` (consumer group ``group``) until ``stop`` is set and
    hand every valid event to ``worker``; the final stats. Polling runs in a thread,
    so a slow judge never holds the consumer, and the consumer never holds ingestion.
    A new group starts at ``start`` (``latest``: only answers from now on)."""
    import orjson
    from confluent_kafka import Consumer

    from llmpulse.events import TOPIC_INFERENCE, EventError, split_envelope, validate_inference

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": start, "enable.auto.commit": True})
    consumer.subscribe([TOPIC_INFERENCE])
    loop = asyncio.get_running_loop()
    invalid = 0
    last = time.monotonic()
    try:
        while not stop.is_set():
            msgs = await loop.run_in_executor(None, consumer.consume, 500, 0.5)
            for m in msgs:
                if m.error() is not None:
                    continue
                for line in split_envelope(m.value() or b""):
                    try:
                        worker.submit(validate_inference(orjson.loads(line)))
                    except (EventError, ValueError):
                        invalid += 1  # ingest dead-letters these; the judge only skips them
            if stats_every_s and time.monotonic() - last >= stats_every_s:
                last = time.monotonic()
                log(f"judge: {json.dumps({**worker.stats(), 'invalid': invalid})}")
        await worker.drain()
    finally:
        await loop.run_in_executor(None, consumer.close)
    return {**worker.stats(), "invalid": invalid}


def configure(p: Any) -> None:
    p.add_argument("--endpoint", required=True, help="OpenAI-compatible API root of the judge")
    p.add_argument("--model", required=True, help="judge model name")
    p.add_argument("--api-key-env", default="LLMPULSE_JUDGE_API_KEY",
                   help="environment variable holding the judge endpoint's token")
    p.add_argument("--sample", type=float, default=0.05, help="share of answers judged (0..1)")
    p.add_argument("--app-rate", action="append", default=[], metavar="APP=RATE",
                   help="sampling rate of one app (repeatable)")
    p.add_argument("--cost-cap", type=float, default=1.0, help="USD per hour")
    p.add_argument("--price-per-1k", type=float, default=0.002, help="USD per 1000 tokens")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per judge request")
    p.add_argument("--kafka", default=None, help="bootstrap servers (default: LLMPULSE_KAFKA or the running stack)")


def run_cli(args: Any) -> int:
    import os
    import signal
    import sys

    from llmpulse.monitor import Monitor, resolve_bootstrap

    try:
        rates = {}
        for item in args.app_rate:
            app, sep, rate = item.partition("=")
            if not sep or not app:
                raise JudgeError(f"judge.app_rates: expected APP=RATE, got {item!r}")
            try:
                rates[app] = float(rate)
            except ValueError:
                raise JudgeError(f"judge.app_rates.{app}: not a number: {rate!r}") from None
        settings = JudgeSettings(sample_rate=args.sample, app_rates=rates,
                                 cost_cap_usd_per_hour=args.cost_cap,
                                 price_per_1k_tokens=args.price_per_1k,
                                 concurrency=args.concurrency, timeout_s=args.timeout)
    except JudgeError as exc:
        print(f"llmpulse judge: {exc}", file=sys.stderr)
        return 2
    bootstrap = args.kafka or resolve_bootstrap(None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        judge = OpenAIJudge(args.endpoint, args.model, api_key=os.environ.get(args.api_key_env, ""),
                            timeout_s=args.timeout)
        with Monitor(app="llmpulse-judge", bootstrap=bootstrap) as mon:
            worker = JudgeWorker(settings, judge, lambda f: mon.feedback(**f))
            try:
                final = await serve(worker, bootstrap, stop)
            finally:
                await judge.close()
            mon.flush(30)
        print(f"judge: {json.dumps(final)}")

    asyncio.run(main())
    return 0
