"""The alert state machine: signals in, ``alerts`` rows out.

For every rule that matches a signal, :class:`AlertManager` keeps one state
per alert key ``(rule, signal, app, model, model_version, dimension)`` (the
signal name is part of the key because a rule may match several, ``drift.*``)
and moves it

    ok --breach--> pending --(for windows)--> firing --(resolve_for healthy windows)--> resolved

* ``for``: consecutive breaching windows before firing; a healthy window, or
  a gap of more than :data:`MAX_GAP_WINDOWS` windows with no signal, resets
  the count (consecutive means consecutive).
* ``resolve_for``: consecutive healthy windows before a firing alert resolves;
  ``resolve_after`` also resolves it once no breach was seen for that long in
  the event time of the alert's own series (change detectors emit only on
  detection: that is how their alerts end; also ends alerts whose signal
  stopped while its family goes on). The series is the signal's family
  (``latency`` of ``latency.change``), app, model, version and window length:
  the windows one engine family closes in order. Other families' time does
  not count, so during a catch-up, when minute windows of one family run
  ahead of another's, the window that resolves an alert is the same as live.
* one open alert per key; ``cooldown`` seconds after a resolve before the key
  may fire again, and at most ``max_fires_per_hour`` fires per key in any hour
  of event time. A suppressed key stays pending and fires on the first
  breaching window after the suppression ends.
* windows with ``n < min_n`` (or a non-finite value) change nothing.

Time is the signals' event time (``Signal.ts``, the window end), never the
wall clock, so replays and tests are deterministic; a signal not newer than
the last one seen for its key (a replay after a restart) is ignored, with
one exception. Late feedback recomputes a window of the feedback join with
more labels (its signals carry ``detail.revision``); for those keys the
verdicts of the last :data:`HISTORY_WINDOWS` windows are kept, a recomputed
window's new verdict replaces its old one, and the windows since the key's
last transition are gone through again. A streak completed by a window that
was healthy on its first computation fires, at the window where it reached
``for``, whichever order the recomputations came in; a window first
ignored (fewer than ``min_n`` labels) counts once it has enough. A
transition already made stays made. Alert
ids are derived from the key and the start time, so a replayed alert is the
same row (the ``alerts`` table keeps the latest ``updated_at`` per id).

>>> from llmpulse.detectors.base import Signal
>>> from llmpulse.streams.rules import Rules
>>> rules = Rules.from_yaml('''
... rules:
...   - {name: p99, signal: latency.p99_ms, op: ">", threshold: 4000, for: 2, resolve_for: 2,
...      severity: critical}
... ''')
>>> am = AlertManager(rules)
>>> def window(end, value):
...     return Signal("latency.p99_ms", value, n=600, ts=end, window_s=60.0,
...                   app="support", model="gpt", model_version="1")
>>> for end, value in [(60, 5000), (120, 5200), (180, 900), (240, 800)]:
...     for ev in am.process(window(end, value)):
...         print(end, ev.kind, ev.row["state"], ev.row["started_at"], ev.row["value"], ev.row["summary"])
120 firing firing 0.0 5200.0 latency.p99_ms = 5200 > 4000 on support/gpt@1
240 resolved resolved 0.0 800.0 latency.p99_ms = 5200 > 4000 on support/gpt@1
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

from llmpulse.detectors.base import Signal
from llmpulse.streams.rules import Rule, Rules, Verdict

__all__ = [
    "AlertEvent", "AlertKey", "AlertLinker", "AlertManager", "GroupFilter", "HISTORY_WINDOWS",
    "MAX_GAP_WINDOWS", "Series",
    "alert_key_id", "series_of",
]

AlertKey = tuple[str, str, str, str, str, str]
"""``(rule, signal, app, model, model_version, dimension)``."""

GroupFilter = Callable[[str, str, str], bool]
"""Selects groups by ``(app, model, model_version)``: whose states :meth:`AlertManager.export`
and :meth:`AlertManager.drop` take."""

Series = tuple[str, str, str, str, float]
"""``(family, app, model, model_version, window_s)``: whose event time resolves an alert."""


def series_of(signal: str, app: str, model: str, model_version: str, window_s: float) -> Series:
    """The series a signal belongs to.

    >>> series_of("latency.change", "support", "gpt", "1", 10.0)
    ('latency', 'support', 'gpt', '1', 10.0)
    """
    return (signal.split(".", 1)[0], app, model, model_version, float(window_s))

MAX_GAP_WINDOWS = 2.5
"""A pending streak breaks when no window of its key arrived for this many
window lengths: missing windows are not evidence of a lasting breach."""

HISTORY_WINDOWS = 64
"""Verdicts kept per key of a signal whose windows are computed again (the feedback
join's, marked ``detail.revision``): a recomputed window among them counts with its new
verdict; an older one changes nothing."""

SWEEP_EVERY = 10_000
"""Signals between two sweeps of the keys kept for their windows (:meth:`AlertManager._sweep`)."""

_HOUR = 3600.0


def alert_key_id(key: AlertKey) -> str:
    """A stable id of an alert key (PagerDuty ``dedup_key``, notifier dedup).

    >>> alert_key_id(("p99", "latency.p99_ms", "support", "gpt", "1", ""))
    'llmpulse-2d097c5ce3f67ab677fdfa3c'
    """
    return "llmpulse-" + hashlib.sha1("\x1f".join(key).encode()).hexdigest()[:24]


class AlertLinker(Protocol):
    """The links of an alert, from the folder that serves them (see ``AlertManager``)."""

    def dashboard(self, key: Mapping[str, str], start: float, end: float) -> str: ...

    def runbook(self, signal: str, dimension: str = "") -> str | None: ...

    def report(self, path: str) -> str: ...


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A transition of one alert: ``kind`` is ``firing`` or ``resolved``,
    ``row`` the ``alerts`` table row (``detail`` as JSON text)."""

    kind: str
    row: dict[str, Any]
    rule: Rule
    key: AlertKey

    @property
    def dedup_key(self) -> str:
        return alert_key_id(self.key)

    @property
    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.row["detail"])
        return out


