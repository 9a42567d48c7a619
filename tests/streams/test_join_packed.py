"""The feedback join's packed state (``FeedbackJoin.packed``, what engine saves and
hand-offs write) keeps each window's records as a compressed fragment until the
window changes. Whatever the join went through, the packed state must read back as
the state built from every record now (``snapshot_rows``, ``take_groups``), and an
engine restored from a save must hold what the saving engine held."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from llmpulse.streams.engine import _CODEC, _compress, _unpack
from llmpulse.streams.join import FeedbackJoin
from llmpulse.streams.windows import WindowSpec

GROUPS = [("app", "m1", "1"), ("app", "m2", "1"), ("other", "m1", "2")]
CODECS = [("none", lambda b: b), (_CODEC, _compress)]  # uncompressed, and the engine's


def _json(obj: Any) -> Any:
    return orjson.loads(orjson.dumps(obj))


def _random_ops(join: FeedbackJoin, rng: random.Random, steps: int, check: Any) -> None:
    """Inferences (one by one and in batches, replays and request ids used again),
    feedback (before and after its inference and its window's close), closes with
    expiry, erasures, a group's share dropped and merged back; ``check()`` after each."""
    clock = 0
    n = 0
    for _ in range(steps):
        op = rng.random()
        clock += rng.randint(0, 4_000)
        if op < 0.35:
            items = []
            for _ in range(rng.randint(1, 20)):
                n += 1
                rid = f"r{rng.randint(0, n)}" if rng.random() < 0.05 else f"r{n}"
                ts = max(0, clock - rng.randint(0, 90_000))
                ev = {"event_id": f"e{n}", "request_id": rid, "ts": ts, "status": "ok",
                      "prediction": {"label": rng.choice(["a", "b"])},
                      "segment": {"tier": rng.choice(["free", "pro"])},
                      "response": f"answer {n}"}
                if rng.random() < 0.1:
                    ev["experiment"] = "exp"
                    ev["variant"] = rng.choice(["x", "y"])
                items.append((rng.choice(GROUPS), ev, ts))
            if rng.random() < 0.5:
                join.add_inferences(items)
            else:
                for g, ev, ts in items:
                    join.add_inference(g, ev, ts)
        elif op < 0.65:
            rid = f"r{rng.randint(1, n + 3)}"
            fields: dict[str, Any] = {"score": rng.random()}
            if rng.random() < 0.2:
                fields["reference"] = "the reference"
            join.add_feedback({"request_id": rid, "ts": clock, **fields})
        elif op < 0.8:
            join.due(clock)
            if rng.random() < 0.3:
                join.redo()
        elif op < 0.86:
            join.forget({f"r{rng.randint(1, n + 1)}" for _ in range(rng.randint(1, 3))})
        elif op < 0.93:
            g = rng.choice(GROUPS)
            share = join.take_groups({g})
            join.drop_groups({g})
            check()
            join.merge_groups(share)
        else:
            join.add_inference(rng.choice(GROUPS), {"event_id": f"e{n}", "request_id": f"r{n}",
                                                    "ts": clock, "status": "error"}, clock)
        check()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("codec", CODECS, ids=[c[0] for c in CODECS])
def test_packed_state_reads_as_the_state_of_every_record(seed: int, codec: Any) -> None:
    name, compress = codec

    def _read(blob: bytes) -> Any:
        return _unpack(blob, name)
    rng = random.Random(seed)
    join = FeedbackJoin(WindowSpec(20, 10), horizon_s=120, max_pending=50, max_responses=40)
    checks = [0]
    most = [0]

    def check() -> None:
        assert _read(join.packed(compress)) == _json(join.snapshot_rows())
        for g in GROUPS[: rng.randint(1, 3)]:
            got = _read(join.packed(compress, {g}))
            want = _json(join.take_groups({g}))
            # responses: of the requests whose latest record is in the group (a request
            # id used again in another group takes its response along; take_groups gave
            # it to both)
            latest = {rid for rid, rec in join._by_request.items() if rec.group == g}
            want["responses"] = [r for r in want["responses"] if r[0] in latest]
            assert got == want
        checks[0] += 1
        most[0] = max(most[0], join.stats()["records"])

    _random_ops(join, rng, 400, check)
    assert checks[0] >= 400
    assert most[0] > 100  # the run held a real table


def test_a_window_changed_after_a_save_is_packed_anew() -> None:
    """The cache would be wrong exactly here: feedback attached to a window whose
    fragment was built by an earlier save."""
    join = FeedbackJoin(WindowSpec(20, 10), horizon_s=120)
    g = GROUPS[0]
    join.add_inferences([(g, {"event_id": f"e{i}", "request_id": f"r{i}", "ts": 1_000 * i,
                              "status": "ok"}, 1_000 * i) for i in range(10)])
    before = orjson.loads(join.packed(lambda b: b))
    assert all(r[7] is None for r in before["records"])
    join.add_feedback({"request_id": "r3", "ts": 50_000, "score": 0.5})
    after = orjson.loads(join.packed(lambda b: b))
    assert [r[7] for r in after["records"] if r[1] == "r3"] == [{"score": 0.5}]
    join.forget({"r4"})
    assert "r4" not in {r[1] for r in orjson.loads(join.packed(lambda b: b))["records"]}


def test_an_engine_restored_from_a_save_packs_the_same_join() -> None:
    from llmpulse.streams.engine import SignalEngine, default_detectors

    def mk() -> SignalEngine:
        return SignalEngine({"quality": default_detectors()["quality"]},
                            {"quality": WindowSpec(20, 10)}, clock=lambda: 0.0, defer=False)

    a = mk()
    rng = random.Random(9)
    events = [{"event_id": f"e{i}", "request_id": f"r{i}", "ts": 1_000 * i, "app": "app",
               "model": rng.choice(["m1", "m2"]), "model_version": "1", "status": "ok",
               "prediction": {"label": rng.choice(["a", "b"])}} for i in range(300)]
    a.add_inference(events[:150])
    first = a.snapshot()  # builds and keeps the fragments
    a.add_feedback([{"request_id": f"r{i}", "ts": 200_000, "label": "a"} for i in range(0, 150, 7)])
    a.add_inference(events[150:])
    saved = a.snapshot()
    assert saved["join"] != first["join"]
    b = mk()
    b.restore(saved)
    codec = saved["codec"]
    assert _unpack(b.snapshot()["join"], codec) == _unpack(saved["join"], codec)
    assert _unpack(saved["join"], codec) == _json(a._join.snapshot_rows())  # type: ignore[union-attr]
