"""The simulated support app: contract, determinism, rates and incidents."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from typing import Any

import numpy as np
import pytest
from scipy import stats

import llmpulse.monitor
from llmpulse import _sim_data as kb
from llmpulse import simulate
from llmpulse.events import (
    TOPIC_FEEDBACK,
    TOPIC_INFERENCE,
    validate_feedback,
    validate_inference,
)
from llmpulse.simulate import Incident, SupportAppSimulator, Truth, run

START = 1_700_000_000.0
DURATION = 720.0
RATE = 60.0
INCIDENTS = [
    Incident("latency_spike", 60, 120),
    Incident("segment_quality_drop", 150, 300, {"segment": "language=de"}),
    Incident("hallucination_burst", 330, 390),
    Incident("error_burst", 420, 450),
    Incident("prompt_drift", 480, 600),
]
QUIET = (600.0, DURATION)  # no incident, and after every window


class Run:
    """One labelled run with every incident, as columns for the tests."""

    def __init__(self) -> None:
        sim = SupportAppSimulator(seed=7, rate=RATE, incidents=INCIDENTS, start_ts=START)
        self.sim = sim
        self.items = list(sim.labelled_events(DURATION))
        inf: list[tuple[dict[str, Any], Truth]] = []
        for topic, e, t in self.items:
            if topic == TOPIC_INFERENCE:
                assert isinstance(t, Truth)
                inf.append((e, t))
            else:
                assert t is None
        self.feedback = [e for topic, e, _ in self.items if topic == TOPIC_FEEDBACK]
        self.answers = [(e, t) for e, t in inf if e["model"] != "intent-router"]
        self.router = [(e, t) for e, t in inf if e["model"] == "intent-router"]
        self.by_request = {e["request_id"]: e for e, _ in inf}

    def sec(self, pairs: list[tuple[dict[str, Any], Any]]) -> np.ndarray:
        return np.array([e["ts"] / 1000.0 - START for e, _ in pairs])


@pytest.fixture(scope="module")
def sim_run() -> Run:
    return Run()


def window(t: np.ndarray, start: float, end: float) -> np.ndarray:
    return (t >= start) & (t < end)


# -- contract -------------------------------------------------------------------


def test_every_event_validates(sim_run: Run) -> None:
    now_ms = int((START + DURATION) * 1000)
    assert len(sim_run.items) > 80_000
    for topic, ev, _ in sim_run.items:
        if topic == TOPIC_INFERENCE:
            validate_inference(dict(ev), now_ms=now_ms)
        else:
            assert topic == TOPIC_FEEDBACK
            validate_feedback(dict(ev), now_ms=now_ms)


def test_events_are_in_event_time_order_with_unique_ids(sim_run: Run) -> None:
    ts = [ev["ts"] for _, ev, _ in sim_run.items]
    assert ts == sorted(ts)
    assert ts[0] >= START * 1000 and ts[-1] < (START + DURATION) * 1000
    ids = [ev["event_id"] for _, ev, _ in sim_run.items]
    assert len(set(ids)) == len(ids)
    assert len(sim_run.by_request) == len(sim_run.answers) + len(sim_run.router)


def test_feedback_follows_an_existing_inference(sim_run: Run) -> None:
    delays = []
    for fb in sim_run.feedback:
        inf = sim_run.by_request[fb["request_id"]]
        assert fb["ts"] > inf["ts"]
        delays.append((fb["ts"] - inf["ts"]) / 1000.0)
        if inf["model"] == "intent-router":
            assert set(fb) == {"event_id", "request_id", "ts", "app", "label"}
        else:
            assert "label" not in fb and -1 <= fb["score"] <= 1
            assert isinstance(fb["hallucination"], bool)
    assert min(delays) >= 0.9 and max(delays) <= 900.0
    # seconds to minutes: median around the configured 20 s, a long tail
    assert 15 < np.median(delays) < 26
    assert np.percentile(delays, 95) > 60


def test_router_feedback_carries_the_true_intent(sim_run: Run) -> None:
    truth = {e["request_id"]: t.intent for e, t in sim_run.router}
    labelled = [fb for fb in sim_run.feedback if "label" in fb]
    assert len(labelled) > 1000
    assert all(fb["label"] == truth[fb["request_id"]] for fb in labelled)


def test_events_carry_the_documented_shapes(sim_run: Run) -> None:
    ok = [e for e, _ in sim_run.answers if e["status"] == "ok"]
    models = Counter((e["model"], e["model_version"]) for e, _ in sim_run.answers)
    assert set(models) == {("gpt-4o-mini", "2024-07-18"), ("llama-3.1-8b", "q4-2")}
    for e in ok[:2000]:
        assert e["context"] and all(isinstance(p, str) for p in e["context"])
        assert 1 <= len(e["token_logprobs"]) <= 16
        assert e["ttft_ms"] <= e["latency_ms"]
        assert set(e["segment"]) == {"region", "language", "tier"}
        assert e["features"]["n_passages"] == len(e["context"])
        assert e["features"]["prompt_chars"] == len(e["prompt"])
    for e, _ in sim_run.router[:2000]:
        if e["status"] == "ok":
            assert e["prediction"]["label"] in kb.INTENTS
            assert 0 <= e["prediction"]["score"] <= 1
    # per-model prices: the hosted model costs more per token
    gpt = [e["cost_usd"] / e["input_tokens"] for e in ok if e["model"] == "gpt-4o-mini"]
    llama = [e["cost_usd"] / e["input_tokens"] for e in ok if e["model"] == "llama-3.1-8b"]
    assert np.median(gpt) > 3 * np.median(llama)


def test_faithful_answers_restate_the_context(sim_run: Run) -> None:
    faithful = [
        (e, t)
        for e, t in sim_run.answers
        if e["status"] == "ok" and not t.hallucinated and not t.refusal
    ]
    assert len(faithful) > 5000
    verbatim = 0
    for e, _ in faithful:
        context_numbers = set(re.findall(r"\d+(?:[.,]\d+)*", " ".join(e["context"])))
        assert set(re.findall(r"\d+(?:[.,]\d+)*", e["response"])) <= context_numbers
        verbatim += any(p in e["response"] for p in e["context"])
    # mostly paraphrased, sometimes quoted
    assert 0.1 < verbatim / len(faithful) < 0.5


# -- determinism -----------------------------------------------------------------


def small(seed: int, start: float = START) -> list[tuple[str, dict[str, Any]]]:
    sim = SupportAppSimulator(seed=seed, rate=40, incidents=INCIDENTS[:1], start_ts=start)
    return list(sim.events(90))


def test_same_seed_same_events_different_seed_different() -> None:
    a, b, c = small(1), small(1), small(2)
    assert a == b
    assert [e.get("prompt") for _, e in a] != [e.get("prompt") for _, e in c]
    assert {e["event_id"] for _, e in a}.isdisjoint(e["event_id"] for _, e in c)


def test_another_start_gives_the_same_traffic_under_new_ids() -> None:
    a, b = small(1), small(1, START + 3600)
    assert [e.get("response") for _, e in a] == [e.get("response") for _, e in b]
    assert [e["ts"] + 3_600_000 for _, e in a] == [e["ts"] for _, e in b]
    assert {e["event_id"] for _, e in a}.isdisjoint(e["event_id"] for _, e in b)


def test_events_flatten_the_one_second_batches() -> None:
    sim = SupportAppSimulator(seed=4, rate=30, start_ts=START)
    batches = list(sim.batches(20))
    assert len(batches) == 20
    assert [x for b in batches for x in b] == list(sim.events(20))
    labelled = [(topic, ev) for topic, ev, _ in sim.labelled_events(20)]
    assert labelled == list(sim.events(20))
    for c, batch in enumerate(batches):
        assert all(START + c <= ev["ts"] / 1000 < START + c + 1 for _, ev in batch)


# -- rates and shares ------------------------------------------------------------


def test_request_rate_and_shares_match_the_configuration(sim_run: Run) -> None:
    n = len(sim_run.router)
    # Poisson count: 4 standard deviations
    assert abs(n - RATE * DURATION) < 4 * np.sqrt(RATE * DURATION)
    t = sim_run.sec(sim_run.answers)
    quiet = window(t, *QUIET)
    early = t < DURATION - 240  # feedback of later requests may land after the end
    fb_answer = {fb["request_id"] for fb in sim_run.feedback if "score" in fb}
    fb_router = {fb["request_id"] for fb in sim_run.feedback if "label" in fb}
    got = np.array([e["request_id"] in fb_answer for e, _ in sim_run.answers])
    assert abs(got[early].mean() - 0.3) < 0.015
    got_r = np.array([e["request_id"] in fb_router for e, _ in sim_run.router])
    assert abs(got_r[sim_run.sec(sim_run.router) < DURATION - 240].mean() - 0.3) < 0.015
    status = np.array([e["status"] for e, _ in sim_run.answers])
    assert 0.002 < (status[quiet] == "error").mean() < 0.015
    assert (status[quiet] == "timeout").mean() < 0.01
    llama = np.array([e["model"] == "llama-3.1-8b" for e, _ in sim_run.answers])
    assert abs(llama.mean() - 0.25) < 0.01
    halluc = np.array([tr.hallucinated for _, tr in sim_run.answers])
    assert 0.01 < halluc[quiet].mean() < 0.06


def test_feedback_share_and_delay_are_configurable() -> None:
    sim = SupportAppSimulator(
        seed=2, rate=100, start_ts=START, feedback_share=0.6, feedback_delay_s=2.0
    )
    items = list(sim.events(60))
    inf = {ev["request_id"]: ev for topic, ev in items if topic == TOPIC_INFERENCE}
    fb = [ev for topic, ev in items if topic == TOPIC_FEEDBACK]
    early = [rid for rid, ev in inf.items() if ev["ts"] < (START + 45) * 1000]
    with_fb = {f["request_id"] for f in fb}
    assert abs(np.mean([rid in with_fb for rid in early]) - 0.6) < 0.02
    delays = [(f["ts"] - inf[f["request_id"]]["ts"]) / 1000 for f in fb]
    assert 1.5 < np.median(delays) < 2.5


def test_latencies_are_long_tailed(sim_run: Run) -> None:
    t = sim_run.sec(sim_run.answers)
    quiet = window(t, *QUIET)
    lat = np.array([e["latency_ms"] for e, _ in sim_run.answers])[quiet]
    p50, p99 = np.percentile(lat, [50, 99])
    assert 600 < p50 < 2000
    assert p99 > 3 * p50
    assert stats.skew(lat) > 2


# -- incidents -------------------------------------------------------------------


def test_latency_spike_slows_answers_inside_its_window_only(sim_run: Run) -> None:
    t = sim_run.sec(sim_run.answers)
    lat = np.array([e["latency_ms"] for e, _ in sim_run.answers])
    status = np.array([e["status"] for e, _ in sim_run.answers])
    inside, before = window(t, 60, 120), window(t, 0, 60)
    assert np.percentile(lat[inside], 95) > 2 * np.percentile(lat[before], 95)
    assert np.percentile(lat[window(t, 120, 150)], 95) < 1.3 * np.percentile(lat[before], 95)
    assert (status[inside] == "timeout").mean() > 5 * max(
        (status[before] == "timeout").mean(), 0.002
    )
    tr = sim_run.sec(sim_run.router)
    rlat = np.array([e["latency_ms"] for e, _ in sim_run.router])
    assert np.median(rlat[window(tr, 60, 120)]) < 1.2 * np.median(rlat[window(tr, 0, 60)])


def test_error_burst_raises_the_error_rate_inside_its_window(sim_run: Run) -> None:
    t = sim_run.sec(sim_run.answers)
    status = np.array([e["status"] for e, _ in sim_run.answers])
    inside = window(t, 420, 450)
    assert abs((status[inside] == "error").mean() - 0.25) < 0.04
    assert (status[window(t, 450, 480)] == "error").mean() < 0.02
    kinds = Counter(
        e["error_type"]
        for (e, _), i in zip(sim_run.answers, inside, strict=True)
        if i and e["status"] == "error"
    )
    assert set(kinds) <= {"server_error", "rate_limit"}


def test_segment_quality_drop_hits_that_segment_only(sim_run: Run) -> None:
    def accuracy(sel: np.ndarray) -> float:
        pairs = [p for p, s in zip(sim_run.router, sel, strict=True) if s]
        return float(
            np.mean([e.get("prediction", {}).get("label") == tr.intent for e, tr in pairs])
        )

    tr = sim_run.sec(sim_run.router)
    de = np.array([e["segment"]["language"] == "de" for e, _ in sim_run.router])
    inside = window(tr, 150, 300)
    assert accuracy(inside & de) < accuracy(~inside & de) - 0.25
    assert abs(accuracy(inside & ~de) - accuracy(~inside & ~de)) < 0.03
    assert accuracy(~inside & de) > 0.85

    scores: dict[tuple[bool, bool], list[float]] = {}
    for fb in sim_run.feedback:
        if "score" not in fb:
            continue
        a = sim_run.by_request[fb["request_id"]]
        key = (150 <= a["ts"] / 1000 - START < 300, a["segment"]["language"] == "de")
        scores.setdefault(key, []).append(fb["score"])
    assert np.mean(scores[True, True]) < np.mean(scores[False, True]) - 0.4
    assert abs(np.mean(scores[True, False]) - np.mean(scores[False, False])) < 0.1

    t = sim_run.sec(sim_run.answers)
    de_a = np.array([e["segment"]["language"] == "de" for e, _ in sim_run.answers])
    refusal = np.array([tr.refusal for _, tr in sim_run.answers])
    inside_a = window(t, 150, 300)
    assert refusal[inside_a & de_a].mean() > 5 * refusal[~inside_a & de_a].mean()


def test_hallucination_burst_mixes_several_kinds_of_wrong_answer(sim_run: Run) -> None:
    t = sim_run.sec(sim_run.answers)
    halluc = np.array([tr.hallucinated for _, tr in sim_run.answers])
    inside = window(t, 330, 390)
    assert halluc[inside].mean() > 0.25 and halluc[~inside].mean() < 0.06

    k = simulate._kb()
    flipped = {
        r for r, c in zip(k.responses, k.change, strict=True) if c in ("negation", "condition")
    }
    numbers = re.compile(r"\d+(?:[.,]\d+)*")
    claims = {c for cs in kb.CLAIMS.values() for c in cs}
    fabricated = {f for fs in kb.FABRICATED.values() for f in fs}
    faithful: dict[tuple[str, ...], set[str]] = {}
    for sc in range(len(k.f_start)):
        faithful.setdefault(tuple(k.contexts[sc]), set()).update(
            k.responses[k.f_start[sc]: k.f_start[sc] + k.f_count[sc]]
        )
    names = {v for kind, values in kb.SLOTS.values() if kind == "name" for v in values}
    changes: Counter[str] = Counter()
    for e, tr in sim_run.answers:
        if not tr.hallucinated:
            continue
        changes[tr.change] += 1
        ctx = " ".join(e["context"])
        resp = e["response"]
        if tr.change in ("number", "date"):
            assert set(numbers.findall(resp)) - set(numbers.findall(ctx)), resp
        elif tr.change == "name":
            assert any(n in resp and n not in ctx for n in names), resp
        elif tr.change == "claim":
            assert any(c in resp for c in claims), resp
        elif tr.change == "fabricated":
            assert any(f in resp for f in fabricated), resp
        elif tr.change == "conflation":
            # every number is in the context, but one belongs to another passage
            assert set(numbers.findall(resp)) <= set(numbers.findall(ctx)), resp
            assert not any(resp.removeprefix(o).removesuffix(c) in faithful[tuple(e["context"])]
                           for o in kb.OPENERS for c in kb.CLOSERS), resp
        else:
            assert tr.change in ("negation", "condition")
            assert any(
                resp.removeprefix(o).removesuffix(c) in flipped
                for o in kb.OPENERS
                for c in kb.CLOSERS
            ), resp
    assert set(changes) == {"number", "date", "name", "negation", "condition", "claim",
                            "conflation", "fabricated"}
    # several kinds, none dominating (dates exist in few passages)
    assert max(changes.values()) < 0.3 * sum(changes.values()), changes

    def mean_logprob(sel: bool) -> float:
        return float(
            np.mean(
                [
                    np.mean(e["token_logprobs"])
                    for e, tr in sim_run.answers
                    if e["status"] == "ok" and tr.hallucinated == sel
                ]
            )
        )

    assert mean_logprob(True) < 2 * mean_logprob(False)

    hallucinated = {e["request_id"] for e, tr in sim_run.answers if tr.hallucinated}
    flags: dict[bool, list[bool]] = {True: [], False: []}
    for fb in sim_run.feedback:
        if "hallucination" in fb:
            flags[fb["request_id"] in hallucinated].append(fb["hallucination"])
    assert np.mean(flags[True]) > 0.3 and np.mean(flags[False]) < 0.03


def test_negation_and_condition_flips_contradict_the_faithful_answer() -> None:
    k = simulate._kb()
    flipped = [i for i, c in enumerate(k.change) if c in ("negation", "condition")]
    faithful = {
        k.responses[j]
        for s in range(len(k.f_start))
        for j in range(k.f_start[s], k.f_start[s] + k.f_count[s])
    }
    assert len(flipped) > 100
    assert not faithful.intersection(k.responses[i] for i in flipped)


def test_prompt_drift_moves_prompts_and_features_inside_its_window(sim_run: Run) -> None:
    t = sim_run.sec(sim_run.answers)
    inside, before = window(t, 480, 600), window(t, 390, 480)
    chars = np.array([e["features"]["prompt_chars"] for e, _ in sim_run.answers])
    retrieval = np.array([e["features"]["retrieval_score"] for e, _ in sim_run.answers])
    assert chars[inside].mean() > 1.8 * chars[before].mean()
    assert stats.ks_2samp(retrieval[inside], retrieval[before]).pvalue < 1e-10
    quiet = window(t, *QUIET)
    assert stats.ks_2samp(chars[before], chars[quiet]).pvalue > 1e-3
    intents = np.array([tr.intent for _, tr in sim_run.answers])
    new_topic = np.isin(intents, ("integration", "privacy"))
    assert new_topic[inside].mean() > 0.5 and new_topic[before].mean() < 0.08
    tokens = np.array([e["input_tokens"] for e, _ in sim_run.answers])
    assert tokens[inside].mean() > tokens[before].mean()


def test_truth_names_the_active_incidents(sim_run: Run) -> None:
    t = sim_run.sec(sim_run.answers)
    for (e, tr), s in zip(sim_run.answers[::50], t[::50], strict=True):
        expected = {
            inc.kind
            for inc in INCIDENTS
            if inc.start_s <= s < inc.end_s
            and (inc.kind != "segment_quality_drop" or e["segment"]["language"] == "de")
        }
        assert set(tr.incidents) == expected
        assert isinstance(tr, Truth)


def test_incident_targets_one_model() -> None:
    sim = SupportAppSimulator(
        seed=3,
        rate=200,
        start_ts=START,
        incidents=[Incident("latency_spike", 0, 30, {"model": "llama-3.1-8b", "factor": "5"})],
    )
    ev = [e for topic, e in sim.events(30) if topic == TOPIC_INFERENCE]
    lat = {
        m: np.median([e["latency_ms"] for e in ev if e["model"] == m])
        for m in ("gpt-4o-mini", "llama-3.1-8b")
    }
    assert lat["llama-3.1-8b"] > 3 * lat["gpt-4o-mini"]
    assert lat["gpt-4o-mini"] < 2000


def test_ground_truth_is_in_event_time(sim_run: Run) -> None:
    truth = sim_run.sim.ground_truth()
    assert [g["kind"] for g in truth] == [i.kind for i in INCIDENTS]
    spike = truth[0]
    assert (spike["start_ts"], spike["end_ts"]) == (START + 60, START + 120)
    assert spike["params"] == {"factor": 4.0, "model": ""}
    assert "latency.p95_ms" in spike["signals"]
    assert truth[1]["params"] == {"segment": "language=de"}
    assert ["intent-router", "1"] in truth[1]["models"]
    assert Incident.parse(truth[1]["spec"]) == INCIDENTS[1]


# -- incident strings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("latency_spike:60:120", Incident("latency_spike", 60, 120)),
        ("prompt_drift:0:30.5:share=0.5", Incident("prompt_drift", 0, 30.5, {"share": "0.5"})),
        (
            "segment_quality_drop:30:90:segment=tier=free",
            Incident("segment_quality_drop", 30, 90, {"segment": "tier=free"}),
        ),
        (
            "error_burst:1:2:rate=1:model=gpt-4o-mini",
            Incident("error_burst", 1, 2, {"rate": "1", "model": "gpt-4o-mini"}),
        ),
    ],
)
def test_incident_strings_parse(spec: str, expected: Incident) -> None:
    assert Incident.parse(spec) == expected
    assert Incident.parse(expected.spec()) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected kind:start:end"),
        ("latency_spike:60", "expected kind:start:end"),
        ("latency_spikes:60:120", "unknown kind 'latency_spikes' (known: latency_spike,"),
        ("latency_spike:soon:120", "start 'soon' is not a number"),
        ("latency_spike:60:later", "end 'later' is not a number"),
        ("latency_spike:120:60", "end 60 must be after start 120"),
        ("latency_spike:-5:60", "start -5 must be >= 0"),
        ("latency_spike:0:60:factor", "parameter 'factor' must be key=value"),
        (
            "latency_spike:0:60:share=0.5",
            "unknown parameter 'share' for latency_spike (known: factor, model)",
        ),
        ("latency_spike:0:60:factor=-2", "factor '-2' must be > 0"),
        ("latency_spike:0:60:factor=fast", "factor 'fast' is not a number"),
        ("hallucination_burst:0:60:share=1.5", "share '1.5' must be within 0..1"),
        ("error_burst:0:60:model=gpt-5", "model 'gpt-5' is not an answer model"),
        ("segment_quality_drop:0:60:segment=de", "segment 'de' must be attribute=value"),
        (
            "segment_quality_drop:0:60:segment=country=de",
            "segment 'country=de' must be attribute=value",
        ),
        (
            "segment_quality_drop:0:60:segment=language=klingon",
            "segment value 'klingon' unknown for language",
        ),
    ],
)
def test_bad_incident_strings_name_the_bad_part(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Incident.parse(spec)
    assert message in str(info.value)
    assert str(info.value).startswith(f"incident {spec.strip()!r}") or not spec


def test_simulator_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        SupportAppSimulator(rate=0)
    with pytest.raises(ValueError, match="feedback_share must be within 0..1"):
        SupportAppSimulator(feedback_share=1.5)
    with pytest.raises(ValueError, match="chunk_s must be > 0"):
        next(SupportAppSimulator(start_ts=START).batches(10, chunk_s=0))


# -- driving a monitor --------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.flushed = 0

    def inference(self, **ev: Any) -> None:
        self.sent.append((TOPIC_INFERENCE, ev))

    def feedback(self, **ev: Any) -> None:
        self.sent.append((TOPIC_FEEDBACK, ev))

    def flush(self) -> None:
        self.flushed += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_run_paces_chunks_to_the_clock() -> None:
    sim = SupportAppSimulator(seed=5, rate=50, start_ts=START, incidents=INCIDENTS[:1])
    rec, clock = Recorder(), FakeClock()
    seen: list[dict[str, Any]] = []
    out = run(rec, sim, 12.5, clock=clock, sleep=clock.sleep, progress=seen.append)
    assert rec.sent == list(sim.events(12.5))
    assert rec.flushed == 1
    assert clock.sleeps == [1.0] * 12 + [0.5]
    assert out["wall_s"] == 12.5 and out["chunks"] == 13
    assert out["inference"] + out["feedback"] == len(rec.sent)
    assert [p["sim_s"] for p in seen][-2:] == [12.0, 12.5]
    assert out["incidents"] == sim.ground_truth()


def test_run_fast_does_not_sleep() -> None:
    sim = SupportAppSimulator(seed=5, rate=50, start_ts=START)
    rec, clock = Recorder(), FakeClock()
    out = run(rec, sim, 10, realtime=False, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [] and out["inference"] > 900


def test_cli_flags_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="llmpulse simulate")
    simulate.configure(parser)
    args = parser.parse_args(
        [
            "--rate",
            "50",
            "--duration",
            "10",
            "--seed",
            "3",
            "--fast",
            "--incident",
            "latency_spike:1:5",
            "--incident",
            "error_burst:2:4:rate=0.5",
            "--feedback-share",
            "0.1",
            "--bootstrap",
            "127.0.0.1:9092",
        ]
    )
    assert [i.kind for i in args.incident] == ["latency_spike", "error_burst"]
    assert (args.rate, args.duration, args.seed, args.realtime) == (50.0, 10.0, 3, False)
    assert parser.parse_args([]).realtime is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--incident", "latency_spike:60:abc"])
    assert "end 'abc' is not a number" in capsys.readouterr().err
    assert "segment_quality_drop" in parser.format_help()


def test_run_cli_drives_a_monitor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    made: list[Any] = []

    class FakeMonitor(Recorder):
        def __init__(self, app: str, bootstrap: str | None) -> None:
            super().__init__()
            self.app, self.bootstrap = app, bootstrap
            made.append(self)

    monkeypatch.setattr(llmpulse.monitor, "Monitor", FakeMonitor)
    parser = argparse.ArgumentParser()
    simulate.configure(parser)
    args = parser.parse_args(
        [
            "--rate",
            "20",
            "--duration",
            "5",
            "--fast",
            "--bootstrap",
            "b:1",
            "--incident",
            "error_burst:1:3",
        ]
    )
    assert simulate.run_cli(args) == 0
    (mon,) = made
    assert (mon.app, mon.bootstrap) == ("support-assistant", "b:1")
    assert mon.flushed == 1 and len(mon.sent) > 150
    for topic, ev in mon.sent:  # fast runs end now: nothing lies in the future
        (validate_inference if topic == TOPIC_INFERENCE else validate_feedback)(dict(ev))
    assert "incident error_burst:1:3" in capsys.readouterr().out


def test_exported_names_exist() -> None:
    for name in simulate.__all__:
        assert hasattr(simulate, name), name