@dataclass
class _State:
    breaches: int = 0
    healthy: int = 0
    last_ts: float = -math.inf
    streak_start: float | None = None
    values: list[list[float]] = field(default_factory=list)  # [ts, value, n] of the streak
    last_breach_ts: float | None = None
    report: str = ""
    signal_detail: dict[str, Any] = field(default_factory=dict)
    alert: dict[str, Any] | None = None  # the open alert's row, detail as a mapping
    resolved_at: float | None = None
    fires: list[float] = field(default_factory=list)
    # [ts, breached (0 or 1), value, n, window_s, detail] of the latest windows, oldest
    # first, for a key whose windows are computed again (``detail.revision``); None for
    # the others. ``detail`` is the window's own signal detail (scalars) if it breached,
    # else None
    history: list[list[Any]] | None = None
    # event times of the kept windows already counted as a suppressed fire, so that going
    # through them again does not count them twice
    suppressed: list[float] = field(default_factory=list)

    def idle(self, ts: float, rule: Rule) -> bool:
        """Nothing to remember: quiet, and no windows that may be computed again."""
        return self.quiet(ts, rule) and self.history is None

    def quiet(self, ts: float, rule: Rule) -> bool:
        """No streak, no open alert, no cooldown or fire history at event time ``ts``."""
        return (
            self.breaches == 0
            and self.alert is None
            and (self.resolved_at is None or ts >= self.resolved_at + rule.cooldown)
            and not any(ts - f < _HOUR for f in self.fires)
        )

    def stale(self, ts: float) -> bool:
        """Whether the kept windows are all too old to be computed again at ``ts``
        (:data:`HISTORY_WINDOWS` window lengths after the newest)."""
        if not self.history:
            return True
        last = self.history[-1]
        return ts > last[0] + HISTORY_WINDOWS * max(last[4], 1.0)


