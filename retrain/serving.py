"""Serving ONNX classifiers: dynamic batching, hot-swap, canary, monitored predictions.

:class:`~llmpulse.retrain.runtime.LoadedModel` (re-exported here) is one model
version in an ONNX Runtime session. :class:`ModelServer` serves one model name:

* **dynamic batching**: requests wait in a queue; a batch is cut when it holds
  ``max_batch`` texts or ``max_wait_ms`` after its first request arrived,
  whichever comes first, and runs as one session call on a worker thread.
  While a batch runs the next one fills up (``concurrency`` batches run at
  once, default 1: ONNX Runtime already uses every core for one batch).
* **hot-swap** (:meth:`ModelServer.swap`): the new version is loaded and warmed
  up beside the old one, then the active reference is switched in one step on
  the event loop; batches already cut finish on the old session, which is
  released once none is left. No request fails or waits for a load.
* **canary** (:meth:`ModelServer.set_canary`): a share of requests goes to a
  candidate version, chosen by CRC-32 of the request id, so a request id
  always gets the same version and the share is exact over many ids.
* **monitoring**: every prediction is sent as an ``inference/v1`` event
  through a :class:`llmpulse.Monitor` (optional) with ``model`` and
  ``model_version`` of the version that answered, its label and score, the
  prompt, the segment and the latency (queue wait included), so llmpulse
  watches the model it serves.

:meth:`ModelServer.app` is the HTTP face (aiohttp):

``POST /predict``  ``{"texts": [...], "request_id"?: str, "segment"?: {...}}`` →
``{"request_id", "model", "model_version", "labels", "scores", "provider"}``
``GET /health``, ``GET /stats``; ``POST /admin/swap`` ``{"path", "version"}``,
``POST /admin/canary`` ``{"path", "version", "share"}`` (``share`` 0 removes
it), ``POST /admin/promote`` (the canary becomes the active version).

>>> import asyncio
>>> from llmpulse.detectors.embedding import export_minilm
>>> from llmpulse.retrain.model import HeadClassifier, build_classifier_graph
>>> import numpy as np, tempfile
>>> head = HeadClassifier(np.zeros((384, 2)), np.array([0.0, 1.0]), ("no", "yes"))
>>> path = build_classifier_graph(export_minilm(), head, tempfile.mkdtemp() + "/m.onnx")
>>> async def demo():
...     async with ModelServer(LoadedModel(path, "1"), name="yes-no") as server:
...         p = await server.predict(["is it?", "really?"], request_id="r1")
...         return p.labels, [round(s, 4) for s in p.scores], p.model_version
>>> asyncio.run(demo())
(['yes', 'yes'], [0.7311, 0.7311], '1')
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from llmpulse.auth import ApiGuard, AuthError, TokenTable, tokens_path
from llmpulse.events import MAX_ID_CHARS, MAX_TAG_CHARS
from llmpulse.retrain.runtime import LoadedModel, choose_providers

__all__ = [
    "LoadedModel",
    "ModelServer",
    "MonitorLike",
    "Prediction",
    "canary_bucket",
    "check_outputs",
    "choose_providers",
    "unencodable",
]

log = logging.getLogger(__name__)

MAX_SEGMENT_KEYS = 64
"""Most segment entries a prediction request may carry (its monitoring event's dimensions)."""

_BUCKETS = 10_000


class MonitorLike(Protocol):
    """What the server needs of :class:`llmpulse.Monitor`."""

    def inference(self, **fields: Any) -> Any: ...


def canary_bucket(request_id: str) -> float:
    """Where a request id falls in ``[0, 1)``: CRC-32, stable across processes.

    A request goes to the canary when its bucket is below the canary share.

    >>> canary_bucket("req-1"), canary_bucket("req-1") == canary_bucket("req-1")
    (0.6545, True)
    """
    return (zlib.crc32(request_id.encode()) % _BUCKETS) / _BUCKETS


def unencodable(texts: Sequence[str]) -> int | None:
    """The index of the first text that is not encodable as UTF-8, else None.

    JSON may carry a lone surrogate (``"\\ud800"``), which no tokenizer takes.

    >>> unencodable(["fine", "\\ud800"]), unencodable(["ok"])
    (1, None)
    """
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return i
    return None


def check_outputs(model: LoadedModel) -> None:
    """Refuse ``model`` (ValueError) when its labels do not match its output width.

    One short text is run: the ``llmpulse.labels`` metadata must name every
    output column, else its answers could not be labelled.
    """
    probs, _ = model.predict_proba(["a short support question"])
    width = probs.shape[1] if probs.ndim == 2 else None
    if width != len(model.labels):
        raise ValueError(
            f"version {model.version} gives {width if width is not None else probs.shape} outputs "
            f"but its llmpulse.labels metadata names {len(model.labels)} labels"
        )


@dataclass(frozen=True)
class Prediction:
    """The answer to one request: a label and its probability per text."""

    request_id: str
    model: str
    model_version: str
    labels: list[str]
    scores: list[float]
    provider: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "model_version": self.model_version,
            "labels": self.labels,
            "scores": self.scores,
            "provider": self.provider,
        }


