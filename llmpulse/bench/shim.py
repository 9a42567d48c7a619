"""Cost of ``Monitor.inference()`` on the app's thread, against an OpenTelemetry span.

Both sides record the same attributes for a chat completion (model, version,
latency, status, tokens, cost, a segment, a short prompt and response). The
baseline is what OpenTelemetry-based LLM observability (Langfuse, Phoenix,
OpenLLMetry) costs in the app: opentelemetry-sdk ``TracerProvider`` with a
``BatchSpanProcessor`` exporting to an ``InMemorySpanExporter`` (no network, so
this favours the span). The shim runs against the embedded broker started here,
so its delivery thread (batching, lz4, librdkafka callbacks) competes for the
GIL during the measurement, as it would in production.

Figures: median cost per call in µs (median over batches of the mean per
call), and the ratio span/shim; then three rates of the same events, which
answer different questions:

* **enqueued**: events/s the app thread hands to ``inference()``: validation,
  serialisation and the enqueue; delivery has not happened yet;
* **acknowledged**: events/s from the first call until the broker has
  acknowledged every event (``flush()``), on a broker started here;
* **stored**: events/s from the first call until every event is a row in the
  store, through an ``llmpulse up`` (signal engine off: the ingest path alone),
  a separate round on the same machine.

Rounds alternate shim and span to share the noise.

    python -m llmpulse.bench.shim [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the span baseline; a module import so that a missing extra is reported before any run
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["format_table", "run"]

PROMPT = "Summarise the customer's last three tickets about billing and suggest a reply."
RESPONSE = "The customer was double charged in March; refund issued on 2 April. Suggested reply: apologise, confirm refund."


def _fields(i: int) -> dict[str, Any]:
    return {
        "latency_ms": 800.0 + (i % 97),
        "status": "ok",
        "input_tokens": 120 + (i % 13),
        "output_tokens": 40 + (i % 7),
        "cost_usd": 0.00042,
        "segment": {"region": "eu", "tier": "pro"},
        "prompt": PROMPT,
        "response": RESPONSE,
    }


def _measure(call: Callable[[int], Any], n: int, batch: int) -> dict[str, float]:
    per_call: list[float] = []
    gc.collect()
    cpu_start = time.process_time()
    t_start = time.perf_counter()
    i = 0
    while i < n:
        t0 = time.perf_counter_ns()
        for j in range(i, i + batch):
            call(j)
        per_call.append((time.perf_counter_ns() - t0) / batch / 1000.0)
        i += batch
    elapsed = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start  # all threads: app, delivery, librdkafka / span exporter
    return {
        "median_us": statistics.median(per_call),
        "events_per_s": n / elapsed,
        "elapsed_s": elapsed,
        "cpu_us": cpu / n * 1e6,
    }


def _shim_round(bootstrap: str, n: int, batch: int) -> dict[str, float]:
    from llmpulse.monitor import Monitor

    mon = Monitor(app="bench", bootstrap=bootstrap, model="gpt-x", model_version="2024-06", buffer_events=max(200_000, 2 * n))
    for i in range(2000):  # warm-up: connection, producer id, metadata
        mon.inference(**_fields(i))
    mon.flush(30)
    m = _measure(lambda i: mon.inference(**_fields(i)), n, batch)
    t0 = time.perf_counter()
    ok = mon.flush(60)
    flush_s = time.perf_counter() - t0
    s = mon.stats()
    mon.close()
    m["end_to_end_events_per_s"] = n / (m["elapsed_s"] + flush_s)
    m["all_delivered"] = float(ok and s["delivered"] == s["sent"] and s["dropped"] == 0)
    return m


def _stored_round(n: int) -> dict[str, float]:
    """``n`` events through the shim into an ``llmpulse up``'s store: the seconds until
    the broker acknowledged them all and until they were all stored."""
    from llmpulse.bench._stack import bench_stack, wait_for
    from llmpulse.events import TOPIC_INFERENCE
    from llmpulse.monitor import Monitor

    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-shim-"))
    with bench_stack(root, "signals:\n  enabled: false\n") as up:
        def stored() -> int:
            return int(up.stats()["stored"].get(TOPIC_INFERENCE, 0))

        mon = Monitor(app="bench-stored", bootstrap=up.kafka, model="gpt-x",
                      model_version="2024-06", buffer_events=max(200_000, 2 * n))
        for i in range(2000):  # warm-up: connection, producer id, the first inserts
            mon.inference(**_fields(i))
        mon.flush(30)
        wait_for(lambda: stored() >= 2000, 120, "the warm-up events stored", every=0.1)
        base = stored()
        t0 = time.perf_counter()
        for i in range(n):
            mon.inference(**_fields(i))
        ok = mon.flush(120)
        acked_s = time.perf_counter() - t0
        wait_for(lambda: stored() >= base + n, 300, f"{n} events stored", every=0.1)
        stored_s = time.perf_counter() - t0
        s = mon.stats()
        mon.close()
    return {"acked_s": acked_s, "stored_s": stored_s,
            "all_delivered": float(ok and s["delivered"] == s["sent"] and s["dropped"] == 0)}


def _otel_round(n: int, batch: int) -> dict[str, float]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    # A queue that holds the whole run: the default (2048) would silently drop
    # spans under this load, which would flatter the span.
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=n + 4096))
    tracer = provider.get_tracer("llmpulse.bench")

    def call(i: int) -> None:
        f = _fields(i)
        span = tracer.start_span(
            "chat gpt-x",
            attributes={
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-x",
                "gen_ai.response.model": "gpt-x-2024-06",
                "llm.latency_ms": f["latency_ms"],
                "llm.status": f["status"],
                "gen_ai.usage.input_tokens": f["input_tokens"],
                "gen_ai.usage.output_tokens": f["output_tokens"],
                "gen_ai.usage.cost": f["cost_usd"],
                "app.segment.region": "eu",
                "app.segment.tier": "pro",
                "gen_ai.prompt": f["prompt"],
                "gen_ai.completion": f["response"],
            },
        )
        span.end()

    for i in range(2000):
        call(i)
    m = _measure(call, n, batch)
    provider.force_flush()
    m["exported"] = float(len(exporter.get_finished_spans()))
    provider.shutdown()
    return m


def run(quick: bool = False, stored: bool = True) -> dict[str, Any]:
    """Run the benchmark; ``quick`` uses fewer events and rounds; ``stored`` adds the
    round through ``llmpulse up`` into the store."""
    from llmpulse.broker import EmbeddedBroker, port_is_free
    from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE

    n = 20_000 if quick else 200_000
    rounds = 2 if quick else 3
    batch = 1000
    rng = random.Random()
    port = next(p for p in (rng.randrange(20000, 30000) for _ in range(100)) if port_is_free(p))
    broker = EmbeddedBroker(port=port, log_path=tempfile.mktemp(prefix="llmpulse-bench-broker-", suffix=".log"))
    broker.start()
    try:
        broker.create_topics({TOPIC_INFERENCE: 4, TOPIC_FEEDBACK: 4})
        shim: list[dict[str, float]] = []
        otel: list[dict[str, float]] = []
        for _ in range(rounds):
            shim.append(_shim_round(broker.bootstrap, n, batch))
            otel.append(_otel_round(n, batch))
    finally:
        broker.stop()
    into_store = _stored_round(n) if stored else None

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    shim_us, otel_us = med(shim, "median_us"), med(otel, "median_us")
    return {
        "events": n,
        "rounds": rounds,
        "broker": "embedded Tansu on loopback (delivery thread running during measurement)",
        "shim_median_us_per_call": round(shim_us, 3),
        "shim_events_per_s": round(med(shim, "events_per_s")),
        "shim_end_to_end_events_per_s": round(med(shim, "end_to_end_events_per_s")),
        "shim_all_delivered": all(r["all_delivered"] == 1.0 for r in shim),
        "stored_round": None if into_store is None else {
            "events": n,
            "acknowledged_events_per_s": round(n / into_store["acked_s"]),
            "stored_events_per_s": round(n / into_store["stored_s"]),
            "all_delivered": into_store["all_delivered"] == 1.0,
            "stack": "llmpulse up, embedded broker and store, signal engine off",
        },
        "shim_process_cpu_us_per_event": round(med(shim, "cpu_us"), 3),
        "otel_median_us_per_call": round(otel_us, 3),
        "otel_process_cpu_us_per_event": round(med(otel, "cpu_us"), 3),
        "otel_events_per_s": round(med(otel, "events_per_s")),
        "otel_spans_exported": int(min(r["exported"] for r in otel)),
        "ratio_span_over_shim": round(otel_us / shim_us, 2),
        "python": sys.version.split()[0],
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`run`'s result."""
    rows = [
        ("", "shim inference()", "OTel span"),
        ("median cost per call (µs)", f"{result['shim_median_us_per_call']:.2f}", f"{result['otel_median_us_per_call']:.2f}"),
        ("process CPU per event (µs)", f"{result['shim_process_cpu_us_per_event']:.2f}", f"{result['otel_process_cpu_us_per_event']:.2f}"),
        ("enqueued events/s (app thread)", f"{result['shim_events_per_s']:,}", f"{result['otel_events_per_s']:,}"),
        ("acknowledged by the broker events/s", f"{result['shim_end_to_end_events_per_s']:,}", "-"),
    ]
    st = result.get("stored_round")
    if st:
        rows.append(("through llmpulse up: acked / stored events/s",
                     f"{st['acknowledged_events_per_s']:,} / {st['stored_events_per_s']:,}", "-"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.append(f"span/shim cost ratio: {result['ratio_span_over_shim']:.2f}x  "
                 f"({result['events']:,} events x {result['rounds']} rounds; {result['broker']}; "
                 f"all delivered: {result['shim_all_delivered']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llmpulse.bench.shim", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events and rounds")
    ap.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    ap.add_argument("--no-stored", action="store_true", help="skip the round into the store")
    args = ap.parse_args(argv)
    result = run(quick=args.quick, stored=not args.no_stored)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
