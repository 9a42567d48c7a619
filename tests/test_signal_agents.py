"""The signal agents' lifecycle on a real Faust app object (no broker needed to build it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from llmpulse.config import load_settings
from llmpulse.store import Store
from streams.app import new_faust_app, store_sink
from streams.signals import SignalAgents


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
