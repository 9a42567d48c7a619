"""``llmpulse demo``: the embedded stack plus the simulated support app.

Runs ``up`` in this process, drives the simulator (with scripted incidents)
through the client shim in a background thread for a bounded time and shows,
while it runs, a progress line, each incident as it starts and ends, and each
alert as it fires and resolves (the ``alerts`` table, polled every second).
Then it waits until every event sent is stored and prints a summary: what was
sent, stored and dead-lettered, rows per table, every incident with the alert
that detected it (or that it was missed) and how long detection took, and the
alerts no incident explains (:mod:`llmpulse.scoring`).

Answer quality (:mod:`llmpulse.demo_quality`): before the traffic, a small
golden set is asked of a good and a regressed version of a model (in-process
answerers, ``--no-golden`` skips it) and the summary shows the drop of their
``quality.rouge_l`` signals; during it, a deterministic stand-in judge grades a
share of the answers (with ``--judge``; ``--judge-sample``) through the code of
``llmpulse judge`` and the summary shows its counters and the
``judge.agreement_*`` signals.

Windows are scaled to the run so that its incidents can be detected within
it: the default rules wait for up to three breaching windows, so a 120 s demo
uses 10 s drift, bias, hallucination and quality windows and 5 s latency
windows (:func:`demo_windows`). Each run reports under its own app name, so
alert state kept from an earlier run (cooldowns) does not hide this run's
alerts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

from llmpulse.config import Settings
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE

__all__ = ["AlertWatch", "configure", "default_incidents", "demo_windows", "run_cli"]


def default_incidents(duration_s: float) -> list[str]:
    """The scripted incidents, placed as shares of the run so any length works.

    Each lasts a third of the run or more (the slow families need three
    breaching windows of a twelfth of the run), and the last ends early
    enough for its windows to close before the traffic stops.

    >>> default_incidents(120)
    ['latency_spike:12:36', 'segment_quality_drop:24:66', 'prompt_drift:48:90', 'hallucination_burst:66:105', 'prompt_rollout:6:48']
    """
    d = float(duration_s)

    def at(a: float, b: float) -> str:
        return f"{round(d * a):d}:{round(d * b):d}"

    return [
        f"latency_spike:{at(0.10, 0.30)}",
        f"segment_quality_drop:{at(0.20, 0.55)}",
        f"prompt_drift:{at(0.40, 0.75)}",
        f"hallucination_burst:{at(0.55, 0.875)}",
        f"prompt_rollout:{at(0.05, 0.40)}",
    ]


def demo_windows(duration_s: float, window_s: float | None = None) -> tuple[float, float]:
    """``(latency_window_s, window_s)`` for a run of ``duration_s`` seconds.

    A twelfth of the run for the slow families (5..60 s), half that for
    latency (2..10 s), unless ``window_s`` is given.

    >>> demo_windows(120), demo_windows(40), demo_windows(3600), demo_windows(120, 20)
    ((5.0, 10.0), (2.5, 5.0), (10.0, 60.0), (10.0, 20.0))
    """
    w = float(window_s) if window_s else min(60.0, max(5.0, float(round(duration_s / 12.0))))
    return min(10.0, max(2.0, w / 2.0)), w


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds of traffic (default 120)")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second (default 300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--incident", action="append", default=None, metavar="KIND:START:END",
        help="scripted incident (repeatable); default: one of each kind across the run",
    )
    parser.add_argument("--no-incidents", action="store_true", help="a healthy run")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="drift/bias/hallucination window (default: a twelfth of the run)")
    parser.add_argument("--embedding", action="store_true",
                        help="also embedding drift on prompts (MiniLM; costly on CPU)")
    parser.add_argument("--quiet", action="store_true", help="no live progress")
    parser.add_argument("--no-closed-loop", action="store_true",
                        help="skip the retrain -> gates -> canary -> promote step at the end")
    parser.add_argument("--no-golden", action="store_true",
                        help="skip the golden-set runs (a good and a regressed model version)")
    parser.add_argument("--judge", action="store_true",
                        help="also run the in-process judge on a sample of the answers (it "
                             "shares the stack's CPU with the detectors)")
    parser.add_argument("--judge-sample", type=float, default=0.1, metavar="SHARE",
                        help="share of the answers the judge grades (default 0.1)")


def _demo_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    lat, win = demo_windows(args.duration, args.window)
    signals = dataclasses.replace(
        settings.signals, enabled=True, latency_window_s=lat, window_s=win,
        embedding=bool(args.embedding or settings.signals.embedding), poll_s=1.0,
    )
    return dataclasses.replace(settings, signals=signals)


def run_cli(args: argparse.Namespace, settings: Settings) -> int:
    from llmpulse.stack import StackError, run_stack

    # the demo prints each alert itself; the agent's log line would repeat it
    logging.getLogger("llmpulse.streams.alerts_agent").setLevel(logging.ERROR)
    # a detector pass longer than the poll interval only delays the next poll
    logging.getLogger("mode.timers").setLevel(logging.ERROR)
    share = getattr(args, "judge_sample", 0.1)
    if not 0.0 <= share <= 1.0:  # also refuses NaN
        print(f"llmpulse demo: --judge-sample: must be within 0..1, got {share!r}", file=sys.stderr)
        return 2
    settings = _demo_settings(settings, args)
    # a canary that an incident's alert started gets no live traffic in a short demo
    # (the simulated router traffic does not pass the serving host): give up waiting
    # for evidence after 90 s, not the production 15 min, so the closed loop runs
    own_wait = "LLMPULSE_CANARY_MAX_WAIT_S" not in os.environ
    if own_wait:
        os.environ["LLMPULSE_CANARY_MAX_WAIT_S"] = "90"
    try:
        return run_stack(settings, main=lambda ctx: _demo(ctx, args))
    except StackError as exc:
        print(f"llmpulse demo: {exc}", file=sys.stderr)
        return 2
    finally:
        if own_wait:
            os.environ.pop("LLMPULSE_CANARY_MAX_WAIT_S", None)


class AlertWatch:
    """What is new in the ``alerts`` rows of one app since the last look.

    >>> w = AlertWatch()
    >>> row = {"alert_id": "a", "state": "firing", "updated_at": 40.0}
    >>> [r["state"] for r in w.update([row])], w.update([row])
    (['firing'], [])
    >>> [r["state"] for r in w.update([{**row, "state": "resolved", "updated_at": 70.0}])]
    ['resolved']
    >>> w.fired, w.resolved
    (1, 1)

    An alert seen for the first time already resolved fired too:

    >>> [r["state"] for r in w.update([{"alert_id": "b", "state": "resolved"}])]
    ['firing', 'resolved']
    """

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.fired = 0
        self.resolved = 0

    def update(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Transitions not reported yet, in event-time order (fired, resolved)."""
        from llmpulse.scoring import alert_time

        out: list[tuple[float, str, dict[str, Any]]] = []
        for row in rows:
            before = self.states.get(row["alert_id"])
            state = row["state"]
            if before == state:
                continue
            if before is None:
                self.fired += 1
                fired = {**row, "state": "firing"}
                out.append((alert_time(row), row["alert_id"], fired))
            if state == "resolved":
                self.resolved += 1
                out.append((float(row.get("updated_at") or 0.0), row["alert_id"], row))
            self.states[row["alert_id"]] = state
        out.sort(key=lambda t: (t[0], t[1]))
        return [r for _, _, r in out]


