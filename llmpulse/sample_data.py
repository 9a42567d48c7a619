"""Sample rows for every table: the simulator's events plus the dashboards' synthetic rows.

What the dashboard tests, the report and the browser check fill a store
with: the seeded :class:`~llmpulse.simulate.SupportAppSimulator` (a latency
spike and an error burst) drives :func:`llmpulse.dashboards.testing.fill_rows`.

>>> rows = fill_rows(seed=1, start_ts=1_700_000_000.0, duration_s=60, rate=5)
>>> sorted(rows), len(rows["inference_events"]) > 250
(['alerts', 'audit_events', 'deadletter_events', 'deployments', 'feedback_events', 'inference_events', 'signals', 'spans'], True)
"""

from __future__ import annotations

from typing import Any

from llmpulse.dashboards import testing
from llmpulse.simulate import Incident, SupportAppSimulator

__all__ = ["fill_rows", "fill_store", "simulated_events"]


def simulated_events(seed: int = 0, start_ts: float = 1_700_000_000.0, duration_s: float = 600.0,
                     rate: float = 20.0) -> list[tuple[str, dict[str, Any]]]:
    """``(topic, event)`` pairs of the support app, with a latency spike and an error burst."""
    incidents = [Incident("latency_spike", duration_s * 0.3, duration_s * 0.5),
                 Incident("error_burst", duration_s * 0.6, duration_s * 0.7)]
    sim = SupportAppSimulator(seed=seed, rate=rate, start_ts=start_ts, incidents=incidents)
    return list(sim.events(duration_s))


def fill_rows(seed: int = 0, start_ts: float = 1_700_000_000.0, duration_s: float = 600.0,
              rate: float = 20.0, window_s: float = 30.0) -> dict[str, list[dict[str, Any]]]:
    """Rows for every table, keyed by table name (``ts`` in epoch seconds)."""
    events = simulated_events(seed, start_ts, duration_s, rate)
    return testing.fill_rows(events, seed=seed, start_ts=start_ts, duration_s=duration_s,
                             window_s=window_s)


def fill_store(store: Any, *, seed: int = 0, start_ts: float = 1_700_000_000.0,
               duration_s: float = 600.0, rate: float = 20.0,
               window_s: float = 30.0) -> dict[str, int]:
    """Insert :func:`fill_rows` into an open :class:`~llmpulse.store.Store`; rows per table."""
    rows = fill_rows(seed=seed, start_ts=start_ts, duration_s=duration_s, rate=rate,
                     window_s=window_s)
    return {table: store.insert_rows(table, table_rows) for table, table_rows in rows.items()}
