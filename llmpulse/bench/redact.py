"""PII redaction: how much personal data goes, how much else stays, what it costs.

Quality, on texts written for this purpose in many languages and notations
(``tests/data/redact_eval*.jsonl``), in three parts:

* ``dev``: half of the first set, used for tuning;
* ``heldout``: the other half, scored once before the last round of changes
  (STRICT_GROUPING, bare digit runs, decimals, product codes), which were
  made in response to it: no longer untouched by tuning;
* ``heldout2``: a second set written after that first score and before those
  changes, never used for tuning. Its figures are the honest ones.

Four redactors:

* ``default``: ``Redactor()``, phone regions :data:`~llmpulse.pii.DEFAULT_PHONE_REGIONS`;
* ``hinted``: ``Redactor(regions=(<the text's region>, *defaults))``, an app
  that knows its users' country;
* ``hint only``: ``Redactor(regions=(<the text's region>,))``;
* ``baseline``: the regex redactor llmpulse shipped before (a copy lives in
  :mod:`llmpulse.bench.redact_baseline`).

Recall is per PII value: a value counts as removed when neither it nor any of
its digit groups of four or more (or, for an e-mail, its local part) remains
in the output, unless that group also occurs elsewhere in the original text.
Specificity is per look-alike text (no personal data in it): untouched means
byte-identical output. ``kept`` is the share of look-alike strings that
survive inside texts that also hold personal data.

Cost: median ``Monitor.inference()`` time on the app thread with
``redact=True``, with ``redact=Redactor(regions=("DE",))`` and without
redaction, in the same process, on realistic support-chat prompts and
responses (a few hundred characters, some with personal data, most with
ordinary numbers), and the ratios; next to the same redactor with nothing
remembered between texts (``cold``: every text new), and to the finders as
they were before the phone finder read pieces of the text and remembered
them (:mod:`llmpulse.bench.redact_before`, same output). Prose without
digits or ``@`` is measured separately. Then the worker's ingest step
(``split_batch``) per event on the same texts, without and with
``ingest.redact``, and on events the shim already redacted.

    llmpulse bench redact [--quick] [--json FILE]
"""

from __future__ import annotations

import gc
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["DATA", "DATA_HELDOUT2", "SPLITS", "Case", "evaluate", "format_table", "load_cases", "removed", "run"]

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "redact_eval.jsonl"
DATA_HELDOUT2 = DATA.with_name("redact_eval_heldout2.jsonl")
_REDACTOR_ORDER = ("default", "hinted", "hint only", "baseline")

Case = dict[str, Any]
PII_KINDS = ("phone", "email", "card", "iban")


