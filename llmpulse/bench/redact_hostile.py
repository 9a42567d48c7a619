"""PII redaction on texts built to be slow: what one hostile text costs the app thread.

The shim redacts on the caller's thread and accepts texts up to
``Limits.max_text_bytes`` (256 KB). Before the finders had budgets, 256 KB of
``1234 1234 …`` took 12 s there, and a text of address-shaped strings about as
long. Each family below is a shape of text that makes one check expensive per
character (a digit run the phone matcher reads in every region, an ``@`` per
few characters, the plain view's escapes); :func:`family` builds it at any
length from a seeded generator.

For each family, in one process:

* ``bounded``: milliseconds for ``Redactor()`` (budgets on) at the shim's
  cap, and at ``--size`` characters;
* ``unbounded``: ``Redactor(bounded=False)`` at ``--size`` characters (at the
  cap it would take seconds to minutes), and the ratio;
* ``covered``: whether every span the unbounded redactor removes is removed by
  the bounded one as well (over the budget, candidates are redacted
  unchecked: more goes, nothing stays);
* ``ordinary``: a realistic support-chat prompt of the same length, for scale;
* ``events``: one shim event (``TextPolicy.apply``) of 64 texts of 4 KB: its
  texts share one budget, so it costs about what one text does.

    llmpulse bench redact_hostile [--quick] [--json FILE]
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FAMILIES", "covered", "family", "format_table", "run"]

CAP = 256 * 1024


def _repeat(unit: str) -> Callable[[random.Random], str]:
    return lambda rng: unit


FAMILIES: dict[str, Callable[[random.Random], str]] = {
    # one unbroken digit run that the phone matcher reads in every region
    "digit groups": _repeat("1234 "),
    "hyphenated digits": _repeat("12-"),
    "plus signs": _repeat("+1 "),
    # many distinct numbers, each its own piece
    "distinct national numbers": lambda rng: f"ruf 0171 {rng.randrange(10**6, 10**7)} ",
    "distinct ids": lambda rng: f"x{rng.randrange(10**6, 10**7)} ",
    "card-shaped groups": _repeat("4111 "),
    "iban-shaped groups": _repeat("GB82 "),
    # an "@" every few characters: a validation each
    "at signs between letters": _repeat("a@"),
    "address chains": _repeat("a@b."),
    "distinct addresses": lambda rng: f"u{rng.randrange(10**6)}@ex{rng.randrange(10**4)}.com ",
    "percent-escaped addresses": lambda rng: f"jane{rng.randrange(10**4)}%40example.com ",
    # the plain view's marks
    "html references": _repeat("&#64;&#x40;"),
    "unicode escapes": _repeat("\\u0040\\u0031"),
    "full-width digits": _repeat("\uff11\uff12\uff13\uff14 "),
    # for scale: what an ordinary prompt of the same length costs
    "ordinary prompt": lambda rng: rng.choice((
        "Hi, my order 4471-2209 has not arrived yet. ",
        f"You can reach me on +44 20 7946 {rng.randrange(1000, 9999)} after 5 pm. ",
        "The invoice from 2024-05-01 shows 3 items at 19.99 each. ",
        f"Please write to sam.{rng.randrange(1000)}@example.org instead. ",
        "Version 2.14.3 fixed it for a while, then it broke again. ",
    )),
}
"""Hostile text shapes: each draws one unit at a time from a seeded generator."""


def family(name: str, chars: int, seed: int = 7) -> str:
    """``chars`` characters of the named family (its units repeated or drawn)."""
    rng = random.Random(seed)
    unit = FAMILIES[name]
    parts: list[str] = []
    n = 0
    while n < chars:
        u = unit(rng)
        parts.append(u)
        n += len(u)
    return "".join(parts)[:chars]


def covered(bounded: list[tuple[int, int, str]], unbounded: list[tuple[int, int, str]]) -> bool:
    """Whether every character the unbounded spans cover is covered by a bounded span.

    >>> covered([(0, 10, "[PHONE]")], [(2, 5, "[PHONE]"), (6, 9, "[EMAIL]")])
    True
    >>> covered([(0, 4, "[PHONE]")], [(2, 5, "[PHONE]")])
    False
    """
    gone: set[int] = set()
    for a, b, _ in bounded:
        gone.update(range(a, b))
    return all(i in gone for a, b, _ in unbounded for i in range(a, b))


def _time(fn: Callable[[], Any], rounds: int) -> float:
    """Median milliseconds of ``fn`` over ``rounds`` calls (caches emptied before each)."""
    from llmpulse.pii import clear_caches

    times = []
    for _ in range(rounds):
        clear_caches()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run(quick: bool = False, size: int = 16 * 1024) -> dict[str, Any]:
    import logging

    from llmpulse.redact import Redactor, TextPolicy, find_spans

    logging.getLogger("llmpulse.pii").setLevel(logging.ERROR)  # the budget warnings are the point here
    bounded, unbounded = Redactor(), Redactor(bounded=False)
    rounds = 1 if quick else 3
    size = 4 * 1024 if quick else size
    cap = 32 * 1024 if quick else CAP
    rows: dict[str, dict[str, Any]] = {}
    for name in FAMILIES:  # warm up: region metadata and codecs load on first use
        bounded(family(name, 2048))
        unbounded(family(name, 2048))
    for name in FAMILIES:
        small, large = family(name, size), family(name, cap)
        b_small = _time(lambda: bounded(small), rounds)  # noqa: B023 - called at once
        u_small = _time(lambda: unbounded(small), rounds)  # noqa: B023
        b_large = _time(lambda: bounded(large), rounds)  # noqa: B023
        spans_b = find_spans(small, bounded._finders)
        spans_u = find_spans(small, unbounded._finders)
        rows[name] = {
            "bounded_ms_cap": round(b_large, 1),
            "bounded_ms": round(b_small, 2),
            "unbounded_ms": round(u_small, 2),
            "ratio": round(u_small / b_small, 2) if b_small else None,
            "covered": covered(spans_b, spans_u),
            "same": spans_b == spans_u,
        }
    # one shim event: a prompt and 63 context passages of 4 KB, every text of one family
    events: dict[str, dict[str, Any]] = {}
    for name in ("distinct national numbers", "digit groups", "distinct addresses"):
        texts = [family(name, 4096, seed=s) for s in range(64)]

        def apply(policy: TextPolicy, texts: list[str] = texts) -> None:
            policy.apply({"request_id": "r", "prompt": texts[0], "context": texts[1:]})

        b = _time(lambda: apply(TextPolicy(redactor=bounded)), rounds)  # noqa: B023
        u = _time(lambda: apply(TextPolicy(redactor=unbounded)), 1)  # noqa: B023
        events[name] = {"bounded_ms": round(b, 1), "unbounded_ms": round(u, 1), "ratio": round(u / b, 1)}
    worst = max((r["bounded_ms_cap"], n) for n, r in rows.items() if n != "ordinary prompt")
    return {
        "bench": "redact_hostile",
        "size_chars": size,
        "cap_chars": cap,
        "rounds": rounds,
        "families": rows,
        "events": events,
        "worst_bounded_ms_cap": worst[0],
        "worst_family": worst[1],
        "all_covered": all(r["covered"] for r in rows.values()),
    }


def format_table(result: dict[str, Any]) -> str:
    size, cap = result["size_chars"], result["cap_chars"]
    head = (f"{'family':28s} {f'bounded @{cap // 1024}K':>14s} {f'bounded @{size // 1024}K':>13s} "
            f"{f'unbounded @{size // 1024}K':>15s} {'ratio':>7s}  covered  same")
    lines = [head, "-" * len(head)]
    for name, r in result["families"].items():
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        lines.append(f"{name:28s} {r['bounded_ms_cap']:>11.1f} ms {r['bounded_ms']:>10.2f} ms "
                     f"{r['unbounded_ms']:>12.2f} ms {ratio:>7s}  {'yes' if r['covered'] else 'NO':7s}  "
                     f"{'yes' if r['same'] else 'no'}")
    for name, r in result["events"].items():
        lines.append(f"one event of 64 texts of 4K, {name}: bounded {r['bounded_ms']:.0f} ms, "
                     f"unbounded {r['unbounded_ms']:.0f} ms ({r['ratio']:.1f}x)")
    lines.append(f"worst hostile family at {cap // 1024}K: {result['worst_family']} "
                 f"({result['worst_bounded_ms_cap']:.0f} ms); every unbounded finding also removed: "
                 f"{'yes' if result['all_covered'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    from llmpulse.bench._stack import finish

    ap = argparse.ArgumentParser(prog="python -m llmpulse.bench.redact_hostile", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small texts, one round")
    ap.add_argument("--size", type=int, default=16 * 1024, help="characters for the unbounded comparison")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    sys.exit(finish(run(quick=args.quick, size=args.size), format_table, args.json))


if __name__ == "__main__":
    main()
