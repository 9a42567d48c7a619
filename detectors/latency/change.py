"""Online change detection on latency: "it just got slower", no fixed threshold.

:class:`LogLatencyChange` is a :class:`~llmpulse.detectors.base.ChangeDetector`
(``update(latency_ms)`` then read ``drift_detected``) that wraps river's
``PageHinkley`` (default) or ``ADWIN`` on *standardised log-latency*:

1. ``log`` because latency is multiplicative (a slowdown is "2x", whatever
   the baseline) and close to log-normal, so log-latency is close to normal;
2. standardised by the median and MAD of the first ``warmup`` values of each
   regime, so one calibration works for apps with tight or wide latency
   spreads (the MAD ignores the timeouts that would inflate a std);
3. fed to the river detector; after a detection the detector and the
   baseline are rebuilt from the next ``warmup`` values (the new regime).

:class:`LatencyChange` is the window :class:`~llmpulse.detectors.base.Detector`: it
feeds each window's latencies in event-time order and emits
``latency.change`` = 1.0 when a change was detected in the window (nothing
otherwise), with the detector name, the position and event time of the
detection, the baseline median before and the median of the ``after_span``
events up to the detection.

Calibration (Page-Hinkley on z-scores clipped to +-3, ``mode="up"``,
``delta=0.25``, ``threshold=50``, ``alpha=1``, ``warmup=100``). In units of
the baseline spread a 2x slowdown is a shift of ``ln 2 / sigma``: 1.39 for
sigma = 0.5 (the synthetic stream), 0.69 for a wide sigma = 1. The PH
statistic then grows by about ``shift - delta`` per event, so detection
takes ``threshold / (shift - delta)`` events: ~45 (sigma 0.5) to ~115
(sigma 1). Under no change it is a random walk with drift ``-delta``, whose
excursions above ``threshold`` have probability of order
``exp(-2 delta threshold) = exp(-25)``. Two choices differ from river's
defaults, both measured:

* ``alpha=1`` (no fading): with river's ``alpha=0.9999`` the cumulative sum
  becomes an AR(1) process with a standard deviation of ~70 z-units that
  wanders above its running minimum by more than any useful threshold:
  19 false alarms in 5 x 100k healthy events;
* clipping z at +-3: log-latency with heavier tails than the normal
  (Student t, 3 degrees of freedom) gave 7 false alarms in 5 x 100k events
  unclipped and 0 clipped, while a 2x slowdown (all values shifted) is
  detected only a few events later.

Measured with these defaults (seeded; figures reproduced by the
``detectors_latency`` benchmark and in tests/detectors/test_latency.py):
0 false alarms in 10 x 105k healthy log-normal events for sigma 0.5 and
1.0; a 2x slowdown after 500 or 5,000 healthy events detected after a median
of 43 events (max 62) for sigma 0.5 and 102 (max 216) for sigma 1.0.
``method="adwin"`` (river ``ADWIN``, ``adwin_delta=1e-5``, same z-scores) is
an alternative without a shift model: 0 false alarms on the same streams,
median delays 49 and 113 events (max 75 and 203); it sees changes in either
direction, filtered to increases when ``mode="up"``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.lognormal(6.0, 0.5, 5000), 2 * rng.lognormal(6.0, 0.5, 1000)])
>>> LogLatencyChange().update_many(x)
[5042]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from river import drift

from llmpulse.detectors.base import Batch, ChangeDetector, Detector, Signal

__all__ = ["LatencyChange", "LogLatencyChange"]

_MAD_TO_SD = 1.482602218505602
_FLOOR_MS = 1e-3


class LogLatencyChange(ChangeDetector):
    """Page-Hinkley (or ADWIN) on standardised log-latency; feed milliseconds.

    After a detection, ``baseline_ms`` is the median latency of the regime
    that just ended and ``direction`` is ``"up"`` or ``"down"``.

    >>> d = LogLatencyChange(warmup=50)
    >>> for x in [100.0] * 49 + [110.0]:
    ...     d.update(x)
    >>> d.warming_up, round(d.baseline_ms, 1)
    (False, 100.0)
    """

    def __init__(
        self,
        method: str = "page_hinkley",
        *,
        mode: str = "up",
        warmup: int = 100,
        delta: float = 0.25,
        threshold: float = 50.0,
        alpha: float = 1.0,
        adwin_delta: float = 1e-5,
        clip: float | None = 3.0,
    ) -> None:
        if method not in ("page_hinkley", "adwin"):
            raise ValueError(f"method: expected 'page_hinkley' or 'adwin', got {method!r}")
        if mode not in ("up", "both"):
            raise ValueError(f"mode: expected 'up' or 'both', got {mode!r}")
        if warmup < 10:
            raise ValueError(f"warmup: need at least 10 values, got {warmup}")
        self.method = method
        self.mode = mode
        self.warmup = int(warmup)
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.adwin_delta = float(adwin_delta)
        self.clip = None if clip is None else float(clip)
        self.drift_detected = False
        self.direction = ""
        self.baseline_ms = float("nan")
        self.n_seen = 0
        self.hit_baselines_ms: list[float] = []
        self._buffer: list[float] = []
        self._center = 0.0
        self._scale = 1.0
        self._ready = False
        self._detector: Any = self._make()

    def _make(self) -> Any:
        if self.method == "adwin":
            return drift.ADWIN(delta=self.adwin_delta)
        return drift.PageHinkley(
            min_instances=30,
            delta=self.delta,
            threshold=self.threshold,
            alpha=self.alpha,
            mode="up" if self.mode == "up" else "both",
        )

    @property
    def warming_up(self) -> bool:
        return not self._ready

    @property
    def name(self) -> str:
        return "PageHinkley" if self.method == "page_hinkley" else "ADWIN"

    def update(self, x: float) -> None:
        self.update_many([x])

    def update_many(self, xs: Iterable[float]) -> list[int]:
        """Consume latencies in order; positions where a change was detected.

        Same result as calling :meth:`update` on each value, without the
        per-value Python overhead of the wrapper (the river detector still
        sees every value).
        """
        arr = xs if isinstance(xs, np.ndarray) else np.fromiter(xs, dtype=np.float64)
        y = np.log(np.maximum(np.asarray(arr, dtype=np.float64), _FLOOR_MS))
        hits: list[int] = []
        self.hit_baselines_ms = []
        self.drift_detected = False
        n = y.size
        self.n_seen += n
        i = 0
        while i < n:
            if self.warming_up:
                take = min(self.warmup - len(self._buffer), n - i)
                self._buffer.extend(y[i : i + take].tolist())
                i += take
                if len(self._buffer) < self.warmup:
                    break
                base = np.asarray(self._buffer)
                self._buffer = []
                self._set_baseline(base)
                pos = self._feed(self._z(base))
                if pos >= 0:
                    # The change happened inside the warm-up: report it where it
                    # fired and warm up again on what followed it.
                    hits.append(max(0, i - self.warmup + pos))
                    self.hit_baselines_ms.append(self.baseline_ms)
                    self._restart()
                    self._buffer = base[pos + 1 :].tolist()
                continue
            pos = self._feed(self._z(y[i:]))
            if pos < 0:
                break
            hits.append(i + pos)
            self.hit_baselines_ms.append(self.baseline_ms)
            i += pos + 1
            self._restart()
        self.drift_detected = bool(hits) and hits[-1] == n - 1
        return hits

    def _z(self, y: np.ndarray) -> np.ndarray:
        z = (y - self._center) / self._scale
        if self.clip is not None:
            np.clip(z, -self.clip, self.clip, out=z)
        return z

    def _set_baseline(self, base: np.ndarray) -> None:
        self._center = float(np.median(base))
        mad = float(np.median(np.abs(base - self._center))) * _MAD_TO_SD
        self._scale = mad if mad > 1e-9 else max(float(base.std()), 1e-6)
        self.baseline_ms = float(np.exp(self._center))
        self._ready = True

    def _feed(self, z: np.ndarray) -> int:
        """Feed z-scores to the river detector; index of the first accepted detection, or -1."""
        det = self._detector
        for j, v in enumerate(z.tolist()):
            det.update(v)
            if det.drift_detected:
                # Direction from the data, not the detector's internals: the
                # recent values against the baseline centre (z = 0).
                recent = z[max(0, j - 49) : j + 1]
                self.direction = "up" if float(recent.mean()) > 0 else "down"
                if self.mode == "up" and self.direction != "up":
                    continue
                return j
        return -1

    def _restart(self) -> None:
        self._detector = self._make()
        self._buffer = []
        self._ready = False


class LatencyChange(Detector):
    """Window detector: ``latency.change`` = 1.0 when latency changed in the window.

    State (the online detector) carries over between windows and survives
    :meth:`snapshot` / :meth:`restore`.

    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> d = LatencyChange()
    >>> [len(d.update(synthetic_batch(1000, seed=s, start=1e9 + 10 * s))) for s in range(3)]
    [0, 0, 0]
    >>> sig = d.update(synthetic_batch(1000, seed=9, start=1e9 + 30, latency_scale=2.0))[0]
    >>> sig.signal, sig.value, sig.detail["position"] < 300, round(sig.detail["ratio"], 1)
    ('latency.change', 1.0, True, 2.0)
    """

    signals = ("latency.change",)

    def __init__(
        self,
        method: str = "page_hinkley",
        *,
        mode: str = "up",
        warmup: int = 100,
        delta: float = 0.25,
        threshold: float = 50.0,
        alpha: float = 1.0,
        adwin_delta: float = 1e-5,
        clip: float | None = 3.0,
        after_span: int = 50,
    ) -> None:
        self.method = method
        self.mode = mode
        self.warmup = warmup
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.adwin_delta = adwin_delta
        self.clip = clip
        self.after_span = int(after_span)
        self._online = LogLatencyChange(
            method,
            mode=mode,
            warmup=warmup,
            delta=delta,
            threshold=threshold,
            alpha=alpha,
            adwin_delta=adwin_delta,
            clip=clip,
        )

    def update(self, batch: Batch) -> list[Signal]:
        lat = batch.numeric("latency_ms")
        ts = batch.numeric("ts")
        keep = ~np.isnan(lat)
        lat, ts = lat[keep], ts[keep]
        order = np.argsort(ts, kind="stable")
        lat, ts = lat[order], ts[order]
        hits = self._online.update_many(lat)
        out: list[Signal] = []
        if not hits:
            return out
        # One signal per window: the first detection is the one that matters for paging;
        # later ones are listed.
        pos = hits[0]
        # The baseline in force when the first hit fired (the online detector has since re-warmed).
        baseline = self._online.hit_baselines_ms[0]
        recent = lat[max(0, pos - self.after_span + 1) : pos + 1]
        after = float(np.median(recent))
        detail = {
            "detector": self._online.name,
            "position": int(pos),
            "ts": float(ts[pos]),
            "median_before_ms": float(baseline),
            "median_after_ms": after,
            "ratio": after / float(baseline) if baseline > 0 else None,
            "direction": "up" if after >= baseline else "down",
            "detections": [int(h) for h in hits],
            "n": int(lat.size),
        }
        out.append(
            batch.signal("latency.change", 1.0, n=int(lat.size), dimension="", detail=detail)
        )
        return out
