"""The signal engine in its own process, so windows and detectors get a core of their own.

The worker's event loop, the ingest agents and the store's parsing share
one interpreter lock; detectors running on a window in a thread of the same
process take that lock from ingestion (measured: ~45k events/s stored with
the engine off, ~13k with it in a thread). Here the engine lives in a child
process (spawned, never forked: the worker holds threads and an embedded
database). The worker sends it the raw lines it already forwards, as bytes,
which cost a memory copy; decoding, windowing and detectors all happen in the
child. Calls are synchronous request/response over a pipe, made from one
thread, so they are serialised exactly as calls to an in-process engine.

>>> proc = EngineProcess(engine_kwargs={"windows": None}, detectors="default")
>>> proc.start()
>>> proc.add([(0, b'{"event_id":"e1","request_id":"r1","ts":1700000000000,"app":"a",'
...              b'"model":"m","model_version":"1","latency_ms":12.5,"status":"ok",'
...              b'"input_tokens":1,"output_tokens":2}')])
>>> proc.stats()["events_in"]
1
>>> [s.signal for s in proc.flush()]
['tokens.output_per_s']
>>> proc.stop()
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import signal
import threading
import zlib
from collections.abc import Hashable, Sequence, Set
from typing import Any

from llmpulse.malloc import tune_malloc

__all__ = ["CALL_TIMEOUT_S", "EngineProcess", "LocalEngine", "ShardedEngine", "add_chunks",
           "merge_stats", "tune_gc"]

CALL_TIMEOUT_S = 600.0
"""How long a call waits for an engine process's answer before the process counts as
hung: it is killed and the call raises, so the worker stops (``llmpulse up`` exits
70) and its restart replays, instead of a worker whose signals stalled with no error.
Far above the window closes seen in this project's runs (seconds). The longest calls
measured are a large state's save and restore: a 192 MB state took 5-6 s of CPU to
save and 12-13 s to restore; its saves took up to 76 s under overload, before saves
packed the join by window and paused the collector (README, "What a stop or a
crash keeps")."""

Chunk = tuple[Hashable, bytes]
"""(watermark source, newline-delimited events: inferences and feedback mixed)."""


def add_chunks(engine: Any, chunks: Sequence[Chunk]) -> None:
    """Decode forwarded lines and hand them to ``engine`` by kind and partition."""
    import orjson

    by_part: dict[Hashable, list[dict[str, Any]]] = {}
    feedback: list[dict[str, Any]] = []
    for part, blob in chunks:
        evs = _decode(orjson, blob)
        infs = [d for d in evs if "latency_ms" in d]
        if len(infs) != len(evs):
            feedback += [d for d in evs if "latency_ms" not in d]
        if infs:
            got = by_part.get(part)
            if got is None:
                by_part[part] = infs
            else:
                got += infs
    for part, evs in by_part.items():
        engine.add_inference(evs, source=part)
    if feedback:
        engine.add_feedback(feedback)


def _decode(orjson: Any, blob: bytes) -> list[dict[str, Any]]:
    """The events of newline-delimited JSON ``blob``: one parse of the lines
    as a JSON array (a JSON text holds no raw newline), line by line if that
    does not give one value per line (empty lines), so an invalid line raises
    as it would alone.

    >>> import orjson
    >>> _decode(orjson, b'{"a":1}\\n{"b":2}'), _decode(orjson, b'{"a":1}\\n\\n{"b":2}\\n')
    ([{'a': 1}, {'b': 2}], [{'a': 1}, {'b': 2}])
    >>> _decode(orjson, b'{"a":1},{"b":2}')
    Traceback (most recent call last):
    ...
    orjson.JSONDecodeError: unexpected content after document: line 1 column 8 (char 7)
    >>> _decode(orjson, b"")
    []
    """
    try:
        out: list[dict[str, Any]] = orjson.loads(b"[" + blob.replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        out = []
    if len(out) == blob.count(b"\n") + 1:  # else a line held several values, or none
        return out
    return [orjson.loads(line) for line in blob.split(b"\n") if line]


def tune_gc() -> None:
    """Garbage collector settings for a process that holds the engine's windows.

    Open windows keep hundreds of thousands of decoded events alive, and the
    default thresholds rescan them all (and every imported module's objects)
    again and again as events arrive: more than half of the engine's time
    when adding events (``python -m llmpulse.bench.engine --no-gc-tuning``).
    Here collections are rarer (cyclic garbage is still collected, later)
    and what exists at start-up (modules, detectors) is frozen out of the
    scans. Only for a process of its own: the settings are process-wide.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def new_engine(engine_kwargs: dict[str, Any], detectors: Any) -> Any:
    from llmpulse.streams.engine import SignalEngine, default_detectors

    kwargs = {k: v for k, v in engine_kwargs.items() if v is not None}
    factories = default_detectors(**detectors) if isinstance(detectors, dict) else (
        default_detectors() if detectors == "default" else detectors)
    return SignalEngine(factories, **kwargs)


class LocalEngine:
    """The same interface as :class:`EngineProcess`, in this process (tests, one core)."""

    def __init__(self, *, engine_kwargs: dict[str, Any] | None = None,
                 detectors: Any = "default") -> None:
        self.engine = new_engine(dict(engine_kwargs or {}), detectors)

    def start(self) -> None:
        pass

    def add(self, chunks: Sequence[Chunk]) -> None:
        add_chunks(self.engine, chunks)

    def poll(self, *, backlog: bool = False, hold: bool = False) -> list[Any]:
        return list(self.engine.poll(backlog=backlog, hold=hold))

    def flush(self) -> list[Any]:
        return list(self.engine.flush())

    def stats(self) -> dict[str, Any]:
        return dict(self.engine.stats())

    def snapshot_bytes(self) -> bytes:
        return pickle.dumps(self.engine.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)

    def restore_bytes(self, state: bytes) -> None:
        self.engine.restore(pickle.loads(state))

    def forget_source(self, source: Hashable) -> None:
        self.engine.forget_source(source)

    def forget_requests(self, request_ids: set[str]) -> int:
        return int(self.engine.forget_requests(request_ids))

    def snapshot_groups(self, keys: Set[bytes], partition: Hashable = None) -> bytes:
        return pickle.dumps(self.engine.snapshot_groups(keys, partition),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def drop_groups(self, keys: Set[bytes], partition: Hashable = None) -> int:
        return int(self.engine.drop_groups(keys, partition))

    def merge_bytes(self, state: bytes) -> None:
        self.engine.merge(pickle.loads(state))

    def stop(self, timeout: float = 10.0) -> None:
        pass


def _ignore_interrupts() -> None:
    """In the child: a Ctrl-C in a terminal signals the whole process group, and
    the parent decides when to stop (after draining and flushing through this
    child); it says so with ``stop``, or the pipe closes. A SIGINT that arrived
    while the child started was held blocked (:func:`_interrupts_held`) and is
    discarded here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _interrupts_held() -> Any:
    """Block SIGINT in the calling thread while a child is spawned: the child
    inherits the mask, so a Ctrl-C during its interpreter's start-up stays
    pending instead of raising KeyboardInterrupt before :func:`_ignore_interrupts`
    runs. The parent's other threads still receive the signal."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process-group Ctrl-C to hold
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _serve(conn: Any, engine_kwargs: dict[str, Any], detectors: Any) -> None:
    _ignore_interrupts()
    tune_malloc()
    engine = new_engine(engine_kwargs, detectors)
    tune_gc()
    while True:
        try:
            cmd, arg = conn.recv()
        except EOFError:
            return
        try:
            if cmd == "add":
                add_chunks(engine, arg)
                out: Any = None
            elif cmd == "poll":
                out = engine.poll(backlog=bool(arg[0]), hold=bool(arg[1]))
            elif cmd == "flush":
                out = engine.flush()
            elif cmd == "stats":
                out = engine.stats()
            elif cmd == "snapshot":
                out = pickle.dumps(engine.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
            elif cmd == "restore":
                engine.restore(pickle.loads(arg))
                out = None
            elif cmd == "forget":
                engine.forget_source(arg)
                out = None
            elif cmd == "forget_requests":
                out = engine.forget_requests(arg)
            elif cmd == "snapshot_groups":
                out = pickle.dumps(engine.snapshot_groups(*arg), protocol=pickle.HIGHEST_PROTOCOL)
            elif cmd == "drop_groups":
                out = engine.drop_groups(*arg)
            elif cmd == "merge":
                engine.merge(pickle.loads(arg))
                out = None
            elif cmd == "stop":
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown engine command {cmd!r}")
            conn.send(("ok", out))
        except Exception as exc:  # reported to the caller, the child keeps serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class EngineProcess:
    """A :class:`~llmpulse.streams.engine.SignalEngine` behind a pipe, in a spawned process.

    ``detectors`` is ``"default"``, a dict of :func:`~llmpulse.streams.engine.default_detectors`
    keyword arguments, or a picklable mapping of factories.
    """

    def __init__(self, *, engine_kwargs: dict[str, Any] | None = None,
                 detectors: Any = "default", call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.engine_kwargs = dict(engine_kwargs or {})
        self.detectors = detectors
        self.call_timeout_s = call_timeout_s
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self.engine_kwargs, self.detectors),
                                 name="llmpulse-signal-engine", daemon=True)
        with _interrupts_held():
            self._proc.start()
        child.close()
        self._conn = parent

    def _call(self, cmd: str, arg: Any = None, timeout: float | None = None) -> Any:
        wait = self.call_timeout_s if timeout is None else timeout
        with self._lock:
            self._send(cmd, arg)
            if not self._conn.poll(wait):
                # hung (stopped, deadlocked, a detector that never returns): a worker
                # waiting on it for ever would compute no signal again and say nothing
                self._proc.kill()
                self._proc.join(5)
                raise RuntimeError(f"the signal engine process did not answer {cmd!r} within "
                                   f"{wait:g} s and was killed")
            return self._recv()

    def _send(self, cmd: str, arg: Any = None) -> None:
        if self._proc is None or not self._proc.is_alive():
            raise RuntimeError("the signal engine process is not running")
        self._conn.send((cmd, arg))

    def _recv(self) -> Any:
        status, out = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"signal engine: {out}")
        return out

    def add(self, chunks: Sequence[Chunk]) -> None:
        self._call("add", list(chunks))

    def poll(self, *, backlog: bool = False, hold: bool = False) -> list[Any]:
        return list(self._call("poll", (backlog, hold)))

    def flush(self) -> list[Any]:
        return list(self._call("flush"))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("stats"))

    def snapshot_bytes(self) -> bytes:
        return bytes(self._call("snapshot"))

    def restore_bytes(self, state: bytes) -> None:
        self._call("restore", state)

    def forget_source(self, source: Hashable) -> None:
        self._call("forget", source)

    def forget_requests(self, request_ids: set[str]) -> int:
        return int(self._call("forget_requests", set(request_ids)))

    def snapshot_groups(self, keys: Set[bytes], partition: Hashable = None) -> bytes:
        return bytes(self._call("snapshot_groups", (set(keys), partition)))

    def drop_groups(self, keys: Set[bytes], partition: Hashable = None) -> int:
        return int(self._call("drop_groups", (set(keys), partition)))

    def merge_bytes(self, state: bytes) -> None:
        self._call("merge", state)

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.is_alive():  # a hung process is killed after ``timeout``, not 600 s
                self._call("stop", timeout=timeout)
        except (RuntimeError, OSError, EOFError):
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._proc = None


class ShardedEngine:
    """Several :class:`EngineProcess` shards, each owning the groups whose key
    hashes to it, called in parallel: window closes (detectors) of different
    groups run on different cores. Chunks are ``(source, blob, group key)``:
    the key is the ``llmpulse.grouped`` message key, so a group's inferences and
    its feedback reach the same shard. Signals come back sorted by (ts, group,
    signal, dimension), as one engine would give them.

    >>> eng = ShardedEngine(2, engine_kwargs={"windows": None}, detectors="default")
    >>> eng.start()
    >>> line = (b'{"event_id":"e%d","request_id":"r%d","ts":1700000000000,"app":"a",'
    ...         b'"model":"m%d","model_version":"1","latency_ms":12.5,"status":"ok",'
    ...         b'"input_tokens":1,"output_tokens":2}')
    >>> eng.add([(0, line % (i, i, i), b"a/m%d/1" % i) for i in range(4)])
    >>> eng.stats()["events_in"], len(eng.stats()["shards"])
    (4, 2)
    >>> [(s.model, s.signal) for s in eng.flush()]  # doctest: +NORMALIZE_WHITESPACE
    [('m0', 'tokens.output_per_s'), ('m1', 'tokens.output_per_s'),
     ('m2', 'tokens.output_per_s'), ('m3', 'tokens.output_per_s')]
    >>> eng.stop()
    """

    def __init__(self, shards: int, *, engine_kwargs: dict[str, Any] | None = None,
                 detectors: Any = "default") -> None:
        if shards < 1:
            raise ValueError(f"shards: need >= 1, got {shards!r}")
        self.shards = [EngineProcess(engine_kwargs=engine_kwargs, detectors=detectors)
                       for _ in range(shards)]

    def start(self) -> None:
        for sh in self.shards:
            sh.start()

    def shard_of(self, key: bytes) -> int:
        """Stable across processes and restarts (not Python's salted ``hash``)."""
        return zlib.crc32(key) % len(self.shards)

    def _all(self, cmd: str, args: Sequence[Any] | None = None) -> list[Any]:
        """``cmd`` to every shard at once (each with its own argument), then the replies."""
        for sh in self.shards:
            sh._lock.acquire()
        try:
            # every shard sent to is read from, even when one fails: the pipes stay in step
            sent: list[EngineProcess] = []
            error: Exception | None = None
            for i, sh in enumerate(self.shards):
                try:
                    sh._send(cmd, None if args is None else args[i])
                    sent.append(sh)
                except Exception as exc:
                    error = error or exc
            outs: list[Any] = []
            for sh in sent:
                try:
                    outs.append(sh._recv())
                except Exception as exc:
                    error = error or exc
            if error is not None:
                raise error
            return outs
        finally:
            for sh in self.shards:
                sh._lock.release()

    def add(self, chunks: Sequence[tuple[int, bytes, bytes]]) -> None:
        # a shard's lines of one source go as one blob: chunks of many small groups
        # (a packed message) would otherwise each cost a decode in the child
        merged: list[dict[Hashable, list[bytes]]] = [{} for _ in self.shards]
        for source, blob, key in chunks:
            merged[self.shard_of(key)].setdefault(source, []).append(blob)
        parts: list[list[Chunk]] = [
            [(source, blobs[0] if len(blobs) == 1 else b"\n".join(blobs))
             for source, blobs in by_source.items()]
            for by_source in merged]
        busy = [i for i, p in enumerate(parts) if p]
        if len(busy) == 1:
            self.shards[busy[0]].add(parts[busy[0]])
        elif busy:
            self._all("add", parts)

    def poll(self, *, backlog: bool = False, hold: bool = False) -> list[Any]:
        args = [(backlog, hold)] * len(self.shards)
        return _sorted([s for out in self._all("poll", args) for s in out])

    def flush(self) -> list[Any]:
        return _sorted([s for out in self._all("flush") for s in out])

    def stats(self) -> dict[str, Any]:
        return merge_stats(self._all("stats"))

    def snapshot_bytes(self) -> bytes:
        return pickle.dumps({"shards": self._all("snapshot")}, protocol=pickle.HIGHEST_PROTOCOL)

    def restore_bytes(self, state: bytes) -> None:
        shards = pickle.loads(state)["shards"]
        if len(shards) != len(self.shards):
            raise ValueError(f"a snapshot of {len(shards)} engine shard(s), "
                             f"this worker runs {len(self.shards)}")
        self._all("restore", shards)

    def forget_source(self, source: Hashable) -> None:
        self._all("forget", [source] * len(self.shards))

    def snapshot_groups(self, keys: Set[bytes], partition: Hashable = None) -> bytes:
        parts = self._all("snapshot_groups", [(set(keys), partition)] * len(self.shards))
        return pickle.dumps({"shards": parts}, protocol=pickle.HIGHEST_PROTOCOL)

    def drop_groups(self, keys: Set[bytes], partition: Hashable = None) -> int:
        return sum(int(n) for n in self._all("drop_groups",
                                             [(set(keys), partition)] * len(self.shards)))

    def merge_bytes(self, state: bytes) -> None:
        shards = pickle.loads(state)["shards"]
        if len(shards) != len(self.shards):
            raise ValueError(f"a group state of {len(shards)} engine shard(s), "
                             f"this worker runs {len(self.shards)}")
        self._all("merge", shards)

    def forget_requests(self, request_ids: set[str]) -> int:
        ids = set(request_ids)
        return sum(int(n) for n in self._all("forget_requests", [ids] * len(self.shards)))

    def stop(self, timeout: float = 10.0) -> None:
        for sh in self.shards:
            sh.stop(timeout)


def _sorted(signals: list[Any]) -> list[Any]:
    return sorted(signals, key=lambda s: (s.ts, s.app, s.model, s.model_version, s.signal,
                                          s.dimension))


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The counters of several engines as one: sums, except maxima (``max``,
    ``last``), means weighted by windows closed, and the smallest watermark;
    each shard's own counters under ``shards``.

    >>> merge_stats([{"events_in": 2, "close_delay_s": {"last": 1.0, "max": 3.0, "mean": 1.0},
    ...               "windows_closed": 1, "watermark_ms": 50, "detector_seconds": {"a": 1.0}},
    ...              {"events_in": 3, "close_delay_s": {"last": 2.0, "max": 2.0, "mean": 2.0},
    ...               "windows_closed": 3, "watermark_ms": None, "detector_seconds": {"a": 0.5}}])
    ... # doctest: +ELLIPSIS
    {'events_in': 5, 'close_delay_s': {'last': 2.0, 'max': 3.0, 'mean': 1.75}, 'windows_closed': 4, 'watermark_ms': 50, 'detector_seconds': {'a': 1.5}, 'shards': [...]}
    """
    weights = [max(0, int(p.get("windows_closed", 0))) for p in parts]

    def merge(values: list[Any], key: str) -> Any:
        present = [v for v in values if v is not None]
        if not present:
            return None
        if all(isinstance(v, dict) for v in present):
            keys = list(dict.fromkeys(k for v in present for k in v))
            return {k: merge([v.get(k) for v in present], k) for k in keys}
        if key == "watermark_ms":
            return min(present)
        if key in ("max", "last"):
            return max(present)
        if key == "mean":
            total = sum(weights) or 1
            return sum(v * w for v, w in zip(values, weights, strict=True) if v is not None) / total
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            return sum(present)
        return present[0]

    out = {k: merge([p.get(k) for p in parts], k) for k in dict.fromkeys(k for p in parts for k in p)}
    out["shards"] = list(parts)
    return out
