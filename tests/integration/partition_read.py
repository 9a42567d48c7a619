"""Read partition 0 of a topic to its end with a real consumer (tests of the broker's log)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, TopicPartition


@dataclass
class PartitionRead:
    """What :func:`read_partition` found: offset -> (key, value), and where it started."""

    start: int
    records: dict[int, tuple[bytes | None, bytes | None]] = field(default_factory=dict)

    @property
    def offsets(self) -> list[int]:
        return sorted(self.records)


def read_partition(bootstrap: str, topic: str, *, start: int | None = None,
                   group: str | None = None, commit: int | None = None,
                   timeout_s: float = 60.0) -> PartitionRead:
    """Partition 0 of ``topic`` from ``start`` (None: ``group``'s commit, or the
    earliest offset if it has none) to its end. With ``group`` and ``commit``, commits
    ``commit`` for the group afterwards (-1: the end read)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group or uuid.uuid4().hex,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": True})
    try:
        if start is None:
            committed = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
            start = committed if committed >= 0 else -2
        c.assign([TopicPartition(topic, 0, start)])
        out = PartitionRead(start)
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"no end of partition within {timeout_s:g} s "
                                     f"({len(out.records)} read)")
            msg = c.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    break
                raise AssertionError(str(err))
            offset = msg.offset()
            assert offset is not None
            out.records[offset] = (msg.key(), msg.value())
        if commit is not None:
            offsets = out.offsets
            at = (offsets[-1] + 1 if offsets else max(start, 0)) if commit < 0 else commit
            c.commit(offsets=[TopicPartition(topic, 0, at)], asynchronous=False)
        return out
    finally:
        c.close()
