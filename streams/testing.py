"""Testing sources and sinks for the stream agents: no broker, no subprocess.

Ships inside the package, as bytewax ships ``bytewax.testing``: a test (or a
user checking their own rules) feeds a list of events through the same code
the worker runs and collects what comes out.

* :func:`grouped_messages`: events as the ingest agents forward them on
  ``llmpulse.grouped`` (keyed by group, chunked, tagged with their source
  partition), as :class:`TestingMessage` values with offsets;
* :class:`TestingTopic`: collects what an agent produces to a topic;
* :class:`TestingSink`: a real :class:`~llmpulse.streams.sink.RawSink` whose store
  insert collects the rows, decoded;
* :func:`run_engine`: the messages through any engine (in-process, in a
  child process, sharded) and the signals back;
* :func:`drive_signal_agents` and :func:`drive_alert_agent`: the agents'
  bodies (``SignalAgents.take`` / ``tick`` / ``flush``, ``AlertAgent``'s call)
  on a list of messages or signals.

>>> from llmpulse.detectors.testing import synthetic_events
>>> from llmpulse.streams.engine_process import LocalEngine
>>> msgs = grouped_messages(synthetic_events(300, seed=3, rate=20))
>>> len(msgs), msgs[0].topic, msgs[0].key
(1, 'llmpulse.grouped', b'support/router/1')
>>> signals = run_engine(LocalEngine(engine_kwargs={"clock": lambda: 0.0}), msgs)
>>> sorted({s.signal for s in signals if s.signal.startswith("errors.")})
['errors.rate', 'errors.timeout_rate']
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from llmpulse.detectors.base import Signal
from llmpulse.events import TOPIC_GROUPED
from llmpulse.streams.signals import SOURCE_HEADER, engine_chunks, group_key
from llmpulse.streams.sink import RawSink

__all__ = [
    "TestingMessage",
    "TestingSink",
    "TestingTopic",
    "canonical",
    "drive_alert_agent",
    "drive_signal_agents",
    "grouped_messages",
    "run_engine",
    "split_feedback",
]


@dataclass(frozen=True, slots=True)
class TestingMessage:
    """A consumed Kafka message, with the fields the agents read."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


def grouped_messages(
    events: Iterable[Mapping[str, Any]],
    *,
    feedback: Iterable[Mapping[str, Any]] = (),
    partitions: int = 1,
    sources: int = 1,
    chunk: int = 500,
) -> list[TestingMessage]:
    """``llmpulse.grouped`` messages carrying ``events`` (``inference/v1``) then
    ``feedback`` (``feedback/v1``, grouped by the inference of their
    ``request_id``), as the ingest agents forward them.

    Inference events are spread over ``sources`` source partitions (by
    position, each source keeping event order) and chunked by ``chunk``
    events per (group, source); the grouped partition of a group is a stable
    hash of its key over ``partitions``. Offsets count per partition from 0.
    """
    evs = list(events)
    by_key: dict[tuple[bytes, int], list[bytes]] = defaultdict(list)
    group_of: dict[str, bytes] = {}
    for i, ev in enumerate(evs):
        key = group_key(str(ev["app"]), str(ev["model"]), str(ev["model_version"]))
        group_of[str(ev["request_id"])] = key
        by_key[(key, i % sources)].append(orjson.dumps(ev))
    fb_by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for fb in feedback:
        fb_key = group_of.get(str(fb["request_id"]))
        if fb_key is not None:
            fb_by_key[fb_key].append(orjson.dumps(fb))
    offsets: dict[int, int] = defaultdict(int)
    out: list[TestingMessage] = []

    def put(key: bytes, lines: list[bytes], headers: tuple[tuple[str, bytes], ...]) -> None:
        p = _partition(key, partitions)
        for i in range(0, len(lines), chunk):
            out.append(TestingMessage(TOPIC_GROUPED, p, offsets[p], key,
                                      b"\n".join(lines[i:i + chunk]), headers))
            offsets[p] += 1

    # round-robin over (group, source) chunk by chunk, as interleaved forwarders would
    queues = {k: [v[i:i + chunk] for i in range(0, len(v), chunk)] for k, v in by_key.items()}
    while any(queues.values()):
        for (key, src), q in sorted(queues.items()):
            if q:
                put(key, q.pop(0), ((SOURCE_HEADER, str(src).encode()),))
    for key, lines in sorted(fb_by_key.items()):
        put(key, lines, ())
    return out


