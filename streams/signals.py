"""Signal agents: route events by group, window them, run detectors, store signals.

Partitioning, end to end:

* ``llmpulse.inference`` / ``llmpulse.feedback``: keyed by a bucket of
  ``request_id`` (the shim's envelopes), so an inference and its feedback sit
  on the same partition number; the ingest agents validate and store them.
* ``llmpulse.grouped`` (internal): after storing, the ingest agents forward
  each valid event to the partition of its group ``app/model/model_version``
  (the one a message keyed by the group would take), the lines of all the
  groups bound for one partition packed in one message per batch and source
  partition, a header listing the groups (:mod:`llmpulse.streams.forward`). Feedback
  names only its ``request_id``; its group comes from the store's
  ``request_index`` (filled as inferences are stored), so feedback that
  arrives seconds or days later finds its group without a join table in
  memory. Feedback whose inference is not stored yet waits up to
  ``signals.feedback_wait_s`` and is then counted as unmatched (it is stored
  in ``feedback_events`` regardless).
* The signal agent consumes ``llmpulse.grouped``: every event of a group
  reaches one worker, so a window never spans workers and two workers produce
  the same signals as one (the test in ``tests/integration`` checks it).
  The engine (:mod:`llmpulse.streams.engine`) windows by event time, joins feedback and
  runs the detectors in child processes (``signals.engine_processes``, the
  groups spread over them by a hash of their key), called from one thread
  off the event loop. Its watermark follows (grouped partition, inference
  partition) sources (:func:`_source`); at each window poll the worker also
  names what it awaits a first delivery from (:func:`awaited`: its partitions
  nothing was read from yet that may hold events, and the sources it forwarded
  to its own grouped partitions that the engine has not taken in), and the
  watermark holds while one is awaited, up to ``idle_s`` without a backlog
  (:class:`~llmpulse.streams.windows.AwaitedSources`). A source first read
  through another worker's forward is not known here; during a rebalance and
  ``idle_s`` after it, the sources of this worker's grouped partitions (those
  with groups) from the inference partitions other workers read are awaited too,
  until each delivers (:meth:`SignalAgents._sources_of_others`): a worker that
  joined reads its own share at once, the others' comes once they have read
  theirs again from the committed offsets. The cost: a grouped partition some
  inference partition has no events for holds the windows until the hold ends.

Signals go to the ``signals`` table (a ``ReplacingMergeTree``: a window
recomputed after late feedback replaces its earlier row) and to
``llmpulse.signals``; then to every registered consumer (the alert rules).

Restarts, including ``kill -9``: every ``signals.snapshot_s`` the engine's
state (open windows, feedback join, detector state, watermark) is written
with the ``llmpulse.grouped`` offsets it covers, taken together in the
engine's thread, and only then are those offsets committed (the topic is
consumed without acks). A restarted worker loads it and reads
``llmpulse.grouped`` from its committed offsets, which are those of the state
or, after a crash between the write and the commit, earlier: messages the
state already holds are skipped.

Each grouped partition's share of that state (its groups' windows, detector
state and watermark) also goes to the compacted changelog
``llmpulse.engine-state`` (:mod:`llmpulse.streams.handoff`) at every save and
when a rebalance revokes the partition; the worker assigned it next takes it
over and reads on from the offset it covers, so a partition that moves to
another worker keeps its open windows. The alert states of the partition's
groups go in the same record (:attr:`SignalAgents.group_states`, the alert
agent), taken once the signals of a poll under way have reached it; the new
owner's alert manager continues them, the old one drops them. Windows that closed between the
snapshot and the crash close again with the same events: their signal rows
replace the earlier ones, and the alert manager, whose state is saved after
every batch of signals, ignores them as replays. Events forwarded twice (the
ingest path is at-least-once) are dropped by ``event_id`` when their window
closes.

A clean stop (SIGTERM) does what ``signals.stop`` says. ``save`` writes that
same state, closing nothing, so a rolling restart is a crash without the
replay: the next start restores the open windows and they close by the
watermark with every event, none partial, none late. ``flush`` (the default,
for a final stop such as the end of ``llmpulse up`` with its in-memory
broker) closes every open window now and emits it as it stands.

The offsets belong to one log: the state records the Kafka cluster id it
was read from. A clean stop of ``llmpulse up`` stops its in-memory broker, and
the next ``up`` starts a new one (a fresh cluster id) whose partitions number
from 0 again; there the saved offsets are dropped (one log line, counter
``positions_dropped``) so the new log's first messages are not skipped as a
replay. The engine state itself (open windows, watermark, counters) and the
waiting feedback refer to no offset and are kept: the new log holds only
events sent after the stop. A broker re-adopted after a crash, or an
external Kafka, keeps its cluster id and the offsets stay valid. A state
without a cluster id (written before it was recorded, or when the broker
reported none) keeps its offsets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import faust
import orjson

from llmpulse.config import Settings
from llmpulse.detectors.base import Signal
from llmpulse.events import TOPIC_GROUPED, TOPIC_INFERENCE, TOPIC_SIGNALS
from llmpulse.store import Store, lookup_requests
from llmpulse.streams.catch_up import GroupProgress, behind
from llmpulse.streams.forward import (
    GROUPS_HEADER,
    MAX_FORWARD_BYTES,
    group_key,
    grouped_partition,
    header_value,
    listed_keys,
    pack_groups,
    unpack_groups,
)
from llmpulse.streams.gaps import Gap, GapProbe
from llmpulse.streams.handoff import EngineStateLog, GroupStates, PartitionState
from llmpulse.streams.ingest import IngestBatch
from llmpulse.streams.rebalance_hold import RebalanceHold
from llmpulse.streams.sink import RawSink
from llmpulse.streams.state import write_atomic
from llmpulse.streams.windows import AwaitedSources

__all__ = ["SignalAgents", "awaited", "engine_chunks", "engine_config", "forget_saved_requests",
           "group_key", "largest_end"]

log = logging.getLogger(__name__)

SOURCE_HEADER = "llmpulse-source"
"""Header of forwarded inference chunks: the ``llmpulse.inference`` partition they came from."""
MAX_POLLS_IN_A_ROW = 8
STATE_VERSION = 2
"""Format of ``signals.pkl``: the engine's snapshot with the grouped offsets it covers."""
IDLE_S = 30.0
"""The engine's ``idle_s`` when its settings give none (:class:`~llmpulse.streams.engine.SignalEngine`)."""
END_OFFSETS_TIMEOUT_S = 5.0
"""How long a window poll waits for the broker's end offsets before taking its silence
as a backlog not yet seen (windows wait) rather than as idleness."""
REBALANCE_HOLD_MAX_S = 300.0
"""How long after an assignment windows wait at the most for the group to forward what
the moved ``llmpulse.inference`` partitions held (:meth:`SignalAgents._caught_up`);
they wait ``idle_s`` when the group's progress cannot be read."""
HEARTBEAT_S = 0.5
"""How often the event loop notes that it runs (:meth:`RebalanceHold.beat`)."""
EMITTING_WAIT_S = 5.0
"""How long a hand-off or a save waits for signals polled before its engine snapshot to
reach the consumers, so that the alert states handed with it, or saved beside it, have
seen them."""
REWIND_TIMEOUT_S = 30.0
"""How long a partition being replayed after a restart skips messages fetched before
the seek; after that a missing offset is taken as a gap in the log."""


def _chunks(lines: Sequence[bytes], limit: int = MAX_FORWARD_BYTES) -> list[bytes]:
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for ln in lines:
        if cur and size + len(ln) > limit:
            out.append(b"\n".join(cur))
            cur, size = [], 0
        cur.append(ln)
        size += len(ln) + 1
    if cur:
        out.append(b"\n".join(cur))
    return out


def _source(message: Any) -> tuple[int, int]:
    """The watermark source of a forwarded chunk: (its ``llmpulse.grouped`` partition,
    the ``llmpulse.inference`` partition it came from; 1000 + the grouped partition
    for chunks forwarded without the header).

    Event time is ordered along one source partition, but a source's events reach
    the engine through several grouped partitions, which a consumer catching up
    (after a restart or a rebalance) reads at different paces: a source followed
    as one would let the partition read first push the watermark past events still
    unread on another, which would then be late. Followed per grouped partition, a
    partition behind holds the watermark, and the sources of a partition move with
    it when it is handed to another worker."""
    headers = message.headers or ()
    part = int(message.partition)
    for k, v in headers.items() if isinstance(headers, dict) else headers:
        if k == SOURCE_HEADER:
            return (part, int(v))
    return (part, 1000 + part)


