"""The group's progress on a topic, read from the real broker
(:class:`~llmpulse.streams.catch_up.GroupProgress`): end offsets, the committed
offsets of a group it never joins, and which partitions are behind."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.streams.catch_up import GroupProgress, behind


def test_group_progress_reads_ends_and_commits_of_a_group_it_does_not_join(
        broker: EmbeddedBroker) -> None:
    topic, group = f"catch-up-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 3})
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for partition, n in ((0, 5), (1, 12)):
        for i in range(n):  # one record batch each: the ends are exact
            producer.produce(topic, value=b"%d" % i, partition=partition)
            producer.flush(10)
    for i in range(4):  # one batch of 4
        producer.produce(topic, value=b"%d" % i, partition=2)
    producer.flush(10)
    progress = GroupProgress(broker.bootstrap, group, topic, 3, timeout=10.0)
    member = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                       "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        ends = progress.ends()
        assert ends[0] == 5 and ends[1] == 12
        # Tansu's ListOffsets answers the last batch's first offset + 1: a floor
        assert 1 <= ends[2] <= 4
        assert progress.committed() == {0: None, 1: None, 2: None}
        assert behind(ends, progress.committed()) == [0, 1, 2]
        # a member of the group commits as the ingest agents do: the next offset to read
        member.commit(offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7),
                               TopicPartition(topic, 2, 4)], asynchronous=False)
        assert progress.committed() == {0: 5, 1: 7, 2: 4}
        assert behind(ends, progress.committed()) == [1]
        member.commit(offsets=[TopicPartition(topic, 1, 12)], asynchronous=False)
        assert behind(ends, progress.committed()) == []
        # the reader never joined: the group's member subscribes and gets every partition
        member.subscribe([topic])
        got: set[int] = set()
        for _ in range(100):
            member.poll(0.2)
            got = {tp.partition for tp in member.assignment()}
            if got:
                break
        assert got == {0, 1, 2}
    finally:
        member.close()
        progress.close()
