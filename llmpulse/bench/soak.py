"""Soak benchmark: does the embedded stack stay flat under steady traffic?

Starts ``llmpulse up`` (embedded broker on ``broker.storage``, default disk)
in a temporary directory, sends simulated inference events through
:class:`llmpulse.Monitor` at a fixed rate for ``seconds``, and every
``sample_s`` seconds records the resident memory (RSS) of every process of
the stack (``up`` and its worker processes, the Tansu broker, the broker's
object server) and the disk used by the data directory (broker objects and
the ClickHouse store apart).

After a warm-up (the first fifth of the run, at least 60 s) a least-squares
line is fitted to each series; a series is *flat* when the fitted change over
the rest of the run is under 5 % of its mean (or under 2 MB). The ClickHouse
store is expected to grow (it keeps the raw events for ``retention.raw_events``
days); the broker's objects and the processes' memory should not.

    llmpulse bench soak [--quick] [--json FILE]
    python -m llmpulse.bench.soak --rate 1000 --seconds 300 [--storage disk|memory]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from llmpulse.bench._stack import bench_stack, event_pool, finish, paced_send, stack_stats

__all__ = ["fit_slope", "format_table", "run"]

FLAT_FRACTION = 0.05
FLAT_FLOOR_MB = 2.0


def fit_slope(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (units of y per unit of t).

    >>> fit_slope([0, 1, 2, 3], [1, 3, 5, 7])
    2.0
    >>> fit_slope([0, 1], [5, 5])
    0.0
    """
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    den = sum((t - mt) ** 2 for t in ts)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den


def _children(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in argv if a]
    if "llmpulse.objstore" in args:
        return "object-server"
    if args and "tansu" in Path(args[0]).name:
        return "broker"
    if "up" in args and "llmpulse.cli" in args:
        return "up"
    return "worker-child"


def _du_mb(path: Path) -> float:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total / 1e6


class _Sampler(threading.Thread):
    def __init__(self, up_pid: int, data_dir: Path, every_s: float) -> None:
        super().__init__(daemon=True)
        self.up_pid, self.data_dir, self.every_s = up_pid, data_dir, every_s
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> None:
        rss: dict[str, float] = {}
        for pid in _children(self.up_pid):
            mb = _rss_mb(pid)
            if mb is not None:
                name = _name(pid)
                rss[name] = rss.get(name, 0.0) + mb
        self.samples.append({
            "t": time.monotonic() - self.t0,
            "rss_mb": rss,
            "disk_mb": {"broker-store": _du_mb(self.data_dir / "broker-store"),
                        "store": _du_mb(self.data_dir / "store"),
                        "data-dir": _du_mb(self.data_dir)},
        })

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every_s)