def message_groups(message: Any) -> list[tuple[bytes, bytes]]:
    """``(group key, lines)`` of a ``llmpulse.grouped`` message: the groups its
    header lists (:mod:`llmpulse.streams.forward`), else its key and whole value
    (a message keyed by its group). A header that does not fit the value is
    logged and the message taken as one group without a key."""
    header = header_value(message.headers, GROUPS_HEADER)
    if header is None:
        return [(bytes(message.key or b""), message.value)]
    try:
        return unpack_groups(message.value, header)
    except ValueError as exc:
        log.warning("llmpulse.grouped[%s] offset %s: %s", message.partition, message.offset, exc)
        return [(bytes(message.key or b""), message.value)]


def message_keys(message: Any) -> list[bytes]:
    """The group keys of a ``llmpulse.grouped`` message (see :func:`message_groups`)."""
    header = header_value(message.headers, GROUPS_HEADER)
    if header is not None:
        try:
            return listed_keys(header)
        except ValueError:
            pass
    return [bytes(message.key)] if message.key else []


def engine_chunks(messages: Sequence[Any], *, keyed: bool) -> list[Any]:
    """What the engine takes from ``llmpulse.grouped`` messages: ``(source, value)``,
    or ``(source, value, key)`` per group for a sharded engine (it routes by the
    group key)."""
    if keyed:
        out: list[Any] = []
        for m in messages:
            src = _source(m)
            out += [(src, lines, key) for key, lines in message_groups(m)]
        return out
    return [(_source(m), m.value) for m in messages]


def _highwater(consumer: Any, tp: Any) -> int | None:
    """The high watermark of ``tp`` in the consumer's last fetch (None: not known)."""
    try:
        high = consumer.highwater(tp)
    except Exception:
        return None
    return None if high is None else int(high)


def largest_end(*offsets: int | None) -> int | None:
    """The largest of the offsets known for a partition, any of which may be unknown
    (None: none known).

    >>> largest_end(None, 3), largest_end(4, 3), largest_end(None, None)
    (3, 4, None)
    >>> largest_end(63, None, 69)
    69
    """
    known = [int(o) for o in offsets if o is not None]
    return max(known) if known else None


def unread(view: Mapping[str, Sequence[int | None]],
           forwarded: Mapping[int, int] | None = None) -> list[str]:
    """The partitions of ``view`` (``"topic:partition" -> [next offset to read, end
    offset]``) with events not read: the end past the position. A partition read
    nothing of since the start is not known to be behind, unless this worker forwarded
    to it (``forwarded``: grouped partition -> the offset after its last forward).

    >>> unread({"llmpulse.inference:0": [5, 5], "llmpulse.grouped:1": [3, 4],
    ...         "llmpulse.grouped:2": [None, 9]})
    ['llmpulse.grouped:1']
    >>> unread({"llmpulse.grouped:2": [None, 9]}, forwarded={2: 9})
    ['llmpulse.grouped:2']
    """
    out = []
    for name, (pos, end) in view.items():
        if end is None:
            continue
        if pos is None:
            topic, _, part = name.rpartition(":")
            if topic != TOPIC_GROUPED or int(part) not in (forwarded or {}):
                continue  # nothing read there since start: not known to be behind
            pos = 0
        if end > pos:
            out.append(name)
    return out


