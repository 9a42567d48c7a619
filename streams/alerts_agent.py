"""Alerts: signals through the rules into alerts, pages and retrain requests.

A thin consumer of the signal agent's output: every signal goes through the
:class:`~streams.alerting.AlertManager`; each alert transition is stored in
the ``alerts`` table, produced to ``llmpulse.alerts``, handed to the
:class:`~streams.notify.Notifier` (in the background: delivery retries never
hold up signals) and, for rules with the ``retrain`` action, to the
:class:`~streams.retrain_trigger.RetrainTrigger`, whose requests go to
``llmpulse.retrain``. State (open alerts, dedup of pages, pending retrains)
is saved beside the signal engine's and restored at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import faust
import orjson

from detectors.base import Signal
from llmpulse.events import TOPIC_ALERTS, TOPIC_RETRAIN
from streams.alerting import AlertManager
from streams.notify import Notifier
from streams.retrain_trigger import RetrainTrigger
from streams.rules import Rules
from streams.sink import RawSink

__all__ = ["AlertAgent", "load_rules"]

log = logging.getLogger(__name__)


def load_rules(path: Path | None) -> Rules:
    """The rules file named in the configuration, or the shipped defaults."""
    return Rules.load(path) if path else Rules.default()


class AlertAgent:
    def __init__(self, app: faust.App, rules: Rules, sink: RawSink, *, state_dir: Path,
                 dashboard_url: str | None = None, notify: bool = True) -> None:
        self.app = app
        self.sink = sink
        self.rules = rules
        self.alerts = AlertManager(rules, dashboard_url=dashboard_url)
        self.notifier = Notifier.from_rules(rules)
        self.notify = notify
        self.trigger = RetrainTrigger.from_rules(rules)
        self.alerts_topic = app.topic(TOPIC_ALERTS, value_serializer="raw", key_serializer="raw")
        self.retrain_topic = app.topic(TOPIC_RETRAIN, value_serializer="raw", key_serializer="raw")
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state = state_dir / "alerts.json"
        self._restore()

    async def __call__(self, signals: list[Signal]) -> None:
        events = self.alerts.process_many(signals)
        if not events:
            return
        rows = [orjson.dumps(ev.row) for ev in events]
        await self.sink.write("alerts", rows)
        for ev, row in zip(events, rows, strict=True):
            self.counts[ev.kind] += 1
            await self.alerts_topic.send(key=ev.row["alert_id"].encode(), value=row)
            log.warning("alert %s: %s", ev.kind, ev.row.get("summary"))
            if self.notify:
                task = asyncio.ensure_future(self.notifier.send(ev))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            req = self.trigger.process(ev)
            if req is not None:
                self.counts["retrain_requests"] += 1
                await self.retrain_topic.send(key=str(req["model"]).encode(),
                                              value=orjson.dumps(req))
        self._save()

    def stats(self) -> dict[str, Any]:
        return {"alerts": dict(self.counts), "manager": self.alerts.stats(),
                "pending_retrains": len(self.trigger.pending())}

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        await self.notifier.close()
        self._save()

    def _save(self) -> None:
        try:
            state = {"alerts": self.alerts.snapshot(), "notifier": self.notifier.snapshot(),
                     "trigger": self.trigger.snapshot()}
            self._state.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, default=str))
            os.replace(tmp, self._state)
        except Exception:
            log.exception("saving alert state failed")

    def _restore(self) -> None:
        try:
            state = json.loads(self._state.read_text())
        except FileNotFoundError:
            return
        except ValueError:
            log.warning("ignoring an unreadable alert state at %s", self._state)
            return
        try:
            self.alerts.restore(state["alerts"])
            self.notifier.restore(state["notifier"])
            self.trigger.restore(state["trigger"])
        except Exception:
            log.exception("ignoring alert state that does not fit these rules")