class _Printer:
    """Live lines on stdout; on a terminal the progress line is redrawn in place."""

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self.last_progress = 0.0

    def line(self, text: str) -> None:
        if self.tty and not self.quiet:
            print("\r\x1b[2K" + text, file=self.out, flush=True)
        else:
            print(text, file=self.out, flush=True)

    def progress(self, text: str, elapsed: float) -> None:
        if self.quiet:
            return
        if self.tty:
            print("\r\x1b[2K" + text, end="", file=self.out, flush=True)
        elif elapsed - self.last_progress >= 5.0 or self.last_progress == 0.0:
            self.last_progress = elapsed
            print(text, file=self.out, flush=True)

    def end(self) -> None:
        if self.tty and not self.quiet:
            print("", file=self.out, flush=True)


def _alert_line(row: dict[str, Any], t0_ts: float, incidents: list[dict[str, Any]]) -> str:
    from llmpulse.scoring import alert_families, alert_time, incident_families

    state = row["state"]
    at = alert_time(row) if state == "firing" else float(row.get("updated_at") or 0.0)
    dim = f" [{row['dimension']}]" if row.get("dimension") else ""
    where = f"{row['model']}@{row['model_version']}{dim}"
    if state == "firing":
        values = _detail_values(row)
        value = values[-1] if values else float(row["value"])
        active = [i["kind"] for i in incidents
                  if i["start_ts"] <= at and alert_families(row) & incident_families(i)]
        why = f"  (during {', '.join(dict.fromkeys(active))})" if active else ""
        return (f"  t={at - t0_ts:5.0f}s  ALERT    {row['severity']:<8} {row['rule']:<26} "
                f"{row['signal']} = {value:.4g} on {where}{why}")
    return (f"  t={at - t0_ts:5.0f}s  resolved {row['severity']:<8} {row['rule']:<26} "
            f"{row['signal']} on {where}")


