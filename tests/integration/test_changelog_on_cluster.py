"""The engine-state changelog on the three-broker cluster: a state written through
one broker is what a worker reading through another broker gets, at once.

Brokers of the local cluster share one log in S3; a fetch from a broker other than
the writer's can report the partition's end before the last write for a second or
so (without the floor from ListOffsets, 7 of 10 such reads returned the previous
state). A worker that takes over a partition right after its previous owner
stopped would then continue from the older state, or from none.
"""

from __future__ import annotations

import pytest

from llmpulse.cluster import LocalCluster
from llmpulse.streams.handoff import EngineStateLog, PartitionState

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4


def test_a_state_written_through_one_broker_is_read_through_another_at_once(
    cluster: LocalCluster,
) -> None:
    brokers = cluster.bootstrap.split(",")
    assert len(brokers) == 3
    topic = "llmpulse.engine-state.t"
    writers = [EngineStateLog(b, partitions=PARTITIONS, topic=topic) for b in brokers]
    readers = [EngineStateLog(b, partitions=PARTITIONS, topic=topic) for b in brokers]
    try:
        for rnd in range(1, 10):
            # two fragments per state: a reader that stops early may see half a snapshot
            blob = bytes([rnd]) * 700_000
            writer = writers[rnd % 3]
            writer.write([PartitionState(p, 100 * rnd + p, blob, frozenset({b"a/m/1"}))
                          for p in range(PARTITIONS)])
            reader = readers[(rnd + 1) % 3]
            got = reader.read(range(PARTITIONS))
            assert {p: (s.covered, s.engine[:1]) for p, s in got.items()} == \
                {p: (100 * rnd + p, bytes([rnd])) for p in range(PARTITIONS)}, f"round {rnd}"
    finally:
        for log in writers + readers:
            log.close()
