"""Golden-set runs: ask known questions, record the answers with their references.

``llmpulse eval golden.jsonl --app support --endpoint http://host/v1 --model m``
sends each golden question to an OpenAI-compatible chat endpoint (the
``openai`` client library, ``pip install 'llmpulse[eval]'``) or to a Python
callable (``--callable package.module:function``, called with the question
text), and records every answer as an ``inference/v1`` event with segment
``source=golden`` (and ``golden_set=<file stem>``), followed by a
``feedback/v1`` event carrying the case's ``reference`` with
``source=golden``. The pipeline then scores the answers with ROUGE-L, BLEU
and chrF (``quality.*`` signals of the app's model and version), so a
regression shows as a drop of those signals. ``--every 1h`` repeats the run.

A golden file has one JSON object a line: ``question`` and ``reference``
(non-empty strings) are required; ``id``, ``context`` (list of passages) and
``system`` (a system prompt) are optional. A bad line is refused with its
line number and field, before anything is sent:

>>> import io
>>> parse_golden(io.StringIO('{"question": "Hi?", "reference": "Hello."}\\n{"question": 3}\\n'))
Traceback (most recent call last):
...
llmpulse.golden.GoldenError: line 2: question: must be a non-empty string
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Answer",
    "GoldenCase",
    "GoldenError",
    "GoldenRun",
    "OpenAIAnswerer",
    "configure",
    "parse_golden",
    "run_cli",
    "run_golden",
]

MAX_CASES = 100_000


class GoldenError(ValueError):
    """A golden file or a run option is not usable; the message says where."""


@dataclass(frozen=True, slots=True)
class GoldenCase:
    question: str
    reference: str
    id: str = ""
    context: tuple[str, ...] = ()
    system: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model said, with token counts when the endpoint reports them."""

    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    model_version: str = ""


Answerer = Callable[[GoldenCase], Answer]


def _text(obj: dict[str, Any], key: str, line: int, required: bool) -> str:
    v = obj.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip()):
        raise GoldenError(f"line {line}: {key}: must be a non-empty string")
    return v


