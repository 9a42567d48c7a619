"""Retention of topics no consumer group reads (``broker.retain_unread_h``), with the
real Tansu broker on disk and the real object server: an unread topic's old record
batches go, a committed-on topic is pruned by its group's commit as before, and a
reader from the earliest offset gets what is left without error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmpulse.broker import create_topics
from llmpulse.broker_record import adopt_or_start, read_record, stop_recorded_broker
from llmpulse.broker_storage import BrokerSettings, read_store_record
from tests.integration.partition_read import read_partition
from tests.integration.test_broker_disk import _bases, _produce

pytestmark = pytest.mark.integration

MAX_AGE_S = 20.0


@pytest.mark.slow
def test_old_batches_of_an_unread_topic_go_and_a_read_topic_is_pruned_as_before(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    settings = BrokerSettings(storage="disk", retain_margin=0, prune_interval_s=1.0,
                              retain_min_s=0.0, retain_unread_h=MAX_AGE_S / 3600.0)
    unread, read = "unread-test", "read-test"
    try:
        broker, _ = adopt_or_start(data, storage=settings)
        bs = broker.bootstrap
        create_topics(bs, {unread: 1, read: 1})
        _produce(bs, unread, 1_000)  # batches of at most 100
        _produce(bs, read, 1_000)
        old_unread, old_read = _bases(data, unread), _bases(data, read)
        assert old_unread[0] == 0 and len(old_unread) >= 10
        # a group reads everything of `read` but commits at 500 only
        assert read_partition(bs, read, start=0, group="g", commit=500).offsets == list(range(1_000))
        time.sleep(MAX_AGE_S + 2.0)
        _produce(bs, unread, 300)  # young batches
        young = [b for b in _bases(data, unread) if b >= 1_000]
        deadline = time.monotonic() + 90
        while _bases(data, unread)[0] < 1_000:
            assert time.monotonic() < deadline, _bases(data, unread)[:5]
            time.sleep(0.5)
        # every old batch went, no young one
        assert _bases(data, unread) == young
        # the read topic: what the group committed past went (as before), nothing
        # above its commit, however old
        keep_from = max(b for b in old_read if b <= 500)
        deadline = time.monotonic() + 90
        while _bases(data, read)[0] != keep_from:
            assert time.monotonic() < deadline, _bases(data, read)[:5]
            time.sleep(0.5)
        time.sleep(3.0)  # more passes remove nothing more
        assert _bases(data, read) == [b for b in old_read if b >= keep_from]
        assert _bases(data, unread) == young
        # a reader from the earliest offset gets what is left, without error
        assert read_partition(bs, unread, start=-2, group="late").offsets == list(range(1_000, 1_300))
        assert read_partition(bs, read, start=None, group="g").offsets == list(range(500, 1_000))
        # and the log goes on where it was
        _produce(bs, unread, 100)
        assert read_partition(bs, unread, start=-2, group="later").offsets == list(range(1_000, 1_400))
        print(f"unread topic: {len(old_unread)} old batches removed, {len(young)} young kept; "
              f"read topic: kept from {keep_from} (group commit 500)")
    finally:
        stop_recorded_broker(data)
    assert read_record(data) is None and read_store_record(data) is None
