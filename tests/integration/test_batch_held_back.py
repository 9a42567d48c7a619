"""A batch that is not done when its worker stops is not committed: the next start reads
it again. A batch that fails while the worker runs is tried again until it is done.

Faust's ``take_events`` acks the batch it handed out when the agent leaves it,
cancelled, failed or done, and the consumer's last commit takes those offsets.
Before :func:`llmpulse.streams.whole.take_whole`, a batch whose forward the broker
refused, or which was in hand when the store was down at a stop, was committed
undone: its events were never stored or never reached the signal engines.

Here a real Faust app on the embedded broker runs the agent body the ingest agents
run, on a topic of numbered messages; one message fails its batch (as a refused
forward or a store outage would) until the test lets it through. The committed
offsets are read from the broker, as the next worker would read them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.config import load_settings
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.sink import RawSink
from llmpulse.streams.whole import BatchOutcomes, take_whole

pytestmark = [pytest.mark.integration]

N = 60
POISON = 37
BATCH = 10


def _committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        (tp,) = c.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        c.close()


def _produce(bootstrap: str, topic: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(N):
        p.produce(topic, value=b"poison" if i == POISON else str(i).encode(), partition=0)
    assert p.flush(30) == 0


class Failing:
    """The work of one agent: records the offsets of each batch it finished; the batch
    holding the poison message fails while ``failing`` is set, the way ``mode`` says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.failing = True
        self.done: list[int] = []
        self.attempts = 0
        self.sink = RawSink(self._insert, retry_max_s=0.2)

    def _insert(self, table: str, data: bytes, count: int) -> int:
        if self.failing and b"poison" in data:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return count

    async def __call__(self, events: Sequence[Any]) -> None:
        self.attempts += any(ev.value == b"poison" for ev in events)
        if self.mode == "store outage":
            await self.sink.write("t", [ev.value for ev in events])
        elif self.failing and any(ev.value == b"poison" for ev in events):
            raise RuntimeError("the broker refused the forward")
        self.done.extend(ev.message.offset for ev in events)


async def _run(bootstrap: str, tmp: Path, group: str, topic: str, work: Failing,
               until: Any, outcomes: BatchOutcomes) -> None:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp / "data")}, path=None)
    settings = replace(settings, session_timeout_s=6.0)
    app = new_faust_app(group, settings, bootstrap=bootstrap, datadir=tmp / f"app-{time.time()}",
                        web_port=None)
    if work.mode == "store outage":
        work.sink.should_stop = lambda: bool(app.should_stop)
    source = app.topic(topic, value_serializer="raw", key_serializer="raw", partitions=1)

    async def agent(stream: Any) -> None:
        await take_whole(stream, work, max_=BATCH, within=0.2,
                         should_stop=lambda: bool(app.should_stop), outcomes=outcomes,
                         what="test batch", retry_max_s=0.2)

    app.agent(source, name=f"{group}.agent")(agent)
    await app.start()
    try:
        deadline = time.monotonic() + 90
        while not until():
            assert time.monotonic() < deadline, (work.done, outcomes)
            await asyncio.sleep(0.1)
    finally:
        await asyncio.wait_for(app.stop(), timeout=30)


@pytest.mark.parametrize("mode", ["forward refused", "store outage"])
def test_a_batch_not_done_at_the_stop_is_read_again_at_the_next_start(
        broker: EmbeddedBroker, tmp_path: Path, mode: str) -> None:
    topic, group = f"held-{uuid.uuid4().hex[:8]}", f"held-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 1})
    _produce(broker.bootstrap, topic)

    work, first = Failing(mode), BatchOutcomes()
    # stop while the poison's batch keeps failing (tried, or its insert, three times)
    asyncio.run(_run(broker.bootstrap, tmp_path, group, topic, work,
                     lambda: max(work.attempts, work.sink.errors) >= 3, first))
    assert POISON not in work.done and work.done
    held = min(set(range(N)) - set(work.done))
    assert held <= POISON and first.held_back >= 1
    committed = _committed(broker.bootstrap, group, topic)
    assert committed <= held, f"committed {committed} past the batch held back at {held}"
    assert committed == held  # every batch before it was done and committed

    again, second = Failing(mode), BatchOutcomes()
    again.failing = False
    asyncio.run(_run(broker.bootstrap, tmp_path, group, topic, again,
                     lambda: N - 1 in again.done, second))
    assert sorted(again.done) == list(range(committed, N))  # the held batch is read again
    assert _committed(broker.bootstrap, group, topic) == N
    assert second.held_back == 0 and second.retried == 0


def test_a_batch_that_fails_while_the_worker_runs_is_tried_again_until_done(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic, group = f"retry-{uuid.uuid4().hex[:8]}", f"retry-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 1})
    _produce(broker.bootstrap, topic)
    work, out = Failing("forward refused"), BatchOutcomes()

    def heal_then_finish() -> bool:
        if work.attempts >= 3:
            work.failing = False  # the broker takes forwards again
        return N - 1 in work.done

    asyncio.run(_run(broker.bootstrap, tmp_path, group, topic, work, heal_then_finish, out))
    assert sorted(work.done) == list(range(N))  # every batch once, the failed one too
    assert out.retried >= 2 and out.held_back == 0
    assert "refused the forward" in out.last_error
    assert _committed(broker.bootstrap, group, topic) == N


def test_records_of_local_commands_wait_out_a_store_outage(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The audit and deployment records a local command sends used to be logged and
    dropped when the store did not take them; now the outage is waited out."""
    from llmpulse.audit_record import ORIGIN_HEADER
    from llmpulse.streams.command_records import register_command_records

    topic, group = f"cmd-{uuid.uuid4().hex[:8]}", f"cmd-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 1})
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    cli = [(ORIGIN_HEADER, b"cli")]
    for value, headers in ((b'{"id": 1}', cli), (b"not json", cli), (b'{"id": 2}', None),
                           (b'{"id": 3}', cli)):
        p.produce(topic, value=value, headers=headers, partition=0)
    assert p.flush(30) == 0
    stored: list[bytes] = []
    down = [True]

    def insert(table: str, data: bytes, count: int) -> int:
        if down[0]:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        stored.extend(data.split(b"\n"))
        return count

    def parse(value: bytes) -> dict[str, Any]:
        row = orjson.loads(value)
        if not isinstance(row, dict):
            raise ValueError("not an object")
        return row

    sink = RawSink(insert, retry_max_s=0.2)

    async def scenario() -> None:
        settings = replace(load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "d")},
                                         path=None), session_timeout_s=6.0)
        app = new_faust_app(group, settings, bootstrap=broker.bootstrap,
                            datadir=tmp_path / "app", web_port=None)
        sink.should_stop = lambda: bool(app.should_stop)
        register_command_records(app, topic, agent=f"{group}.records", table="t", parse=parse,
                                 sink=sink)
        await app.start()
        try:
            deadline = time.monotonic() + 90
            while sink.errors < 5:  # the store is down for a while
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            down[0] = False
            while len(stored) < 2:
                assert time.monotonic() < deadline, stored
                await asyncio.sleep(0.1)
            while _committed(broker.bootstrap, group, topic) < 4:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
        finally:
            await asyncio.wait_for(app.stop(), timeout=30)

    asyncio.run(scenario())
    # the two records of the command, in order; the malformed one and the stack's own skipped
    assert [orjson.loads(line) for line in stored] == [{"id": 1}, {"id": 3}]