@dataclass
class _Pending:
    texts: list[str]
    request_id: str
    segment: dict[str, str]
    arrived: float
    future: asyncio.Future[Prediction]


@dataclass
class _Stats:
    requests: int = 0
    failed: int = 0
    batches: int = 0
    items: int = 0
    swaps: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    by_version: dict[str, int] = field(default_factory=dict)


class ModelServer:
    """Serve one model name with dynamic batching, hot-swap and a canary.

    Use as an async context manager (or call :meth:`start` and :meth:`close`
    inside a running loop). ``monitor`` receives one inference event per text;
    ``clock`` (seconds, monotonic) times latencies.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        name: str = "intent-router",
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        concurrency: int = 1,
        max_texts: int = 256,
        monitor: MonitorLike | None = None,
        clock: Callable[[], float] = time.perf_counter,
        loader: Callable[[str | os.PathLike[str], str], LoadedModel] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be positive, got {concurrency}")
        self.name = name
        self.max_batch = int(max_batch)
        self.max_wait_ms = float(max_wait_ms)
        self.concurrency = int(concurrency)
        self.max_texts = int(max_texts)
        self.monitor = monitor
        self.clock = clock
        self.loader = loader or (lambda path, version: LoadedModel(path, version))
        self.active = model
        self.canary: LoadedModel | None = None
        self.canary_share = 0.0
        self._stats = _Stats()
        self._pending: deque[_Pending] = deque()
        self._queued = 0
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llmpulse-serve")
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._nonempty: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._done: asyncio.Condition | None = None
        self._admin = asyncio.Lock()
        self._owned: set[int] = set()  # sessions this server loaded (and so may close)

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> ModelServer:
        """Start the batcher; ValueError when the active version's labels do not fit it."""
        if self._loop_task is None:
            await asyncio.to_thread(check_outputs, self.active)
            self._nonempty = asyncio.Event()
            self._full = asyncio.Event()
            self._slots = asyncio.Semaphore(self.concurrency)
            self._done = asyncio.Condition()
            self._loop_task = asyncio.create_task(self._batch_loop(), name="llmpulse-batcher")
        return self

    async def close(self) -> None:
        """Answer what is queued, then stop the batcher and the worker threads."""
        if self._loop_task is not None:
            waiting = [p.future for p in self._pending]
            await asyncio.gather(*waiting, return_exceptions=True)
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> ModelServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- predictions --------------------------------------------------------------

    async def predict(
        self,
        texts: Sequence[str],
        *,
        request_id: str | None = None,
        segment: Mapping[str, str] | None = None,
    ) -> Prediction:
        """Queue ``texts`` for the next batch and wait for their labels."""
        if self._loop_task is None:
            raise RuntimeError("the server is not started: use `async with ModelServer(...)`")
        if not texts:
            raise ValueError("texts must not be empty")
        if len(texts) > self.max_texts:
            raise ValueError(f"at most {self.max_texts} texts per request, got {len(texts)}")
        texts = [str(t) for t in texts]
        bad = unencodable(texts)
        if bad is not None:
            raise ValueError(f"text {bad} is not valid UTF-8 (it holds a lone surrogate)")
        if request_id is None:
            from llmpulse.monitor import new_id

            request_id = new_id()
        fut: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        item = _Pending(texts, str(request_id), dict(segment or {}), self.clock(), fut)
        self._pending.append(item)
        self._queued += len(item.texts)
        self._stats.requests += 1
        assert self._nonempty is not None and self._full is not None
        self._nonempty.set()
        if self._queued >= self.max_batch:
            self._full.set()
        return await fut

    def route(self, request_id: str) -> LoadedModel:
        """The version that answers ``request_id`` now: the canary for its share of ids."""
        if self.canary is not None and canary_bucket(request_id) < self.canary_share:
            return self.canary
        return self.active

    async def _batch_loop(self) -> None:
        assert self._nonempty and self._full and self._slots and self._done
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            await self._nonempty.wait()
            first = self._pending[0]
            if self._queued < self.max_batch and self.max_wait_ms > 0:
                self._full.clear()
                remaining = first.arrived + self.max_wait_ms / 1000.0 - self.clock()
                if remaining > 0 and self._queued < self.max_batch:
                    try:
                        await asyncio.wait_for(self._full.wait(), remaining)
                    except TimeoutError:
                        pass
            items: list[_Pending] = []
            n = 0
            while self._pending and (not items or n + len(self._pending[0].texts) <= self.max_batch):
                it = self._pending.popleft()
                items.append(it)
                n += len(it.texts)
            self._queued -= n
            if not self._pending:
                self._nonempty.clear()
            if self._queued < self.max_batch:
                self._full.clear()
            # Routing is decided here, on the loop: a swap between two batches
            # is atomic, and a batch once cut keeps the session it was cut for.
            groups: dict[int, tuple[LoadedModel, list[_Pending]]] = {}
            for it in items:
                model = self.route(it.request_id)
                groups.setdefault(id(model), (model, []))[1].append(it)
            for model, _ in groups.values():
                model.inflight += 1
            task = loop.create_task(self._run_groups(list(groups.values())))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_groups(self, groups: list[tuple[LoadedModel, list[_Pending]]]) -> None:
        assert self._slots is not None and self._done is not None
        ran = 0
        try:
            for model, items in groups:
                try:
                    await self._run_group(model, items)
                except Exception as exc:  # whatever raises, every request gets an answer
                    log.exception("%s: %d requests failed on version %s", self.name, len(items),
                                  model.version)
                    self._finish_failed(model, items, exc)
                finally:
                    model.inflight -= 1
                    ran += 1
        finally:
            for model, _ in groups[ran:]:
                model.inflight -= 1
            # cancelled (the server stopping): no request is left waiting forever
            for model, items in groups:
                self._finish_failed(model, items, RuntimeError("the batch did not run to the end"))
            self._slots.release()
            async with self._done:
                self._done.notify_all()

    async def _run_group(self, model: LoadedModel, items: list[_Pending]) -> None:
        """One session call for ``items``; when it fails, halves are retried, so one
        request whose input breaks the call fails alone (at most 2n - 1 calls)."""
        loop = asyncio.get_running_loop()
        texts = [t for it in items for t in it.texts]
        try:
            probs, n_tokens = await loop.run_in_executor(self._executor, model.predict_proba, texts)
        except Exception as exc:
            if len(items) == 1:
                log.warning("%s: request %s failed on version %s: %s: %s", self.name,
                            items[0].request_id, model.version, type(exc).__name__, exc)
                self._finish_failed(model, items, exc)
                return
            half = len(items) // 2
            await self._run_group(model, items[:half])
            await self._run_group(model, items[half:])
            return
        # a failure here is the model's (its labels), not an input's: no retry
        self._finish(model, items, probs, n_tokens)

    def _finish(
        self, model: LoadedModel, items: list[_Pending], probs: np.ndarray, n_tokens: np.ndarray
    ) -> None:
        now = self.clock()
        n = sum(len(it.texts) for it in items)
        if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] != len(model.labels):
            raise ValueError(f"version {model.version} answered {n} texts with shape {probs.shape} "
                             f"for {len(model.labels)} labels")
        best = probs.argmax(axis=1)
        scores = probs[np.arange(len(best)), best].astype(float).round(6).tolist()
        labels = [model.labels[i] for i in best.tolist()]
        tokens = n_tokens.tolist()
        preds: list[Prediction] = []
        row = 0
        for it in items:
            k = len(it.texts)
            preds.append(Prediction(
                it.request_id, self.name, model.version, labels[row : row + k],
                scores[row : row + k], model.provider,
            ))
            row += k
        # every answer is built: from here nothing fails half-way
        st = self._stats
        st.batches += 1
        st.items += len(labels)
        st.batch_sizes.append(len(labels))
        st.by_version[model.version] = st.by_version.get(model.version, 0) + len(items)
        row = 0
        for it, pred in zip(items, preds, strict=True):
            k = len(it.texts)
            latency_ms = (now - it.arrived) * 1000.0
            self._emit(it, model, latency_ms, "ok", pred, tokens[row : row + k], len(labels))
            row += k
            if not it.future.done():
                it.future.set_result(pred)

    def _finish_failed(self, model: LoadedModel, items: list[_Pending], exc: Exception) -> None:
        """Fail the requests of ``items`` not answered yet (and count them)."""
        now = self.clock()
        for it in items:
            if it.future.done():
                continue
            self._stats.failed += 1
            self._emit(it, model, (now - it.arrived) * 1000.0, "error", None, [0] * len(it.texts), 0)
            it.future.set_exception(exc)

    def _emit(
        self,
        it: _Pending,
        model: LoadedModel,
        latency_ms: float,
        status: str,
        pred: Prediction | None,
        tokens: list[int],
        batch_size: int,
    ) -> None:
        if self.monitor is None:
            return
        for i, text in enumerate(it.texts):
            rid = it.request_id if len(it.texts) == 1 else f"{it.request_id}-{i}"
            event: dict[str, Any] = {
                "request_id": rid,
                "model": self.name,
                "model_version": model.version,
                "latency_ms": round(latency_ms, 3),
                "status": status,
                "input_tokens": int(tokens[i]),
                "output_tokens": 1 if pred is not None else 0,
                "prompt": text,
                "segment": it.segment,
                "features": {"batch_size": float(batch_size)},
            }
            if pred is not None:
                event["prediction"] = {"label": pred.labels[i], "score": pred.scores[i]}
            else:
                event["error_type"] = "inference_failed"
            try:
                self.monitor.inference(**event)
            except Exception as exc:  # monitoring must never fail a prediction
                log.warning("inference event for %s not sent: %s", rid, exc)

    # -- versions -----------------------------------------------------------------------

    async def _load(self, model: LoadedModel | str | os.PathLike[str], version: str | None) -> LoadedModel:
        if isinstance(model, LoadedModel):
            loaded = model
        else:
            if version is None:
                raise ValueError("a version is needed to load a model from a path")
            loaded = await asyncio.to_thread(self.loader, model, version)
            self._owned.add(id(loaded))
        try:
            await asyncio.to_thread(check_outputs, loaded)
            await asyncio.to_thread(loaded.warm_up)
        except Exception:
            self._release(loaded)
            raise
        return loaded

    async def _drain(self, old: LoadedModel) -> float:
        assert self._done is not None
        t0 = self.clock()
        async with self._done:
            await self._done.wait_for(lambda: old.inflight == 0)
        return self.clock() - t0

    def _release(self, model: LoadedModel) -> None:
        # Models handed in by the caller stay open: the caller may use them again.
        if id(model) in self._owned:
            self._owned.discard(id(model))
            model.close()

    async def swap(
        self, model: LoadedModel | str | os.PathLike[str], version: str | None = None
    ) -> dict[str, Any]:
        """Make ``model`` (a loaded model, or a path plus ``version``) the active version.

        Returns timings: ``load_s`` (load and warm-up, while the old version
        serves) and ``drain_s`` (until the old version's last batch finished).
        """
        async with self._admin:
            t0 = self.clock()
            new = await self._load(model, version)
            t1 = self.clock()
            old, self.active = self.active, new
            if self.canary is not None and self.canary.version == new.version:
                self.canary, self.canary_share = None, 0.0
            self._stats.swaps += 1
            drain_s = await self._drain(old) if old is not new else 0.0
            if old is not new and old is not self.canary:
                self._release(old)
            log.info("%s: version %s -> %s on %s", self.name, old.version, new.version, new.provider)
            return {
                "previous_version": old.version,
                "version": new.version,
                "provider": new.provider,
                "load_s": round(t1 - t0, 4),
                "drain_s": round(drain_s, 4),
            }

    async def set_canary(
        self,
        model: LoadedModel | str | os.PathLike[str] | None,
        version: str | None = None,
        share: float = 0.1,
    ) -> None:
        """Route ``share`` of request ids to ``model``; ``None`` or ``share=0`` removes the canary.

        ``share`` is below 1: the active version keeps serving the rest (to send
        it all traffic, :meth:`swap` or :meth:`promote_canary`).
        """
        if not 0.0 <= share < 1.0:  # also refuses NaN
            raise ValueError(f"canary share must be 0 (none) or within (0, 1), got {share}")
        async with self._admin:
            old = self.canary
            if model is None or share == 0.0:
                self.canary, self.canary_share = None, 0.0
            else:
                self.canary = await self._load(model, version)
                self.canary_share = float(share)
            if old is not None and old is not self.canary and old is not self.active:
                await self._drain(old)
                self._release(old)

    async def promote_canary(self) -> dict[str, Any]:
        """The canary becomes the active version (a hot-swap to the loaded session)."""
        if self.canary is None:
            raise ValueError("there is no canary to promote")
        return await self.swap(self.canary)

    def stats(self) -> dict[str, Any]:
        st = self._stats
        sizes = np.asarray(st.batch_sizes or [0])
        return {
            "model": self.name,
            "version": self.active.version,
            "provider": self.active.provider,
            "canary": {"version": self.canary.version, "share": self.canary_share}
            if self.canary is not None
            else None,
            "requests": st.requests,
            "failed": st.failed,
            "batches": st.batches,
            "items": st.items,
            "swaps": st.swaps,
            "mean_batch": round(float(sizes.mean()), 3),
            "max_batch_seen": int(sizes.max()),
            "requests_by_version": dict(st.by_version),
            "queued": self._queued,
        }

    # -- HTTP ----------------------------------------------------------------------------

    def app(self, guard: ApiGuard | None = None) -> Any:
        """An aiohttp application serving this model (starts and stops the batcher with it).

        Every request goes through ``guard`` (:class:`llmpulse.auth.ApiGuard`):
        ``/admin/*`` needs the admin role, ``/predict`` and ``/stats`` read,
        ``/health`` nothing. The default guard has no tokens and expects a
        loopback bind: no authentication, browser defences on.
        """
        from aiohttp import web

        if guard is None:
            guard = ApiGuard(TokenTable(), loopback=True)
        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[guard.middleware()])

        async def on_startup(_: Any) -> None:
            await self.start()

        async def on_cleanup(_: Any) -> None:
            await self.close()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        app.router.add_post("/predict", self._http_predict)
        app.router.add_get("/health", self._http_health)
        app.router.add_get("/stats", self._http_stats)
        app.router.add_post("/admin/swap", self._http_swap)
        app.router.add_post("/admin/canary", self._http_canary)
        app.router.add_post("/admin/promote", self._http_promote)
        return app

    @staticmethod
    def _bad(message: str, status: int = 400) -> Any:
        from aiohttp import web

        return web.json_response({"error": message}, status=status)

    async def _body(self, request: Any) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _BadRequest("body is not JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest("body must be a JSON object")
        return body

    async def _http_predict(self, request: Any) -> Any:
        from aiohttp import web

        try:
            body = await self._body(request)
            texts = body.get("texts")
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise _BadRequest('"texts" must be a non-empty list of strings')
            if len(texts) > self.max_texts:
                raise _BadRequest(f"at most {self.max_texts} texts per request")
            bad = unencodable(texts)
            if bad is not None:
                raise _BadRequest(f'"texts"[{bad}] is not valid UTF-8 (it holds a lone surrogate)')
            segment = body.get("segment") or {}
            if not isinstance(segment, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in segment.items()
            ):
                raise _BadRequest('"segment" must map strings to strings')
            if len(segment) > MAX_SEGMENT_KEYS or any(
                len(k) > MAX_TAG_CHARS or len(v) > MAX_TAG_CHARS for k, v in segment.items()
            ):
                raise _BadRequest(f'"segment": at most {MAX_SEGMENT_KEYS} entries of at most '
                                  f"{MAX_TAG_CHARS} characters")
            rid = body.get("request_id") or request.headers.get("X-Request-Id")
            if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_ID_CHARS):
                raise _BadRequest(f'"request_id" must be a string of at most {MAX_ID_CHARS} '
                                  "characters")
        except _BadRequest as exc:
            return self._bad(str(exc))
        try:
            pred = await self.predict(texts, request_id=rid, segment=segment)
        except Exception as exc:
            return self._bad(f"prediction failed: {exc}", 500)
        return web.json_response(pred.to_dict())

    async def _http_health(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(
            {"status": "ok", "model": self.name, "version": self.active.version,
             "provider": self.active.provider}
        )

    async def _http_stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.stats())

    async def _http_swap(self, request: Any) -> Any:
        from aiohttp import web

        try:
            body = await self._body(request)
            path, version = body.get("path"), body.get("version")
            if not isinstance(path, str) or not isinstance(version, str):
                raise _BadRequest('"path" and "version" must be strings')
        except _BadRequest as exc:
            return self._bad(str(exc))
        try:
            result = await self.swap(path, version)
        except Exception as exc:
            return self._bad(f"swap failed, version {self.active.version} still serves: {exc}", 500)
        return web.json_response(result)

    async def _http_canary(self, request: Any) -> Any:
        from aiohttp import web

        try:
            body = await self._body(request)
            share = body.get("share", 0.0)
            if isinstance(share, bool) or not isinstance(share, int | float) \
                    or not 0.0 <= share < 1.0:  # also refuses NaN
                raise _BadRequest('"share" must be 0 (no canary) or a number within (0, 1)')
            share = float(share)
            path, version = body.get("path"), body.get("version")
            if share > 0 and (not isinstance(path, str) or not isinstance(version, str)):
                raise _BadRequest('"path" and "version" must be strings when share > 0')
        except (_BadRequest, TypeError, ValueError) as exc:
            return self._bad(str(exc))
        try:
            await self.set_canary(path if share > 0 else None, version, share)
        except Exception as exc:
            return self._bad(f"canary failed: {exc}", 500)
        return web.json_response(self.stats()["canary"] or {"version": None, "share": 0.0})

    async def _http_promote(self, request: Any) -> Any:
        from aiohttp import web

        try:
            return web.json_response(await self.promote_canary())
        except ValueError as exc:
            return self._bad(str(exc), 409)


