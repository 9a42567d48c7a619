"""Prompt versions, experiments and references through the contract, the join and the engine."""

from __future__ import annotations

import pickle

import pytest

from llmpulse.events import EventError, validate_feedback, validate_inference
from llmpulse.streams.engine import SignalEngine, default_detectors
from llmpulse.streams.join import FeedbackJoin
from llmpulse.streams.windows import WindowSpec

NOW = 1_700_000_000_000
BASE = NOW - NOW % 60_000  # one 60 s quality window


def _inf(**kw: object) -> dict[str, object]:
    ev: dict[str, object] = {
        "event_id": "e1", "request_id": "r1", "ts": NOW, "app": "a", "model": "m",
        "model_version": "1", "latency_ms": 10.0, "status": "ok", "input_tokens": 1,
        "output_tokens": 1,
    }
    ev.update(kw)
    return ev


def test_contract_accepts_tags_and_references() -> None:
    ev = validate_inference(_inf(prompt_version="v3", experiment="tone", variant="B"), now_ms=NOW)
    assert (ev["prompt_version"], ev["experiment"], ev["variant"]) == ("v3", "tone", "B")
    fb = validate_feedback({"event_id": "f", "request_id": "r1", "ts": NOW,
                            "reference": "the right answer", "source": "golden"}, now_ms=NOW)
    assert fb["source"] == "golden"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt_version": 3}, "prompt_version"),
        ({"prompt_version": ""}, "prompt_version"),
        ({"experiment": "x" * 201}, "experiment"),
        ({"variant": "B"}, "variant"),  # a variant without an experiment
        ({"experiment": "e", "variant": ["B"]}, "variant"),
    ],
)
def test_contract_rejects_bad_tags(fields: dict[str, object], field: str) -> None:
    with pytest.raises(EventError) as err:
        validate_inference(_inf(**fields), now_ms=NOW)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"source": "crowd"}, "source"), ({"reference": 42}, "reference"),
     ({"reference": "x" * 300_000}, "reference")],
)
def test_contract_rejects_bad_feedback(fields: dict[str, object], field: str) -> None:
    with pytest.raises(EventError) as err:
        validate_feedback({"event_id": "f", "request_id": "r", "ts": NOW, **fields}, now_ms=NOW)
    assert err.value.field == field