def load_cases(path: Path = DATA) -> list[Case]:
    """The evaluation texts, one JSON object a line."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_GROUP = re.compile(r"[^\W_]+")


def removed(value: str, kind: str, text: str, out: str) -> bool:
    """Whether ``value`` (found in ``text``) is gone from ``out``.

    >>> removed("+44 (0)20 7946 0958", "phone", "call +44 (0)20 7946 0958", "call +44 (0)[PHONE]")
    True
    >>> removed("+44 (0)20 7946 0958", "phone", "call +44 (0)20 7946 0958", "call +44 (0)20 [PHONE] 0958")
    False
    """
    if value in out:
        return False
    rest = text.replace(value, " ")
    if kind == "email":
        local = value.rsplit("@", 1)[0]
        return not (local in out and local not in rest)
    for g in _GROUP.findall(value):
        if sum(c.isdigit() for c in g) >= 4 and g in out and g not in rest:
            return False
    return True


def evaluate(redact_for: Callable[[Case], Callable[[str], str]], cases: Iterable[Case]) -> dict[str, Any]:
    """Recall per PII kind, specificity per look-alike kind, kept look-alike
    strings in mixed texts, and the failures, for one redactor (chosen per case).
    """
    hit: dict[str, list[int]] = {}
    clean: dict[str, list[int]] = {}
    kept = [0, 0]
    leaks: list[dict[str, str]] = []
    damaged: list[dict[str, str]] = []
    for c in cases:
        text = c["text"]
        out = redact_for(c)(text)
        if c["kind"].startswith("lookalike:"):
            k = c["kind"].split(":", 1)[1]
            ok = out == text
            clean.setdefault(k, [0, 0])[0] += ok
            clean[k][1] += 1
            if not ok:
                damaged.append({"id": c["id"], "text": text, "out": out})
            continue
        for v in c["pii"]:
            ok = removed(v["value"], v["kind"], text, out)
            hit.setdefault(v["kind"], [0, 0])[0] += ok
            hit[v["kind"]][1] += 1
            if not ok:
                leaks.append({"id": c["id"], "value": v["value"], "out": out})
        for s in c["keep"]:
            kept[0] += s in out
            kept[1] += 1
            if s not in out:
                damaged.append({"id": c["id"], "text": text, "out": out})

    def share(d: dict[str, list[int]]) -> dict[str, Any]:
        n = sum(v[1] for v in d.values())
        return {
            "all": round(sum(v[0] for v in d.values()) / n, 4) if n else None,
            "n": n,
            "by_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(d.items())},
        }

    return {
        "recall": share(hit),
        "specificity": share(clean),
        "kept_in_mixed": f"{kept[0]}/{kept[1]}",
        "leaks": leaks,
        "damaged": damaged,
    }


def _redactors() -> dict[str, Callable[[Case], Callable[[str], str]]]:
    from llmpulse.bench.redact_baseline import baseline_redact
    from llmpulse.pii import DEFAULT_PHONE_REGIONS
    from llmpulse.redact import Redactor

    @cache
    def with_regions(regions: tuple[str, ...]) -> Redactor:
        return Redactor(regions=regions)

    def hinted(c: Case) -> Redactor:
        hint = (c["region"],) if c.get("region") else ()
        return with_regions(tuple(dict.fromkeys(hint + DEFAULT_PHONE_REGIONS)))

    default = Redactor()
    return {
        "default": lambda c: default,
        "hinted": hinted,
        "hint only": lambda c: with_regions((c["region"],) if c.get("region") else DEFAULT_PHONE_REGIONS),
        "baseline": lambda c: baseline_redact,
    }


# Support-chat traffic: mostly ordinary numbers (orders, dates, prices,
# versions), some personal data, a few hundred characters per field.
PROMPTS = (
    "Hi, my order #114-3941689-8772232 placed on 12.03.2024 still hasn't arrived. The tracking "
    "number 1Z999AA10123456784 shows no movement since Tuesday 10:45. I paid $1,299.00. Can you help?",
    "Hallo, ich habe die Rechnung Nr. 2024-10-0042 über 1.299,00 € erhalten, aber mein Vertrag "
    "läuft seit 01.05.2024. Bitte rufen Sie mich unter 0171 1234567 zurück oder schreiben Sie an "
    "k.mayer@beispiel.de.",
    "Our app crashes on Android 14 (build UP1A.231005.007) after upgrading to version 2.14.3. "
    "Logs show a timeout to 10.0.0.5:5432 at 2024-05-01T14:30:00Z, request id "
    "550e8400-e29b-41d4-a716-446655440000.",
    "Bonjour, je voudrais changer l'IBAN de prélèvement pour FR14 2004 1010 0505 0001 3M02 606. "
    "Mon numéro est le +33 6 12 34 56 78. Merci de confirmer avant le 15/06/2024.",
    "Please summarise the meeting notes: Zoom ID 845 2391 0274, attendees 12, budget $49,990 for "
    "Q3 2024, next review on 3/4/24 at 9:00. Action items are in ticket INV-2024-000123.",
    "Which plan should I pick? Basic 9,99 € / Pro 19,99 € / Team 49,99 € per month, we have 35 "
    "users and about 1 250 000 requests per month.",
)
RESPONSES = (
    "I'm sorry for the delay. I have escalated order 114-3941689-8772232 to our courier; you will "
    "receive an update within 24 hours. A refund of $1,299.00 is possible if it does not arrive by "
    "05/20/2024.",
    "Vielen Dank für Ihre Nachricht. Wir haben die Rechnung 2024-10-0042 geprüft und melden uns "
    "innerhalb von 2 Werktagen. Ihre Kundennummer bleibt 1234567890123.",
    "Version 2.14.4 fixes the connection pool timeout. Upgrade with `pip install app==2.14.4` and "
    "set pool_timeout=30 in config.yaml; restart the workers on port 8080.",
    "C'est noté : le nouvel IBAN sera utilisé à partir du prochain prélèvement du 05/07/2024. "
    "Montant : 39,90 €.",
    "Summary: the team agreed on a $49,990 budget for Q3 2024; next review on 3/4/24 at 9:00; "
    "owner Dana, follow-up in INV-2024-000123.",
    "For 35 users the Team plan at 49,99 € per month fits best; it includes 2 000 000 requests "
    "per month and priority support.",
)


# Prose without digits or "@": explanations, apologies, summaries.
PROSE = (
    "Could you explain why my last answer was marked as unhelpful? I asked the assistant to summarise the "
    "onboarding guide for new team members and it gave me a long list of generic tips instead of the steps "
    "from our own document. I would like to understand what went wrong and how to phrase the request better "
    "next time, because several colleagues rely on these summaries when they start.",
    "Thanks for the detailed feedback, and sorry that the summary missed the point. The assistant did not "
    "have your onboarding guide in its context for that request, so it fell back on general advice. When you "
    "ask for a summary of a specific document, attach it or name the shared folder it lives in; the retrieval "
    "step then finds the right passages and the answer follows your own steps, in your own order. I have also "
    "flagged the conversation so the team can review why the document was not retrieved automatically. "
    "In the meantime, a good way to phrase it is: summarise the attached onboarding guide for a new engineer, "
    "keep the order of the steps, and point out anything that needs access rights before the first day. "
    "That usually produces a short, faithful summary that colleagues can follow without reading the whole "
    "guide, and it makes it easy to spot when something important was left out.",
)


def _cost(n: int, rounds: int) -> dict[str, float]:
    from llmpulse.bench.redact_before import BeforeRedactor
    from llmpulse.monitor import Monitor
    from llmpulse.pii import clear_caches
    from llmpulse.redact import Redactor

    def make(redact: bool | Callable[[str], str]) -> Monitor:
        # Nothing listens on the discard port; the buffer holds every event,
        # so only the app thread's work is measured.
        return Monitor(app="bench", bootstrap="127.0.0.1:9", model="m", model_version="1",
                       redact=redact, buffer_events=12 * n * rounds + 2000, log_interval_s=3600.0)

    current = Redactor()

    def cold(text: str) -> str:  # every text as if never seen before
        clear_caches()
        return current(text)

    fields = {"latency_ms": 800.0, "status": "ok", "input_tokens": 120, "output_tokens": 40}
    numbers = (PROMPTS, RESPONSES)
    prose = (PROSE[:1], PROSE[1:])
    runs: dict[str, tuple[Monitor, tuple[tuple[str, ...], tuple[str, ...]]]] = {
        "plain": (make(False), numbers),
        "before": (make(BeforeRedactor()), numbers),
        "default": (make(current), numbers),
        "cold": (make(cold), numbers),
        "one_region_before": (make(BeforeRedactor(("DE",))), numbers),
        "one_region": (make(Redactor(regions=("DE",))), numbers),
        "prose_plain": (make(False), prose),
        "prose_before": (make(BeforeRedactor()), prose),
        "prose": (make(current), prose),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}

    def events(mon: Monitor, texts: tuple[tuple[str, ...], tuple[str, ...]], count: int) -> None:
        prompts, responses = texts
        for i in range(count):
            mon.inference(prompt=prompts[i % len(prompts)], response=responses[i % len(responses)], **fields)

    try:
        for mon, texts in runs.values():
            events(mon, texts, 50)
        for _ in range(rounds):  # alternate, so the machine's noise is shared
            for name, (mon, texts) in runs.items():
                gc.collect()
                t0 = time.perf_counter_ns()
                events(mon, texts, n)
                times[name].append((time.perf_counter_ns() - t0) / n / 1000.0)
    finally:
        for mon, _ in runs.values():
            mon.close(timeout=0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "plain_us": round(med["plain"], 1),
        "before_us": round(med["before"], 1),
        "before_ratio": round(med["before"] / med["plain"], 1),
        "redact_us": round(med["default"], 1),
        "ratio": round(med["default"] / med["plain"], 1),
        "speedup": round(med["before"] / med["default"], 1),
        "cold_us": round(med["cold"], 1),
        "cold_ratio": round(med["cold"] / med["plain"], 1),
        "cold_speedup": round(med["before"] / med["cold"], 2),
        "one_region_before_us": round(med["one_region_before"], 1),
        "one_region_us": round(med["one_region"], 1),
        "one_region_ratio": round(med["one_region"] / med["plain"], 1),
        "one_region_speedup": round(med["one_region_before"] / med["one_region"], 1),
        "chars_per_event": round(sum(len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES, strict=True)) / len(PROMPTS)),
        "prose_plain_us": round(med["prose_plain"], 1),
        "prose_before_us": round(med["prose_before"], 1),
        "prose_redact_us": round(med["prose"], 1),
        "prose_ratio": round(med["prose"] / med["prose_plain"], 2),
        "prose_chars_per_event": len(PROSE[0]) + len(PROSE[1]),
    }


def _worker_cost(n: int, rounds: int) -> dict[str, float]:
    """The worker's ingest step (``split_batch``) per event, without and with
    ``ingest.redact``, on the same number-heavy events in envelopes of 100; and on
    events the shim already redacted (their texts pass the redactor again)."""
    import orjson

    from llmpulse.redact import Redactor
    from llmpulse.streams.ingest import Message, split_batch

    redact = Redactor()
    now = int(time.time() * 1000)

    def envelopes(texts: Callable[[str], str]) -> list[Message]:
        evs = [{"event_id": f"e{i}", "request_id": f"r{i}", "ts": now, "app": "bench", "model": "m",
                "model_version": "1", "latency_ms": 800.0, "status": "ok", "input_tokens": 120,
                "output_tokens": 40, "prompt": texts(PROMPTS[i % len(PROMPTS)]),
                "response": texts(RESPONSES[i % len(RESPONSES)])} for i in range(n)]
        return [Message(b"\n".join(orjson.dumps(e) for e in evs[k:k + 100]), "llmpulse.inference", 0, k)
                for k in range(0, n, 100)]

    raw, pre = envelopes(str), envelopes(redact)
    runs: dict[str, tuple[list[Message], Callable[[str], str] | None]] = {
        "plain": (raw, None), "redact": (raw, redact), "again": (pre, redact)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for msgs, red in runs.values():
        split_batch(msgs[:2], kind="inference", redact=red, now_ms=now)
    for _ in range(rounds):
        for name, (msgs, red) in runs.items():
            gc.collect()
            t0 = time.perf_counter_ns()
            batch = split_batch(msgs, kind="inference", redact=red, now_ms=now)
            times[name].append((time.perf_counter_ns() - t0) / n / 1000.0)
            assert batch.count == n, batch.dead[:1]
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"worker_plain_us": round(med["plain"], 1), "worker_redact_us": round(med["redact"], 1),
            "worker_ratio": round(med["redact"] / med["plain"], 1), "worker_again_us": round(med["again"], 1)}


SPLITS = ("dev", "heldout", "heldout2")


def run(quick: bool = False) -> dict[str, Any]:
    """Score every redactor on each part of the set, then measure the cost."""
    cases = load_cases() + load_cases(DATA_HELDOUT2)
    quality: dict[str, dict[str, Any]] = {}
    for name, redact_for in _redactors().items():
        for split in SPLITS:
            quality[f"{name}/{split}"] = evaluate(redact_for, (c for c in cases if c["split"] == split))
    cost = _cost(n=200 if quick else 1000, rounds=3 if quick else 5)
    cost.update(_worker_cost(n=500 if quick else 5000, rounds=3 if quick else 5))
    return {"texts": {s: sum(c["split"] == s for c in cases) for s in SPLITS}, "quality": quality,
            "cost": cost, "python": sys.version.split()[0]}


def format_table(result: dict[str, Any]) -> str:
    """Per part of the set: recall and specificity per redactor and kind; then the cost."""
    q = result["quality"]
    names = sorted({k.split("/")[0] for k in q}, key=list(_REDACTOR_ORDER).index)
    lines = []

    def row(label: str, cells: list[str]) -> None:
        lines.append(label.ljust(22) + "".join(c.rjust(12) for c in cells))

    for split in SPLITS:
        cols = [f"{n}/{split}" for n in names]
        lines.append(f"== {split} ({result['texts'][split]} texts)")
        row("", names)
        row("PII recall", [f"{q[c]['recall']['all']:.1%}" for c in cols])
        for k in PII_KINDS:
            row(f"  {k}", [q[c]["recall"]["by_kind"].get(k, "-") for c in cols])
        row("look-alike untouched", [f"{q[c]['specificity']['all']:.1%}" for c in cols])
        for k in q[cols[0]]["specificity"]["by_kind"]:
            row(f"  {k}", [q[c]["specificity"]["by_kind"].get(k, "-") for c in cols])
        row("kept in mixed texts", [q[c]["kept_in_mixed"] for c in cols])
        lines.append("")
    cost = result["cost"]
    lines.append(
        f"Monitor.inference() on the app thread, {cost['chars_per_event']} characters of number-heavy text per "
        f"event: {cost['plain_us']:.1f} µs without redaction; with redact=True {cost['redact_us']:.1f} µs "
        f"({cost['ratio']:.1f}x; texts seen before) and {cost['cold_us']:.1f} µs ({cost['cold_ratio']:.1f}x; "
        f"nothing remembered), against {cost['before_us']:.1f} µs ({cost['before_ratio']:.1f}x) for the "
        f"whole-text finder: {cost['speedup']:.1f}x and {cost['cold_speedup']:.2f}x faster; one phone region "
        f"{cost['one_region_us']:.1f} µs ({cost['one_region_ratio']:.1f}x) against {cost['one_region_before_us']:.1f} µs"
    )
    lines.append(
        f"  prose without digits or @, {cost['prose_chars_per_event']} characters per event: "
        f"{cost['prose_plain_us']:.1f} µs without redaction, {cost['prose_redact_us']:.1f} µs with redact=True "
        f"({cost['prose_ratio']:.2f}x), {cost['prose_before_us']:.1f} µs for the whole-text finder"
    )
    lines.append(
        f"  the worker's ingest step per event (ingest.redact): {cost['worker_plain_us']:.1f} µs without, "
        f"{cost['worker_redact_us']:.1f} µs with ({cost['worker_ratio']:.1f}x); events the shim already "
        f"redacted {cost['worker_again_us']:.1f} µs"
    )
    for name in ("default/heldout2", "hinted/heldout2"):
        for leak in q[name]["leaks"]:
            lines.append(f"leak [{name}] {leak['id']}: {leak['value']!r} -> {leak['out']!r}")
        for d in q[name]["damaged"]:
            lines.append(f"damaged [{name}] {d['id']}: {d['text']!r} -> {d['out']!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from llmpulse.bench._stack import finish

    ap = argparse.ArgumentParser(prog="python -m llmpulse.bench.redact", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events for the cost figure")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    sys.exit(finish(run(quick=args.quick), format_table, args.json))


if __name__ == "__main__":
    main()
