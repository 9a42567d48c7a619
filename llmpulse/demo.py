"""``llmpulse demo``: the embedded stack plus the simulated support app.

Runs ``up`` in this process, drives the simulator (with scripted incidents)
through the client shim in a background thread for a bounded time, shows
progress while it runs, then waits until every event sent is stored and
prints a summary: what was sent, stored and dead-lettered, rows per table,
and the incidents that were scripted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from typing import Any

from llmpulse.config import Settings
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE

__all__ = ["configure", "default_incidents", "run_cli"]


def default_incidents(duration_s: float) -> list[str]:
    """The scripted incidents, placed as shares of the run so any length works.

    >>> default_incidents(100)
    ['latency_spike:15:30', 'segment_quality_drop:25:55', 'prompt_drift:45:70', 'hallucination_burst:75:92']
    """
    d = float(duration_s)

    def at(a: float, b: float) -> str:
        return f"{round(d * a):d}:{round(d * b):d}"

    return [
        f"latency_spike:{at(0.15, 0.30)}",
        f"segment_quality_drop:{at(0.25, 0.55)}",
        f"prompt_drift:{at(0.45, 0.70)}",
        f"hallucination_burst:{at(0.75, 0.92)}",
    ]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of traffic (default 90)")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second (default 300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--incident", action="append", default=None, metavar="KIND:START:END",
        help="scripted incident (repeatable); default: one of each kind across the run",
    )
    parser.add_argument("--no-incidents", action="store_true", help="a healthy run")
    parser.add_argument("--quiet", action="store_true", help="no live progress")


def run_cli(args: argparse.Namespace, settings: Settings) -> int:
    from llmpulse.stack import StackError, run_stack

    try:
        return run_stack(settings, main=lambda ctx: _demo(ctx, args))
    except StackError as exc:
        print(f"llmpulse demo: {exc}", file=sys.stderr)
        return 2


async def _demo(ctx: Any, args: argparse.Namespace) -> int:
    from llmpulse.monitor import Monitor
    from llmpulse.simulate import Incident, SupportAppSimulator, run

    specs = [] if args.no_incidents else (args.incident or default_incidents(args.duration))
    incidents = [Incident.parse(s) for s in specs]
    sim = SupportAppSimulator(seed=args.seed, rate=args.rate, incidents=incidents)
    out = sys.stdout
    print(f"llmpulse demo: {args.duration:g} s at {args.rate:g} req/s, seed {args.seed}", file=out)
    print(f"  http {ctx.endpoints['http']}   kafka {ctx.endpoints['kafka']}", file=out)
    for inc in incidents:
        print(f"  incident  {inc.spec()}", file=out)

    monitor = Monitor(
        app="support-demo",
        bootstrap=ctx.endpoints["kafka"],
        journal_dir=ctx.settings.data_dir / "journal",
    )
    stop = threading.Event()
    progress: dict[str, Any] = {"inference": 0, "feedback": 0, "sim_s": 0.0}

    def on_progress(p: dict[str, Any]) -> None:
        progress.update(p)
        if stop.is_set():
            raise KeyboardInterrupt

    t0 = time.monotonic()
    sim_task = asyncio.ensure_future(
        asyncio.to_thread(run, monitor, sim, args.duration, progress=on_progress)
    )
    try:
        while not sim_task.done():
            await asyncio.sleep(1.0)
            if not args.quiet:
                await _show(ctx, monitor, progress, time.monotonic() - t0, out)
        result = sim_task.result()
    except BaseException:
        stop.set()
        raise
    # everything the app sent must reach the store before the summary
    await asyncio.to_thread(monitor.flush, 60.0)
    want = {TOPIC_INFERENCE: result["inference"], TOPIC_FEEDBACK: result["feedback"]}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        s = ctx.stats
        if all(s.consumed.get(t, 0) >= n for t, n in want.items()):
            break
        await asyncio.sleep(0.25)
    monitor.close()
    counts = await asyncio.to_thread(_counts, ctx.store)
    wall = time.monotonic() - t0
    print("", file=out)
    print(f"llmpulse demo: done in {wall:.1f} s", file=out)
    ms = monitor.stats()
    print(f"  shim      sent {ms['sent']}  delivered {ms['delivered']}  dropped {ms['dropped']}  "
          f"journaled {ms['journaled']}", file=out)
    s = ctx.stats
    for t in (TOPIC_INFERENCE, TOPIC_FEEDBACK):
        print(f"  {t:<20} sent {want[t]:>7}  stored {s.stored.get(t, 0):>7}  "
              f"dead-lettered {s.deadlettered.get(t, 0)}", file=out)
    print("  rows per table:", file=out)
    for name, n in counts.items():
        print(f"    {name:<20} {n:>8}", file=out)
    print("  incidents scripted (detection and alerts are reported once signals run):", file=out)
    for truth in result.get("incidents", []):
        print(f"    {truth['kind']:<22} {truth['start_s']:>6.0f}-{truth['end_s']:<6.0f}s  "
              f"expected signals: {', '.join(truth.get('signals', []))}", file=out)
    lost = sum(want.values()) - sum(s.stored.get(t, 0) + s.deadlettered.get(t, 0) for t in want)
    if lost:
        print(f"  WARNING: {lost} events not accounted for", file=out)
        return 1
    return 0


async def _show(ctx: Any, monitor: Any, progress: dict[str, Any], elapsed: float, out: Any) -> None:
    s = ctx.stats
    lag = await ctx.lag()
    ms = monitor.stats()
    line = (
        f"  t={elapsed:5.1f}s  sim {progress.get('sim_s', 0):5.1f}s  sent {ms['sent']:>7}  "
        f"stored {sum(s.stored.values()):>7}  dead {sum(s.deadlettered.values()):>3}  "
        f"lag {sum(lag.values()):>5}"
    )
    if out.isatty():
        print("\r" + line, end="", file=out, flush=True)
    else:
        print(line, file=out, flush=True)


def _counts(store: Any) -> dict[str, int]:
    from llmpulse.store import TABLES

    return {t: int(store.scalar(f"SELECT count() FROM {t} FINAL")) for t in TABLES}
