"""The signal agents' lifecycle on a real Faust app object (no broker needed to build it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llmpulse.config import load_settings
from llmpulse.store import Store
from llmpulse.streams.app import new_faust_app, store_sink
from llmpulse.streams.signals import SignalAgents


@pytest.mark.parametrize("processes", [1, 2])
async def test_timers_after_close_do_not_crash_the_app(tmp_path: Path, processes: int) -> None:
    """The Faust timers (window polls, snapshots) keep firing until the app stops, which
    is after the engine stopped in a clean shutdown: they must find nothing to do,
    not raise into Faust (which crashes the worker with a traceback)."""
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, engine_processes=processes))
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                            web_port=None)
        agents = SignalAgents(app, settings, store, store_sink(app, store, settings))
        assert agents._poll() == []  # a running engine with nothing in it
        await agents.close()
        assert agents._poll() == []
        agents._save()  # a snapshot timer after close: nothing saved, nothing raised
        assert agents.counters.get("snapshots", 0) == 0
    finally:
        store.close()


def _agents(tmp_path: Path, log_id: str | None = None, **kw):
    from llmpulse.streams.testing import TestingSink, TestingTopic

    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False, **kw))
    store = Store.open(f"chdb://{tmp_path}/store")
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                        web_port=None)
    sink, topic = TestingSink(), TestingTopic()
    agents = SignalAgents(app, settings, store, sink, signals_topic=topic,
                          log_id=None if log_id is None else (lambda: log_id))
    return settings, store, agents, sink, topic


async def test_the_signal_agent_stores_publishes_and_hands_on_what_the_engine_computes(
    tmp_path: Path,
) -> None:
    from llmpulse.detectors.testing import synthetic_events
    from llmpulse.streams.engine_process import LocalEngine
    from llmpulse.streams.signals import engine_config
    from llmpulse.streams.testing import (
        canonical,
        drive_signal_agents,
        grouped_messages,
        run_engine,
    )

    messages = grouped_messages(synthetic_events(1500, seed=4, rate=10), sources=2, chunk=100)
    settings, store, agents, sink, topic = _agents(tmp_path)
    try:
        got = await drive_signal_agents(agents, messages, batch=5)
        await agents.close()
    finally:
        store.close()
    engine_kwargs, detectors = engine_config(settings)
    expected = run_engine(LocalEngine(engine_kwargs=engine_kwargs, detectors=detectors), messages)
    assert got and canonical(got) == canonical(expected)
    # each signal once in the table and on the topic, keyed by its group
    assert len(sink.rows["signals"]) == len(got) == len(topic.values())
    assert {k for k, _ in topic.sent} == {b"support/router/1"}
    assert {r["signal"] for r in sink.rows["signals"]} == {s.signal for s in got}
    assert agents.counters["signals"] == len(got)


async def test_messages_the_engine_already_holds_are_skipped(tmp_path: Path) -> None:
    from llmpulse.detectors.testing import synthetic_events
    from llmpulse.streams.testing import grouped_messages

    messages = grouped_messages(synthetic_events(400, seed=5, rate=10), chunk=50)
    settings, store, agents, sink, topic = _agents(tmp_path)
    try:
        assert await agents.take(messages) == len(messages)
        events_in = agents.engine.stats()["events_in"]
        assert await agents.take(messages[2:]) == 0  # a redelivery after a rebalance
        assert agents.counters["replay_skipped"] == len(messages) - 2
        assert agents.engine.stats()["events_in"] == events_in == 400
        await agents.close()
    finally:
        store.close()


@pytest.mark.parametrize("restart_log", ["cluster-a", None, "cluster-b"])
async def test_saved_offsets_are_kept_only_for_the_same_log(
    tmp_path: Path, restart_log: str | None,
) -> None:
    """The state's offsets number one log (its Kafka cluster id): a restart on a
    new broker (another id) takes the new log from its first message."""
    from llmpulse.detectors.testing import synthetic_events
    from llmpulse.streams.testing import grouped_messages

    messages = grouped_messages(synthetic_events(400, seed=5, rate=10), chunk=50)
    _, store, agents, _, _ = _agents(tmp_path, log_id="cluster-a")
    try:
        assert await agents.take(messages) == len(messages)
        agents._save()
        await agents.close()
    finally:
        store.close()
    _, store, agents, _, _ = _agents(tmp_path, log_id=restart_log)
    try:
        assert agents.engine.stats()["events_in"] == 400  # the engine state is kept either way
        taken = await agents.take(messages)
        if restart_log == "cluster-b":  # a new log numbering from 0 again: nothing skipped
            assert agents.counters["positions_dropped"] == 1
            assert taken == len(messages) and agents.counters.get("replay_skipped", 0) == 0
            assert agents.engine.stats()["events_in"] == 800
        else:  # the same log (or not known to differ): the replay is skipped
            assert agents.counters.get("positions_dropped", 0) == 0
            assert taken == 0 and agents.counters["replay_skipped"] == len(messages)
            assert agents.engine.stats()["events_in"] == 400
        await agents.close()
    finally:
        store.close()


class _Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def _slow_engine(clock: _Clock):
    """An in-process engine whose latency detector takes two minutes of (fake)
    wall time per window, as a detector on an overloaded core would."""
    from llmpulse.detectors.base import Detector
    from llmpulse.detectors.latency import ErrorRates
    from llmpulse.streams.engine import SignalEngine
    from llmpulse.streams.engine_process import LocalEngine

    class SlowErrorRates(ErrorRates):
        def update(self, batch):
            clock.t += 120.0
            return super().update(batch)

    engine = LocalEngine(engine_kwargs={}, detectors="default")
    factories: dict[str, Any] = {"latency": lambda: [SlowErrorRates()]}
    engine.engine = SignalEngine(factories, clock=clock, idle_s=30.0)
    assert isinstance(engine.engine.detectors["latency"]()[0], Detector)
    return engine


@pytest.mark.parametrize("lagging", [True, False])
async def test_overload_delays_windows_and_loses_no_event(tmp_path: Path, lagging: bool) -> None:
    """Ten minutes of events from two source partitions, read in small batches
    behind a detector that takes two minutes a window: while the consumer is
    behind its partitions' end, silence is lag, not idleness, so every event
    lands in its window. Idleness from silence alone (``lagging=False``: the
    old rule) turns the backlog into late events, which is what this guards."""
    from llmpulse.detectors.testing import synthetic_events
    from llmpulse.streams.testing import drive_signal_agents, grouped_messages

    events = synthetic_events(1200, seed=9, rate=2)
    messages = grouped_messages(events, sources=2, chunk=20)
    settings, store, agents, sink, topic = _agents(tmp_path)
    try:
        clock = _Clock()  # the configured engine (in-process, idle) is replaced
        agents.engine = _slow_engine(clock)
        signals = await drive_signal_agents(agents, messages, batch=2, lag=lagging)
        stats = agents.engine.stats()
    finally:
        store.close()
    rates = [s for s in signals if s.signal == "errors.rate"]
    if lagging:
        assert stats["late_dropped"] == 0
        assert sum(s.n for s in rates) == len(events) == stats["events_in"]
    else:
        assert stats["late_dropped"] > 0
        assert sum(s.n for s in rates) < len(events)


@pytest.mark.parametrize("stop", ["save", "flush"])
async def test_a_clean_stop_saves_the_open_windows_or_flushes_them_as_configured(
        tmp_path: Path, stop: str) -> None:
    """A worker stopped mid-window and started again on the same data directory:
    with ``signals.stop: save`` the stop emits nothing and the restarted agents
    close the windows with every event, exactly as one undisturbed run; with
    ``flush`` the stop emits the open windows as they stand (partial)."""
    from llmpulse.detectors.testing import synthetic_events
    from llmpulse.streams.engine_process import LocalEngine
    from llmpulse.streams.signals import engine_config
    from llmpulse.streams.testing import canonical, drive_signal_agents, grouped_messages

    messages = grouped_messages(synthetic_events(1200, seed=6, rate=10), sources=2, chunk=50)
    half = len(messages) // 2
    settings, store, agents, sink, _ = _agents(tmp_path, stop=stop)
    at_stop: list[Any] = []
    try:
        first = await drive_signal_agents(agents, messages[:half], batch=4, flush=False)
        agents.consumers.append(lambda s: _collect(at_stop, s))
        await agents.stop()
    finally:
        store.close()
    settings, store, agents, sink, _ = _agents(tmp_path, stop=stop)
    try:
        second = await drive_signal_agents(agents, messages[half:], batch=4)
        late = agents.engine.stats()["late_dropped"]
        events_in = agents.engine.stats()["events_in"]
        await agents.close()
    finally:
        store.close()
    engine_kwargs, detectors = engine_config(settings)
    expected = run_engine_once(engine_kwargs, detectors, messages, LocalEngine)
    if stop == "save":
        assert at_stop == []  # nothing closed at the stop
        assert late == 0 and events_in == 1200  # the counters travel with the state
        assert canonical(first + second) == canonical(expected)
    else:
        assert at_stop  # the open windows, closed early
        assert canonical(first + at_stop + second) != canonical(expected)


async def _collect(into: list[Any], signals: list[Any]) -> None:
    into.extend(signals)


def run_engine_once(engine_kwargs: dict[str, Any], detectors: dict[str, Any],
                    messages: list[Any], engine_cls: Any) -> list[Any]:
    from llmpulse.streams.testing import run_engine

    return run_engine(engine_cls(engine_kwargs=engine_kwargs, detectors=detectors), messages)


def test_signals_stop_is_checked_at_load_naming_the_key(tmp_path: Path) -> None:
    from llmpulse.config import ConfigError

    def load(text: str) -> Any:
        path = tmp_path / "llmpulse.yaml"
        path.write_text(text)
        return load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=path)

    assert load("signals: {}\n").signals.stop == "flush"
    assert load("signals:\n  stop: save\n").signals.stop == "save"
    for bad in ("drain", "1", "true"):
        with pytest.raises(ConfigError, match=r"^signals\.stop: must be"):
            load(f"signals:\n  stop: {bad}\n")


def test_the_join_horizon_reaches_the_engine_and_is_checked(tmp_path: Path) -> None:
    """``signals.join_horizon_s`` bounds how much traffic the feedback join holds: it
    reaches the engine's join, and a horizon shorter than a window is refused."""
    from llmpulse.config import ConfigError
    from llmpulse.streams.engine_process import new_engine
    from llmpulse.streams.signals import engine_config

    def load(text: str) -> Any:
        path = tmp_path / "llmpulse.yaml"
        path.write_text(text)
        return load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=path)

    kwargs, detectors = engine_config(load("signals:\n  join_horizon_s: 300\n"))
    assert new_engine(kwargs, detectors).horizon_s == 300.0
    assert engine_config(load("signals: {}\n"))[0]["horizon_s"] == 3600.0
    with pytest.raises(ConfigError, match=r"^signals\.join_horizon_s: must be at least"):
        load("signals:\n  join_horizon_s: 30\n")
    with pytest.raises(ConfigError, match=r"^signals\.join_horizon_s: must be float"):
        load("signals:\n  join_horizon_s: soon\n")