def split_feedback(
    events: Iterable[Mapping[str, Any]], *, delay_ms: int = 2000
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events with a joined ``feedback`` mapping (as
    :func:`llmpulse.detectors.testing.synthetic_events` makes them) as separate
    ``inference/v1`` and ``feedback/v1`` events, feedback ``delay_ms`` later.

    >>> from llmpulse.detectors.testing import synthetic_events
    >>> infs, fbs = split_feedback(synthetic_events(4, seed=1))
    >>> len(infs), len(fbs), sorted(fbs[0])
    (4, 2, ['event_id', 'hallucination', 'label', 'request_id', 'score', 'source', 'ts'])
    """
    infs: list[dict[str, Any]] = []
    fbs: list[dict[str, Any]] = []
    for ev in events:
        inf = dict(ev)
        fb = inf.pop("feedback", None)
        infs.append(inf)
        if isinstance(fb, Mapping):
            fbs.append({"event_id": f"fb-{inf['event_id']}", "request_id": inf["request_id"],
                        "ts": int(inf["ts"]) + delay_ms, "source": "user", **fb})
    return infs, fbs


def _partition(key: bytes, partitions: int) -> int:
    h = 0
    for b in key:
        h = (h * 31 + b) & 0xFFFFFFFF
    return h % max(1, partitions)


@dataclass
class TestingTopic:
    """Collects ``send(key=, value=, headers=)`` calls (the Faust topic shape)."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    sent: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    messages: list[TestingMessage] = field(default_factory=list)
    """What was sent as consumed messages (offsets per partition from 0; partition 0
    when the sender named none)."""
    topic: str = TOPIC_GROUPED

    async def send(self, *, key: bytes | None = None, value: bytes = b"",
                   headers: Any = None, partition: int | None = None) -> None:
        self.sent.append((key, value))
        p = partition or 0
        offset = sum(m.partition == p for m in self.messages)
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        self.messages.append(TestingMessage(self.topic, p, offset, key, value,
                                            tuple((k, bytes(v)) for k, v in items)))

    def values(self) -> list[Any]:
        """The sent values, each decoded (newline-delimited JSON gives a list)."""
        out: list[Any] = []
        for _, value in self.sent:
            out += [orjson.loads(line) for line in value.split(b"\n") if line]
        return out


class TestingSink(RawSink):
    """A real :class:`~llmpulse.streams.sink.RawSink` whose store insert collects the
    rows, decoded, in ``rows[table]``."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        super().__init__(self._collect)

    def _collect(self, table: str, data: bytes, count: int) -> int:
        rows = [orjson.loads(line) for line in data.split(b"\n") if line]
        self.rows[table] += rows
        return len(rows)


def run_engine(engine: Any, messages: Sequence[TestingMessage], *, batch: int = 64,
               poll: bool = False) -> list[Signal]:
    """Start ``engine`` (``LocalEngine``, ``EngineProcess`` or ``ShardedEngine``),
    add the messages ``batch`` at a time (polling after each when ``poll``),
    flush, stop it, and return every signal it emitted, in order."""
    from llmpulse.streams.engine_process import ShardedEngine

    keyed = isinstance(engine, ShardedEngine)
    out: list[Signal] = []
    engine.start()
    try:
        for i in range(0, len(messages), batch):
            engine.add(engine_chunks(messages[i:i + batch], keyed=keyed))
            if poll:
                out += engine.poll()
        out += engine.flush()
    finally:
        engine.stop()
    return out


def canonical(signals: Iterable[Signal]) -> list[tuple[Any, ...]]:
    """Signals as sorted comparable tuples (value rounded to 9 significant digits),
    for checking that two runs computed the same thing."""
    return sorted(
        (s.ts, s.app, s.model, s.model_version, s.signal, s.dimension, s.n, float(f"{s.value:.9g}"),
         s.window_s)
        for s in signals
    )


async def drive_signal_agents(agents: Any, messages: Sequence[TestingMessage], *,
                              batch: int = 1000, flush: bool = True,
                              lag: bool = True) -> list[Signal]:
    """Run ``SignalAgents`` on ``messages`` as its agent and timer would: take
    ``batch`` messages at a time, tick after each batch, then flush; the
    signals it emitted to its consumers, in order. While messages remain
    unread the agents' input has a backlog (``agents.backlog``), as a
    consumer behind its partition's end offset has; ``lag=False`` hides it
    (a reader that would judge idleness by silence alone)."""
    got: list[Signal] = []
    taken = [0]

    async def collect(signals: list[Signal]) -> None:
        got.extend(signals)

    agents.consumers.append(collect)
    backlog = agents.backlog
    agents.backlog = lambda: lag and taken[0] < len(messages)
    try:
        for i in range(0, len(messages), batch):
            await agents.take(messages[i:i + batch])
            taken[0] = min(len(messages), i + batch)
            await agents.tick()
        if flush:
            await agents.flush()
    finally:
        agents.consumers.remove(collect)
        agents.backlog = backlog
    return got


async def drive_alert_agent(agent: Any, signals: Sequence[Signal], *, batch: int = 100) -> list[Any]:
    """Feed ``signals`` to an ``AlertAgent`` ``batch`` at a time; the ``alerts``
    rows it stored, in order. Pages go out in the background: awaited here."""
    before = len(agent.sink.rows["alerts"]) if isinstance(agent.sink, TestingSink) else 0
    for i in range(0, len(signals), batch):
        await agent(list(signals[i:i + batch]))
    await agent.settle()
    if isinstance(agent.sink, TestingSink):
        return agent.sink.rows["alerts"][before:]
    return []
