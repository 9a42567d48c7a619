"""``llmpulse bench detectors``: quality and speed of every detector family.

Runs the family benchmarks in one process, in turn, and gathers their figures:

* latency: percentile sketch error against numpy, throughput, change detection
  delay and false alarms;
* drift: detection delay for mean shifts of 0.25/0.5/1 sd, a variance change and
  a category-mix change, false alarms per 100k events, throughput;
* embedding: embedder texts/s per batch size and provider, topic-change delay;
* bias: agreement with fairlearn, small-segment false signals, throughput;
* hallucination: AUROC and flag precision/recall per external labelled set, next to
  length and lexical-novelty baselines; pairs/s at short and ~500-word contexts.

    python -m llmpulse.bench.detectors --json detectors.json [--quick] [--only drift,bias]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["FAMILIES", "format_table", "run"]

FAMILIES: tuple[str, ...] = ("latency", "drift", "embedding", "bias", "hallucination")


def run(quick: bool = False, only: tuple[str, ...] | None = None, data: str | None = None) -> dict[str, Any]:
    """``data``: labelled groundedness set(s) for the hallucination family (default: its own)."""
    out: dict[str, Any] = {"benchmark": "detectors", "families": {}}
    for fam in only or FAMILIES:
        name = f"llmpulse.bench.detectors_{fam}"
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(name)
            extra = {"data": data} if data and fam == "hallucination" else {}
            result = mod.run(quick=quick, **extra)
            out["families"][fam] = {"ok": True, "seconds": time.perf_counter() - t0,
                                    "result": result, "table": mod.format_table(result)}
        except Exception as exc:  # one family failing must not hide the others
            out["families"][fam] = {"ok": False, "seconds": time.perf_counter() - t0,
                                    "error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc()}
    return out


def format_table(result: dict[str, Any]) -> str:
    parts = []
    for fam, r in result["families"].items():
        parts.append(f"== {fam} ({r['seconds']:.1f} s)")
        parts.append(r["table"] if r["ok"] else f"FAILED: {r['error']}")
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated families")
    ap.add_argument("--data", default=None, help="labelled groundedness set(s) for the hallucination family")
    a = ap.parse_args()
    only = tuple(a.only.split(",")) if a.only else None
    result = run(quick=a.quick, only=only, data=a.data)
    print(format_table(result))
    if a.json:
        slim = {k: v for k, v in result.items()}
        Path(a.json).write_text(json.dumps(slim, indent=2, default=str))
    return 0 if all(r["ok"] for r in result["families"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
