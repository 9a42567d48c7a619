"""Forwarding to ``llmpulse.grouped`` with several groups per message: the engine computes
the same signals as from one message per group, and every group keeps its partition."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmpulse.config import load_settings
from llmpulse.detectors.testing import synthetic_events
from llmpulse.store import Store
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.engine_process import LocalEngine, ShardedEngine
from llmpulse.streams.forward import (
    GROUPS_HEADER,
    grouped_partition,
    listed_keys,
    pack_groups,
    unpack_groups,
)
from llmpulse.streams.ingest import Message, split_batch
from llmpulse.streams.signals import (
    SOURCE_HEADER,
    SignalAgents,
    engine_chunks,
    engine_config,
    group_key,
    message_groups,
)
from llmpulse.streams.testing import (
    TestingMessage,
    TestingSink,
    TestingTopic,
    canonical,
    grouped_messages,
    run_engine,
)


def test_pack_then_unpack_gives_every_line_once_in_order_whatever_the_limit() -> None:
    rng = random.Random(5)
    groups = {f"app/m/{g}".encode(): [orjson.dumps({"g": g, "i": i, "pad": "x" * rng.randrange(40)})
                                      for i in range(rng.randrange(1, 30))]
              for g in range(40)}
    for limit in (1, 50, 700, 10_000, 10**7):
        got: dict[bytes, list[bytes]] = {}
        packed = pack_groups(groups, limit=limit)
        for value, header in packed:
            assert len(value) <= max(limit, max(len(ln) for ls in groups.values() for ln in ls))
            for key, blob in unpack_groups(value, header):
                got.setdefault(key, []).extend(blob.split(b"\n"))
        assert got == groups
        if limit == 10**7:
            assert len(packed) == 1


@pytest.mark.parametrize("header", [b"not json", b'{"a": 1}', b'[["k", 0]]', b'[["k", 1, 2]]',
                                    b'[[1, 1]]', b'[["k", 5]]', b'[["k", true]]'])
def test_a_header_that_does_not_fit_the_value_is_refused(header: bytes) -> None:
    with pytest.raises(ValueError, match=GROUPS_HEADER):
        unpack_groups(b'{"a":1}\n{"a":2}', header)
    # the agent takes such a message as one group without a key, it does not stop
    msg = TestingMessage("llmpulse.grouped", 0, 0, None, b'{"a":1}\n{"a":2}',
                         ((GROUPS_HEADER, header),))
    assert message_groups(msg) == [(b"", b'{"a":1}\n{"a":2}')]


def _events(n: int, groups: int, seed: int) -> list[dict[str, Any]]:
    return [{**ev, "model_version": f"v{i % groups}"}
            for i, ev in enumerate(synthetic_events(n, seed=seed, rate=20))]


def _agents(tmp_path: Path) -> tuple[Any, Store, SignalAgents, TestingTopic]:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False))
    store = Store.open(f"chdb://{tmp_path}/store")
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                        web_port=None)
    agents = SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic())
    grouped = TestingTopic()
    agents.grouped = grouped  # collect what the ingest side forwards
    return settings, store, agents, grouped


async def test_forwarded_messages_pack_groups_per_partition_and_give_the_same_signals(
    tmp_path: Path,
) -> None:
    events = _events(3000, groups=60, seed=8)
    # as the shim sends them: envelopes on 2 source partitions
    envelopes = [Message(b"\n".join(orjson.dumps(e) for e in events[i::2][j:j + 100]),
                         "llmpulse.inference", i, j // 100)
                 for i in range(2) for j in range(0, 1500, 100)]
    batch = split_batch(envelopes, kind="inference", keep_events=True, now_ms=1_700_000_000_000)
    assert batch.count == len(events) and not batch.dead
    settings, store, agents, grouped = _agents(tmp_path)
    try:
        await agents.forward_inference(batch, rejected=set())
        await agents.close()
    finally:
        store.close()
    parts = settings.ingest.partitions
    sent = grouped.messages
    # at most one message per (grouped partition, source partition): not one per group
    assert len(sent) <= parts * 2 < 60
    seen: dict[bytes, int] = {}
    for m in sent:
        headers = dict(m.headers)
        assert headers[SOURCE_HEADER] in (b"0", b"1")
        for key in listed_keys(headers[GROUPS_HEADER]):
            assert grouped_partition(key, parts) == m.partition
            seen[key] = m.partition
    assert len(seen) == 60
    # the partition Kafka's own partitioner gives a message keyed by the group
    from aiokafka.partitioner import DefaultPartitioner
    assert all(DefaultPartitioner()(k, list(range(parts)), None) == p for k, p in seen.items())

    engine_kwargs, detectors = engine_config(settings)
    one_per_group = grouped_messages(events, partitions=parts, sources=2, chunk=100)
    expected = run_engine(LocalEngine(engine_kwargs=engine_kwargs, detectors=detectors),
                          one_per_group)
    assert expected
    local = run_engine(LocalEngine(engine_kwargs=engine_kwargs, detectors=detectors), sent)
    sharded = run_engine(ShardedEngine(2, engine_kwargs=engine_kwargs, detectors=detectors), sent)
    assert canonical(local) == canonical(expected)
    assert canonical(sharded) == canonical(expected)
    assert {(s.app, s.model, s.model_version) for s in expected} == {
        (e["app"], e["model"], e["model_version"]) for e in events}


def test_a_sharded_engine_gets_each_group_of_a_packed_message_under_its_key() -> None:
    lines = {group_key("a", "m", str(g)): [b'{"g":%d}' % g] for g in range(5)}
    [(value, header)] = pack_groups(lines)
    msg = TestingMessage("llmpulse.grouped", 1, 0, None, value,
                         ((SOURCE_HEADER, b"3"), (GROUPS_HEADER, header)))
    chunks = engine_chunks([msg], keyed=True)
    assert [(src, blob, key) for src, blob, key in chunks] == [
        ((1, 3), lines[key][0], key) for key in lines]
    assert engine_chunks([msg], keyed=False) == [((1, 3), value)]


@dataclass
class _DeliveringTopic(TestingTopic):
    """A topic whose ``send`` returns the message's delivery, as Faust's producer does;
    the delivery of the message numbered ``fail`` fails as a refused produce would."""

    fail: int = -1
    deliveries: list[Any] = field(default_factory=list)

    async def send(self, **kw: Any) -> Any:
        await super().send(**kw)
        fut = asyncio.get_running_loop().create_future()
        if len(self.sent) - 1 == self.fail:
            fut.set_exception(ConnectionError("the broker refused the forward"))
        else:
            fut.set_result(None)
        self.deliveries.append(fut)
        return fut


async def test_a_forward_returns_every_message_delivery_for_the_batch_to_await(
    tmp_path: Path,
) -> None:
    events = _events(400, groups=30, seed=4)
    batch = split_batch([Message(b"\n".join(orjson.dumps(e) for e in events),
                                 "llmpulse.inference", 0, 0)],
                        kind="inference", keep_events=True, now_ms=1_700_000_000_000)
    _, store, agents, _ = _agents(tmp_path)
    try:
        ok = _DeliveringTopic()
        agents.grouped = ok
        delivered = await agents.forward_inference(batch, rejected=set())
        assert len(ok.sent) > 1 and delivered == ok.deliveries  # one per message sent
        bad = _DeliveringTopic(fail=1)
        agents.grouped = bad
        delivered = await agents.forward_inference(batch, rejected=set())
        # the ingest batch awaits each: the refused one fails the batch (tried again)
        with pytest.raises(ConnectionError, match="refused the forward"):
            for d in delivered:
                await d
        await agents.close()
    finally:
        store.close()
