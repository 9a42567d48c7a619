"""A partition's signal state on a compacted changelog topic, for the next worker that owns it.

Every group ``app/model/version`` lives on one ``llmpulse.grouped`` partition,
so the engine state of a partition is the state of its groups: open windows,
feedback records, detector state, and the watermark of the sources read
through it (:meth:`llmpulse.streams.engine.SignalEngine.snapshot_groups`).
Stored with the partition's next offset it does not hold (``covered``), it is
all another worker needs to continue the partition exactly, as Kafka Streams
and Faust tables do with their changelog topics:

* a worker writes the state of each partition it owns here at every save
  (``signals.snapshot_s``, a clean stop) and when a rebalance revokes its
  partitions, then commits ``covered`` as the consumer offset;
* the worker that is assigned a partition reads its latest state here, adds it
  to its engine and reads the partition from ``covered`` on.

``llmpulse.engine-state`` (:data:`TOPIC_ENGINE_STATE`) has as many partitions
as ``llmpulse.grouped`` and holds the state of grouped partition ``p`` in its
partition ``p``, created with ``cleanup.policy=compact``. A state larger than
:data:`MAX_FRAGMENT` is written as several records, keys ``<p>/<i>``, each
naming its snapshot and how many fragments it has. The reader reads a
partition to its end (no earlier than the end ListOffsets shows when it starts: on
the local cluster a fetch through another broker than the writer's can end before
the last write for a moment) and takes, of the snapshots whose fragments are all
there, the one covering most of the grouped partition (the latest of equals):
a worker paused past its session timeout that writes on waking has a state
that covers no more than the new owner's, so correctness does not depend on
compaction, which the embedded broker does not run, and a late writer does not
undo the new owner's work. (Once a real Kafka compacts, only the latest record
per key is left, whichever writer it came from.)

>>> blob = b"x" * 10
>>> records = fragments(PartitionState(3, 120, blob, frozenset({b"a/m/1"})), "s1", max_size=4)
>>> [(k, meta["part"], meta["parts"], len(data)) for k, meta, data in records]
[(b'3/0', 0, 3, 4), (b'3/1', 1, 3, 4), (b'3/2', 2, 3, 2)]
>>> best = latest([decode(k, encode(meta, data)) for k, meta, data in records])
>>> best == PartitionState(3, 120, blob, frozenset({b"a/m/1"}))
True

The alert states of the partition's groups travel with it (:class:`GroupStates`), after
the engine's bytes; a record written without them reads back as ``groups=None``:

>>> moved = PartitionState(3, 120, blob, frozenset({b"a/m/1"}), groups=b'{"states": []}')
>>> records = fragments(moved, "s2", max_size=4)
>>> latest([decode(k, encode(meta, data)) for k, meta, data in records]) == moved
True
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from llmpulse.kafka_security import KafkaSecurity

__all__ = ["MAX_FRAGMENT", "RETENTION_GROUP", "TOPIC_ENGINE_STATE", "EngineStateLog", "GroupStates",
           "PartitionState", "decode", "encode", "fragments", "latest"]

log = logging.getLogger(__name__)

TOPIC_ENGINE_STATE = "llmpulse.engine-state"
"""The changelog of the signal engine's state, one key per ``llmpulse.grouped`` partition."""

RETENTION_GROUP = "llmpulse.engine-state-retention"
"""Consumer group whose committed offset on each changelog partition is the first record
of the newest state written there: everything before it is superseded."""

MAX_FRAGMENT = 512 * 1024
"""Largest state bytes per record (Kafka's default message limit is 1 MB)."""


@dataclass(frozen=True)
class PartitionState:
    """The engine state of one ``llmpulse.grouped`` partition's groups."""

    partition: int
    covered: int
    """The partition's next offset: the state holds every message before it."""
    engine: bytes
    """:meth:`~llmpulse.streams.engine_process.LocalEngine.snapshot_groups` bytes."""
    keys: frozenset[bytes]
    """The group keys (``app/model/version``) seen on the partition."""
    groups: bytes | None = None
    """State kept per group beside the engine's (:class:`GroupStates`: the alert rules'
    states of the groups), taken when ``engine`` was; None in a record written without it."""


class GroupStates(Protocol):
    """State of its own a worker keeps per group, handed over with the partition's engine
    state (the alert agent's: open alerts, breach streaks, series clocks). Called on the
    event loop; the keys are group keys, ``app/model/version``."""

    def export_groups(self, keys: Collection[bytes]) -> bytes:
        """The state of the groups ``keys`` (taken after the engine's)."""
        ...

    def take_over_groups(self, keys: Collection[bytes], state: bytes | None) -> None:
        """Continue the groups ``keys`` from ``state`` (an :meth:`export_groups`; None:
        the previous owner wrote none), replacing what this worker held of them."""
        ...

    def drop_groups(self, keys: Collection[bytes]) -> None:
        """Forget the groups ``keys``, without any event: their partition's new owner
        continues them."""
        ...