class _BadRequest(ValueError):
    pass


# -- python -m llmpulse.retrain.serving ------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmpulse.retrain.serving --host H --port P [--model M] [--data-dir D] [--bootstrap]``.

    Serves the registry's current (promoted) version of ``--model`` over HTTP
    (:meth:`ModelServer.app`) until SIGINT/SIGTERM, then exits 0. The
    registry is ``<data-dir>/registry`` (``--data-dir``, else the settings'
    ``data_dir``). With no promoted version it exits 2, unless ``--bootstrap``
    trains and promotes the reference version of ``intent-router`` first.
    With ``LLMPULSE_KAFKA`` set, every prediction is sent to llmpulse as an
    ``inference/v1`` event (app ``llmpulse-serving``).
    """
    import argparse

    from llmpulse.config import ConfigError, load_settings
    from llmpulse.retrain.registry import ModelRegistry, RegistryError

    parser = argparse.ArgumentParser(prog="python -m llmpulse.retrain.serving",
                                     description="Serve the promoted version of a model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--model", default="intent-router")
    parser.add_argument("--data-dir", default=None, help="holds registry/ (default: settings)")
    parser.add_argument("--bootstrap", action="store_true",
                        help="train and promote the reference version if the registry has none")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = "llmpulse serving"
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir) if args.data_dir else settings.data_dir
    try:
        guard = ApiGuard.from_settings(data_dir, args.host)
    except AuthError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if not guard.loopback and not guard.tokens.configured:
        print(f"{prog}: --host {args.host} is not a loopback address and no API token is "
              f"configured in {tokens_path(data_dir)}; create one with 'llmpulse token create' "
              "(or set LLMPULSE_TOKENS_FILE), or bind 127.0.0.1", file=sys.stderr)
        return 2
    registry = ModelRegistry(data_dir)
    try:
        current = registry.current(args.model)
        if current is None and args.bootstrap:
            from llmpulse.retrain.reference import REFERENCE_MODEL, train_reference

            if args.model != REFERENCE_MODEL:
                raise RegistryError(f"--bootstrap trains only {REFERENCE_MODEL}, not {args.model}")
            log.info("no promoted version of %s: training the reference version", args.model)
            current, _ = train_reference(registry, model=args.model)
    except RegistryError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if current is None:
        print(f"{prog}: the registry in {data_dir / 'registry'} has no promoted version of "
              f"{args.model}; release one (llmpulse retrain / llmpulse deploy) or pass --bootstrap",
              file=sys.stderr)
        return 2
    loaded = LoadedModel(current.artifact, current.version)
    loaded.warm_up()
    monitor: Any = None
    if settings.kafka:
        from llmpulse.monitor import Monitor

        monitor = Monitor(app="llmpulse-serving", bootstrap=settings.kafka, strict=False,
                          security=settings.kafka_security)
    server = ModelServer(loaded, name=args.model, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, monitor=monitor)
    log.info("serving %s version %s on %s at http://%s:%d", args.model, loaded.version,
             loaded.provider, args.host, args.port)
    from aiohttp import web

    try:
        web.run_app(server.app(guard), host=args.host, port=args.port, print=None,
                    handle_signals=True, shutdown_timeout=10.0)
    finally:
        if monitor is not None:
            monitor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