def parse_golden(f: IO[str], *, source: str = "") -> list[GoldenCase]:
    """The cases of a golden JSONL stream (blank lines skipped)."""
    cases: list[GoldenCase] = []
    where = f"{source}: " if source else ""
    for n, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise GoldenError(f"{where}line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise GoldenError(f"{where}line {n}: must be a JSON object")
        try:
            ctx = obj.get("context") or []
            if not isinstance(ctx, list) or not all(isinstance(p, str) for p in ctx):
                raise GoldenError(f"line {n}: context: must be a list of strings")
            case = GoldenCase(
                question=_text(obj, "question", n, True),
                reference=_text(obj, "reference", n, True),
                id=str(obj["id"]) if type(obj.get("id")) is int else _text(obj, "id", n, False),
                context=tuple(ctx),
                system=_text(obj, "system", n, False),
            )
        except GoldenError as exc:
            raise GoldenError(f"{where}{exc}") from None
        cases.append(case)
        if len(cases) > MAX_CASES:
            raise GoldenError(f"{where}more than {MAX_CASES} cases")
    if not cases:
        raise GoldenError(f"{where}no cases")
    return cases


class OpenAIAnswerer:
    """Chat completions of an OpenAI-compatible endpoint, one question per request.

    ``base_url`` is the API root (``http://host:port/v1``); the token is read
    by the caller (never logged). Retries are the client library's.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str = "unused",
                 timeout_s: float = 60.0, max_retries: int = 2,
                 temperature: float = 0.0) -> None:
        try:
            import openai
        except ImportError:
            raise GoldenError("--endpoint needs the openai client: pip install 'llmpulse[eval]'") from None
        self.model = model
        self.temperature = float(temperature)
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused",
                                     timeout=timeout_s, max_retries=max_retries)

    def __call__(self, case: GoldenCase) -> Answer:
        messages: list[dict[str, str]] = []
        system = case.system
        if case.context:
            system = (system + "\n\n" if system else "") + "Context:\n" + "\n".join(case.context)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": case.question})
        resp = self._client.chat.completions.create(
            model=self.model, messages=messages, temperature=self.temperature,  # type: ignore[arg-type]
        )
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        usage = resp.usage
        return Answer(text, int(getattr(usage, "prompt_tokens", 0) or 0),
                      int(getattr(usage, "completion_tokens", 0) or 0), str(resp.model or ""))

    def close(self) -> None:
        self._client.close()


def callable_answerer(fn: Callable[[str], Any]) -> Answerer:
    """An answerer from a function of the question text returning the answer text."""

    def answer(case: GoldenCase) -> Answer:
        out = fn(case.question)
        if not isinstance(out, str):
            raise TypeError(f"the golden callable returned {type(out).__name__}, expected str")
        return Answer(out)

    return answer


@dataclass
class GoldenRun:
    """What one run sent."""

    cases: int = 0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)
    rouge_l: float | None = None
    """Mean ROUGE-L of this run's answers (when rouge-score is installed)."""


def _status_of(exc: BaseException) -> str:
    name = type(exc).__name__.lower()
    return "timeout" if "timeout" in name else "error"


def run_golden(
    cases: Sequence[GoldenCase],
    answer: Answerer,
    monitor: Any,
    *,
    model: str,
    model_version: str = "",
    prompt_version: str | None = None,
    golden_set: str = "golden",
    timer: Callable[[], float] = time.perf_counter,
) -> GoldenRun:
    """Ask every case, record inference + reference feedback through ``monitor``
    (a :class:`~llmpulse.monitor.Monitor`). A failed call is recorded with
    status ``error`` or ``timeout`` and no feedback; the run goes on."""
    run = GoldenRun(cases=len(cases))
    pairs: list[tuple[str, str]] = []
    segment = {"source": "golden", "golden_set": golden_set}
    for case in cases:
        t0 = timer()
        fields: dict[str, Any] = {"model": model, "prompt": case.question,
                                  "segment": dict(segment)}
        if case.context:
            fields["context"] = list(case.context)
        if prompt_version:
            fields["prompt_version"] = prompt_version
        try:
            got = answer(case)
        except Exception as exc:  # the endpoint's failure is data: record it
            kind = type(exc).__name__
            run.errors[kind] = run.errors.get(kind, 0) + 1
            rid = monitor.inference(
                **fields, model_version=model_version or "unknown",
                latency_ms=(timer() - t0) * 1000.0, status=_status_of(exc), error_type=kind[:200],
                input_tokens=0, output_tokens=0,
            )
            run.request_ids.append(rid)
            continue
        rid = monitor.inference(
            **fields, model_version=model_version or got.model_version or "unknown",
            latency_ms=(timer() - t0) * 1000.0, status="ok", response=got.text,
            input_tokens=got.input_tokens, output_tokens=got.output_tokens,
        )
        monitor.feedback(request_id=rid, reference=case.reference, source="golden",
                         **({"comment": f"golden case {case.id}"} if case.id else {}))
        run.answered += 1
        run.request_ids.append(rid)
        pairs.append((got.text, case.reference))
    try:
        import rouge_score  # noqa: F401 - the quality extra
    except ImportError:  # the light install: the pipeline scores them anyway
        return run
    from llmpulse.detectors.quality.reference import rouge_l  # rouge-score's figure, at any length

    if pairs:
        run.rouge_l = sum(rouge_l(ref, resp) for resp, ref in pairs) / len(pairs)
    return run


_EVERY = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


def parse_every(text: str) -> float:
    """``--every`` as seconds.

    >>> parse_every("1h"), parse_every("90s"), parse_every("0.5d")
    (3600.0, 90.0, 43200.0)
    """
    m = _EVERY.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise GoldenError(f"--every: expected a duration such as 30m or 1h, got {text!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _load_callable(spec: str) -> Callable[[str], Any]:
    mod, sep, name = spec.partition(":")
    if not sep or not mod or not name:
        raise GoldenError(f"--callable: expected package.module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise GoldenError(f"--callable {spec}: {exc}") from None
    if not callable(fn):
        raise GoldenError(f"--callable {spec}: not callable")
    return fn


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="golden set: JSONL with question and reference per line")
    p.add_argument("--app", required=True, help="app name the answers are recorded under")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--endpoint", help="OpenAI-compatible API root, e.g. http://host:8000/v1")
    src.add_argument("--callable", help="package.module:function answering a question (str -> str)")
    p.add_argument("--model", default="golden", help="model name (sent to the endpoint too)")
    p.add_argument("--model-version", default="", help="model version (default: what the endpoint reports)")
    p.add_argument("--prompt-version", default=None, help="prompt version tag of the answers")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the endpoint's token")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--every", default=None, help="repeat the run at this interval (30m, 1h, ...)")
    p.add_argument("--runs", type=int, default=0, help="with --every: stop after this many runs")
    p.add_argument("--kafka", default=None, help="bootstrap servers (default: LLMPULSE_KAFKA or the running stack)")


def run_cli(args: argparse.Namespace) -> int:
    import sys

    try:
        return _run(args)
    except GoldenError as exc:
        print(f"llmpulse eval: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import os

    from llmpulse.monitor import Monitor

    path = Path(args.file)
    try:
        with path.open(encoding="utf-8") as f:
            cases = parse_golden(f, source=str(path))
    except OSError as exc:
        raise GoldenError(f"{path}: {exc.strerror}") from None
    every = parse_every(args.every) if args.every else None
    closer: Callable[[], None] = lambda: None  # noqa: E731
    if args.endpoint:
        oa = OpenAIAnswerer(args.endpoint, args.model, api_key=os.environ.get(args.api_key_env, ""),
                            timeout_s=args.timeout)
        answer: Answerer = oa
        closer = oa.close
    else:
        answer = callable_answerer(_load_callable(args.callable))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    mon = Monitor(app=args.app, bootstrap=args.kafka or os.environ.get("LLMPULSE_KAFKA") or None)
    n = 0
    try:
        while True:
            started = time.monotonic()
            run = run_golden(cases, answer, mon, model=args.model, model_version=args.model_version,
                             prompt_version=args.prompt_version, golden_set=path.stem)
            mon.flush(30)
            n += 1
            rouge = "n/a" if run.rouge_l is None else f"{run.rouge_l:.3f}"
            print(f"golden run {n}: {run.answered}/{run.cases} answered, errors {run.errors or 0}, "
                  f"ROUGE-L {rouge}", flush=True)
            if every is None or (args.runs and n >= args.runs):
                break
            if stop.wait(max(0.0, every - (time.monotonic() - started))):
                break
    finally:
        mon.close()
        closer()
    return 0 if every is not None or run.answered == run.cases else 1
