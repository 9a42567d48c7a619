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
  ``comment`` = the judge's rationale. The pipeline keeps these apart from
  what people said about the same answer (``judge_score``,
  ``judge_hallucination``; :mod:`llmpulse.streams.join`): user signals read people,
  the agreement signals read the judge.

Limits (:class:`JudgeSettings`): a sampling rate per app (by a hash of the
``request_id``, so a replay picks the same requests), a cost cap per hour
(token usage x price; requests are refused while the last hour's spend is at
the cap), a concurrency limit, a timeout per request and a bounded queue. A
judge that fails, times out, answers with something that is not the
expected JSON, rate-limits (HTTP 429) or is over budget is counted
(:meth:`JudgeWorker.stats`) and skipped; nothing it does can block or stop
ingestion, which does not know it exists. The counts are reported on
``llmpulse.health`` (:mod:`llmpulse.health_record`) and shown on the health
dashboard as ``llmpulse.judge_*`` signals.

The settings come from the ``judge:`` section of ``llmpulse.yaml``
(:mod:`llmpulse.judge_config`: endpoint, model, token via an environment
variable or a file, rates, cap, concurrency, timeout); command-line flags
override them.

>>> s = JudgeSettings(sample_rate=0.1, app_rates={"checkout": 1.0})
>>> s.rate_for("checkout"), s.rate_for("support")
(1.0, 0.1)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmpulse.health_record import JUDGE_COUNTS, TOPIC_HEALTH, ServiceHealth
from llmpulse.judge_config import DEFAULT_TOKEN_ENV, JudgeError, JudgeSettings

__all__ = [
    "JudgeError",
    "JudgeSettings",
    "JudgeVerdict",
    "JudgeWorker",
    "MalformedVerdict",
    "OpenAIJudge",
    "HourlyBudget",
    "configure",
    "kafka_reporter",
    "parse_verdict",
    "run_cli",
    "sampled",
    "serve",
    "settings_from_args",
]

SCORES = ("groundedness", "relevance", "correctness")

PROMPT = """You grade one answer of an assistant. Reply with JSON only:
{"groundedness": <0..1, how well the context supports the answer>,
 "relevance": <0..1, how well the answer addresses the question>,
 "correctness": <0..1, how likely the answer is correct>,
 "rationale": "<one or two sentences>"}"""


class MalformedVerdict(ValueError):
    """The judge answered, but not with the JSON asked for."""


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
    :class:`~llmpulse.detectors.hallucination.groundedness.GroundednessScorer`).
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
        self._score_lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(
            ("seen", "sampled", "judged", "timeout", "error", "malformed", "rate_limited",
             "over_budget", "queue_full", "no_response"), 0)
        self.seconds = 0.0
        self._reported: dict[str, int] = dict.fromkeys(self.counts, 0)
        self._reported_seconds = 0.0
        self._reported_at = time.time()
        self._reported_ts = 0.0

    def _free_score(self, response: str, context: list[str]) -> float | None:
        if not context:
            return None
        with self._score_lock:  # one scorer, used by one thread at a time
            if self._groundedness is None:
                from llmpulse.detectors.hallucination.groundedness import GroundednessScorer

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
        # CPU work (a model on first use): off the event loop, so other grades' timeouts
        # measure the judge, not this
        free = await asyncio.to_thread(self._free_score, str(event["response"]),
                                       list(event.get("context") or []))
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

    def health_report(self, instance: str, *, now: float | None = None) -> ServiceHealth:
        """What happened since the previous report (counts and seconds spent waiting on
        the judge), with the spend of the last hour: for ``llmpulse.health``.

        Each report's ``ts`` is at least a millisecond after the previous one: the
        store keeps one signal per millisecond (``signals`` is deduplicated on ``ts``
        at millisecond precision), so two reports sent back to back (the last
        periodic one and the one at stop) would otherwise collapse into whichever
        was stored last and lose the other's counts.

        >>> w = JudgeWorker(JudgeSettings(), lambda a: None, lambda f: None)
        >>> a, b = w.health_report("h", now=1_700_000_000.1234), w.health_report("h", now=1_700_000_000.1236)
        >>> (a.ts, b.ts)
        (1700000000.123, 1700000000.124)
        """
        now = time.time() if now is None else now
        # whole milliseconds (what the store keeps), strictly after the previous report
        now = max(math.floor(now * 1000) / 1000, round(self._reported_ts + 0.001, 3))
        delta = {k: self.counts[k] - self._reported[k] for k in JUDGE_COUNTS}
        seconds = self.seconds - self._reported_seconds
        interval = max(0.0, now - self._reported_at)
        self._reported = dict(self.counts)
        self._reported_seconds = self.seconds
        self._reported_at = now
        self._reported_ts = now
        return ServiceHealth("judge", instance, ts=now, interval_s=interval, counts=delta,
                             gauges={"spent_usd_last_hour": self.budget.spent(),
                                     "in_flight": len(self._tasks),
                                     "judge_seconds": max(0.0, seconds)})


