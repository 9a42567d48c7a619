"""Whether the group has forwarded every ``llmpulse.inference`` partition past a point.

After a rebalance the windows wait (:class:`~llmpulse.streams.rebalance_hold.RebalanceHold`):
a moved inference partition is forwarded again only once its new owner has started
and read it from the group's committed offset, and until then its sources are silent
in every engine without a backlog to show. The wait need not last ``idle_s`` when the
group says it is over: the ingest agents commit an inference offset only once the
events before it are forwarded and the broker has acknowledged the forwards
(:func:`~llmpulse.streams.app.register_ingest`). So once the group's committed offset
of every inference partition is at or past that partition's end offset read after the
assignment, every event that was waiting when the partitions moved is in
``llmpulse.grouped``, where each worker's own backlog check sees it; what comes later is
forwarded as in steady state.

:func:`behind` is that comparison; :class:`GroupProgress` reads both sides from the
broker.

>>> behind({0: 120, 1: 40, 2: 0}, {0: 120, 1: 35, 2: None})
[1]
>>> behind({0: 120, 1: 40}, {0: 121, 1: 40})
[]
>>> behind({0: 5}, {})   # nothing committed yet where events wait
[0]

One limit: Tansu answers ListOffsets for the end with the last record batch's first
offset + 1, so an end read from it may fall short of the true end by the rest of that
batch. Those few events were the last produced before the assignment; their source
is the one the hold waits on, and they are forwarded with the batch's first event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from llmpulse.kafka_security import KafkaSecurity

__all__ = ["GroupProgress", "behind"]

log = logging.getLogger(__name__)


def behind(ends: Mapping[int, int], committed: Mapping[int, int | None]) -> list[int]:
    """The partitions of ``ends`` whose committed offset (``committed``; ``None`` or
    missing: nothing committed) is short of their end; an empty partition never is."""
    return sorted(p for p, end in ends.items()
                  if end > 0 and (committed.get(p) is None or int(committed[p] or 0) < end))


class GroupProgress:
    """End offsets and a consumer group's committed offsets of one topic's partitions,
    read from the broker (blocking: call from a thread). The group is only read, never
    joined."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, *,
                 security: KafkaSecurity | None = None, timeout: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.topic = topic
        self.partitions = int(partitions)
        self.security = security or KafkaSecurity()
        self.timeout = float(timeout)
        self._consumer: Any = None

    def _reader(self) -> Any:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer({"bootstrap.servers": self.bootstrap,
                                       "group.id": self.group, "enable.auto.commit": False,
                                       "socket.timeout.ms": int(self.timeout * 1000),
                                       **self.security.librdkafka()})
        return self._consumer

    def ends(self) -> dict[int, int]:
        """Each partition's end offset, asked of the broker now (raises when it does not answer)."""
        from confluent_kafka import TopicPartition

        reader = self._reader()
        return {p: max(0, int(reader.get_watermark_offsets(TopicPartition(self.topic, p),
                                                           timeout=self.timeout,
                                                           cached=False)[1]))
                for p in range(self.partitions)}

    def committed(self) -> dict[int, int | None]:
        """The group's committed offset of each partition (``None``: none committed);
        raises when the broker answers a partition with an error (an offset not known
        is not one behind: the caller falls back to waiting ``idle_s``)."""
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        out: dict[int, int | None] = {}
        for tp in self._reader().committed(tps, timeout=self.timeout):
            if tp.error is not None:
                raise RuntimeError(f"{self.topic}[{tp.partition}]: committed offset of "
                                   f"{self.group!r} not read: {tp.error}")
            out[int(tp.partition)] = int(tp.offset) if tp.offset is not None and tp.offset >= 0 else None
        return out

    def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                consumer.close()
            except Exception as exc:  # closing is best effort
                log.debug("%s: closing the progress reader: %s", self.topic, exc)