def _events(n: int, worse_b: bool) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    infs, fbs = [], []
    for i in range(n):
        arm = "B" if i % 2 else "A"
        ts = BASE + i * (50_000 // n)
        infs.append(validate_inference(_inf(
            event_id=f"e{i}", request_id=f"r{i}", ts=ts, experiment="tone", variant=arm,
            prompt_version="2" if arm == "B" else "1", latency_ms=100.0 + (i * 37) % 200,
            cost_usd=0.001, response=f"answer number {i} about refunds",
        ), now_ms=NOW))
        good = (i * 7919) % 10 < (3 if worse_b and arm == "B" else 8)
        fb: dict[str, object] = {"event_id": f"f{i}", "request_id": f"r{i}", "ts": ts + 500,
                                 "score": 1.0 if good else -1.0}
        if i % 5 == 0:
            fb.update(reference=f"answer number {i} about refunds" if good else "see the help page",
                      source="reviewer")
        if i % 4 != 3:  # a quarter of the requests never get feedback
            fbs.append(validate_feedback(fb, now_ms=NOW))
    return infs, fbs


def test_engine_emits_ab_and_reference_signals() -> None:
    now = [NOW / 1000]
    fams = {"quality": default_detectors()["quality"]}
    engine = SignalEngine(fams, clock=lambda: now[0])
    infs, fbs = _events(400, worse_b=True)
    engine.add_inference(infs)
    engine.add_feedback(fbs)
    out = engine.flush()
    by = {(s.signal, s.dimension): s for s in out}
    verdict = by[("ab.verdict", "experiment=tone")]
    assert verdict.value >= 1 and "feedback_score" in verdict.detail["worse"]
    assert verdict.app == "a" and verdict.model_version == "1"
    lat = by[("ab.latency_p95_ms", "experiment=tone")]
    assert lat.detail["n_control"] == 200  # every request of the arm, not only those with feedback
    assert by[("ab.feedback_score", "experiment=tone")].n == 300
    rouge = by[("quality.rouge_l", "")]
    assert rouge.n == 60 and 0.0 < rouge.value < 1.0  # i % 5 == 0 with feedback
    assert rouge.detail["worst"][0]["reference"] == "see the help page"


def test_join_keeps_tags_and_responses_across_snapshot() -> None:
    join = FeedbackJoin(WindowSpec(60, 30), horizon_s=3600, max_responses=2)
    g = ("a", "m", "1")
    for i in range(3):
        join.add_inference(g, _inf(event_id=f"e{i}", request_id=f"r{i}", ts=1_000 + i,
                                   experiment="x", variant="A", response=f"resp {i}"))
    join.add_feedback({"request_id": "r0", "ts": 5_000, "reference": "ref 0"})
    join.add_feedback({"request_id": "r2", "ts": 5_000, "reference": "ref 2"})
    restored = FeedbackJoin(WindowSpec(60, 30), horizon_s=3600, max_responses=2)
    restored.restore(pickle.loads(pickle.dumps(join.snapshot())))
    evs = {e["request_id"]: e for e in restored.events(g, 0)}
    assert set(evs) == {"r0", "r1", "r2"}  # experiment members count without feedback
    assert evs["r1"]["variant"] == "A" and evs["r1"]["latency_ms"] == 10.0
    assert evs["r2"]["response"] == "resp 2"
    assert "response" not in evs["r0"]  # left the two-entry cache
    assert restored.stats()["reference_without_response"] == 1


def test_default_rule_pages_on_a_worse_variant_only_with_enough_samples() -> None:
    from llmpulse.detectors.base import Signal
    from llmpulse.streams.rules import Rules

    rules = Rules.default()
    rule = rules["experiment-variant-worse"]
    worse = Signal("ab.verdict", 1.0, n=400, dimension="experiment=tone")
    assert rule.evaluate(worse).value == "breach"
    assert rule.evaluate(Signal("ab.verdict", 2.0, n=12, dimension="experiment=tone")).value == "ignored"
    assert rule.evaluate(Signal("ab.verdict", 0.0, n=400, dimension="experiment=tone")).value == "healthy"


def test_simulated_prompt_rollout_is_found_worse_and_nothing_else_changes() -> None:
    from llmpulse.simulate import Incident, SupportAppSimulator

    def run(incidents: list[Incident]) -> tuple[list[dict[str, object]], list[object]]:
        sim = SupportAppSimulator(seed=3, rate=60, start_ts=1_700_000_000.0, incidents=incidents)
        now = [1_700_000_000.0]
        eng = SignalEngine({"quality": default_detectors()["quality"]}, clock=lambda: now[0])
        infs = []
        for topic, ev in sim.events(120):
            if topic == "llmpulse.inference":
                infs.append(ev)
                eng.add_inference([ev])
            else:
                eng.add_feedback([ev])
        return infs, eng.flush()

    plain, _ = run([])
    rolled, signals = run([Incident.parse("prompt_rollout:0:120")])
    tagged = [e for e in rolled if "experiment" in e]
    assert tagged and {e["prompt_version"] for e in tagged} == {"v1", "v2"}
    # same requests at the same times; only arm B's answers differ (more refusals)
    assert [(e["request_id"], e["ts"]) for e in plain] == [(e["request_id"], e["ts"]) for e in rolled]
    same = [a["latency_ms"] == b["latency_ms"] for a, b in zip(plain, rolled, strict=True)
            if b.get("variant") != "B"]
    assert all(same)
    worse = [s for s in signals if s.signal == "ab.verdict" and s.value >= 1]
    assert worse and all("feedback_score" in s.detail["worse"] for s in worse)


def test_a_store_made_before_gets_the_new_columns(tmp_path, monkeypatch) -> None:
    import time

    from llmpulse import store as store_mod
    from llmpulse.store import ADDED_COLUMNS, DDL, RAW_INGEST, Store, _ingest_ddl

    old = {}
    for name, stmt in DDL.items():  # the tables as first released: without the new columns
        for cols in ADDED_COLUMNS.values():
            for col, typ in cols:
                stmt = stmt.replace(f"    {col} {typ},\n", "")
        old[name] = stmt
    store = Store.open(f"chdb://{tmp_path}/store", ddl=False)
    try:
        with monkeypatch.context() as mp:
            for name, stmt in old.items():
                mp.setitem(store_mod.DDL, name, stmt)
                store.command(stmt.format(ttl=90))
            for raw, entry in RAW_INGEST.items():  # and their ingest entries and views
                for stmt in _ingest_ddl(raw, entry, 90):
                    store.command(stmt)
        assert "prompt_version" not in str(store.query("DESCRIBE TABLE inference_ingest"))
        store.create_tables()
        ts = int(time.time() * 1000)
        store.insert_json("inference_ingest", orjson_line(
            {"event_id": "e1", "request_id": "r1", "ts": ts, "app": "a", "model": "m",
             "model_version": "1", "latency_ms": 1.0, "status": "ok", "input_tokens": 1,
             "output_tokens": 1, "prompt_version": "v9", "experiment": "x", "variant": "B"}))
        store.insert_json("feedback_ingest", orjson_line(
            {"event_id": "f1", "request_id": "r1", "ts": ts, "reference": "ref",
             "source": "judge", "judge": {"groundedness": 0.5}}))
        assert store.query("SELECT prompt_version, variant FROM inference_events FINAL") == [
            {"prompt_version": "v9", "variant": "B"}]
        fb = store.query("SELECT reference, source, judge FROM feedback_events FINAL")
        assert fb == [{"reference": "ref", "source": "judge", "judge": {"groundedness": 0.5}}]
    finally:
        store.close()


def orjson_line(ev: dict[str, object]) -> bytes:
    import orjson

    return orjson.dumps(ev)