async def serve(
    worker: JudgeWorker,
    bootstrap: str,
    stop: asyncio.Event,
    *,
    group: str = "llmpulse-judge",
    start: str = "latest",
    stats_every_s: float = 60.0,
    log: Callable[[str], None] = print,
    report: Callable[[ServiceHealth], object] | None = None,
    instance: str = "judge",
) -> dict[str, Any]:
    """Read ``llmpulse.inference`` (consumer group ``group``) until ``stop`` is set and
    hand every valid event to ``worker``; the final stats. Polling runs in a thread,
    so a slow judge never holds the consumer, and the consumer never holds ingestion.
    A new group starts at ``start`` (``latest``: only answers from now on).

    Every ``worker.settings.health_every_s`` and once at the end, ``report`` gets the
    worker's :meth:`JudgeWorker.health_report` (the CLI sends it to ``llmpulse.health``,
    where the worker turns it into the health dashboard's judge signals); a report
    that fails is logged and the judge goes on."""
    import orjson
    from confluent_kafka import Consumer

    from llmpulse.events import TOPIC_INFERENCE, EventError, split_envelope, validate_inference

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": start, "enable.auto.commit": True})
    consumer.subscribe([TOPIC_INFERENCE])
    loop = asyncio.get_running_loop()
    invalid = 0
    last = last_report = time.monotonic()

    def send_report() -> None:
        if report is None:
            return
        try:
            report(worker.health_report(instance))
        except Exception as exc:  # the judge's own health must never stop it
            log(f"judge: health report not sent: {type(exc).__name__}: {exc}")

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
            if time.monotonic() - last_report >= worker.settings.health_every_s:
                last_report = time.monotonic()
                send_report()
        await worker.drain()
        send_report()
    finally:
        await loop.run_in_executor(None, consumer.close)
    return {**worker.stats(), "invalid": invalid}


