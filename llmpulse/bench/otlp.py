"""OTLP benchmark: spans/s from an OTLP/HTTP or OTLP/gRPC request to stored rows, and lag.

Starts ``llmpulse up`` (embedded broker and store) in a subprocess, then
sends protobuf export requests from sender threads in this process
(persistent connections, as an exporter keeps them), as fast as they go, for
small batches (10 spans a request) and large ones (512, the SDK's
``BatchSpanProcessor`` default): ``POST /v1/traces`` (``--transport http``,
the default), ``TraceService/Export`` on the stack's gRPC port (``grpc``), or
both against the same stack, one after the other, in alternating order
(``both``; the table then gives gRPC's figures as a ratio of HTTP's). Every span is a GenAI chat span with
prompt, response and token counts from the simulator's support-app traffic,
stamped with its end time when its request is built; so every span costs an
inference event and a ``spans`` row.

Figures, per batch size:

* spans/s: ``spans`` rows stored per second, from the first span's end time
  to the last row's ``ingested_at``;
* lag: ``ingested_at - ts`` of the inference events (end of the span to the
  row in ``inference_events``, through ``llmpulse.inference`` and the ingest
  agent), p50 / p99;
* CPU: CPU milliseconds the stack's processes (the worker, its mapping and
  engine processes, the broker) spent per 1,000 stored spans, from
  ``/proc`` (Linux; absent elsewhere). On a shared machine the rate follows
  whatever else runs; the CPU cost per span does much less;
* baseline: the same stack's shim figure is ``llmpulse bench ingest``; the
  mapping on the worker's event loop is ``--map-processes 0``.

    python -m llmpulse.bench.otlp --json otlp.json [--seconds 15] [--senders 3]
        [--transport http|grpc|both] [--map-processes N]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmpulse.bench._stack import bench_stack, event_pool, finish, post_sql, stack_stats

__all__ = ["format_table", "run"]


def _request(pool: list[dict[str, Any]], start: int, n: int, app: str, seq: int) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = app
    spans = rs.scope_spans.add().spans
    now = time.time_ns()
    for i in range(n):
        ev = pool[(start + i) % len(pool)]
        s = spans.add()
        s.trace_id = seq.to_bytes(8, "big") + i.to_bytes(8, "big")
        s.span_id = (i + 1).to_bytes(8, "big")
        s.name = "chat " + ev["model"]
        s.kind = 3
        s.end_time_unix_nano = now
        s.start_time_unix_nano = now - int(ev["latency_ms"] * 1e6)
        a = s.attributes
        a.add(key="gen_ai.operation.name").value.string_value = "chat"
        a.add(key="gen_ai.provider.name").value.string_value = "openai"
        a.add(key="gen_ai.request.model").value.string_value = ev["model"]
        a.add(key="gen_ai.response.model").value.string_value = ev["model_version"]
        a.add(key="gen_ai.usage.input_tokens").value.int_value = ev["input_tokens"]
        a.add(key="gen_ai.usage.output_tokens").value.int_value = ev["output_tokens"]
        a.add(key="gen_ai.prompt.0.content").value.string_value = ev.get("prompt") or ""
        a.add(key="gen_ai.completion.0.content").value.string_value = ev.get("response") or ""
    return req.SerializeToString()


def _sender(url: str, pool: list[dict[str, Any]], batch: int, app: str, stop_at: float,
            seq0: int, out: dict[str, int], lock: threading.Lock) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    sent = failed = 0
    seq = seq0
    while time.monotonic() < stop_at:
        body = _request(pool, seq * batch, batch, app, seq)
        seq += 1
        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        r = conn.getresponse()
        r.read()
        if r.status == 200:
            sent += batch
        else:
            failed += batch
    conn.close()
    with lock:
        out["sent"] += sent
        out["failed"] += failed


def _grpc_sender(url: str, pool: list[dict[str, Any]], batch: int, app: str, stop_at: float,
                 seq0: int, out: dict[str, int], lock: threading.Lock) -> None:
    import grpc

    sent = failed = 0
    seq = seq0
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        export = channel.unary_unary(f"/{TRACE_SERVICE}/Export")
        while time.monotonic() < stop_at:
            body = _request(pool, seq * batch, batch, app, seq)
            seq += 1
            try:
                export(body, timeout=60)
                sent += batch
            except grpc.RpcError:
                failed += batch
    with lock:
        out["sent"] += sent
        out["failed"] += failed


CPU_PARTS = ("loop", "worker threads", "broker", "otlp mapping", "engine", "total")
"""Where the stack's CPU goes: the worker's event loop (its main thread), its other
threads (the store's inserts and queries, Kafka), the broker (with the object server
that holds its log on disk), the OTLP mapping processes, the signal engine processes
(and any other child)."""


def _object_server(pid: int) -> bool:
    """Whether ``pid`` is the object server that holds the embedded broker's log
    (a ``python`` process like the engine's, told apart by its command line).

    >>> _object_server(os.getpid())
    False
    """
    try:
        return b"llmpulse.objstore" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def tree_cpu(pid: int | None) -> dict[str, float] | None:
    """CPU seconds (user + system) of ``pid`` and its live descendants by part
    (:data:`CPU_PARTS`); None where ``/proc`` cannot tell (not Linux, gone)."""
    if pid is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path: str) -> tuple[str, list[str]]:
        raw = Path(path).read_text()
        return raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()

    def cpu(fields: list[str]) -> float:
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    try:
        procs: dict[int, tuple[str, list[str]]] = {}
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    procs[int(entry)] = stat(f"/proc/{entry}/stat")
                except (OSError, ValueError):
                    continue
                children.setdefault(int(procs[int(entry)][1][1]), []).append(int(entry))
        if pid not in procs:
            return None
        parts = dict.fromkeys(CPU_PARTS, 0.0)
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                parts["loop" if int(task) == pid else "worker threads"] += cpu(
                    stat(f"/proc/{pid}/task/{task}/stat")[1])
            except (OSError, ValueError):
                continue
        todo = list(children.get(pid, []))
        while todo:
            p = todo.pop()
            todo += children.get(p, [])
            comm, fields = procs[p]
            part = ("otlp mapping" if comm == "llmpulse-otlp" else
                    "broker" if "tansu" in comm or "broker" in comm or _object_server(p)
                    else "engine")
            parts[part] += cpu(fields)
    except (OSError, ValueError):
        return None
    parts["total"] = sum(v for k, v in parts.items() if k != "total")
    return parts


TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
TRANSPORTS = ("http", "grpc", "both")
_SENDERS = {"http": _sender, "grpc": _grpc_sender}


def _measure(http_url: str, app: str, sent: int, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        stored = post_sql(http_url, f"SELECT count() AS n FROM spans WHERE app = '{app}'")[0]["n"]
        events = post_sql(http_url, "SELECT count() AS n FROM inference_events "
                          f"WHERE app = '{app}'")[0]["n"]
        if stored >= sent and events >= sent:
            break
        time.sleep(0.5)
    spans = post_sql(http_url, (
        "SELECT count() AS n, toUnixTimestamp64Milli(min(end_ts)) AS first_ts, "
        "toUnixTimestamp64Milli(max(ingested_at)) AS last_in, "
        "quantile(0.99)(dateDiff('millisecond', end_ts, ingested_at)) AS p99 "
        f"FROM spans FINAL WHERE app = '{app}'"))[0]
    ev = post_sql(http_url, (
        "SELECT count() AS n, quantile(0.5)(dateDiff('millisecond', ts, ingested_at)) AS p50, "
        "quantile(0.99)(dateDiff('millisecond', ts, ingested_at)) AS p99, "
        "max(dateDiff('millisecond', ts, ingested_at)) AS mx, "
        "toUnixTimestamp64Milli(max(ingested_at)) AS last_in "
        f"FROM inference_events FINAL WHERE app = '{app}'"))[0]
    span_s = max(1e-3, (max(spans["last_in"], ev["last_in"]) - spans["first_ts"]) / 1000.0)
    return {
        "spans_stored": int(spans["n"]),
        "events_stored": int(ev["n"]),
        "lost": sent - min(int(spans["n"]), int(ev["n"])),
        "spans_per_s": spans["n"] / span_s,
        "span_row_lag_p99_ms": float(spans["p99"]),
        "lag_p50_ms": float(ev["p50"]),
        "lag_p99_ms": float(ev["p99"]),
        "lag_max_ms": float(ev["mx"]),
        "span_s": span_s,
    }


def run(quick: bool = False, seconds: float | None = None, senders: int = 3,
        transport: str = "http", map_processes: int | None = None) -> dict[str, Any]:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport: one of {', '.join(TRANSPORTS)}, got {transport!r}")
    transports = ("http", "grpc") if transport == "both" else (transport,)
    seconds = seconds or (3.0 if quick else 15.0)
    tmp = Path(tempfile.mkdtemp(prefix="llmpulse-bench-otlp-"))
    runs: dict[str, Any] = {}
    try:
        config = "signals:\n  enabled: true\n" + (
            f"otlp:\n  map_processes: {map_processes}\n" if map_processes is not None else "")
        with bench_stack(tmp, config) as up:
            ep = up.endpoints
            pool = event_pool(2_000 if quick else 10_000)
            urls = {"http": ep.get("otlp") or ep["http"], "grpc": ep.get("otlp_grpc")}
            for tr in transports:
                if not urls[tr]:
                    raise RuntimeError("the stack serves no OTLP/gRPC (otlp.grpc: false?)")
                # warm up: first connections, topic metadata, the first inserts
                _SENDERS[tr](urls[tr], pool, 10, f"bench-otlp-warm-{tr}", time.monotonic() + 1.0,
                             1, {"sent": 0, "failed": 0}, threading.Lock())
            for n, batch in enumerate((10, 512)):
                # the order alternates: the later run meets a store that has more to merge
                for tr in transports if n % 2 == 0 else transports[::-1]:
                    app = f"bench-otlp-{tr}-{batch}-{int(time.time())}"
                    out = {"sent": 0, "failed": 0}
                    lock = threading.Lock()
                    stop_at = time.monotonic() + seconds
                    t0 = time.monotonic()
                    cpu0 = tree_cpu(up.pid)
                    threads = [threading.Thread(target=_SENDERS[tr], args=(
                        urls[tr], pool, batch, app, stop_at, (k + 1) * 10_000_000 + batch, out,
                        lock)) for k in range(senders)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    send_s = time.monotonic() - t0
                    m = _measure(ep["http"], app, out["sent"])
                    cpu1 = tree_cpu(up.pid)
                    if cpu0 is not None and cpu1 is not None and m["spans_stored"]:
                        m["cpu_ms_per_1k_spans"] = {
                            k: round((cpu1[k] - cpu0[k]) * 1e6 / m["spans_stored"], 1)
                            for k in CPU_PARTS}
                    key = f"batch_{batch}" if transport == "http" else f"{tr}_batch_{batch}"
                    runs[key] = {"transport": tr, "batch": batch, "seconds": seconds,
                                 "senders": senders, "sent": out["sent"],
                                 "failed": out["failed"], "send_rate": out["sent"] / send_s, **m}
            worker = stack_stats(ep["http"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "otlp",
        "transport": transport,
        "map_processes": map_processes,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "goal": {"spans_per_s": 20_000, "lag_p99_ms": 2000},
        "runs": runs,
        "otlp": worker.get("otlp"),
    }
    if transport == "both":
        result["grpc_vs_http"] = grpc_vs_http(runs)
    return result


def grpc_vs_http(runs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """gRPC's send rate and stored spans/s as a ratio of HTTP's, per batch size.

    >>> grpc_vs_http({"http_batch_10": {"batch": 10, "send_rate": 100.0, "spans_per_s": 80.0},
    ...               "grpc_batch_10": {"batch": 10, "send_rate": 150.0, "spans_per_s": 80.0}})
    {'batch_10': {'send_rate': 1.5, 'spans_per_s': 1.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for key, r in runs.items():
        if key.startswith("grpc_"):
            h = runs.get("http_" + key.removeprefix("grpc_"))
            if h:
                out[f"batch_{r['batch']}"] = {
                    f: round(r[f] / h[f], 3) if h[f] else float("nan")
                    for f in ("send_rate", "spans_per_s")}
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "otlp: OTLP protobuf -> receiver -> broker -> worker -> store (embedded stack, "
        "this machine; every span a GenAI chat span with content)",
        f"{'via':>5}{'batch':>6}{'sent/s':>10}{'spans/s':>10}{'stored':>10}{'lost':>6}{'failed':>8}"
        f"{'lag p50 ms':>12}{'lag p99 ms':>12}{'lag max ms':>12}{'cpu ms/1k':>11}",
    ]
    for r in result["runs"].values():
        lines.append(
            f"{r.get('transport', 'http'):>5}"
            f"{r['batch']:>6}{r['send_rate']:>10.0f}{r['spans_per_s']:>10.0f}"
            f"{r['spans_stored']:>10}{r['lost']:>6}{r['failed']:>8}{r['lag_p50_ms']:>12.0f}"
            f"{r['lag_p99_ms']:>12.0f}{r['lag_max_ms']:>12.0f}"
            + (f"{r['cpu_ms_per_1k_spans']['total']:>11.0f}" if r.get("cpu_ms_per_1k_spans")
               else f"{'-':>11}"))
        if r.get("cpu_ms_per_1k_spans"):
            lines.append("      cpu ms/1k spans: " + ", ".join(
                f"{k} {v:.0f}" for k, v in r["cpu_ms_per_1k_spans"].items() if k != "total"))
    for batch, ratio in result.get("grpc_vs_http", {}).items():
        lines.append(f"grpc / http, {batch}: sent/s x{ratio['send_rate']:.2f}, "
                     f"stored spans/s x{ratio['spans_per_s']:.2f}")
    if result.get("map_processes") is not None:
        lines.append(f"otlp.map_processes: {result['map_processes']}")
    g = result["goal"]
    lines.append(f"goal: >= {g['spans_per_s']} spans/s sustained, lag p99 <= {g['lag_p99_ms']} ms")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--senders", type=int, default=3)
    ap.add_argument("--transport", choices=TRANSPORTS, default="http")
    ap.add_argument("--map-processes", type=int, default=None,
                    help="otlp.map_processes of the stack (default: its own default)")
    a = ap.parse_args()
    return finish(run(quick=a.quick, seconds=a.seconds, senders=a.senders,
                      transport=a.transport, map_processes=a.map_processes),
                  format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
