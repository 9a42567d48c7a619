"""Labelled ticket-router data drawn from the simulated support app.

The retraining package (``retrain/``) never runs the simulator: it sits below
it. This module does, and hands the tickets down as
:class:`llmpulse.retrain.trainer.Dataset` values or ``(prompt, intent, segment)``
tuples: training data for ``llmpulse retrain``, drifted traffic for the
closed loop (:mod:`llmpulse.closed_loop`), and the reference version's
training tickets, written once into ``retrain/reference_tickets.jsonl``.

>>> ds = router_dataset(seed=1, duration_s=20, rate=5)
>>> len(ds), ds.texts[0], ds.labels[0], ds.segments[0]["language"]
(83, 'I hit the storage limit on Free. What are my options? thx', 'account', 'en')
>>> [t[1] for t in drifted_tickets(3, 4)]
['refund', 'integration', 'account', 'technical']
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from llmpulse.retrain.reference import (
    LAUNCH_INTENTS,
    REFERENCE_DATA,
    REFERENCE_MODEL,
    REFERENCE_WINDOW,
)
from llmpulse.retrain.trainer import Dataset
from llmpulse.simulate import Incident, SupportAppSimulator

__all__ = [
    "Ticket",
    "drifted_tickets",
    "heldout_tickets",
    "reference_lines",
    "router_dataset",
]

Ticket = tuple[str, str, dict[str, str]]
"""``(prompt, true intent, segment attributes)``."""


def router_dataset(
    *,
    seed: int = 0,
    duration_s: float = 120.0,
    rate: float = 20.0,
    start_ts: float = 1_700_000_000.0,
    incidents: Sequence[Incident] = (),
    dedupe: bool = True,
    model: str = REFERENCE_MODEL,
) -> Dataset:
    """Router prompts of :class:`~llmpulse.simulate.SupportAppSimulator` with their true intent.

    ``dedupe`` keeps the first occurrence of each prompt text, so a split by
    text never leaks a test prompt into training.
    """
    sim = SupportAppSimulator(seed=seed, rate=rate, incidents=list(incidents), start_ts=start_ts)
    seen: set[str] = set()
    texts, labels, segs = [], [], []
    for _topic, ev, truth in sim.labelled_events(duration_s):
        if truth is None or ev.get("model") != model:
            continue
        text = str(ev.get("prompt", ""))
        if dedupe and text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(truth.intent)
        segs.append(dict(ev.get("segment") or {}))
    return Dataset(tuple(texts), tuple(labels), tuple(segs), (start_ts, start_ts + duration_s))


def drifted_tickets(seed: int, n: int, *, share: float = 1.0) -> list[Ticket]:
    """``n`` router tickets of the simulator under ``prompt_drift`` (``share`` of the
    requests on the new topics: integrations and privacy)."""
    rate = 20.0
    sim = SupportAppSimulator(seed=seed, rate=rate, start_ts=1_700_000_000.0,
                              incidents=[Incident("prompt_drift", 0, 1e9, {"share": str(share)})])
    out: list[Ticket] = []
    for _topic, ev, t in sim.labelled_events(n / rate * 1.5 + 5):
        if t is not None and ev.get("model") == REFERENCE_MODEL:
            out.append((str(ev["prompt"]), t.intent, dict(ev.get("segment") or {})))
            if len(out) >= n:
                break
    return out


def heldout_tickets(seed: int, n: int, *, exclude: Collection[str], share: float = 1.0,
                    max_draws: int = 8) -> list[Ticket]:
    """Up to ``n`` drifted tickets, each prompt text at most once, none of them in ``exclude``.

    For figures measured on tickets no model was trained on: ``seed`` should
    differ from the training traffic's, and ``exclude`` hold every text that
    could have reached a training set. Draws more traffic (up to
    ``max_draws`` rounds) when the exclusions leave too few.

    >>> got = heldout_tickets(11, 20, exclude={t[0] for t in drifted_tickets(3, 200)})
    >>> len(got), len({t[0] for t in got})
    (20, 20)
    """
    out: list[Ticket] = []
    seen = set(exclude)
    for k in range(max_draws):
        for t in drifted_tickets(seed + 7919 * k, 4 * n, share=share):
            if t[0] not in seen:
                seen.add(t[0])
                out.append(t)
                if len(out) >= n:
                    return out
    return out


def reference_lines() -> list[str]:
    """The lines of ``retrain/reference_tickets.jsonl``: launch-time tickets (seed 0, 120 s
    at 5 requests/s, copies kept) restricted to the launch intents."""
    start, end = REFERENCE_WINDOW
    data = router_dataset(seed=0, duration_s=end - start, rate=5.0, start_ts=start, dedupe=False)
    return [json.dumps({"text": t, "label": lab, "segment": dict(seg)}, sort_keys=True)
            for t, lab, seg in zip(data.texts, data.labels, data.segments, strict=True)
            if lab in LAUNCH_INTENTS]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmpulse.router_data --write-reference [PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m llmpulse.router_data",
                                     description="Write the reference version's training tickets.")
    parser.add_argument("--write-reference", nargs="?", const=str(REFERENCE_DATA), metavar="PATH",
                        help=f"write them (default {REFERENCE_DATA})")
    args = parser.parse_args(argv)
    if not args.write_reference:
        parser.print_help()
        return 2
    lines = reference_lines()
    Path(args.write_reference).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} tickets to {args.write_reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