def _broker_topics(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Per topic of the broker's disk log: MB stored, and the groups that commit on it."""
    from urllib.parse import unquote

    out: dict[str, dict[str, Any]] = {}
    for cluster in (data_dir / "broker-store" / "objects" / "clusters").glob("*"):
        for topic in (cluster / "topics").glob("*"):
            out[unquote(topic.name)] = {"mb": _du_mb(topic), "groups": []}
        for offsets in (cluster / "groups" / "consumers").glob("*/offsets/*"):
            entry = out.setdefault(unquote(offsets.name), {"mb": 0.0, "groups": []})
            entry["groups"].append(unquote(offsets.parent.parent.name))
    return out


def _series(samples: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for kind in ("rss_mb", "disk_mb"):
            for name, v in s[kind].items():
                out.setdefault(f"{kind[:-3]} {name}", []).append((s["t"], v))
    return out


def _verdicts(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    out = {}
    for name, points in _series(samples).items():
        late = [(t, v) for t, v in points if t >= warmup_s]
        if len(late) < 3:
            continue
        ts, ys = [t for t, _ in late], [v for _, v in late]
        slope = fit_slope(ts, ys)  # MB per s
        span = ts[-1] - ts[0]
        mean = sum(ys) / len(ys)
        change = slope * span
        out[name] = {"mean_mb": mean, "first_mb": ys[0], "last_mb": ys[-1],
                     "min_mb": min(ys), "max_mb": max(ys), "slope_mb_per_min": slope * 60.0,
                     "fitted_change_mb": change,
                     "flat": abs(change) < max(FLAT_FRACTION * mean, FLAT_FLOOR_MB)}
    return out


def run(quick: bool = False, rate: float = 1000.0, seconds: float | None = None,
        sample_s: float = 5.0, storage: str = "disk",
        join_horizon_s: float | None = None,
        broker: dict[str, float] | None = None, malloc: str = "tuned") -> dict[str, Any]:
    from llmpulse.monitor import Monitor

    seconds = seconds or (40.0 if quick else 300.0)
    warmup_s = max(min(60.0, seconds / 3), seconds / 5)
    tmp = Path(tempfile.mkdtemp(prefix="llmpulse-bench-soak-"))
    config = f"broker:\n  storage: {storage}\n"
    for name, value in sorted((broker or {}).items()):  # e.g. retain_unread_h, prune_interval_s
        config += f"  {name}: {float(value)!r}\n"
    if join_horizon_s is not None:  # the feedback join holds this much traffic in memory
        config += f"signals:\n  join_horizon_s: {float(join_horizon_s)}\n"
    try:
        env = {"LLMPULSE_MALLOC": "default"} if malloc == "default" else {}
        with bench_stack(tmp, config, env) as up:
            assert up.pid is not None
            ep = up.endpoints
            pool = event_pool(5_000)
            sampler = _Sampler(up.pid, up.data_dir, sample_s)
            sampler.start()
            mon = Monitor(app=f"soak-{int(time.time())}", bootstrap=ep["kafka"],
                          buffer_events=200_000)
            try:
                sent, send_s = paced_send(mon.inference, pool, rate, seconds)
                mon.flush(60)
                shim = mon.stats()
            finally:
                mon.close()
            sampler.stop.set()
            sampler.join(30)
            stats = stack_stats(ep["http"])
            topics = _broker_topics(up.data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "benchmark": "soak", "storage": storage, "rate": rate, "seconds": seconds,
        "join_horizon_s": join_horizon_s or 3600.0, "broker": dict(broker or {}), "malloc": malloc,
        "sample_s": sample_s, "warmup_s": warmup_s, "sent": sent, "send_rate": sent / send_s,
        "shim_dropped": shim.get("dropped", 0), "stored": stats.get("stored"),
        "broker_topics": topics, "samples": sampler.samples, "verdicts": _verdicts(sampler.samples, warmup_s),
        "flat_rule": f"fitted change after warm-up < {FLAT_FRACTION:.0%} of the mean "
                     f"or < {FLAT_FLOOR_MB:g} MB",
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [f"soak: {result['rate']:,.0f} events/s for {result['seconds']:.0f} s "
             f"(sent {result['sent']:,}, {result['send_rate']:,.0f}/s), broker.storage "
             f"{result['storage']} {result.get('broker') or ''}, "
             f"signals.join_horizon_s {result['join_horizon_s']:g}, malloc {result.get('malloc', 'tuned')}, "
             f"samples every {result['sample_s']:g} s, warm-up "
             f"{result['warmup_s']:.0f} s; flat = {result['flat_rule']}",
             "after warm-up:",
             f"{'series':<24}{'first MB':>10}{'last MB':>10}{'min MB':>10}{'max MB':>10}"
             f"{'MB/min':>10}{'flat':>6}"]
    for name, v in sorted(result["verdicts"].items()):
        lines.append(f"{name:<24}{v['first_mb']:>10.1f}{v['last_mb']:>10.1f}"
                     f"{v.get('min_mb', 0.0):>10.1f}{v['max_mb']:>10.1f}"
                     f"{v['slope_mb_per_min']:>10.2f}{'yes' if v['flat'] else 'NO':>6}")
    lines.append("(the ClickHouse 'store' keeps the raw events by design: it grows with them)")
    lines.append("broker disk log at the end, by topic (MB; groups committing on it):")
    for topic, v in sorted(result.get("broker_topics", {}).items()):
        lines.append(f"  {topic:<40}{v['mb']:>8.1f}  {', '.join(v['groups']) or '-'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmpulse.bench.soak", description=__doc__)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--storage", choices=("disk", "memory"), default="disk")
    p.add_argument("--join-horizon", type=float, default=None, metavar="S",
                   help="signals.join_horizon_s for the run (the feedback join keeps this many "
                        "seconds of inferences in memory; default 3600)")
    p.add_argument("--broker", action="append", default=[], metavar="KEY=NUMBER",
                   help="a numeric broker.* setting for the run, e.g. retain_unread_h=0.05 "
                        "(repeatable)")
    p.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                   help="default: leave glibc malloc's own mmap threshold in the stack's "
                        "processes (llmpulse/malloc.py), to compare")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.seconds <= 0 or a.sample <= 0:
        p.error("--rate, --seconds and --sample must be > 0")
    broker: dict[str, float] = {}
    for item in a.broker:
        name, eq, value = item.partition("=")
        try:
            broker[name] = float(value)
        except ValueError:
            p.error(f"--broker {item!r}: expected KEY=NUMBER")
        if not eq or not name.isidentifier():
            p.error(f"--broker {item!r}: expected KEY=NUMBER")
    return finish(run(rate=a.rate, seconds=a.seconds, sample_s=a.sample, storage=a.storage,
                      join_horizon_s=a.join_horizon, broker=broker, malloc=a.malloc),
                  format_table, a.json)


if __name__ == "__main__":
    raise SystemExit(main())