def _detail_values(row: dict[str, Any]) -> list[float]:
    """The breaching values kept on the alert (its row's value changes as it heals)."""
    import json

    d = row.get("detail")
    try:
        detail = json.loads(d) if isinstance(d, str) else (d or {})
        return [float(v["value"]) for v in detail.get("values", [])]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


async def _demo(ctx: Any, args: argparse.Namespace) -> int:
    from llmpulse.monitor import Monitor
    from llmpulse.scoring import ALERTS_SQL, incident_families, score_alerts
    from llmpulse.simulate import Incident, SupportAppSimulator, run

    specs = [] if args.no_incidents else (args.incident or default_incidents(args.duration))
    incidents = [Incident.parse(s) for s in specs]
    app_name = f"support-demo-{time.strftime('%H%M%S')}"
    start_ts = time.time()
    sim = SupportAppSimulator(seed=args.seed, rate=args.rate, incidents=incidents,
                              start_ts=start_ts, app=app_name)
    truth = sim.ground_truth()
    sig = ctx.settings.signals
    out = sys.stdout
    pr = _Printer(out, args.quiet)
    print(f"llmpulse demo: {args.duration:g} s at {args.rate:g} req/s, seed {args.seed}, "
          f"app {app_name}", file=out)
    print(f"  http {ctx.endpoints['http']}   kafka {ctx.endpoints['kafka']}", file=out)
    print(f"  windows: latency {sig.latency_window_s:g} s, drift/bias/hallucination/quality "
          f"{sig.window_s:g} s; embedding drift {'on' if sig.embedding else 'off'}", file=out)
    for inc in incidents:
        print(f"  incident  {inc.spec()}", file=out)
    if not incidents:
        print("  no incidents scripted: a healthy run", file=out)
    print("  live: incidents as they start and end, alerts as they fire and resolve "
          "(t = seconds into the run, in event time; for alerts the end of the deciding window)",
          file=out)
    out.flush()

    monitor = Monitor(
        app=app_name,
        bootstrap=ctx.endpoints["kafka"],
        journal_dir=ctx.settings.data_dir / "journal",
    )
    stop = threading.Event()
    progress: dict[str, Any] = {"inference": 0, "feedback": 0, "sim_s": 0.0}

    def on_progress(p: dict[str, Any]) -> None:
        progress.update(p)
        if stop.is_set():
            raise KeyboardInterrupt

    watch = AlertWatch()
    where = f" WHERE app = '{app_name}'"

    def poll_store() -> tuple[list[dict[str, Any]], int]:
        rows = ctx.store.query(ALERTS_SQL + where)
        n = int(ctx.store.scalar(f"SELECT count() FROM signals FINAL{where}") or 0)
        return rows, n

    announced: set[tuple[int, str]] = set()

    def announce_incidents(sim_s: float) -> None:
        for k, inc in enumerate(truth):
            for edge, at in (("starts", inc["start_s"]), ("ends", inc["end_s"])):
                if sim_s >= at and (k, edge) not in announced:
                    announced.add((k, edge))
                    pr.line(f"  t={at:5.0f}s  incident {inc['kind']} {edge}")

    async def look() -> int:
        rows, n_signals = await asyncio.to_thread(poll_store)
        announce_incidents(float(progress.get("sim_s", 0.0)))
        for row in watch.update(rows):
            pr.line(_alert_line(row, start_ts, truth))
        return n_signals

    t0 = time.monotonic()
    golden = None
    if not getattr(args, "no_golden", False):
        from llmpulse.demo_quality import GOLDEN, GOLDEN_MODEL, run_golden_pair

        golden = await asyncio.to_thread(run_golden_pair, monitor)
        pr.line(f"  golden set faq: {len(GOLDEN)} cases asked of {GOLDEN_MODEL} v1 (good) and "
                f"v2 (regressed); ROUGE-L of the runs {golden[0].rouge_l or 0:.3f} and "
                f"{golden[1].rouge_l or 0:.3f}")
    judge = None
    if getattr(args, "judge", False):
        from llmpulse.demo_quality import DemoJudge

        judge = DemoJudge(monitor, ctx.endpoints["kafka"], app_name,
                          getattr(args, "judge_sample", 0.1))
        judge.start()
    sim_task = asyncio.ensure_future(
        asyncio.to_thread(run, monitor, sim, args.duration, progress=on_progress)
    )
    try:
        while not sim_task.done():
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - t0
            n_signals = await look()
            await _show(ctx, monitor, progress, elapsed, n_signals, watch, pr)
        result = sim_task.result()
    except BaseException:
        stop.set()
        if judge is not None:
            await judge.stop()
        raise
    judge_stats = await judge.stop() if judge is not None else {}
    if golden is not None:  # each answered case sent an inference and a reference
        result = {**result, "inference": result["inference"] + sum(r.cases for r in golden),
                  "feedback": result["feedback"] + sum(r.answered for r in golden)}
    if judge is not None:
        result = {**result, "feedback": result["feedback"] + judge.sent}
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
    # windows the watermark has passed close within a poll; give them two
    await asyncio.sleep(2.0 * sig.poll_s)
    n_signals = await look()
    pr.end()
    rows, _ = await asyncio.to_thread(poll_store)
    score = score_alerts(truth, rows, grace_s=2.0 * sig.window_s, app=app_name)
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
    print(f"  this run: {n_signals} signals, {watch.fired} alerts fired, "
          f"{watch.resolved} resolved", file=out)
    summary = score.summary()
    if truth:
        print(f"  incidents: {summary['detected']} of {summary['incidents']} detected "
              "(detection time = end of the window that fired the alert - incident start):",
              file=out)
    for d in score.detections:
        gt = d.incident
        head = f"    {gt['kind']:<22} {gt['start_s']:>4.0f}-{gt['end_s']:<4.0f}s"
        if d.alert is None:
            print(f"{head}  missed (no {'/'.join(sorted(incident_families(gt)))} alert on "
                  f"an affected model)", file=out)
        else:
            a = d.alert
            dim = f" [{a['dimension']}]" if a.get("dimension") else ""
            print(f"{head}  detected after {d.delay_s:>5.1f} s by {a['rule']} "
                  f"({a['signal']} on {a['model']}{dim})", file=out)
    if score.false_alerts:
        print(f"  alerts no incident explains: {len(score.false_alerts)}", file=out)
        for a in score.false_alerts:
            dim = f" [{a['dimension']}]" if a.get("dimension") else ""
            print(f"    {a['rule']:<26} {a['signal']} on {a['model']}{dim}", file=out)
    else:
        print("  alerts no incident explains: none", file=out)
    await _quality_summary(ctx, app_name, golden, judge, judge_stats, out)
    lost = sum(want.values()) - sum(s.stored.get(t, 0) + s.deadlettered.get(t, 0) for t in want)
    if lost:
        print(f"  WARNING: {lost} events not accounted for", file=out)
        return 1
    if not getattr(args, "no_closed_loop", False) and ctx.retrain is not None:
        return await _closed_loop(ctx, args, out)
    return 0