class AlertManager:
    """Turns signals into alert events; see the module docstring.

    ``dashboard_url`` (default: the rules file's ``links.dashboard``) is the
    base of the dashboard link on every alert, with Grafana-style query
    parameters: ``var-signal``, ``var-app``, ``var-model``,
    ``var-model_version``, ``var-dimension`` and ``from``/``to`` in epoch
    milliseconds, ``link_padding_s`` around the alert's window.
    ``keep_values`` breaching values are kept on each alert.
    ``linker`` (an :class:`AlertLinker`, given by the composition root: the
    dashboards' own links) replaces that generic link with the panel that
    shows the signal, gives rules without a ``runbook`` the shipped runbook
    of their signal, and turns a drift report's path into its URL.
    """

    def __init__(
        self,
        rules: Rules,
        *,
        dashboard_url: str | None = None,
        keep_values: int = 10,
        link_padding_s: float = 1800.0,
        linker: AlertLinker | None = None,
    ) -> None:
        self.rules = rules
        self.linker = linker
        self.dashboard_url = (rules.dashboard_url if dashboard_url is None else dashboard_url).rstrip("/")
        self.keep_values = keep_values
        self.link_padding_s = link_padding_s
        self._states: dict[AlertKey, _State] = {}
        self._open_timed: set[AlertKey] = set()  # open alerts of rules with resolve_after
        self._clocks: dict[Series, float] = {}  # event time of each series
        self.watermark = -math.inf  # moved by advance() alone: a floor for every series
        self._latest: dict[str, float] = {}  # the newest signal's event time, per app
        self._since_sweep = 0
        self.counters: dict[str, int] = dict.fromkeys(
            ("signals", "matched", "ignored", "replayed", "recomputed", "recomputed_breach", "fired",
             "resolved", "suppressed_cooldown", "suppressed_rate", "swept"), 0)

    # -- the stream ------------------------------------------------------------

    def process(self, signal: Signal) -> list[AlertEvent]:
        """Alert events caused by one signal (usually none)."""
        self.counters["signals"] += 1
        if signal.ts > self._latest.get(signal.app, -math.inf):
            self._latest[signal.app] = signal.ts
        self._since_sweep += 1
        if self._since_sweep >= SWEEP_EVERY:
            self._sweep()
        events: list[AlertEvent] = []
        for rule in self.rules.matching(signal):
            self.counters["matched"] += 1
            events += self._observe(rule, signal)
        series = series_of(signal.signal, signal.app, signal.model, signal.model_version,
                           signal.window_s)
        if signal.ts > self._clocks.get(series, -math.inf):
            self._clocks[series] = signal.ts
        events.extend(self._resolve_quiet(series))
        return events

    def _sweep(self) -> None:
        """Forget the keys kept only for their windows once those are too old to be
        computed again and the key is quiet: a group that stopped (a retired model
        version) leaves nothing behind. "Now" is the newest signal of the key's own app,
        so an app replaying old data beside a live one keeps its keys; an app that
        stopped altogether keeps them too (a bounded few per app)."""
        self._since_sweep = 0
        for key in list(self._states):
            st = self._states[key]
            now = self._latest.get(key[2], -math.inf)
            if st.history is None or not st.stale(now):
                continue
            rule = self.rules.get(key[0])
            if rule is None or st.quiet(now, rule):
                del self._states[key]
                self.counters["swept"] += 1

    def process_many(self, signals: Iterable[Signal]) -> list[AlertEvent]:
        return [ev for s in signals for ev in self.process(s)]

    def advance(self, ts: float) -> list[AlertEvent]:
        """Move every series' event time to at least ``ts`` (end of a replay, a
        timer): resolves alerts past their ``resolve_after``."""
        if ts > self.watermark:
            self.watermark = ts
        return self._resolve_quiet(None)

    def _resolve_quiet(self, series: Series | None) -> list[AlertEvent]:
        """Resolve the open alerts of ``series`` (``None``: all) whose
        ``resolve_after`` has passed in their series' event time."""
        if not self._open_timed:
            return []
        events = []
        for key in sorted(self._open_timed):
            rule = self.rules.get(key[0])
            st = self._states.get(key)
            if rule is None or st is None or st.alert is None or st.last_breach_ts is None:
                self._open_timed.discard(key)
                continue
            own = series_of(key[1], key[2], key[3], key[4], st.alert["detail"]["window_s"])
            if series is not None and own != series:
                continue
            now = max(self._clocks.get(own, -math.inf), self.watermark)
            after = rule.effective_resolve_after
            if after is not None and now >= st.last_breach_ts + after:
                at = st.last_breach_ts + after
                events.append(self._resolve(rule, key, st, at, None, f"no breach for {after:g} s"))
        return events

    def _observe(self, rule: Rule, s: Signal) -> list[AlertEvent]:
        key: AlertKey = (rule.name, s.signal, s.app, s.model, s.model_version, s.dimension)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = _State()
        if st.history is None and "revision" in s.detail:
            st.history = []
        if s.ts <= st.last_ts:
            return self._revise(rule, key, st, s)
        verdict = rule.evaluate(s)
        if verdict is Verdict.IGNORED:
            self.counters["ignored"] += 1
            return []
        gap = s.ts - st.last_ts
        st.last_ts = s.ts
        if st.history is not None:
            st.history.append(_entry(s, verdict))
            del st.history[:-HISTORY_WINDOWS]
        if st.alert is None and s.window_s > 0 and gap > MAX_GAP_WINDOWS * s.window_s:
            st.breaches = 0
        event = self._healthy(rule, key, st, s) if verdict is not Verdict.BREACH \
            else self._breach(rule, key, st, s)
        if st.idle(s.ts, rule):
            del self._states[key]
        return [event] if event is not None else []

    def _healthy(self, rule: Rule, key: AlertKey, st: _State, s: Signal) -> AlertEvent | None:
        st.breaches = 0
        if st.alert is not None:
            st.healthy += 1
            if st.healthy >= rule.resolve_for:
                return self._resolve(rule, key, st, s.ts, float(s.value),
                                     f"{st.healthy} healthy window(s)")
        else:
            st.values = []
            st.streak_start = None
        return None

    def _revise(self, rule: Rule, key: AlertKey, st: _State, s: Signal) -> list[AlertEvent]:
        """A window not newer than the key's latest: a replay after a restart (ignored),
        or, for a key whose windows are computed again, a window recomputed with more
        feedback. A new verdict on one of the key's last :data:`HISTORY_WINDOWS` windows
        replaces the old one, and the key's windows since its last transition are gone
        through again: a streak the recomputed window now completes fires (at the window
        where it reached ``for``), one it breaks no longer counts."""
        hist = st.history
        verdict = rule.evaluate(s)
        if not hist or s.ts < hist[0][0] or verdict is Verdict.IGNORED:
            # too old to recompute, or fewer inputs than counted before: what was counted stays
            self.counters["replayed"] += 1
            return []
        entry = _entry(s, verdict)
        breached = entry[1]
        i = bisect.bisect_left(hist, s.ts, key=lambda e: e[0])
        if i < len(hist) and hist[i][0] == s.ts:
            same = hist[i][1] == breached
            hist[i] = entry
            if same:
                self.counters["replayed"] += 1
                return []
        else:
            hist.insert(i, entry)  # first counted now (too few inputs before)
            del hist[:-HISTORY_WINDOWS]
        self.counters["recomputed"] += 1
        if breached:
            self.counters["recomputed_breach"] += 1
        return self._rerun(rule, key, st)

    def _rerun(self, rule: Rule, key: AlertKey, st: _State) -> list[AlertEvent]:
        """Go through the key's windows since its last transition again (the firing of
        its open alert, or the resolve of its last one), with their latest verdicts; each
        breaching window with its own signal detail."""
        assert st.history is not None
        if st.alert is not None:
            since = float(st.alert["detail"]["fired_at"])
            st.healthy = 0
        else:
            since = st.resolved_at if st.resolved_at is not None else -math.inf
        st.breaches = 0
        st.values = []
        st.streak_start = None
        events: list[AlertEvent] = []
        prev = -math.inf
        for ts, breached, value, n, window_s, *rest in list(st.history):
            if ts <= since:
                continue
            if st.alert is None and window_s > 0 and ts - prev > MAX_GAP_WINDOWS * window_s:
                st.breaches = 0
            prev = ts
            # entries saved before the detail was kept have none: the key's latest stands in
            detail = rest[0] if rest and rest[0] is not None else st.signal_detail
            w = Signal(key[1], value, n=int(n), dimension=key[5], ts=ts, window_s=window_s,
                       app=key[2], model=key[3], model_version=key[4], detail=detail)
            ev = self._breach(rule, key, st, w) if breached else self._healthy(rule, key, st, w)
            if ev is not None:
                events.append(ev)
        return events

    def _breach(self, rule: Rule, key: AlertKey, st: _State, s: Signal) -> AlertEvent | None:
        event: AlertEvent | None = None
        st.healthy = 0
        if st.breaches == 0:
            st.streak_start = s.ts - s.window_s
            st.values = []
        st.breaches += 1
        st.values = (st.values + [[s.ts, float(s.value), s.n]])[-self.keep_values:]
        st.last_breach_ts = s.ts
        st.signal_detail = _scalars(s.detail)
        if isinstance(s.detail.get("report"), str):
            st.report = s.detail["report"]
        if st.alert is not None:
            st.alert["value"] = float(s.value)
        elif st.breaches >= rule.for_:
            event = self._maybe_fire(rule, key, st, s)
        return event

    def _maybe_fire(self, rule: Rule, key: AlertKey, st: _State, s: Signal) -> AlertEvent | None:
        if st.resolved_at is not None and s.ts < st.resolved_at + rule.cooldown:
            self._suppressed("suppressed_cooldown", st, s.ts)
            return None
        st.fires = [f for f in st.fires if s.ts - f < _HOUR]
        if len(st.fires) >= rule.max_fires_per_hour:
            self._suppressed("suppressed_rate", st, s.ts)
            return None
        st.fires.append(s.ts)
        st.healthy = 0
        started = float(st.streak_start if st.streak_start is not None else s.ts - s.window_s)
        alert_id = hashlib.sha1(f"{alert_key_id(key)}|{started:.3f}".encode()).hexdigest()[:24]
        detail: dict[str, Any] = {
            "key": dict(zip(("rule", "signal", "app", "model", "model_version", "dimension"),
                            key, strict=True)),
            "dedup_key": alert_key_id(key),
            "op": rule.op if not rule.absolute else f"|x| {rule.op}",
            "threshold": rule.threshold,
            "change": rule.change,
            "for": rule.for_,
            "resolve_for": rule.resolve_for,
            "values": [{"ts": v[0], "value": v[1], "n": int(v[2])} for v in st.values],
            "window": {"start": started, "end": float(s.ts)},
            "n": int(s.n),
            "window_s": float(s.window_s),
            "fired_at": float(s.ts),
            "actions": list(rule.actions),
            "signal_detail": st.signal_detail,
        }
        row: dict[str, Any] = {
            "alert_id": alert_id,
            "rule": rule.name,
            "state": "firing",
            "severity": rule.severity,
            "app": s.app,
            "model": s.model,
            "model_version": s.model_version,
            "signal": s.signal,
            "dimension": s.dimension,
            "value": float(s.value),
            "threshold": rule.threshold,
            "started_at": started,
            "updated_at": float(s.ts),
            "resolved_at": None,
            "summary": rule.render_summary(s),
            "detail": detail,
        }
        detail["links"] = self._links(rule, key, started, float(s.ts), st.report)
        st.alert = row
        if rule.effective_resolve_after is not None:
            self._open_timed.add(key)
        self.counters["fired"] += 1
        return self._event("firing", row, rule, key)

    def _suppressed(self, counter: str, st: _State, ts: float) -> None:
        """Count a fire held back at window ``ts``, once per window even when the key's
        windows are gone through again."""
        if st.history:
            if ts in st.suppressed:
                return
            oldest = st.history[0][0]
            st.suppressed = [t for t in st.suppressed if t >= oldest] + [ts]
        self.counters[counter] += 1

    def _resolve(
        self, rule: Rule, key: AlertKey, st: _State, ts: float, value: float | None, why: str
    ) -> AlertEvent:
        assert st.alert is not None
        row = dict(st.alert)
        detail = dict(row["detail"])
        detail["resolution"] = why
        detail["links"] = self._links(rule, key, row["started_at"], ts, st.report)
        row.update(state="resolved", updated_at=float(ts), resolved_at=float(ts), detail=detail)
        if value is not None:
            row["value"] = value
        st.alert = None
        st.resolved_at = float(ts)
        st.breaches = st.healthy = 0
        st.values = []
        st.streak_start = None
        st.report = ""
        self._open_timed.discard(key)
        self.counters["resolved"] += 1
        return self._event("resolved", row, rule, key)

    @staticmethod
    def _event(kind: str, row: dict[str, Any], rule: Rule, key: AlertKey) -> AlertEvent:
        out = dict(row)
        out["detail"] = json.dumps(row["detail"], sort_keys=True, default=str)
        return AlertEvent(kind, out, rule, key)

    def _links(self, rule: Rule, key: AlertKey, start: float, end: float, report: str) -> dict[str, str]:
        links: dict[str, str] = {}
        if self.linker is not None:
            fields = ("rule", "signal", "app", "model", "model_version", "dimension")
            links["dashboard"] = self.linker.dashboard(dict(zip(fields, key, strict=True)),
                                                       start - self.link_padding_s,
                                                       end + self.link_padding_s)
            runbook = rule.runbook or self.linker.runbook(key[1], key[5])
            if runbook:
                links["runbook"] = runbook
            if report:
                links["report"] = self.linker.report(report)
            return links
        if self.dashboard_url:
            q = {
                "var-signal": key[1], "var-app": key[2], "var-model": key[3],
                "var-model_version": key[4],
            }
            if key[5]:
                q["var-dimension"] = key[5]
            q["from"] = str(int((start - self.link_padding_s) * 1000))
            q["to"] = str(int((end + self.link_padding_s) * 1000))
            links["dashboard"] = f"{self.dashboard_url}?{urlencode(q)}"
        if rule.runbook:
            links["runbook"] = rule.runbook
        if report:
            links["report"] = report
        return links

    # -- inspection and persistence -------------------------------------------------

    def open_alerts(self) -> list[dict[str, Any]]:
        """Rows of the alerts that are firing now (``detail`` as JSON text)."""
        out = []
        for key in sorted(self._states):
            st = self._states[key]
            if st.alert is not None:
                row = dict(st.alert)
                row["detail"] = json.dumps(row["detail"], sort_keys=True, default=str)
                out.append(row)
        return out

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "open": sum(1 for st in self._states.values() if st.alert is not None),
            "tracked_keys": len(self._states),
        }

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state, for :meth:`restore` after a worker restart."""
        return {
            "version": 1,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "clocks": [[*k, t] for k, t in sorted(self._clocks.items())],
            "states": [_state_item(k, st) for k, st in sorted(self._states.items())],
        }

    def export(self, group: GroupFilter) -> dict[str, Any]:
        """The state of the keys of the groups ``group(app, model, version)`` selects, in
        the form of :meth:`snapshot` (no watermark): what another manager takes in
        (:meth:`merge`) to continue those groups' alerts, as when a partition moves to
        another worker.

        >>> from llmpulse.detectors.base import Signal
        >>> from llmpulse.streams.rules import Rules
        >>> rules = Rules.from_yaml('rules: [{name: p99, signal: latency.p99_ms, op: ">", '
        ...                         'threshold: 4000, for: 2}]')
        >>> a, b = AlertManager(rules), AlertManager(rules)
        >>> def window(end, model):
        ...     return Signal("latency.p99_ms", 5000, n=600, ts=end, window_s=60.0,
        ...                   app="support", model=model, model_version="1")
        >>> a.process_many([window(60, "gpt"), window(60, "claude")])
        []
        >>> moved = a.export(lambda app, model, version: model == "gpt")
        >>> a.drop(lambda app, model, version: model == "gpt"), b.merge(moved)
        (1, 1)
        >>> [ev.row["started_at"] for ev in b.process(window(120, "gpt"))]  # the streak goes on
        [0.0]
        >>> a.stats()["tracked_keys"], a.process(window(120, "gpt"))  # a starts it over
        (1, [])
        """
        return {
            "version": 1,
            "clocks": [[*k, t] for k, t in sorted(self._clocks.items()) if group(k[1], k[2], k[3])],
            "states": [_state_item(k, st) for k, st in sorted(self._states.items())
                       if group(k[2], k[3], k[4])],
        }

    def merge(self, state: Mapping[str, Any]) -> int:
        """Take over the keys and series clocks of an :meth:`export`, replacing what this
        manager holds of the same keys and series (it may hold an older state of the
        groups, from when it last had them: :meth:`drop` them first to drop keys the
        export does not have); how many keys were taken. Emits nothing: the alerts go on
        from where the exporting manager left them. A malformed state (it comes from a
        topic) raises ValueError before anything is taken:

        >>> AlertManager(Rules.from_yaml("rules: []")).merge({"version": 1, "states": [{"key": ["p99"]}]})
        Traceback (most recent call last):
        ...
        ValueError: alert state key ['p99'] is not (rule, signal, app, model, model_version, dimension)

        A clock that is not a number fails before the states are taken:

        >>> m = AlertManager(Rules.from_yaml("rules: []"))
        >>> m.merge({"version": 1, "clocks": [["latency", "a", "m", "1", 10, 5.0],
        ...                                   ["latency", "a", "m", "2", 10, "soon"]]})
        Traceback (most recent call last):
        ...
        ValueError: could not convert string to float: 'soon'
        >>> m._clocks
        {}
        """
        if state.get("version") != 1:
            raise ValueError(f"unknown alert state version {state.get('version')!r}")
        for item in state.get("states", []):
            if not isinstance(item, Mapping) or not isinstance(item.get("key"), list) \
                    or len(item["key"]) != 6:
                raise ValueError(f"alert state key {item.get('key') if isinstance(item, Mapping) else item!r}"
                                 " is not (rule, signal, app, model, model_version, dimension)")
        # everything is read before anything is taken: a state that fails half-way
        # (a clock or a streak that is not a number) leaves this manager as it was
        clocks = {(str(f), str(a), str(m), str(v), float(w)): float(t)
                  for f, a, m, v, w, t in state.get("clocks", [])}
        loaded: list[tuple[AlertKey, Rule, _State]] = []
        for item in state.get("states", []):
            key: AlertKey = tuple(str(x) for x in item["key"])  # type: ignore[assignment]
            rule = self.rules.get(key[0])
            if rule is None:
                continue  # the rule is not in this manager's rule set
            loaded.append((key, rule, _load_state(item)))
        self._clocks.update(clocks)
        taken = 0
        for key, rule, st in loaded:
            self._states[key] = st
            self._open_timed.discard(key)
            if st.alert is not None and rule.effective_resolve_after is not None:
                self._open_timed.add(key)
            taken += 1
        return taken

    def drop(self, group: GroupFilter) -> int:
        """Forget the keys and series clocks of the groups ``group(app, model, version)``
        selects, emitting nothing (their open alerts included: the manager that took the
        groups over continues and resolves them); how many keys were dropped."""
        gone = [k for k in self._states if group(k[2], k[3], k[4])]
        for key in gone:
            del self._states[key]
            self._open_timed.discard(key)
        self._clocks = {k: t for k, t in self._clocks.items() if not group(k[1], k[2], k[3])}
        return len(gone)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot`; states of rules no longer in the rule set are dropped."""
        if state.get("version") != 1:
            raise ValueError(f"unknown alert state version {state.get('version')!r}")
        wm = state.get("watermark")
        self.watermark = -math.inf if wm is None else float(wm)
        self._clocks = {
            (str(f), str(a), str(m), str(v), float(w)): float(t)
            for f, a, m, v, w, t in state.get("clocks", [])
        }
        self._states.clear()
        self._open_timed.clear()
        for item in state.get("states", []):
            key: AlertKey = tuple(str(x) for x in item["key"])  # type: ignore[assignment]
            rule = self.rules.get(key[0])
            if rule is None:
                continue
            st = _load_state(item)
            self._states[key] = st
            if st.alert is not None and rule.effective_resolve_after is not None:
                self._open_timed.add(key)


