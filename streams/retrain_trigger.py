"""Retrain requests from alerts whose rule has the ``retrain`` action.

A firing alert of such a rule becomes one request for topic
``llmpulse.retrain``: the model, the triggering alert and the data window to
train on (``window_s`` of event time up to the end of the alert's window,
24 h by default). While a request for a model is pending, further alerts on
that model request nothing: the retrain already under way answers them.
:meth:`RetrainTrigger.complete` (the retrain finished, promoted or rolled
back) or ``pending_ttl_s`` of event time (it was lost) clears the pending
request. Request ids derive from the alert id, so a replayed alert asks for
the same retrain.

>>> from llmpulse.detectors.base import Signal
>>> from llmpulse.streams.alerting import AlertManager
>>> from llmpulse.streams.rules import Rules
>>> rules = Rules.from_yaml('''
... rules:
...   - {name: drift, signal: "drift.*", op: ">=", threshold: 0.25, actions: [notify, retrain]}
... ''')
>>> am, trigger = AlertManager(rules), RetrainTrigger(window_s=3600)
>>> sig = Signal("drift.psi", 0.31, n=500, dimension="n_passages", ts=7200.0, window_s=300.0,
...              app="support", model="intent-router", model_version="1")
>>> [req] = [r for ev in am.process(sig) if (r := trigger.process(ev))]
>>> req["model"], req["rule"], req["window"], req["ts"]
('intent-router', 'drift', {'start': 3600.0, 'end': 7200.0}, 7200.0)
>>> later = Signal("drift.psi", 0.4, n=500, dimension="prompt_chars", ts=7500.0, window_s=300.0,
...                app="support", model="intent-router", model_version="1")
>>> [trigger.process(ev) for ev in am.process(later)]  # pending: no second request
[None]
>>> trigger.complete("intent-router")
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from llmpulse.streams.alerting import AlertEvent
from llmpulse.streams.rules import Rules

__all__ = ["TOPIC_RETRAIN", "RetrainTrigger"]

TOPIC_RETRAIN = "llmpulse.retrain"


class RetrainTrigger:
    """One retrain request per model at a time, from ``retrain`` alerts."""

    def __init__(self, *, window_s: float = 86400.0, pending_ttl_s: float = 6 * 3600.0) -> None:
        if window_s <= 0 or pending_ttl_s <= 0:
            raise ValueError("window_s and pending_ttl_s must be > 0")
        self.window_s = float(window_s)
        self.pending_ttl_s = float(pending_ttl_s)
        self._pending: dict[str, dict[str, Any]] = {}
        self.counters = {"requested": 0, "deduplicated": 0, "expired": 0, "completed": 0}

    @classmethod
    def from_rules(cls, rules: Rules) -> RetrainTrigger:
        """Window and pending TTL from the rules file's ``retrain`` section."""
        return cls(window_s=rules.retrain_window_s, pending_ttl_s=rules.retrain_pending_ttl_s)

    def process(self, event: AlertEvent) -> dict[str, Any] | None:
        """The retrain request ``event`` causes, if any."""
        if event.kind != "firing" or "retrain" not in event.rule.actions:
            return None
        row = event.row
        end = float(row["updated_at"])
        model = row["model"]
        pending = self._pending.get(model)
        if pending is not None:
            if pending["alert_id"] == row["alert_id"]:
                self.counters["deduplicated"] += 1
                return None
            if end < pending["ts"] + self.pending_ttl_s:
                self.counters["deduplicated"] += 1
                return None
            self.counters["expired"] += 1
        request = {
            "request_id": hashlib.sha1(f"retrain|{row['alert_id']}".encode()).hexdigest()[:24],
            "model": model,
            "model_version": row["model_version"],
            "app": row["app"],
            "alert_id": row["alert_id"],
            "rule": row["rule"],
            "signal": row["signal"],
            "window": {"start": end - self.window_s, "end": end},
            "ts": end,
        }
        self._pending[model] = request
        self.counters["requested"] += 1
        return request

    def complete(self, model: str) -> bool:
        """The retrain of ``model`` is over; True if a request was pending."""
        done = self._pending.pop(model, None) is not None
        self.counters["completed"] += done
        return done

    def pending(self) -> dict[str, dict[str, Any]]:
        """Pending requests by model."""
        return {m: dict(r) for m, r in self._pending.items()}

    def snapshot(self) -> dict[str, Any]:
        return {"version": 1, "pending": self.pending()}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown retrain state version {state.get('version')!r}")
        self._pending = {str(m): dict(r) for m, r in state.get("pending", {}).items()}