async def _quality_summary(ctx: Any, app: str, golden: Any, judge: Any,
                           judge_stats: dict[str, Any], out: TextIO) -> None:
    """The golden runs' ``quality.rouge_l`` and the judge's agreement, from the store."""
    from llmpulse.demo_quality import GOLDEN_MODEL, golden_summary, judge_summary

    if golden is None and judge is None:
        return
    print("  answer quality:", file=out)
    if golden is not None:
        got = await asyncio.to_thread(golden_summary, ctx.store.query, app)
        v1, v2 = got.get("v1"), got.get("v2")
        if v1 and v2:
            print(f"    golden set faq on {GOLDEN_MODEL}: quality.rouge_l v1 {v1['rouge_l']:.3f} -> "
                  f"v2 {v2['rouge_l']:.3f} (drop {v1['rouge_l'] - v2['rouge_l']:.3f}; "
                  f"{v1['n']:.0f} and {v2['n']:.0f} answers scored)", file=out)
        else:
            print(f"    golden set faq on {GOLDEN_MODEL}: quality.rouge_l not stored for "
                  f"{', '.join(v for v in ('v1', 'v2') if v not in got)}", file=out)
    if judge is not None:
        st = judge_stats
        failed = st.get("error", 0) + st.get("malformed", 0) + st.get("rate_limited", 0)
        print(f"    judge (word-overlap stand-in, {judge.sample:.0%} of answers): seen "
              f"{st.get('seen', 0)}, sampled {st.get('sampled', 0)}, graded {st.get('judged', 0)}, "
              f"failed {failed}, timeouts {st.get('timeout', 0)}, over budget "
              f"{st.get('over_budget', 0)}, queue full {st.get('queue_full', 0)}; "
              f"{judge.sent} grades sent as feedback source=judge", file=out)
        agree = await asyncio.to_thread(judge_summary, ctx.store.query, app)
        if not agree:
            print("    judge.agreement: no signal stored", file=out)
        for name, a in agree.items():
            print(f"    {name:<25} mean {a['mean']:.3f} over {a['windows']:.0f} windows "
                  f"({a['n']:.0f} graded answers)", file=out)