def _state_item(key: AlertKey, st: _State) -> dict[str, Any]:
    return {"key": list(key), **{f: v for f, v in asdict(st).items() if f != "last_ts"},
            "last_ts": st.last_ts if math.isfinite(st.last_ts) else None}


_STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(_State))


def _load_state(item: Mapping[str, Any]) -> _State:
    # fields of older versions (``last_breached``, ``undo``) are left behind
    fields = {k: v for k, v in item.items() if k in _STATE_FIELDS}
    if fields.get("last_ts") is None:
        fields["last_ts"] = -math.inf
    return _State(**fields)


def _entry(s: Signal, verdict: Verdict) -> list[Any]:
    """A window's entry in a key's history."""
    breached = verdict is Verdict.BREACH
    return [s.ts, float(breached), float(s.value), float(s.n), float(s.window_s),
            _scalars(s.detail) if breached else None]


def _scalars(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The small facts of a signal's detail (worst examples and arrays stay out)."""
    out: dict[str, Any] = {}
    for k, v in detail.items():
        if isinstance(v, bool) or v is None:
            out[k] = v
        elif isinstance(v, (int, float)):
            out[k] = float(v) if isinstance(v, float) else int(v)
        elif isinstance(v, str) and len(v) <= 500:
            out[k] = v
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy scalar
            out[k] = v.item()
    return out