def signal_row(s: Signal) -> dict[str, Any]:
    row = s.to_row()
    row["detail"] = orjson.dumps(row["detail"], option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return row


SignalConsumer = Callable[[list[Signal]], Awaitable[None]]


def engine_config(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's keyword arguments and detector options for ``settings``."""
    from llmpulse.streams.windows import DEFAULT_WINDOWS, WindowSpec

    cfg = settings.signals
    windows = {}
    for fam, spec in DEFAULT_WINDOWS.items():
        length = cfg.latency_window_s if fam == "latency" else cfg.window_s
        windows[fam] = WindowSpec(length_s=length, lateness_s=spec.lateness_s * length / spec.length_s)
    # windows recomputed for late feedback every quarter window (1-10 s): a
    # labelled incident's evidence lands within a window of its feedback
    engine_kwargs: dict[str, Any] = {"windows": windows,
                                     "reemit_interval_s": min(10.0, max(1.0, cfg.window_s / 4)),
                                     "horizon_s": cfg.join_horizon_s,
                                     "max_lead_s": cfg.max_event_lead_s}
    detectors = {"embedding": cfg.embedding,
                 "hallucination_max_scored": cfg.hallucination_max_scored}
    return engine_kwargs, detectors


def forget_saved_requests(settings: Settings, request_ids: set[str]) -> int:
    """An erasure while the worker is stopped: drop ``request_ids`` from its saved
    engine state (open windows, feedback join) and its waiting feedback; how many
    events and records were dropped. Each file is rewritten atomically."""
    from llmpulse.streams.engine_process import LocalEngine

    ids = set(request_ids)
    gone = 0
    worker = settings.data_dir / "worker"
    state_path = worker / "signals.pkl"
    if state_path.exists():
        state = pickle.loads(state_path.read_bytes())
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{state_path}: not a signal state of this version")
        engine_kwargs, detectors = engine_config(settings)

        def forget(blob: bytes) -> bytes:
            nonlocal gone
            eng = LocalEngine(engine_kwargs=engine_kwargs, detectors=detectors)
            eng.restore_bytes(blob)
            gone += eng.forget_requests(ids)
            return eng.snapshot_bytes()

        inner = pickle.loads(state["engine"])
        if isinstance(inner, dict) and "shards" in inner:
            state["engine"] = pickle.dumps({"shards": [forget(b) for b in inner["shards"]]},
                                           protocol=pickle.HIGHEST_PROTOCOL)
        else:
            state["engine"] = forget(state["engine"])
        write_atomic(state_path, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    pending_path = worker / "pending_feedback.pkl"
    if pending_path.exists():
        waiting = pickle.loads(pending_path.read_bytes())
        kept = [(line, rid) for line, rid in waiting if rid not in ids]
        if len(kept) != len(waiting):
            gone += len(waiting) - len(kept)
            write_atomic(pending_path, pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL))
    return gone


def awaited(view: Mapping[str, Sequence[int | None]],
            committed: Mapping[str, int] | None = None) -> list[tuple[int | None, int | None]]:
    """The partitions of ``view`` (as for :func:`unread`) nothing was read from yet that
    may hold events, as watermark source patterns
    (:class:`~llmpulse.streams.windows.AwaitedSources`): ``(grouped partition, None)``,
    ``(None, inference partition)``. May hold events: the end offset is unknown, or
    past the offset the group committed there (``committed``, ``"topic:partition" ->
    offset``; none known: 0). A partition read from, or with nothing past its committed
    offset (a restart where nothing new came), is not awaited: it would otherwise hold
    the watermark for as long as other partitions have a backlog.

    >>> awaited({"llmpulse.grouped:0": [None, 4], "llmpulse.grouped:1": [None, None],
    ...          "llmpulse.grouped:2": [None, 0], "llmpulse.grouped:3": [3, 9],
    ...          "llmpulse.inference:1": [None, 2], "llmpulse.inference:2": [5, 5]})
    [(0, None), (1, None), (None, 1)]
    >>> awaited({"llmpulse.grouped:0": [None, 4], "llmpulse.inference:1": [None, 7]},
    ...         committed={"llmpulse.grouped:0": 4, "llmpulse.inference:1": 6})
    [(None, 1)]
    """
    out: list[tuple[int | None, int | None]] = []
    for name, (pos, end) in view.items():
        if pos is not None or (end is not None and end <= (committed or {}).get(name, 0)):
            continue
        topic, _, part = name.rpartition(":")
        if topic == TOPIC_GROUPED:
            out.append((int(part), None))
        elif topic == TOPIC_INFERENCE:
            out.append((None, int(part)))
    return out


class SignalAgents:
    """Registers the grouped forwarder, the signal agent and its timers on a Faust app."""

    def __init__(self, app: faust.App, settings: Settings, store: Store, sink: RawSink,
                 *, health: Callable[[], Awaitable[list[Signal]]] | None = None,
                 positions: dict[tuple[str, int], int] | None = None,
                 signals_topic: Any = None,
                 backlog: Callable[[], bool] | None = None,
                 log_id: Callable[[], str | None] | None = None,
                 state_log: EngineStateLog | None = None,
                 progress: GroupProgress | None = None,
                 gap_probe: GapProbe | None = None) -> None:
        from llmpulse.streams.engine_process import EngineProcess, LocalEngine, ShardedEngine

        cfg = settings.signals
        self.app = app
        self.settings = settings
        self.store = store
        self.sink = sink
        self.health = health
        #: next offset to process per (topic, partition), shared with the ingest stats (lag)
        self.positions: dict[tuple[str, int], int] = {} if positions is None else positions
        self.consumers: list[SignalConsumer] = []
        # whether this worker's input has unread events (consumer lag): while it
        # has, no source counts as idle, so a slow poll delays windows instead
        # of turning the backlog into late events
        self.backlog: Callable[[], bool] = backlog or self._consumer_backlog
        engine_kwargs, detectors = engine_config(settings)
        self.engine: Any
        if cfg.process and cfg.engine_processes > 1:
            self.engine = ShardedEngine(cfg.engine_processes, engine_kwargs=engine_kwargs,
                                        detectors=detectors)
        elif cfg.process:
            self.engine = EngineProcess(engine_kwargs=engine_kwargs, detectors=detectors)
        else:
            self.engine = LocalEngine(engine_kwargs=engine_kwargs, detectors=detectors)
        self._keyed = isinstance(self.engine, ShardedEngine)  # chunks carry their group key
        self.engine.start()
        self._state_path = settings.data_dir / "worker" / "signals.pkl"
        self._pending_path = settings.data_dir / "worker" / "pending_feedback.pkl"
        self._pending_saved = 0  # how many waiting feedback events the file holds
        self._routing: list[tuple[float, bytes, str]] = []  # taken from pending, being routed
        # next llmpulse.grouped offset per partition that the engine's state
        # includes: written only in the engine's thread, with the engine
        self._positions: dict[int, int] = {}
        # which log those offsets number (the Kafka cluster id; None: unknown). An
        # embedded broker stopped cleanly is replaced by a new one whose offsets
        # start at 0 again: positions saved against another log are dropped.
        # ``log_id`` reads the current id (a metadata request), once, before the
        # first batch is taken
        self._log_id: str | None = None
        self._log_source = log_id
        # partitions being replayed from the snapshot: (first offset seen past it, give-up time)
        self._rewinding: dict[int, tuple[int, float]] = {}
        self._seen: set[int] = set()  # grouped partitions that delivered a message since start
        # the group keys seen per grouped partition (engine thread): a partition's share
        # of the engine state is the state of these groups
        self._keys: dict[int, set[bytes]] = {}
        # where partition states are handed from worker to worker (None: kept in the
        # local file only); the grouped partitions this worker owns (None: not known
        # yet, before the first assignment, or without a consumer group)
        self.state_log = state_log
        self._owned: set[int] | None = None
        # assigned partitions whose handed-over state is still to be read: read
        # before their first message is taken in (or at the next poll), not in the
        # rebalance callback, which must return within the session timeout
        self._to_take_over: set[int] = set()
        # no partitions known to be this worker's: before the first assignment (a restored
        # state holds the windows of partitions that may go elsewhere) and between a
        # revocation and the next assignment. Silence then is no idleness (:meth:`tick`)
        self._unassigned = state_log is not None
        self._assigned: set[tuple[str, int]] = set()  # every topic partition of this worker
        self._take_over_lock = asyncio.Lock()
        # state kept per group beside the engine's (the alert agent's), handed over with
        # the partitions (None: only the engine state moves); set by the composition root
        self.group_states: GroupStates | None = None
        # polls whose signals the consumers have not all had yet, and set when none
        self._emitting = 0
        self._emitted = asyncio.Event()
        self._emitted.set()
        self._put_off_logged = -math.inf
        self._stopping = False  # set by stop(): no more states taken over
        self.pending_feedback: list[tuple[float, bytes, str]] = []
        self.counters: dict[str, int] = defaultdict(int)
        self._restore()
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmpulse-signals")
        # set by close(): the Faust timers run until the app stops, after the engine did
        self._closed = False
        # no acks: the consumer's committed offset on llmpulse.grouped is the one of the
        # last saved engine state (:meth:`_commit_saved`), never further, so a restart or
        # a new owner of the partition starts where the state it restores ends
        self.grouped = app.topic(TOPIC_GROUPED, value_serializer="raw", key_serializer="raw",
                                 acks=False)
        # ``signals_topic``: anything with Faust's ``send(key=, value=)`` (tests collect)
        self.signals_topic = signals_topic or app.topic(TOPIC_SIGNALS, value_serializer="raw",
                                                        key_serializer="raw")
        self.last_signals_at = 0.0
        self.last_health = time.monotonic()
        # a rebalance and idle_s after it count as a backlog (moved inference partitions)
        # and so does a pause of this worker past its session timeout (a rebalance it
        # did not see; it would write partial windows as a stale writer otherwise)
        self.rebalance = RebalanceHold(float(engine_kwargs.get("idle_s") or IDLE_S),
                                       pause_s=float(settings.session_timeout_s),
                                       max_s=REBALANCE_HOLD_MAX_S)
        # the group's progress on llmpulse.inference (None: not read): a hold after an
        # assignment ends once every partition is forwarded past its end at the
        # assignment (:meth:`_caught_up`), not idle_s after it
        self.progress = progress
        # reads whether the offsets between a committed offset and the end hold a record
        # (a transaction's marker does not): None, not read
        self.gap_probe = gap_probe
        self._gaps_read: dict[Gap, bool] = {}
        self._catch_up_ends: tuple[int, dict[int, int]] | None = None  # (assignment, ends)
        # (assignment, this worker's llmpulse.grouped ends once the group caught up)
        self._catch_up_grouped: tuple[int, dict[Any, int | None]] | None = None
        self._lag_told: int | None = None  # the assignment a hold past idle_s was logged for
        self.engine_stats: dict[str, Any] = {}
        #: the last backlog decision's inputs: "topic:partition" -> [position, end offset]
        self.backlog_view: dict[str, list[int | None]] = {}
        # what this worker forwarded to llmpulse.grouped and the consumer may not know of
        # yet (the high watermark it has is the last fetch's): sends not yet acknowledged,
        # and the offset after the last acknowledged one per partition
        self._forwarding = 0
        self._forwarded_to: dict[int, int] = {}
        # when the engine was last given events of each watermark source (engine thread):
        # the broker is asked for end offsets only while one may count as idle
        self._added_at: dict[Any, float] = {}
        self._idle_s = float(engine_kwargs.get("idle_s") or IDLE_S)
        # sources (grouped partition, inference partition) this worker forwarded to and the
        # engine has not had events of yet, and the partitions awaited: while one is, the
        # watermark holds (its events would be late for windows the others closed)
        self._forwarded_sources: set[tuple[int, int]] = set()
        self._awaited = AwaitedSources(self._idle_s)
        self._register()

    # -- forwarding from the ingest agents -------------------------------------

    async def forward_inference(self, batch: IngestBatch,
                                rejected: set[int]) -> list[Awaitable[Any]]:
        """Send the batch's valid events to ``llmpulse.grouped``; returns each message's
        delivery, for the ingest batch to await before the stream acks it."""
        # messages per (grouped partition, source partition), each holding the lines of
        # several groups (:mod:`llmpulse.streams.forward`): the engine's watermark follows
        # the source partitions, whose event time is ordered, not the grouped ones, which
        # interleave several sources (a worker catching up reads them at different paces)
        parts = self.settings.ingest.partitions
        keys: dict[tuple[str, str, str], bytes] = {}
        by_dest: dict[tuple[int, int], dict[bytes, list[bytes]]] = defaultdict(
            lambda: defaultdict(list))
        for i, (ev, line, m) in enumerate(zip(batch.events, batch.lines, batch.sources, strict=True)):
            if i in rejected:
                continue
            group = (ev["app"], ev["model"], ev["model_version"])
            key = keys.get(group)
            if key is None:  # encoded once per group, not per event
                key = keys[group] = group_key(*group)
            by_dest[(grouped_partition(key, parts), m.partition)][key].append(line)
        self._forwarded_sources.update(by_dest)
        delivered: list[Awaitable[Any]] = []
        for (dest, src), groups in by_dest.items():
            source = str(src).encode()
            for value, listed in pack_groups(groups):
                delivered += await self._send_grouped(
                    value, dest, {SOURCE_HEADER: source, GROUPS_HEADER: listed})
        self.counters["forwarded_inference"] += len(batch.events) - len(rejected)
        return delivered

    async def _send_grouped(self, value: bytes, partition: int,
                            headers: dict[str, bytes]) -> list[Awaitable[Any]]:
        """Send one message to ``llmpulse.grouped`` and follow it until the broker has it:
        the ingest agent counts its batch as read once this returns (the message only
        queued), and until a fetch brings the new end offset the consumer's high
        watermark does not show it, so meanwhile the message is a backlog of its own
        (:meth:`_consumer_backlog`). Returns the message's delivery (none from a
        sender that returns once the message is written)."""
        sent: Any = await self.grouped.send(value=value, partition=partition, headers=headers)
        if not hasattr(sent, "add_done_callback"):
            return []  # a sender that returns when the message is written (tests)
        self._forwarding += 1

        def done(fut: Any) -> None:
            self._forwarding -= 1
            if fut.cancelled() or fut.exception() is not None:
                return  # not in the log: nothing to wait for (the producer logs the error)
            offset = getattr(fut.result(), "offset", None)
            if isinstance(offset, int) and offset + 1 > self._forwarded_to.get(partition, 0):
                self._forwarded_to[partition] = offset + 1

        sent.add_done_callback(done)
        return [sent]

    async def forward_feedback(self, batch: IngestBatch,
                               rejected: set[int]) -> list[Awaitable[Any]]:
        """Route the batch's valid feedback to its inference's group (or keep it pending
        until the inference is stored); returns each message's delivery."""
        now = time.monotonic()
        items = [(now, line, ev["request_id"])
                 for i, (ev, line) in enumerate(zip(batch.events, batch.lines, strict=True))
                 if i not in rejected]
        delivered = await self._route_feedback(items)
        self._save_pending()
        return delivered

    async def _route_feedback(self, items: list[tuple[float, bytes, str]]) -> list[Awaitable[Any]]:
        if not items:
            return []
        found = await asyncio.to_thread(lookup_requests, self.store, [rid for _, _, rid in items])
        parts = self.settings.ingest.partitions
        by_dest: dict[int, dict[bytes, list[bytes]]] = defaultdict(lambda: defaultdict(list))
        wait = self.settings.signals.feedback_wait_s
        now = time.monotonic()
        forwarded = 0
        for first_seen, line, rid in items:
            inf = found.get(rid)
            if inf is not None:
                key = group_key(inf["app"], inf["model"], inf["model_version"])
                by_dest[grouped_partition(key, parts)][key].append(line)
                forwarded += 1
            elif now - first_seen < wait:
                self.pending_feedback.append((first_seen, line, rid))
            else:
                self.counters["feedback_unmatched"] += 1
        delivered: list[Awaitable[Any]] = []
        for dest, groups in by_dest.items():
            for value, listed in pack_groups(groups):
                delivered += await self._send_grouped(value, dest, {GROUPS_HEADER: listed})
        self.counters["forwarded_feedback"] += forwarded
        return delivered

    # -- the signal agent ---------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        cfg = self.settings.signals

        async def signals_agent(stream: Any) -> None:
            async for events in stream.take_events(1000, within=0.2):
                await self.take([ev.message for ev in events])
                positions = self.positions
                for ev in events:
                    positions[(ev.message.topic, ev.message.partition)] = ev.message.offset + 1

        signals_agent.__name__ = signals_agent.__qualname__ = "signals"
        app.agent(self.grouped, name="llmpulse.signals")(signals_agent)

        @app.timer(cfg.poll_s)
        async def poll_windows() -> None:
            await self.tick()

        @app.timer(HEARTBEAT_S)
        async def heartbeat() -> None:
            self._beat()

        if cfg.snapshot_s > 0:
            @app.timer(cfg.snapshot_s)
            async def save_state() -> None:
                await self.save()

        # Faust's signals: (sender, the partitions, signal=...)
        async def on_revoked(_app: Any, /, *args: Any, signal: Any, **_kw: Any) -> None:
            await self.partitions_revoked({tp.partition for tp in args[0]
                                           if tp.topic == TOPIC_GROUPED})

        async def on_assigned(_app: Any, /, *args: Any, signal: Any, **_kw: Any) -> None:
            self._forget_positions({(tp.topic, tp.partition) for tp in args[0]})
            await self.partitions_assigned({tp.partition for tp in args[0]
                                            if tp.topic == TOPIC_GROUPED})

        app.on_partitions_revoked.connect(on_revoked, weak=False)
        app.on_partitions_assigned.connect(on_assigned, weak=False)

    def _forget_positions(self, assigned: set[tuple[str, int]]) -> None:
        """Read positions (the lag's) of partitions this worker gets back after another
        worker had them are stale: dropped, so the lag counts from the committed offset."""
        for tp in assigned - self._assigned:
            self.positions.pop(tp, None)
        self._assigned = set(assigned)

    async def take(self, messages: Sequence[Any]) -> int:
        """The signal agent's body: one batch of ``llmpulse.grouped`` messages
        (Faust messages, or :class:`llmpulse.streams.testing.TestingMessage`) into the
        engine; how many it took (a replay after a restart skips some)."""
        loop = asyncio.get_running_loop()
        await self._read_log_id()
        if self._to_take_over:
            await self._complete_take_over()
        owned = self._owned
        if owned is not None and any(m.partition not in owned for m in messages):
            # fetched before a rebalance took the partition away: its new owner reads them
            self.counters["not_owned_skipped"] += sum(m.partition not in owned for m in messages)
            messages = [m for m in messages if m.partition in owned]
        fresh = await self._replay_filter(list(messages))
        if fresh:
            chunks = engine_chunks(fresh, keyed=self._keyed)
            ends = {m.partition: m.offset + 1 for m in fresh}
            keys = {(m.partition, key) for m in fresh for key in message_keys(m) if key}
            await loop.run_in_executor(self._exec, self._add, chunks, ends, keys)
        return len(fresh)

    async def _read_log_id(self) -> None:
        """Once, before the first batch or assignment: which Kafka log the saved offsets number."""
        if self._log_source is not None:
            source, self._log_source = self._log_source, None
            current = await asyncio.to_thread(source)
            await asyncio.get_running_loop().run_in_executor(self._exec, self._check_log, current)

    def _beat(self) -> None:
        """The event loop ran (:meth:`RebalanceHold.beat`): a pause is logged."""
        if self.rebalance.beat():
            log.warning("signals: this worker did not run for more than its session timeout "
                        "(%.0f s): its partitions may have moved; windows wait %.0f s as after "
                        "a rebalance", self.rebalance.pause_s, self.rebalance.idle_s)

    async def tick(self) -> None:
        """The window timer's body: poll the engine and emit what closed, route
        waiting feedback, add the health signals when due."""
        loop = asyncio.get_running_loop()
        if self._to_take_over:
            await self._complete_take_over()  # a quiet partition's windows still close
        backlog = self.backlog()
        if self.rebalance.holds():
            # a busy worker too (its own lag is a backlog): the hold also keeps the
            # sources of the inference partitions others read awaited (_holding)
            await self._caught_up()
        if not backlog and self._unassigned:
            # nothing is read until the group assigns the partitions; a restored engine
            # whose sources idled out meanwhile would close its windows by wall time,
            # early, before it knows which are its own and before the states handed over
            # are in (an assignment can take longer than ``idle_s`` on a loaded cluster)
            backlog = True
            self.counters["polls_unassigned"] += 1
        elif not backlog and self.rebalance.holds():
            # a moved partition's new owner may not have forwarded yet (or this worker
            # did not run past its session timeout: a rebalance it did not see)
            backlog = True
            self.counters["polls_held_by_rebalance"] += 1
        elif not backlog and self.backlog == self._consumer_backlog and self._may_be_idle():
            backlog = await self._end_offsets_backlog()
        if backlog:
            self.counters["polls_with_backlog"] += 1  # windows wait: silence is not idleness
        hold = self._holding(backlog)
        async with self._polling():
            signals = await loop.run_in_executor(self._exec, self._poll, backlog, hold)
            # the engine closes short windows first and may leave longer ones for the
            # next poll: emit what came, and poll again at once while polls give signals
            for _ in range(MAX_POLLS_IN_A_ROW):
                if not signals:
                    break
                await self.emit(signals)
                signals = await loop.run_in_executor(self._exec, self._poll,
                                                     backlog or self.backlog(), hold)
            # the last poll's signals too, before the poll counts as emitted
            if signals:
                await self.emit(signals)
                signals = []
        if self.pending_feedback:
            items, self.pending_feedback = self.pending_feedback, []
            self._routing = items  # still on disk until routed
            for d in await self._route_feedback(items):
                await d  # in the broker, then off the disk
            self._routing = []
            self._save_pending()
        if self.health is not None and time.monotonic() - self.last_health >= 10.0:
            self.last_health = time.monotonic()
            signals = signals + await self.health()
        await self.emit(signals)

    async def _caught_up(self) -> bool:
        """Whether the hold after the last assignment can end now (often long before
        ``idle_s``): the group has committed every ``llmpulse.inference`` partition at or past its
        end offset read after the assignment, so what the moved partitions held is
        forwarded (:mod:`llmpulse.streams.catch_up`). While it has not, the hold
        lasts past ``idle_s``, up to :data:`REBALANCE_HOLD_MAX_S` after the
        assignment (a new owner slow to forward). Read once a window poll
        (``signals.poll_s``) while the hold lasts; never for a hold a pause started; a
        broker that does not answer in :data:`END_OFFSETS_TIMEOUT_S`: not known, the
        hold stays (counted as ``catch_up_unanswered``)."""
        progress, assignment = self.progress, self.rebalance.assignment
        if progress is None or assignment is None or self._closed:
            return False
        try:
            if self._catch_up_ends is None or self._catch_up_ends[0] != assignment:
                ends = await asyncio.wait_for(asyncio.to_thread(progress.ends),
                                              END_OFFSETS_TIMEOUT_S)
                self._catch_up_ends = (assignment, ends)
            committed = await asyncio.wait_for(asyncio.to_thread(progress.committed),
                                               END_OFFSETS_TIMEOUT_S)
        except Exception as exc:
            log.debug("signals: the group's progress on %s not read: %s", progress.topic, exc)
            self.counters["catch_up_unanswered"] += 1
            return False
        waiting = [p for p in behind(self._catch_up_ends[1], committed)
                   if not await self._no_record_between(p, committed.get(p),
                                                        self._catch_up_ends[1][p])]
        if waiting:
            self.rebalance.behind(assignment)
            if self.rebalance.lagging() and self._lag_told != assignment:
                self._lag_told = assignment
                log.warning("signals: %s partitions %s are not forwarded to their ends at the "
                            "last assignment %.0f s after it: windows wait for them, up to "
                            "%.0f s", progress.topic, waiting, self.rebalance.idle_s,
                            self.rebalance.max_s)
            else:
                log.debug("signals: rebalance hold: %s partitions %s not forwarded to their "
                          "end at the assignment yet", progress.topic, waiting)
            return False
        try:
            if not await self._grouped_read_to(assignment):
                return False
        except Exception as exc:
            log.debug("signals: the ends of this worker's %s partitions not read: %s",
                      TOPIC_GROUPED, exc)
            self.counters["catch_up_unanswered"] += 1
            return False
        if not self.rebalance.end(assignment):
            return False  # another rebalance or a pause since the read began
        log.info("signals: %s forwarded to its ends at the assignment: windows stop waiting "
                 "on the rebalance", progress.topic)
        return True

    async def _no_record_between(self, partition: int, committed: int | None,
                                 end: int) -> bool:
        """Whether ``llmpulse.inference`` holds no record from ``committed`` up to ``end``:
        a group committed up to a transaction's marker has forwarded everything
        (:mod:`llmpulse.streams.gaps`). Each gap is read once; not read: False."""
        if committed is None or self.gap_probe is None:
            return False
        gap = Gap(TOPIC_INFERENCE, partition, committed, end)
        known = self._gaps_read.get(gap)
        if known is None:
            empty = await self.gap_probe.empty(gap)
            if empty is None:
                return False
            if len(self._gaps_read) > 1024:
                self._gaps_read.clear()
            known = self._gaps_read[gap] = empty
        return known

    async def _grouped_read_to(self, assignment: int) -> bool:
        """Whether this worker has read its ``llmpulse.grouped`` partitions to their ends
        as read once the group had forwarded what the moved inference partitions held
        (:meth:`_caught_up`): those events are then in its engine. A partition taken
        over without a state, nothing read of it yet, is not at its end (the window
        polls' backlog check cannot tell: it knows no position there), so the sources
        other workers forward to it stay awaited (:meth:`_sources_of_others`). Read
        from: the engine's position, the consumer's, or the group's committed offset,
        whichever is furthest."""
        try:
            consumer = self.app.consumer
            tps = [tp for tp in consumer.assignment() if tp.topic == TOPIC_GROUPED]
        except Exception:  # no consumer (tests without a broker): nothing to read
            return True
        if not tps:
            return True
        if self._catch_up_grouped is None or self._catch_up_grouped[0] != assignment:
            asked = dict(await asyncio.wait_for(consumer.highwaters(*tps), END_OFFSETS_TIMEOUT_S))
            mine = self._forwarded_mine()  # Tansu's ListOffsets ends short of a batch's end
            self._catch_up_grouped = (assignment, {
                tp: largest_end(asked.get(tp), _highwater(consumer, tp), mine.get(tp.partition))
                for tp in tps})
        committed = self._committed()
        for name, (pos, end) in self._read_view(self._catch_up_grouped[1]).items():
            at = largest_end(pos, committed.get(name))
            if end is None or end > (at or 0):
                return False
        return True

    @asynccontextmanager
    async def _polling(self) -> AsyncIterator[None]:
        """Around an engine poll and the emit of its signals: until they reach the
        consumers, a hand-off waits before it takes the alert states (:meth:`_publish`)."""
        self._emitting += 1
        self._emitted.clear()
        try:
            yield
        finally:
            self._emitting -= 1
            if not self._emitting:
                self._emitted.set()

    def _holding(self, backlog: bool) -> bool:
        """Whether a partition or source is awaited (:func:`awaited`, by the last backlog
        view; the sources forwarded to this worker's grouped partitions and not taken
        in yet; during a rebalance, those other workers forward to them,
        :meth:`_sources_of_others`): the watermark holds until it delivers or has been
        awaited ``idle_s`` without a backlog (counted as ``polls_held``)."""
        delivered = set(self._added_at)  # written in the engine's thread: copied at once
        self._forwarded_sources -= delivered
        owned = self._owned
        if owned is None and self.backlog_view:  # before the first assignment: the consumer's
            owned = {int(name.rpartition(":")[2]) for name in self.backlog_view
                     if name.rpartition(":")[0] == TOPIC_GROUPED}
        names: list[Hashable] = [*awaited(self.backlog_view, self._committed()),
                                 *(s for s in self._forwarded_sources
                                   if owned is None or s[0] in owned),
                                 *self._sources_of_others(owned)]
        waiting = self._awaited.waiting(names, delivered, time.monotonic(), backlog=backlog)
        if waiting:
            self.counters["polls_held"] += 1
            log.debug("signals: watermark held for partitions not heard from yet: %s", waiting)
        return bool(waiting)

    def _sources_of_others(self, owned: set[int] | None) -> list[tuple[int, int]]:
        """While a rebalance holds (:class:`RebalanceHold`): the sources (grouped
        partition, inference partition) of this worker's grouped partitions that have
        groups here, from the inference partitions another worker reads. Those the
        engine has taken events from are known to its watermark (silent, they count
        while the rebalance holds); the others are not, and without a name the first
        forwards of a worker that read its share again from the committed offsets would
        be late for windows this worker's own sources closed (a grouped partition taken
        over with no handed-over state, after a rolling restart). Nothing is named
        before the first assignment, or when this worker reads every inference partition."""
        if not self._assigned or not self.rebalance.holds():
            return []
        mine = {p for topic, p in self._assigned if topic == TOPIC_INFERENCE}
        others = [i for i in range(self.settings.ingest.partitions) if i not in mine]
        grouped = [p for p, keys in list(self._keys.items())  # engine thread: copied at once
                   if keys and (owned is None or p in owned)]
        return [(p, i) for p in sorted(grouped) for i in others]

    def _committed(self) -> dict[str, int]:
        """The offsets the group had committed when this worker's partitions were
        assigned, or since (``"topic:partition" -> offset``), as the consumer keeps them."""
        try:
            kept = dict(getattr(self.app.consumer, "_committed_offset", None) or {})
        except Exception:  # no consumer yet
            return {}
        return {f"{tp.topic}:{tp.partition}": int(off) for tp, off in kept.items()
                if off is not None}

    def _check_log(self, current: str | None) -> None:
        # in the engine's thread, like _add: the positions move with the engine's state
        saved = self._log_id
        if saved is not None and current is not None and saved != current:
            # a new log (a new embedded broker): its offsets are not these. The
            # engine's windows and counters are kept, they refer to no offset
            log.info("signals: dropping the saved llmpulse.grouped offsets %s: they number "
                     "the log of Kafka cluster %r, this is %r", self._positions, saved, current)
            self.counters["positions_dropped"] += 1
            self._positions = {}
        if current is not None:
            self._log_id = current

    def _add(self, chunks: list[Any], ends: dict[int, int],
             keys: set[tuple[int, bytes]] | None = None) -> None:
        # in the engine's thread, like _save: the positions move with the engine's state
        if self._closed:
            return  # stopping: not taken in, not committed; the next owner reads them
        self.engine.add(chunks)
        now = time.monotonic()
        for chunk in chunks:
            self._added_at[chunk[0]] = now
        self._positions.update(ends)
        for p, key in keys or ():
            self._keys.setdefault(p, set()).add(key)

    # -- partitions moving between workers ------------------------------------------

    async def partitions_revoked(self, revoked: set[int]) -> None:
        """A rebalance takes ``revoked`` (every grouped partition of this worker, with
        Kafka's eager protocol): hand their states to the changelog and commit the
        offsets they cover, before the next owner reads them. The states stay in the
        engine until the assignment says which partitions went elsewhere."""
        self._unassigned = self.state_log is not None
        self.rebalance.revoked()
        if self.state_log is None or self._closed:
            return
        held = revoked if self._owned is None else revoked & self._owned
        if held:
            await self._publish(held)

    async def partitions_assigned(self, assigned: set[int]) -> None:
        """The grouped partitions of this worker after a rebalance: drop the groups of
        the partitions that went elsewhere, and take over the states of the new ones
        from the changelog (they are read from the offsets those states cover on)."""
        self._unassigned = False
        self.rebalance.assigned()
        if self.state_log is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        before = self._owned if self._owned is not None else set(self._positions) | set(self._keys)
        gone = before - assigned
        new = assigned - (self._owned or set())
        log.info("signals: assigned llmpulse.grouped %s (new %s), at offsets %s",
                 sorted(assigned), sorted(new), dict(sorted(self._positions.items())))
        self._owned = set(assigned)
        # every assigned partition is checked against the changelog, not only new ones:
        # a worker that lost its partitions while paused gets them back in a rebalance
        # it cannot tell from one that kept them, and its state may be older than the
        # one another worker wrote meanwhile (the state covering more wins)
        self._to_take_over = set(assigned)
        for p in new:
            self._seen.discard(p)
            self._rewinding.pop(p, None)
        if gone:
            dropped = await loop.run_in_executor(self._exec, self._drop_partitions, gone)
            if self.group_states is not None and dropped:
                self.group_states.drop_groups(dropped)

    async def _complete_take_over(self) -> None:
        """Read the handed-over states of the partitions assigned since the last call."""
        async with self._take_over_lock:
            await self._take_over_assigned()

    async def _take_over_assigned(self) -> None:
        # with the take-over lock held
        if self.state_log is None:
            return
        new = set(self._to_take_over)
        if not new or self._closed or self._stopping:
            return
        await self._read_log_id()  # saved offsets of another log are dropped first
        try:
            states = await asyncio.to_thread(self.state_log.read, new)
        except Exception:
            log.exception("signals: reading the state of llmpulse.grouped partitions %s "
                          "failed; they continue from their committed offsets", sorted(new))
            self.counters["handoff_read_errors"] += 1
            states = {}
        loop = asyncio.get_running_loop()
        taken = await loop.run_in_executor(self._exec, self._take_over, new, states)
        # at once, on the event loop like the consumers: no signal of a group taken over
        # reaches them before its alert states are in
        if self.group_states is not None:
            for keys, groups in taken:
                try:
                    self.group_states.take_over_groups(keys, groups)
                except Exception:
                    log.exception("signals: taking over the alert states of %d group(s) failed",
                                  len(keys))
        self._to_take_over -= new

    def _drop_partitions(self, gone: set[int]) -> set[bytes]:
        # in the engine's thread; the groups dropped
        out: set[bytes] = set()
        for p in sorted(gone):
            keys = self._keys.pop(p, set())
            out |= keys
            dropped = self.engine.drop_groups(keys, p) if keys else 0
            self._positions.pop(p, None)
            # its sources, as the engine's watermark forgot them: they are not idle here
            self._added_at = {s: t for s, t in self._added_at.items() if s[0] != p}
            self.counters["partitions_handed_off"] += 1
            log.info("signals: llmpulse.grouped[%d] went to another worker (%d group(s) "
                     "handed off)", p, dropped)
        return out

    def _take_over(self, new: set[int], states: dict[int, PartitionState],
                   ) -> list[tuple[set[bytes], bytes | None]]:
        # in the engine's thread; of each partition taken over, the groups it replaced
        # (this worker's and the state's) and their group states handed over
        taken: list[tuple[set[bytes], bytes | None]] = []
        if self._closed:
            return taken
        owned = self._owned
        for p in sorted(new):
            if owned is not None and p not in owned:
                continue  # a rebalance since took it elsewhere: its new owner takes it over
            state = states.get(p)
            held = self._positions.get(p)
            if state is None:
                continue  # nothing handed over: what this worker's own saved state holds
            if held is not None and held >= state.covered:
                continue  # this worker's own state (its file) is as far on
            mine = self._keys.pop(p, set())
            if mine:
                self.engine.drop_groups(mine, p)
            try:
                self.engine.merge_bytes(state.engine)
            except Exception:
                log.exception("signals: the handed-over state of llmpulse.grouped[%d] could not "
                              "be loaded; it continues from its committed offset", p)
                self.counters["handoff_load_errors"] += 1
                self._positions.pop(p, None)
                continue
            self._positions[p] = state.covered
            self._keys[p] = set(state.keys)
            taken.append((mine | set(state.keys), state.groups))
            self.counters["partitions_taken_over"] += 1
            log.info("signals: took over llmpulse.grouped[%d] at offset %d (%d group(s))",
                     p, state.covered, len(state.keys))
        return taken

    def _partition_states(self, partitions: set[int]) -> list[PartitionState]:
        # in the engine's thread: each state with the offset it covers (none once the
        # engine stopped: a snapshot timer may still fire after close)
        if self._closed:
            return []
        out = []
        for p in sorted(partitions):
            covered = self._positions.get(p)
            if covered is None:
                continue  # nothing taken in from it: its committed offset stands
            keys = frozenset(self._keys.get(p, ()))
            out.append(PartitionState(p, covered, self.engine.snapshot_groups(keys, p), keys))
        return out

    async def _publish(self, partitions: set[int]) -> None:
        """Write the states of ``partitions`` to the changelog, then commit their offsets."""
        assert self.state_log is not None
        loop = asyncio.get_running_loop()
        try:
            states = await loop.run_in_executor(self._exec, self._partition_states, partitions)
            states = await self._with_group_states(states)
            await asyncio.to_thread(self.state_log.write, states)
        except Exception:
            log.exception("signals: writing the state of llmpulse.grouped partitions %s to "
                          "the changelog failed", sorted(partitions))
            self.counters["handoff_write_errors"] += 1
            return
        self.counters["handoff_writes"] += 1
        await self._commit_saved({s.partition: s.covered for s in states})

    async def _with_group_states(self, states: list[PartitionState]) -> list[PartitionState]:
        """``states`` with the group states (:attr:`group_states`) of their groups, taken
        after the engine's: once the signals polled before the engine snapshot have reached
        the consumers (a poll in flight), so the alert states have seen every window the
        engine state closed. Newer than the engine's is harmless: the next owner's alert
        manager ignores the windows it closes again as replays."""
        if self.group_states is None or not states:
            return states
        if not await self._emits_ended():
            self.counters["handoff_emit_waits_timed_out"] += 1
        out = []
        for st in states:
            try:
                out.append(replace(st, groups=self.group_states.export_groups(st.keys)))
            except Exception:
                log.exception("signals: the alert states of llmpulse.grouped[%d] could not be "
                              "taken; handed over without them", st.partition)
                out.append(st)
        return out

    async def _replay_filter(self, messages: list[Any]) -> list[Any]:
        """The messages the engine has not taken in yet; seeks a partition back
        to its snapshot's offset when the consumer starts past it. Offsets are
        committed only with a saved state (:meth:`_commit_saved`), so that happens
        only with offsets committed by a version that committed on every batch."""
        out = []
        now = time.monotonic()
        for m in messages:
            p, offset = m.partition, m.offset
            expected = self._positions.get(p)
            if expected is None or offset == expected:
                self._rewinding.pop(p, None)
                out.append(m)
            elif offset < expected:
                self.counters["replay_skipped"] += 1
            else:
                rewind = self._rewinding.get(p)
                if rewind is None and p not in self._seen:
                    # first message of this partition since the snapshot was loaded
                    self._rewinding[p] = (offset, now + REWIND_TIMEOUT_S)
                    log.info("signals: replaying %s[%d] from offset %d (consumer was at %d)",
                             m.topic, p, expected, offset)
                    await self.app.consumer.seek(m.tp, expected)
                    self.counters["replay_seeks"] += 1
                elif rewind is not None and offset >= rewind[0] and now < rewind[1]:
                    self.counters["replay_skipped"] += 1  # fetched before the seek
                else:
                    if rewind is not None and offset >= rewind[0]:
                        log.warning("signals: %s[%d] could not be replayed from offset %d; "
                                    "its open windows miss events before %d",
                                    m.topic, p, expected, offset)
                        self.counters["replay_gaps"] += 1
                    self._rewinding.pop(p, None)
                    out.append(m)  # a gap in the log (retention, compaction): go on
            self._seen.add(p)
        return out

    def _consumer_backlog(self) -> bool:
        """Whether a ``llmpulse.grouped`` partition of this worker has events the
        engine has not taken in (its high watermark is past the engine's position),
        or an ``llmpulse.inference`` one events not yet read (ingest lag: they
        reach the engine later, forwarded), by the high watermarks of the last
        fetches; and whether a message this worker forwarded to one of its grouped
        partitions may not be in them yet (sent and not acknowledged, or acknowledged
        past what the engine took in)."""
        forwarding = self._forwarding > 0
        try:
            consumer = self.app.consumer
            assignment = list(consumer.assignment())
        except Exception:  # no consumer yet (starting, or no broker)
            return forwarding
        view = self._read_view({tp: _highwater(consumer, tp) for tp in assignment})
        forwarded = self._forwarded_mine()
        for p, end in forwarded.items():
            key = f"{TOPIC_GROUPED}:{p}"
            if key not in view:
                continue  # not assigned here: the worker it is assigned to reads it
            pos, high = view[key]
            view[key] = [pos, largest_end(end, high)]
        self.backlog_view = view  # also what is awaited (:meth:`_holding`)
        return forwarding or bool(unread(view, forwarded=forwarded))

    def forwarded_ends(self) -> dict[tuple[str, int], int]:
        """``(llmpulse.grouped, partition) -> end offset`` of what this worker forwarded
        there and the broker acknowledged: an end no ListOffsets answer may undercut (on
        brokers over a shared log each answers from its own view, which lags while
        writes flow; docs/cluster.md)."""
        return {(TOPIC_GROUPED, p): end for p, end in self._forwarded_to.items()}

    def _forwarded_mine(self) -> dict[int, int]:
        """:attr:`_forwarded_to` of the grouped partitions this worker reads."""
        owned = self._owned
        return {p: end for p, end in self._forwarded_to.items() if owned is None or p in owned}

    def _may_be_idle(self) -> bool:
        """Whether a source may have been silent for the engine's ``idle_s`` (less two
        polls): only then does the backlog decide anything."""
        if not self._added_at:
            return False
        margin = 2 * self.settings.signals.poll_s
        return time.monotonic() - min(self._added_at.values()) >= self._idle_s - margin

    async def _end_offsets_backlog(self) -> bool:
        """:meth:`_consumer_backlog` by end offsets asked of the broker now, not those of
        the last fetches: a partition whose fetches stalled (a slow or paused broker)
        shows the end it had then, and silence would pass for idleness while events wait
        in the log. No answer in :data:`END_OFFSETS_TIMEOUT_S`: not known to be at the
        end, so a backlog (windows wait; counted as ``end_offsets_unanswered``)."""
        try:
            consumer = self.app.consumer
            tps = [tp for tp in consumer.assignment()
                   if tp.topic in (TOPIC_GROUPED, TOPIC_INFERENCE)]
        except Exception:  # no consumer yet
            return False
        if not tps:
            return False
        try:
            ends = dict(await asyncio.wait_for(consumer.highwaters(*tps), END_OFFSETS_TIMEOUT_S))
        except Exception as exc:
            log.debug("signals: end offsets not read from the broker: %s", exc)
            self.counters["end_offsets_unanswered"] += 1
            return True
        # Tansu answers a ListOffsets for the end with the last record batch's first
        # offset + 1 (12 records in one batch: 1), which tells a batch not yet fetched
        # but not the end within one: the last fetch's high watermark gives that
        view = self._read_view({tp: largest_end(ends.get(tp), _highwater(consumer, tp))
                                for tp in tps})
        self.backlog_view = view
        behind = unread(view, forwarded=self._forwarded_mine())
        if behind:
            self.counters["end_offsets_behind"] += 1
            log.debug("signals: silence is not idleness: unread %s", behind)
        return bool(behind)

    def _read_view(self, ends: dict[Any, int | None]) -> dict[str, list[int | None]]:
        """``"topic:partition" -> [next offset to read, end offset]`` for the grouped
        partitions (the engine's position, or what the agent was given, the further)
        and the inference partitions (what ingest read) among ``ends``."""
        held = dict(self._positions)
        read = self.positions
        view: dict[str, list[int | None]] = {}
        for tp, end in ends.items():
            pos: int | None
            if tp.topic == TOPIC_GROUPED:
                pos = largest_end(held.get(tp.partition), read.get((tp.topic, tp.partition)))
            elif tp.topic == TOPIC_INFERENCE:
                pos = read.get((tp.topic, tp.partition))
            else:
                continue
            view[f"{tp.topic}:{tp.partition}"] = [pos, end]
        return view

    def _poll(self, backlog: bool = False, hold: bool = False) -> list[Signal]:
        # in the engine's thread: the engine's counters are read here, once a poll,
        # so the event loop never waits on the engine for them
        if self._closed:
            return []
        if not backlog and self.rebalance.holds():
            backlog = True  # stopped since the tick began: silence is no idleness yet
        signals = self.engine.poll(backlog=backlog, hold=hold)
        self.engine_stats = self.engine.stats()
        return signals

    async def emit(self, signals: list[Signal]) -> None:
        if not signals:
            return
        rows = [orjson.dumps(signal_row(s), option=orjson.OPT_SERIALIZE_NUMPY) for s in signals]
        await self.sink.write("signals", rows)
        by_group: dict[bytes, list[bytes]] = defaultdict(list)
        for s, row in zip(signals, rows, strict=True):
            by_group[group_key(s.app, s.model, s.model_version)].append(row)
        for key, lines in by_group.items():
            for value in _chunks(lines):
                await self.signals_topic.send(key=key, value=value)
        self.counters["signals"] += len(signals)
        self.last_signals_at = time.time()
        for consumer in self.consumers:
            try:
                await consumer(signals)
            except Exception:  # a consumer (alerting) failing must not stop signals
                log.exception("signal consumer %r failed", consumer)

    async def flush(self) -> None:
        """Close every open window now and emit (clean shutdown, end of a demo),
        the windows of partitions assigned but not taken over yet included."""
        async with self._take_over_lock:
            await self._flush_all()
        await self.save()

    async def _flush_all(self) -> None:
        # with the take-over lock held. A partition assigned since the last poll has
        # its handed-over state still in the changelog: it is taken over first, so its
        # open windows close here too (a stop right after a rebalance lost them)
        await self._take_over_assigned()
        loop = asyncio.get_running_loop()
        async with self._polling():
            signals = await loop.run_in_executor(self._exec, self.engine.flush)
            await self.emit(signals)

    async def save(self) -> None:
        """Save the engine's state with the offsets it covers, closing nothing: the
        state a crash would leave, so the next start continues the open windows;
        then commit those offsets. States of partitions assigned since the last
        poll are taken over first: this worker's own copy may be older."""
        if self._to_take_over:
            await self._complete_take_over()
        if not await self._emits_ended():
            # a state that closed windows the consumers have not had: left for the next
            # save (a restart from the last one replays a little more, losing nothing)
            self.counters["saves_put_off_while_emitting"] += 1
            if time.monotonic() - self._put_off_logged >= 60.0:  # at most once a minute
                self._put_off_logged = time.monotonic()
                log.warning("signals: engine state not saved: a window poll's signals took over "
                            "%.0f s to reach the alert agent (a slow store?); %d save(s) put off "
                            "so far", EMITTING_WAIT_S, self.counters["saves_put_off_while_emitting"])
            return
        loop = asyncio.get_running_loop()
        # submitted with no await since the check: a poll begun later runs after it
        saved = await loop.run_in_executor(self._exec, self._save)
        # a partition whose handed-over state was not read (a stop) is not this
        # worker's to hand on: what it holds of it may be older than the changelog
        pending = set(self._to_take_over)
        if saved is not None:
            await self._commit_saved({p: o for p, o in saved.items() if p not in pending})
        if self.state_log is not None and self._owned:
            await self._publish(set(self._owned) - pending)

    async def _emits_ended(self) -> bool:
        """Whether no poll's signals are on their way to the consumers, once they have
        arrived (:data:`EMITTING_WAIT_S` at most). The engine thread runs a save between
        two polls, so a save taken while a poll's signals are being emitted holds their
        windows closed; a crash before the alert agent saved its own state after them
        left a restart that never saw those windows' verdicts: the replay from the saved
        state does not close them again (an alert that fired there, stored and paged, is
        unknown to the restarted worker, which can fire it again with another start)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EMITTING_WAIT_S
        while self._emitting:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._emitted.wait(), left)
            except TimeoutError:
                return False
        return True

    async def _commit_saved(self, positions: dict[int, int]) -> None:
        """Commit the ``llmpulse.grouped`` offsets a saved state covers. Committed only
        here (the topic is consumed without acks): a consumer that starts on the
        committed offset starts where the saved state ends, not past it. Messages
        taken after the save are read again after a crash and skipped as held or
        taken in (:meth:`_replay_filter`), whichever the restored state says."""
        try:
            consumer = self.app.consumer
            assigned = set(consumer.assignment())
        except Exception:  # no consumer (tests without a broker, or stopped)
            return
        offsets = {tp: positions[tp.partition] for tp in assigned
                   if tp.topic == TOPIC_GROUPED and tp.partition in positions}
        if not offsets:
            return
        try:
            # explicit offsets: Faust commits only acked messages, and none are acked here
            await consumer._commit(offsets)  # type: ignore[attr-defined]
            self.counters["offset_commits"] += 1
        except Exception:  # the next save commits again
            log.exception("committing the llmpulse.grouped offsets of the saved state failed")

    async def stop(self) -> None:
        """A clean stop, as ``signals.stop`` says: ``flush`` the open windows into
        (partial) signals, or ``save`` them for the next start; then :meth:`close`."""
        async with self._take_over_lock:
            if self.settings.signals.stop == "flush":
                await self._flush_all()
            else:
                await self._take_over_assigned()
            # a partition assigned from here on keeps its state in the changelog, for
            # its next owner: this engine would neither close nor hand on its windows
            self._stopping = True
        await self.save()
        # what this process took in and handed on, for reading a fault run's logs (the
        # engine's counters as they are now, not as the last poll left them)
        try:
            engine = await asyncio.get_running_loop().run_in_executor(self._exec,
                                                                      self.engine.stats)
        except Exception:  # an engine process that died: the last poll's figures
            engine = self.engine_stats
        log.info("signals: stopping at llmpulse.grouped offsets %s; engine events in %s, late %s, "
                 "duplicates %s; %s", dict(sorted(self._positions.items())),
                 engine.get("events_in"), engine.get("late_dropped"), engine.get("duplicates_dropped"),
                 {k: v for k, v in sorted(self.counters.items()) if v})
        await self.close()

    async def close(self) -> None:
        """Stop the engine (its process, when it has one)."""
        loop = asyncio.get_running_loop()
        self._closed = True
        await loop.run_in_executor(self._exec, self.engine.stop)
        if self.state_log is not None:
            await asyncio.to_thread(self.state_log.close)
        if self.progress is not None:
            await asyncio.to_thread(self.progress.close)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["pending_feedback"] = len(self.pending_feedback)
        out["engine"] = self.engine_stats
        out["backlog"] = dict(self.backlog_view)
        out["forwarding"] = self._forwarding
        # windows wait during a rebalance and idle_s after it (RebalanceHold)
        out["rebalance_holds"] = self.rebalance.holds()
        out["pauses_seen"] = self.rebalance.pauses  # holds after a pause past the session timeout
        # holds ended before idle_s: the group had forwarded the moved partitions (_caught_up)
        out["rebalance_holds_ended_early"] = self.rebalance.ended_early
        # and after idle_s: it took the group longer to forward them
        out["rebalance_holds_ended_late"] = self.rebalance.ended_late
        if self.state_log is not None:
            # reads of the changelog that met an end of partition older than its end offset
            out["changelog_stale_ends"] = self.state_log.stale_ends
        return out

    async def forget_requests(self, request_ids: set[str]) -> int:
        """An erasure: drop the requests' events from the open windows and the
        feedback join, and from the saved state at once; how many were dropped."""
        ids = set(request_ids)
        loop = asyncio.get_running_loop()

        def forget() -> tuple[int, dict[int, int] | None]:
            n = int(self.engine.forget_requests(ids))
            return n, self._save()

        gone, saved = await loop.run_in_executor(self._exec, forget)
        if saved is not None:
            await self._commit_saved(saved)
        if self.state_log is not None and self._owned:
            await self._publish(set(self._owned))  # the changelog's copy forgets them too
        waiting = len(self.pending_feedback)
        self.pending_feedback = [p for p in self.pending_feedback if p[2] not in ids]
        self._routing = [p for p in self._routing if p[2] not in ids]
        gone += waiting - len(self.pending_feedback)
        self._save_pending()
        return gone

    # -- state across restarts ----------------------------------------------------

    def _save(self) -> dict[int, int] | None:
        # in the engine's thread: the state and the offsets it covers, together;
        # the offsets saved (None: nothing saved)
        if self._closed:
            return None
        try:
            positions = dict(self._positions)
            state = pickle.dumps(
                {"version": STATE_VERSION, "positions": positions,
                 "keys": {p: sorted(k) for p, k in self._keys.items()},
                 "log": self._log_id,
                 "engine": self.engine.snapshot_bytes()},
                protocol=pickle.HIGHEST_PROTOCOL,
            )
            write_atomic(self._state_path, state)
            self.counters["snapshots"] += 1
            return positions
        except Exception:
            log.exception("saving the signal engine state failed")
            return None

    def _restore(self) -> None:
        try:
            state = pickle.loads(self._state_path.read_bytes())
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise ValueError("not a signal state of this version")
            self.engine.restore_bytes(state["engine"])
            self._positions = {int(p): int(o) for p, o in state["positions"].items()}
            self._keys = {int(p): {bytes(k) for k in ks}
                          for p, ks in state.get("keys", {}).items()}
            saved_log = state.get("log")
            self._log_id = saved_log if isinstance(saved_log, str) else None
            log.info("signal engine state restored from %s (llmpulse.grouped offsets %s "
                     "of Kafka cluster %r)", self._state_path, self._positions, self._log_id)
        except FileNotFoundError:
            pass
        except Exception:
            log.exception("ignoring an unreadable signal engine state at %s", self._state_path)
        try:
            now = time.monotonic()
            self.pending_feedback = [(now, line, rid) for line, rid in
                                     pickle.loads(self._pending_path.read_bytes())]
            self._pending_saved = len(self.pending_feedback)
        except FileNotFoundError:
            pass
        except Exception:
            log.exception("ignoring unreadable waiting feedback at %s", self._pending_path)

    def _save_pending(self) -> None:
        """Feedback waiting for its inference, on disk before its offsets are committed
        (the ingest agent acks it as soon as this returns)."""
        waiting = self._routing + self.pending_feedback
        if not waiting and not self._pending_saved:
            return
        blob = pickle.dumps([(line, rid) for _, line, rid in waiting],
                            protocol=pickle.HIGHEST_PROTOCOL)
        write_atomic(self._pending_path, blob)
        self._pending_saved = len(waiting)
