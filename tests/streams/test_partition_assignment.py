"""Every worker that joins gets partitions while there are enough of them.

Faust's assignor (``CopartitionedAssignor``) is sticky: a worker keeps its partitions
up to a capacity, and the partitions over it go to the others. With standby replicas
(Faust's default, 1) that capacity is ``ceil(partitions / workers)``: two workers
holding 2 of 4 partitions each keep them all when a third joins, and the third gets
none (``llmpulse up`` then gave up: "got no partitions"). llmpulse keeps no Faust
tables (engine state travels on ``llmpulse.engine-state``), so its app asks for no
standbys, and the capacity is ``floor(partitions / workers)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from llmpulse.config import load_settings
from llmpulse.stack import no_partitions_message
from llmpulse.streams.app import new_faust_app

TOPICS = {"llmpulse.inference", "llmpulse.feedback", "llmpulse.grouped"}


def _join(held: list[set[int]], partitions: int, replicas: int) -> list[set[int]]:
    """The actives of every worker after one with nothing joins workers holding ``held``."""
    clients = {f"w{i}": CopartitionedAssignment(actives=set(a), topics=set(TOPICS))
               for i, a in enumerate([*held, set()])}
    out = CopartitionedAssignor(TOPICS, clients, partitions, replicas).get_assignment()
    return [set(out[f"w{i}"].actives) for i in range(len(clients))]


def _replicas(tmp_path: Path) -> int:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                        web_port=None)
    return int(app.conf.table_standby_replicas)


def test_with_standbys_a_third_worker_of_four_partitions_gets_none() -> None:
    """The cause, in Faust's own assignor (the default of one standby replica)."""
    after = _join([{0, 1}, {2, 3}], 4, replicas=1)
    assert after[2] == set(), after


@pytest.mark.parametrize(("partitions", "workers"), [(4, 2), (4, 3), (4, 4), (6, 3), (6, 6),
                                                      (12, 5)])
def test_the_worker_app_gives_every_joining_worker_partitions(tmp_path: Path, partitions: int,
                                                             workers: int) -> None:
    replicas = _replicas(tmp_path)
    held: list[set[int]] = [set(range(partitions))]  # one worker holds all, then more join
    for _ in range(workers - 1):
        held = _join(held, partitions, replicas)
        assert all(held), (partitions, held)
        assert sorted(p for h in held for p in h) == list(range(partitions)), held
        assert max(map(len, held)) <= -(-partitions // len(held)), held  # ceil: no hoarding


def test_the_start_error_says_when_the_group_has_no_partition_left() -> None:
    assert "is the broker healthy?" in no_partitions_message(50, 4, joined=False)
    joined = no_partitions_message(50, 4, joined=True)
    assert "more workers than the topics have partitions (4)" in joined
    assert "broker healthy" not in joined
