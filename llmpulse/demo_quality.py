"""The answer-quality part of ``llmpulse demo``: a golden-set regression and a judge.

* **Golden set.** :data:`GOLDEN` (twelve support questions with reference
  answers) is run twice through :func:`llmpulse.golden.run_golden` with
  in-process answerers, no network: version ``v1`` of the ``faq-assistant``
  model answers close to the reference (:func:`good_answer`), version ``v2``
  is a regressed release that answers vaguely (:func:`regressed_answer`).
  The pipeline scores both against the references; the demo reads the
  ``quality.rouge_l`` signals of both versions back from the store
  (:func:`golden_summary`). Twelve cases stay under the ``min_n`` of the
  ``reference-overlap-low`` rule, so the drop shows as a signal, not a page.
* **Judge.** :func:`overlap_judge` is a deterministic stand-in for an LLM
  judge (the share of the answer's words found in its context, strict on
  numbers); :class:`~llmpulse.judge.JudgeWorker` and
  :func:`~llmpulse.judge.serve` run it as an asyncio task on a sample of the
  run's answers, exactly as ``llmpulse judge`` does in its own process. Its
  grades go back as feedback with ``source=judge``; the pipeline turns them
  into ``judge.agreement_*`` signals (:func:`judge_summary`).

>>> good_answer(GOLDEN[0].question) == GOLDEN[0].reference
False
>>> from rouge_score import rouge_scorer
>>> s = rouge_scorer.RougeScorer(["rougeL"])
>>> def mean(fn):
...     return sum(s.score(c.reference, fn(c.question))["rougeL"].fmeasure for c in GOLDEN) / len(GOLDEN)
>>> mean(good_answer) > 0.7 > 0.3 > mean(regressed_answer)
True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from llmpulse.golden import GoldenCase, GoldenRun, callable_answerer, run_golden
from llmpulse.judge import JudgeVerdict

__all__ = [
    "GOLDEN",
    "GOLDEN_MODEL",
    "golden_summary",
    "good_answer",
    "judge_summary",
    "overlap_judge",
    "regressed_answer",
    "run_golden_pair",
]

GOLDEN_MODEL = "faq-assistant"

GOLDEN: tuple[GoldenCase, ...] = tuple(
    GoldenCase(question=q, reference=r, id=f"faq-{i + 1}") for i, (q, r) in enumerate([
        ("How long does a refund take?",
         "Refunds are paid back to the original card within five working days."),
        ("Can I change my delivery address after ordering?",
         "You can change the delivery address until the parcel is handed to the courier."),
        ("How do I reset my password?",
         "Use the forgot password link on the sign-in page and follow the email we send you."),
        ("Do you ship to Switzerland?",
         "Yes, we ship to Switzerland; customs fees are paid by the recipient."),
        ("How long is the warranty on electronics?",
         "Electronics come with a two year warranty from the date of delivery."),
        ("Can I return a sale item?",
         "Sale items can be returned within fourteen days if they are unused."),
        ("How do I cancel my subscription?",
         "Cancel the subscription under account settings; it stays active until the period ends."),
        ("Is there a fee for paying by invoice?",
         "Paying by invoice costs no extra fee for orders above twenty euros."),
        ("When will my order arrive?",
         "Standard delivery takes two to four working days after dispatch."),
        ("Can I add an item to an order I already placed?",
         "Items cannot be added to a placed order; please place a second order instead."),
        ("How do I contact support by phone?",
         "Call support on weekdays between eight and six using the number on your invoice."),
        ("What happens if my parcel is damaged?",
         "Send us a photo of the damaged parcel and we replace the order free of charge."),
    ])
)

_REFERENCE = {c.question: c.reference for c in GOLDEN}

_VAGUE = (
    "Thank you for your question.",
    "Please check our help pages for details.",
    "Our team is happy to help you with that.",
    "This depends on your situation.",
)


def good_answer(question: str) -> str:
    """Version v1: the reference, lightly reworded (a deterministic paraphrase)."""
    ref = _REFERENCE.get(question, "I do not know.")
    return "Sure. " + ref.replace("we ", "our team will ").replace(" you ", " you ")


def regressed_answer(question: str) -> str:
    """Version v2: polite and vague, keeping only the start of the right answer."""
    ref = _REFERENCE.get(question, "")
    first = " ".join(ref.split()[:3])
    pick = sum(map(ord, question)) % len(_VAGUE)
    return f"{_VAGUE[pick]} {first}... {_VAGUE[(pick + 1) % len(_VAGUE)]}"


def run_golden_pair(monitor: Any) -> tuple[GoldenRun, GoldenRun]:
    """The golden set through v1 (good) then v2 (regressed), recorded by ``monitor``."""
    good = run_golden(GOLDEN, callable_answerer(good_answer), monitor, model=GOLDEN_MODEL,
                      model_version="v1", golden_set="faq")
    bad = run_golden(GOLDEN, callable_answerer(regressed_answer), monitor, model=GOLDEN_MODEL,
                     model_version="v2", golden_set="faq")
    return good, bad


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "can", "for", "from", "has", "have", "i", "in", "is", "it", "its", "of", "on", "or", "our", "the", "this", "to", "we", "will", "with", "you", "your"])


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def overlap_grade(response: str, context: list[str]) -> JudgeVerdict:
    """Grounded share of the answer's words; a number missing from the context
    cuts the grade to 0.3 of it.

    >>> overlap_grade("Refunds take 5 days.", ["Refunds take 5 days by card."]).groundedness
    1.0
    >>> overlap_grade("Refunds take 9 days.", ["Refunds take 5 days by card."]).groundedness
    0.225
    """
    words = _words(response)
    known = set(_words(" ".join(context)))
    if not words:
        return JudgeVerdict(0.0, 0.0, 0.0, "empty answer", tokens=0)
    share = sum(w in known for w in words) / len(words)
    invented = sorted({w for w in words if w.isdigit() and w not in known})
    g = round(share * (0.3 if invented else 1.0), 4)
    why = f"unsupported numbers {', '.join(invented)}" if invented else f"{share:.0%} of words in context"
    return JudgeVerdict(g, round(share, 4), g, why, tokens=len(words) + len(known))


async def overlap_judge(event: Mapping[str, Any]) -> JudgeVerdict:
    """A judge callable for :class:`~llmpulse.judge.JudgeWorker` (no network)."""
    return overlap_grade(str(event.get("response") or ""), list(event.get("context") or []))


def golden_summary(query: Callable[[str], list[dict[str, Any]]], app: str) -> dict[str, dict[str, float]]:
    """``{model_version: {"rouge_l", "n", "windows"}}`` of the golden model's
    ``quality.rouge_l`` signals in the store (``app`` is checked by the caller)."""
    rows = query(
        "SELECT model_version, sum(value * n) / sum(n) AS mean_rouge_l, sum(n) AS answers, count() AS windows "
        f"FROM signals FINAL WHERE app = '{app}' AND model = '{GOLDEN_MODEL}' "
        "AND signal = 'quality.rouge_l' AND dimension = '' GROUP BY model_version ORDER BY model_version"
    )
    return {str(r["model_version"]): {"rouge_l": float(r["mean_rouge_l"]), "n": float(r["answers"]),
                                      "windows": float(r["windows"])} for r in rows}


def judge_summary(query: Callable[[str], list[dict[str, Any]]], app: str) -> dict[str, dict[str, float]]:
    """``{signal: {"mean", "windows", "n"}}`` of the ``judge.agreement_*`` signals of ``app``."""
    rows = query(
        "SELECT signal, avg(value) AS mean_value, count() AS windows, sum(n) AS answers FROM signals FINAL "
        f"WHERE app = '{app}' AND signal LIKE 'judge.agreement_%' GROUP BY signal ORDER BY signal"
    )
    return {str(r["signal"]): {"mean": float(r["mean_value"]), "windows": float(r["windows"]),
                               "n": float(r["answers"])} for r in rows}


class DemoJudge:
    """:func:`overlap_judge` on a share of ``app``'s answers, as an asyncio task
    reading ``llmpulse.inference`` with a consumer group of its own (the code
    of ``llmpulse judge``). Grades go out through ``monitor`` as feedback with
    ``source=judge``, as ``llmpulse judge`` sends them: the pipeline keeps them
    apart from the simulated users' scores of the same answers. The worker's
    counts go to ``llmpulse.health`` (the health dashboard's judge panels)."""

    def __init__(self, monitor: Any, bootstrap: str, app: str, sample: float) -> None:
        import asyncio

        from llmpulse.judge import JudgeSettings, JudgeWorker

        self.monitor = monitor
        self.bootstrap = bootstrap
        self.app = app
        self.sample = float(sample)
        self.sent = 0
        self.settings = JudgeSettings(sample_rate=0.0, app_rates={app: self.sample},
                                      cost_cap_usd_per_hour=1.0, concurrency=4, timeout_s=5.0,
                                      health_every_s=10.0)
        self.worker = JudgeWorker(self.settings, overlap_judge, self._emit)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._close_reports: Callable[[float], int] = lambda _t: 0
        self.final: dict[str, Any] = {}

    def _emit(self, fields: dict[str, Any]) -> None:
        self.monitor.feedback(**fields)
        self.sent += 1

    def start(self) -> None:
        import asyncio

        from llmpulse.judge import kafka_reporter, serve

        report, self._close_reports = kafka_reporter(self.bootstrap)
        self._task = asyncio.ensure_future(serve(
            self.worker, self.bootstrap, self._stop, group=f"llmpulse-judge-{self.app}",
            start="latest", stats_every_s=0.0, log=lambda _line: None, report=report,
            instance=f"demo-{self.app}"))

    async def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Stop reading, wait for the grades in flight; the worker's counters."""
        import asyncio

        self._stop.set()
        if self._task is not None:
            self.final = await asyncio.wait_for(self._task, timeout_s)
            await asyncio.to_thread(self._close_reports, 10.0)
            self._close_reports = lambda _t: 0
        return self.final or self.worker.stats()
