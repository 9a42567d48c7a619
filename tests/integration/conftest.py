"""The Kafka a worker-fault test runs on: one embedded broker, or the local cluster.

A test that takes the ``kafka`` fixture runs twice: against one
:class:`~llmpulse.broker.EmbeddedBroker`, and against three Tansu brokers over
one S3 bucket (:class:`~llmpulse.cluster.LocalCluster`, the session's
``s3_server``). ``kafka.start()`` gives a fresh, empty Kafka with the
pipeline's topics each time it is entered, stopped by pid on leaving.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.cluster import ClusterSettings, LocalCluster
from llmpulse.events import TOPICS

KAFKA_KINDS = ("embedded", "cluster")

# against Tansu brokers sharing a log, idempotent produce is not safe across a broker
# loss (docs/cluster.md): the shim runs with idempotence off there, the store
# de-duplicates by event_id; few, large envelopes (every message is object-store work)
_CLUSTER_SHIM: Mapping[str, Any] = MappingProxyType(
    {"producer_config": {"enable.idempotence": False}, "buckets": 4})


@dataclass(frozen=True)
class KafkaTarget:
    """A running Kafka: its bootstrap list and the shim's settings for it."""

    kind: str
    bootstrap: str
    shim: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for :class:`llmpulse.monitor.Monitor` against this Kafka."""
    cluster: LocalCluster | None = None
    workers: list[Any] = field(default_factory=list)
    """Processes to close before this Kafka stops when the test fails (a worker left
    running against stopped brokers retries for minutes)."""

    def runs(self, worker: Any) -> Any:
        """Note ``worker`` (an ``llmpulse up`` process on this Kafka); returns it."""
        self.workers.append(worker)
        return worker


@dataclass(frozen=True)
class KafkaFactory:
    """Starts a fresh Kafka of one kind (a test may want several in a row)."""

    kind: str
    request: pytest.FixtureRequest
    log_dir: Path
    partitions: int = 4

    @contextmanager
    def start(self, partitions: int | None = None) -> Iterator[KafkaTarget]:
        """A fresh Kafka with the pipeline's topics, of ``partitions`` partitions each
        (default :attr:`partitions`)."""
        n = partitions or self.partitions
        if self.kind == "embedded":
            with EmbeddedBroker() as b:
                create_topics(b.bootstrap, dict.fromkeys(TOPICS, n))
                with _closing_workers(KafkaTarget("embedded", b.bootstrap)) as target:
                    yield target
            return
        s3 = self.request.getfixturevalue("s3_server")
        # a cluster id of its own: an empty log in the shared bucket
        settings = ClusterSettings(brokers=3, cluster_id=f"test-{uuid.uuid4().hex[:16]}")
        with LocalCluster(s3.storage, settings,
                          log_dir=self.log_dir / settings.cluster_id) as c:
            create_topics(c.bootstrap, dict.fromkeys(TOPICS, n), timeout=60)
            with _closing_workers(KafkaTarget("cluster", c.bootstrap, _CLUSTER_SHIM, c)) as target:
                yield target

    def stack_timeout(self) -> float:
        """How long ``llmpulse up`` may take to be ready on this Kafka."""
        return 120.0 if self.kind == "embedded" else 240.0


@contextmanager
def _closing_workers(target: KafkaTarget) -> Iterator[KafkaTarget]:
    try:
        yield target
    except BaseException:
        for worker in target.workers:
            worker.close()
        raise


@pytest.fixture(params=KAFKA_KINDS)
def kafka(request: pytest.FixtureRequest, tmp_path: Path) -> KafkaFactory:
    """Fresh Kafkas of one kind per test run: ``embedded`` and ``cluster``."""
    return KafkaFactory(str(request.param), request, tmp_path / "kafka")
