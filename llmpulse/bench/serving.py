"""Benchmark: ONNX model serving (the reference intent classifier) and hot-swap under load.

Figures:

* ``batches``: for batch sizes 1, 8 and 32 (distinct simulator prompts), the
  p50/p99 latency of one session call (tokenisation included) and texts/s,
  with the throughput ratio to batch size 1 measured in the same process, on
  the provider ONNX Runtime picked (CUDA when present, else CPU: the same
  command runs unchanged on a GPU machine).
* ``hot_swap``: an aiohttp server on loopback with dynamic batching (max 32
  texts, 5 ms) while an asyncio HTTP load generator (8 concurrent clients)
  sends one-text requests; the server hot-swaps between two versions 20 times
  (4 with ``--quick``). ``failed_requests`` counts non-200 answers and
  transport errors and must be 0.

Run ``python -m llmpulse.bench.serving [--json FILE] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["format_table", "run"]

BATCH_SIZES = (1, 8, 32)
CLIENTS = 8


def _models(tmp: Path) -> tuple[Path, Path, list[str]]:
    from llmpulse.detectors.embedding import export_minilm
    from llmpulse.retrain.model import HeadClassifier, build_classifier_graph
    from llmpulse.retrain.trainer import HeadTrainer
    from llmpulse.router_data import router_dataset

    data = router_dataset(seed=7, duration_s=40, rate=8)
    train, test = data.split(0.3, seed=7)
    art = HeadTrainer(encoder_path=export_minilm()).fit(train, tmp / "a")
    head = HeadClassifier.load(tmp / "a" / "head.npz").shuffled(seed=1)
    other = build_classifier_graph(export_minilm(), head, tmp / "b" / "model.onnx")
    return Path(art.path), other, list(test.texts) + list(train.texts)


def _bench_batches(model: Any, texts: list[str], quick: bool) -> dict[str, Any]:
    runs = 10 if quick else 40
    out: dict[str, Any] = {}
    for size in BATCH_SIZES:
        lat = []
        for r in range(runs):
            start = (r * size) % max(1, len(texts) - size)
            batch = texts[start : start + size]
            t0 = time.perf_counter()
            model.predict_proba(batch)
            lat.append((time.perf_counter() - t0) * 1000.0)
        arr = np.asarray(lat)
        out[str(size)] = {
            "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "texts_per_s": round(size * 1000.0 / float(arr.mean()), 1),
        }
    base = out["1"]["texts_per_s"]
    for v in out.values():
        v["ratio_vs_1"] = round(v["texts_per_s"] / base, 2)
    return out


async def _bench_swap(a: Path, b: Path, texts: list[str], swaps: int) -> dict[str, Any]:
    import aiohttp
    from aiohttp import web

    from llmpulse.retrain.serving import LoadedModel, ModelServer

    server = ModelServer(LoadedModel(a, "v0"), max_batch=32, max_wait_ms=5.0)
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/predict"
    done = asyncio.Event()
    lat: list[float] = []
    ok = 0
    failed = 0
    versions: set[str] = set()

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal ok, failed
        i = k
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                async with session.post(url, json={"texts": [texts[i % len(texts)]]}) as r:
                    body = await r.json()
                    if r.status == 200:
                        ok += 1
                        versions.add(body["model_version"])
                    else:
                        failed += 1
            except (TimeoutError, aiohttp.ClientError, ValueError):
                failed += 1
            lat.append((time.perf_counter() - t0) * 1000.0)
            i += CLIENTS

    swap_info: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(k, session)) for k in range(CLIENTS)]
        for n in range(swaps):
            swap_info.append(await server.swap(b if n % 2 == 0 else a, f"v{n + 1}"))
        done.set()
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - t_start
    stats = server.stats()
    await runner.cleanup()
    arr = np.asarray(lat or [0.0])
    return {
        "swaps": swaps,
        "clients": CLIENTS,
        "requests": ok + failed,
        "failed_requests": failed,
        "server_failed": stats["failed"],
        "versions_seen": len(versions),
        "requests_per_s": round((ok + failed) / wall, 1),
        "request_p50_ms": round(float(np.percentile(arr, 50)), 2),
        "request_p99_ms": round(float(np.percentile(arr, 99)), 2),
        "mean_batch": stats["mean_batch"],
        "swap_load_s_median": round(float(np.median([s["load_s"] for s in swap_info])), 3),
        "swap_drain_s_max": round(float(max(s["drain_s"] for s in swap_info)), 4),
        "wall_s": round(wall, 2),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure serving; returns JSON-serialisable figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmpulse.retrain.serving import LoadedModel

    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-serving-") as tmp:
        a, b, texts = _models(Path(tmp))
        model = LoadedModel(a, "bench")
        model.warm_up()
        batches = _bench_batches(model, texts, quick)
        provider = model.provider
        model.close()
        swap = asyncio.run(_bench_swap(a, b, texts, 4 if quick else 20))
    return {"provider": provider, "quick": quick, "batches": batches, "hot_swap": swap}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"serving on {result['provider']}", "",
             f"{'batch':>5}  {'p50 ms':>8}  {'p99 ms':>8}  {'texts/s':>8}  {'vs 1':>5}"]
    for size, v in result["batches"].items():
        lines.append(f"{size:>5}  {v['p50_ms']:>8.2f}  {v['p99_ms']:>8.2f}  "
                     f"{v['texts_per_s']:>8.1f}  {v['ratio_vs_1']:>5.2f}")
    s = result["hot_swap"]
    lines += [
        "",
        f"hot-swap under load: {s['swaps']} swaps, {s['clients']} clients, {s['requests']} requests "
        f"in {s['wall_s']} s ({s['requests_per_s']} req/s)",
        f"  failed_requests {s['failed_requests']}  (server-side {s['server_failed']}), "
        f"versions seen {s['versions_seen']}",
        f"  request p50 {s['request_p50_ms']} ms  p99 {s['request_p99_ms']} ms  "
        f"mean batch {s['mean_batch']}",
        f"  swap load+warm-up median {s['swap_load_s_median']} s, drain max {s['swap_drain_s_max']} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer runs and swaps")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(format_table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
