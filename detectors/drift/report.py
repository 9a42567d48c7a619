"""Evidently data-drift reports for windows that crossed a drift threshold.

Pass an :class:`EvidentlyDriftReport` as ``reporter=`` to a window drift test
(:class:`PopulationStabilityIndex`, :class:`KolmogorovSmirnov`, ...). When a
signal crosses its threshold, the reporter runs Evidently's
``DataDriftPreset`` on that feature, window against reference, with the same
method as the signal, and saves::

    <directory>/reports/<YYYYmmddTHHMMSSZ>-<signal>-<dimension>.html
    <directory>/reports/<YYYYmmddTHHMMSSZ>-<signal>-<dimension>.json

``<YYYYmmddTHHMMSSZ>`` is the window end (UTC) and ``<dimension>`` the
feature with characters outside ``[A-Za-z0-9._=-]`` replaced by ``_``. The
HTML path goes into the signal's ``detail["report"]`` (the JSON, Evidently's
metrics, sits beside it).

A report takes a few hundred milliseconds, so it is built only on a crossing
and at most once per ``min_interval_s`` (default 3,600 s of event time) per
signal and feature; the clock is the window end, so nothing here reads the
wall clock. A failure to build a report is logged and the signal is sent
without one.

>>> import tempfile, numpy as np
>>> from llmpulse.detectors.base import Batch
>>> from llmpulse.detectors.drift.psi import PopulationStabilityIndex
>>> rng = np.random.default_rng(0)
>>> tmp = tempfile.mkdtemp()
>>> d = PopulationStabilityIndex(["latency_ms"], reporter=EvidentlyDriftReport(tmp))
>>> d.set_reference({"latency_ms": rng.normal(600, 100, 2000)})
>>> [s] = d.update(Batch({"latency_ms": rng.normal(700, 100, 500)}, start=1_700_000_000, end=1_700_000_060))
>>> s.detail["report"].removeprefix(tmp)
'/reports/20231114T221420Z-drift.psi-latency_ms.html'
>>> [s] = d.update(Batch({"latency_ms": rng.normal(700, 100, 500)}, start=1_700_000_060, end=1_700_000_120))
>>> "report" in s.detail  # rate-limited: the previous report is under an hour old
False
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EVIDENTLY_METHODS", "EvidentlyDriftReport"]

log = logging.getLogger(__name__)

EVIDENTLY_METHODS: dict[str, str] = {
    "drift.psi": "psi",
    "drift.ks": "ks",
    "drift.wasserstein": "wasserstein",
    "drift.jensen_shannon": "jensenshannon",
    "drift.chi_square": "chisquare",
}
"""Evidently's stat-test name for each drift signal."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


class EvidentlyDriftReport:
    """Builds and saves an Evidently drift report per threshold crossing, rate-limited."""

    def __init__(self, directory: str | Path, *, min_interval_s: float = 3600.0) -> None:
        self.directory = Path(directory)
        self.min_interval_s = float(min_interval_s)
        self.last: dict[str, float] = {}

    def path_for(self, *, signal: str, dimension: str, ts: float) -> Path:
        """Where the HTML report of ``signal`` on ``dimension`` at window end ``ts`` goes.

        >>> EvidentlyDriftReport("/data").path_for(signal="drift.ks", dimension="segment.language", ts=0.0)
        PosixPath('/data/reports/19700101T000000Z-drift.ks-segment.language.html')
        """
        stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.directory / "reports" / f"{stamp}-{signal}-{_UNSAFE.sub('_', dimension)}.html"

    def report(
        self,
        *,
        signal: str,
        dimension: str,
        ts: float,
        reference: np.ndarray,
        current: np.ndarray,
        kind: str,
    ) -> str | None:
        """Build and save the report unless one was built for this signal and
        feature less than ``min_interval_s`` ago; the HTML path, or ``None``."""
        key = f"{signal}|{dimension}"
        last = self.last.get(key)
        if last is not None and ts - last < self.min_interval_s:
            return None
        path = self.path_for(signal=signal, dimension=dimension, ts=ts)
        try:
            self._build(path, signal, dimension, reference, current, kind)
        except Exception:  # a report is a nicety; the signal must still go out
            log.exception("could not build the Evidently report for %s on %s", signal, dimension)
            return None
        self.last[key] = ts
        return str(path)

    def _build(
        self,
        path: Path,
        signal: str,
        dimension: str,
        reference: np.ndarray,
        current: np.ndarray,
        kind: str,
    ) -> None:
        # Imported here: evidently (and pandas) load in about a second and
        # most processes never build a report.
        import pandas as pd
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        if kind == "numeric":
            definition = DataDefinition(numerical_columns=[dimension])
        else:
            definition = DataDefinition(categorical_columns=[dimension])
        ref = Dataset.from_pandas(pd.DataFrame({dimension: reference}), data_definition=definition)
        cur = Dataset.from_pandas(pd.DataFrame({dimension: current}), data_definition=definition)
        method = EVIDENTLY_METHODS.get(signal)
        snapshot = Report([DataDriftPreset(method=method)]).run(cur, ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(path))
        snapshot.save_json(str(path.with_suffix(".json")))

    def snapshot(self) -> dict[str, Any]:
        """When each (signal, feature) last got a report, JSON-serialisable."""
        return {"last": dict(self.last)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`snapshot` wrote."""
        self.last = {str(k): float(v) for k, v in state["last"].items()}