def _short(text: str, parts: int = 2) -> str:
    """The first reasons of a long ``;``-separated list, and how many more.

    >>> _short("a; b; c; d")
    'a; b (+2 more)'
    """
    items = [t.strip() for t in text.split(";")]
    if len(items) <= parts:
        return text
    return "; ".join(items[:parts]) + f" (+{len(items) - parts} more)"


async def _closed_loop(ctx: Any, args: argparse.Namespace, out: Any) -> int:
    """The router's accuracy drops on drifted tickets: retrain, gate, canary, promote."""
    from llmpulse.closed_loop import run_demo_loop

    print("", file=out)
    print("llmpulse demo: closed loop on the ticket router (intent-router)", file=out)

    def say(line: str) -> None:
        print(f"  {_short(line)}", file=out, flush=True)

    t0 = time.monotonic()
    res = await run_demo_loop(ctx.retrain, seed=args.seed, n_drift=300, rate=60.0, progress=say)
    rows = await asyncio.to_thread(
        ctx.store.query,
        "SELECT version, stage, trigger, metrics, toUnixTimestamp64Milli(ts) AS t "
        "FROM deployments FINAL WHERE model = 'intent-router' ORDER BY ts",
    )
    print("", file=out)
    print("  deployments of intent-router:", file=out)
    t_first = rows[0]["t"] if rows else 0
    for r in rows:
        try:
            metrics = json.loads(r["metrics"] or "{}")
        except ValueError:
            metrics = {}
        why = str(metrics.get("reason") or "")
        print(f"    +{(r['t'] - t_first) / 1000:6.1f}s  version {r['version']:<4} "
              f"{r['stage']:<12} trigger {r['trigger'] or 'manual'}  {_short(why, 1)}", file=out)
    before, after = res["accuracy_before"], res["accuracy_after"]
    held, gates = res["heldout"], res["gates_accuracy"]
    print(f"  accuracy on {held['n']} held-out drifted tickets (never trained on): {before:.3f} "
          f"(version {res['version_before']}) -> {after:.3f} (version {res['version_after']}); "
          f"majority-intent baseline {held['majority_baseline']:.3f}", file=out)
    new = held["accuracy_new_intents_by_version"]
    if held["n_new_intents"]:
        print(f"    of which {held['n_new_intents']} on the intents version 1 never learned: "
              f"{new.get(res['version_before'])} -> {new.get(res['version_after'])}", file=out)
    if gates.get("candidate") is not None:
        current = gates.get("current")
        print(f"  gates' held-out slice ({gates['n']} tickets): candidate {gates['candidate']:.3f}"
              f", current {'-' if current is None else format(current, '.3f')}", file=out)
    print(f"  retrain request to {res['stage']}: {res['request_to_final_s']:.1f} s "
          f"(closed loop {time.monotonic() - t0:.1f} s in all)", file=out)
    bad = res.get("bad_case") or {}
    if bad:
        print(f"  a worse candidate (mislabelled training data): {bad.get('stage')} - "
              f"{_short(str(bad.get('reason', '')))}", file=out)
    # the loop closed if a better version serves now, whichever request produced
    # it: an alert's (the drift incident) or the demo's own
    return 0 if after > before and res["version_after"] != res["version_before"] else 1


async def _show(ctx: Any, monitor: Any, progress: dict[str, Any], elapsed: float,
                n_signals: int, watch: AlertWatch, pr: _Printer) -> None:
    s = ctx.stats
    lag = await ctx.lag()
    ms = monitor.stats()
    open_alerts = watch.fired - watch.resolved
    pr.progress(
        f"  t={elapsed:5.1f}s  sim {progress.get('sim_s', 0):5.1f}s  sent {ms['sent']:>7}  "
        f"stored {sum(s.stored.values()):>7}  dead {sum(s.deadlettered.values()):>3}  "
        f"lag {sum(lag.values()):>5}  signals {n_signals:>5}  alerts {watch.fired:>2} "
        f"({open_alerts} open)",
        elapsed,
    )


def _counts(store: Any) -> dict[str, int]:
    from llmpulse.store import DDL, TABLES

    # FINAL collapses replays in the ReplacingMergeTree tables; the audit trail is append-only
    return {t: int(store.scalar(
        f"SELECT count() FROM {t}{' FINAL' if 'ReplacingMergeTree' in DDL[t] else ''}"))
        for t in TABLES}