def kafka_reporter(bootstrap: str) -> tuple[Callable[[ServiceHealth], None], Callable[[float], int]]:
    """A ``report`` for :func:`serve` that sends to ``llmpulse.health``, and its close
    (waits up to ``timeout_s`` for the reports sent; how many were not delivered)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 10_000})

    def report(rec: ServiceHealth) -> None:
        producer.produce(TOPIC_HEALTH, rec.to_json(), key=b"judge")
        producer.poll(0)

    def close(timeout_s: float) -> int:
        left = int(producer.flush(timeout_s))
        producer.close()
        return left

    return report, close


def configure(p: Any) -> None:
    p.description = ("Settings come from the judge: section of llmpulse.yaml (--config); "
                     "these flags override them.")
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible API root of the judge")
    p.add_argument("--model", default=None, help="judge model name")
    p.add_argument("--api-key-env", default=None,
                   help=f"environment variable holding the endpoint's token (default: judge.token_env, "
                        f"else {DEFAULT_TOKEN_ENV})")
    p.add_argument("--sample", type=float, default=None, help="share of answers judged (0..1)")
    p.add_argument("--app-rate", action="append", default=[], metavar="APP=RATE",
                   help="sampling rate of one app (repeatable)")
    p.add_argument("--cost-cap", type=float, default=None, help="USD per hour")
    p.add_argument("--price-per-1k", type=float, default=None, help="USD per 1000 tokens")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None, help="seconds per judge request")
    p.add_argument("--kafka", default=None, help="bootstrap servers (default: LLMPULSE_KAFKA or the running stack)")


def settings_from_args(base: JudgeSettings, args: Any, env: Mapping[str, str]) -> JudgeSettings:
    """``base`` (the YAML's ``judge:``) with the command line's flags over it.

    >>> import argparse
    >>> args = argparse.Namespace(endpoint=None, model="m2", api_key_env=None, sample=0.5,
    ...     app_rate=["checkout=1"], cost_cap=None, price_per_1k=None, concurrency=None, timeout=None)
    >>> s = settings_from_args(JudgeSettings(model="m1", concurrency=8), args, {})
    >>> s.model, s.sample_rate, dict(s.app_rates), s.concurrency
    ('m2', 0.5, {'checkout': 1.0}, 8)
    """
    rates = dict(base.app_rates)
    for item in args.app_rate:
        app, sep, rate = item.partition("=")
        if not sep or not app:
            raise JudgeError(f"judge.app_rates: expected APP=RATE, got {item!r}")
        try:
            rates[app] = float(rate)
        except ValueError:
            raise JudgeError(f"judge.app_rates.{app}: not a number: {rate!r}") from None
    flags = {"endpoint": args.endpoint, "model": args.model, "sample_rate": args.sample,
             "cost_cap_usd_per_hour": args.cost_cap, "price_per_1k_tokens": args.price_per_1k,
             "concurrency": args.concurrency, "timeout_s": args.timeout}
    changes: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    changes["app_rates"] = rates
    if args.api_key_env:
        token = env.get(args.api_key_env, "")
        changes["token"] = token or None
    return dataclasses.replace(base, **changes)


def run_cli(args: Any) -> int:
    import os
    import signal
    import socket
    import sys

    from llmpulse.config import ConfigError, load_settings
    from llmpulse.monitor import Monitor, resolve_bootstrap

    try:
        cfg = load_settings(path=getattr(args, "config", "llmpulse.yaml"))
        settings = settings_from_args(cfg.judge, args, os.environ)
        if not settings.endpoint:
            raise JudgeError("judge.endpoint: not set; give --endpoint or judge.endpoint in llmpulse.yaml")
        if not settings.model:
            raise JudgeError("judge.model: not set; give --model or judge.model in llmpulse.yaml")
    except (JudgeError, ConfigError) as exc:
        print(f"llmpulse judge: {exc}", file=sys.stderr)
        return 2
    bootstrap = args.kafka or cfg.kafka or resolve_bootstrap(None)
    instance = f"{socket.gethostname()}:{os.getpid()}"[:200]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        assert settings.endpoint is not None
        judge = OpenAIJudge(settings.endpoint, settings.model,
                            api_key=settings.token.get() if settings.token else "",
                            timeout_s=settings.timeout_s)
        report, close_reports = kafka_reporter(bootstrap)
        with Monitor(app="llmpulse-judge", bootstrap=bootstrap) as mon:
            worker = JudgeWorker(settings, judge, lambda f: mon.feedback(**f))
            try:
                final = await serve(worker, bootstrap, stop, report=report, instance=instance)
            finally:
                await judge.close()
                await loop.run_in_executor(None, close_reports, 10.0)
            mon.flush(30)
        print(f"judge: {json.dumps(final)}")

    asyncio.run(main())
    return 0