Fragment = tuple[bytes, dict[str, Any], bytes]


def fragments(state: PartitionState, snapshot_id: str, *,
              max_size: int = MAX_FRAGMENT) -> list[Fragment]:
    """The records of ``state``: (key, metadata, state bytes) per fragment."""
    # the group states follow the engine's bytes, their length in the first record's
    # metadata: a reader that does not know them unpickles the engine state, and pickle
    # ignores what follows it
    blob = state.engine + (state.groups or b"")
    pieces = [blob[i:i + max_size] for i in range(0, len(blob), max_size)] or [b""]
    out: list[Fragment] = []
    for i, piece in enumerate(pieces):
        meta: dict[str, Any] = {"partition": state.partition, "covered": state.covered,
                                "id": snapshot_id, "part": i, "parts": len(pieces)}
        if i == 0:
            meta["keys"] = sorted(k.decode("utf-8", "surrogateescape") for k in state.keys)
            if state.groups is not None:
                meta["groups"] = len(state.groups)
        out.append((f"{state.partition}/{i}".encode(), meta, piece))
    return out


def encode(meta: dict[str, Any], data: bytes) -> bytes:
    """A record value: the metadata as one JSON line, then the state bytes."""
    return orjson.dumps(meta) + b"\n" + data


def decode(key: bytes | None, value: bytes | None) -> Fragment | None:
    """A record read back; None for a tombstone or a record of another format."""
    if key is None or not value:
        return None
    head, sep, data = value.partition(b"\n")
    if not sep:
        return None
    try:
        meta = orjson.loads(head)
        int(meta["partition"]), int(meta["covered"]), int(meta["part"]), int(meta["parts"])
        str(meta["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return key, meta, data


def latest(records: Iterable[Fragment | None]) -> PartitionState | None:
    """Of the complete snapshots among ``records`` (in log order), the one with the
    highest ``covered`` offset, the last of equals."""
    open_: dict[str, dict[int, bytes]] = {}
    heads: dict[str, dict[str, Any]] = {}
    best: tuple[int, int, PartitionState] | None = None
    for order, rec in enumerate(records):
        if rec is None:
            continue
        _, meta, data = rec
        sid = str(meta["id"])
        parts = open_.setdefault(sid, {})
        parts[int(meta["part"])] = data
        if int(meta["part"]) == 0:
            heads[sid] = meta
        n = int(meta["parts"])
        if len(parts) == n and sid in heads and all(i in parts for i in range(n)):
            head = heads[sid]
            blob = b"".join(parts[i] for i in range(n))
            size = head.get("groups")
            cut = len(blob) - int(size) if isinstance(size, int) and 0 <= size <= len(blob) else None
            state = PartitionState(
                partition=int(head["partition"]), covered=int(head["covered"]),
                engine=blob if cut is None else blob[:cut],
                keys=frozenset(str(k).encode("utf-8", "surrogateescape")
                               for k in head.get("keys", ())),
                groups=None if cut is None else blob[cut:])
            if best is None or (state.covered, order) >= best[:2]:
                best = (state.covered, order, state)
            del open_[sid]
            del heads[sid]
    return None if best is None else best[2]


class EngineStateLog:
    """Writes and reads :class:`PartitionState` records on :data:`TOPIC_ENGINE_STATE`.

    Blocking calls (librdkafka): call them from a thread, not the event loop.
    """

    def __init__(self, bootstrap: str, *, partitions: int,
                 security: KafkaSecurity | None = None, timeout: float = 30.0,
                 topic: str = TOPIC_ENGINE_STATE) -> None:
        self.bootstrap = bootstrap
        self.partitions = int(partitions)
        self.security = security or KafkaSecurity()
        self.timeout = float(timeout)
        self.topic = topic
        self._producer: Any = None
        self._committer: Any = None
        self._ready = False
        self.stale_ends = 0
        """Ends of partition a read was shown before the last write, read past (cluster)."""

    def _conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap,
                                "socket.timeout.ms": int(self.timeout * 1000)}
        conf.update(self.security.librdkafka())
        return conf

    def ensure_topic(self) -> None:
        """Create the compacted topic when it does not exist."""
        if self._ready:
            return
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self._conf())
        if self.topic not in admin.list_topics(timeout=self.timeout).topics:
            new = NewTopic(self.topic, num_partitions=self.partitions, replication_factor=1,
                           config={"cleanup.policy": "compact"})
            for fut in admin.create_topics([new]).values():
                try:
                    fut.result(self.timeout)
                except KafkaException as exc:
                    if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise
        self._ready = True

    def _partition_of(self, grouped_partition: int) -> int:
        return grouped_partition % self.partitions

    def write(self, states: Sequence[PartitionState]) -> None:
        """Write ``states`` and wait until the broker has them all (raises if not)."""
        if not states:
            return
        from confluent_kafka import Producer

        self.ensure_topic()
        if self._producer is None:
            self._producer = Producer({**self._conf(), "acks": "all",
                                       "message.max.bytes": MAX_FRAGMENT * 2,
                                       "linger.ms": 0})
        errors: list[str] = []
        firsts: dict[int, int] = {}  # changelog partition -> offset of this write's first record

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
                return
            cp, off = msg.partition(), msg.offset()
            if cp is not None and off is not None and off >= 0:
                firsts[cp] = min(firsts.get(cp, off), off)

        sid = uuid.uuid4().hex
        for state in states:
            for key, meta, data in fragments(state, sid):
                self._producer.produce(self.topic, key=key, value=encode(meta, data),
                                       partition=self._partition_of(state.partition),
                                       on_delivery=delivered)
                self._producer.poll(0)
        left = self._producer.flush(self.timeout)
        if left or errors:
            raise RuntimeError(f"{self.topic}: {left} record(s) not written, errors {errors[:3]}")
        shared = {self._partition_of(st.partition) for st in states if st.partition >= self.partitions}
        self._release({cp: off for cp, off in firsts.items() if cp not in shared})

    def _release(self, offsets: dict[int, int]) -> None:
        """Mark what came before each new state as superseded: commit its first offset
        for :data:`RETENTION_GROUP`, so a broker that deletes consumed records (the
        embedded one on disk) can drop the older states, as compaction would on Kafka.
        Only partitions holding one grouped partition's states are released. A worker
        paused past its session timeout may release its stale state's offset; the
        owner's next save (``signals.snapshot_s``, shorter than the broker's
        ``broker.retain_min_s``) writes a newer state before anything is deleted.
        Best effort: a failed commit is logged, the save stands."""
        if not offsets:
            return
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        try:
            if self._committer is None:
                self._committer = Consumer({**self._conf(), "group.id": RETENTION_GROUP,
                                            "enable.auto.commit": False})
            self._committer.commit(offsets=[TopicPartition(self.topic, cp, off)
                                            for cp, off in sorted(offsets.items())],
                                   asynchronous=False)
        except KafkaException as exc:
            log.warning("%s: could not mark older states as superseded: %s", self.topic, exc)

    def read(self, partitions: Iterable[int]) -> dict[int, PartitionState]:
        """The latest complete state of each grouped partition in ``partitions`` that has one."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        wanted = sorted({int(p) for p in partitions})
        if not wanted:
            return {}
        self.ensure_topic()
        consumer = Consumer({**self._conf(), "group.id": f"llmpulse-state-reader-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "enable.partition.eof": True,
                             "auto.offset.reset": "earliest"})
        records: dict[int, list[Fragment | None]] = {p: [] for p in wanted}
        try:
            parts = sorted({self._partition_of(p) for p in wanted})
            consumer.assign([TopicPartition(self.topic, cp, OFFSET_BEGINNING) for cp in parts])
            deadline = time.monotonic() + self.timeout
            floors = self._floors(consumer, parts, deadline)
            at_end: set[int] = set()
            while len(at_end) < len(parts):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.topic}: partitions {sorted(set(parts) - at_end)} "
                                       f"not read to their end in {self.timeout:g} s")
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        cp = int(msg.partition() or 0)
                        # an end short of what ListOffsets showed is a stale fetch (another
                        # broker of the cluster has not seen the last write yet): read on
                        if int(msg.offset() or 0) >= floors.get(cp, 0):
                            at_end.add(cp)
                        else:
                            self.stale_ends += 1
                        continue
                    raise RuntimeError(f"{self.topic}: {err}")
                rec = decode(msg.key(), msg.value())
                if rec is not None and int(rec[1]["partition"]) in records:
                    records[int(rec[1]["partition"])].append(rec)
        finally:
            consumer.close()
        out = {}
        for p, recs in records.items():
            state = latest(recs)
            if state is not None:
                out[p] = state
        return out

    def _floors(self, consumer: Any, parts: list[int], deadline: float) -> dict[int, int]:
        """A lower bound of each changelog partition's end, from ListOffsets.

        Brokers of the local cluster share one log in S3, and a fetch from a broker
        other than the writer's can end (``_PARTITION_EOF``) before the last write for
        a second or so, while ListOffsets already counts it. Tansu 0.6 answers
        ListOffsets(latest) with the last batch's base offset + 1, short of the end by
        the rest of that batch: a floor, reached by every complete read."""
        from confluent_kafka import KafkaException, TopicPartition

        out: dict[int, int] = {}
        for cp in parts:
            while True:
                left = deadline - time.monotonic()
                try:
                    # a fresh consumer may not know the partition yet (_UNKNOWN_PARTITION)
                    high = consumer.get_watermark_offsets(TopicPartition(self.topic, cp),
                                                          timeout=max(1.0, left), cached=False)[1]
                    break
                except KafkaException as exc:
                    if left <= 0:
                        raise RuntimeError(f"{self.topic}[{cp}]: no end offset in "
                                           f"{self.timeout:g} s: {exc}") from None
                    time.sleep(0.2)
            out[cp] = max(0, int(high))
        return out

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None
        if self._committer is not None:
            self._committer.close()
            self._committer = None
