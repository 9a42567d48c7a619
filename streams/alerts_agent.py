"""Alerts: signals through the rules into alerts, pages and retrain requests.

A thin consumer of the signal agent's output: every signal goes through the
:class:`~llmpulse.streams.alerting.AlertManager`; each alert transition is stored in
the ``alerts`` table, produced to ``llmpulse.alerts``, handed to the
:class:`~llmpulse.streams.notify.Notifier` (in the background: delivery retries never
hold up signals) and, for rules with the ``retrain`` action, to the
:class:`~llmpulse.streams.retrain_trigger.RetrainTrigger`, whose requests go to
``llmpulse.retrain``. State (open alerts, dedup of pages, pending retrains)
is saved beside the signal engine's and restored at start.

Pages survive a crash: each batch's alert transitions are saved, with the
pages they owe (the *outbox*), before any page goes out; a page leaves the
outbox (and the state is saved again, at the end of the batch if one is
under way) when its delivery ends, delivered or given up after the retries.
Nothing else writes the state while a batch awaits the store or a topic: the
manager has moved past that batch's signals, and a state written then and a
kill left an alert open with its page nowhere. A restarted worker sends what
its outbox still holds; the notifier's record of delivered pages skips those
already sent, so a page is lost only if the process dies within the write of
the state, and is sent twice only if it dies between a delivery and that
save (the PagerDuty ``dedup_key`` makes even that a no-op there).

The rows, ``llmpulse.alerts`` messages and retrain requests are owed the same
way: a batch's transitions join a queue (saved with the state) before
anything is awaited, and leave it, in order, once their row is stored and
their messages sent. A stop during a store outage, or a topic send that
raises, leaves them queued: the queue is retried (:data:`RETRY_S`, doubling)
and sent first after a restart, so no transition is lost and none overtakes
an earlier one of the same alert. A send that fails :data:`MAX_ATTEMPTS`
times in a row is given up, logged with the row, so that one bad message
cannot hold every later alert back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

import faust
import orjson

from llmpulse.detectors.base import Signal
from llmpulse.events import TOPIC_ALERTS, TOPIC_RETRAIN
from llmpulse.streams.alerting import AlertEvent, AlertLinker, AlertManager, GroupFilter
from llmpulse.streams.forward import group_key
from llmpulse.streams.notify import Notifier, build_channels
from llmpulse.streams.retrain_trigger import RetrainTrigger
from llmpulse.streams.rules import Rules
from llmpulse.streams.sink import RawSink
from llmpulse.streams.state import write_atomic

__all__ = ["AlertAgent", "MAX_ATTEMPTS", "RETRY_S", "load_rules"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6  # failed sends of one owed transition before it is given up
RETRY_S = 1.0  # the first retry of the owed transitions; doubling, at most a minute


def load_rules(path: Path | None) -> Rules:
    """The rules file named in the configuration, or the shipped defaults,
    its notify channels validated too (a bad one fails at start, named)."""
    rules = Rules.load(path) if path else Rules.default()
    build_channels(rules)
    return rules


def _groups(keys: Collection[bytes]) -> GroupFilter:
    """The groups whose routing key (:func:`~llmpulse.streams.forward.group_key`) is in ``keys``."""
    wanted = frozenset(bytes(k) for k in keys)
    return lambda app, model, version: group_key(app, model, version) in wanted


class AlertAgent:
    """The alert path of the worker: ``await agent(signals)`` per batch of signals.

    ``alerts_topic`` and ``retrain_topic`` default to the app's topics; tests
    pass collecting ones (:class:`llmpulse.streams.testing.TestingTopic`)."""

    def __init__(self, app: faust.App, rules: Rules, sink: RawSink, *, state_dir: Path,
                 dashboard_url: str | None = None, notify: bool = True,
                 linker: AlertLinker | None = None,
                 alerts_topic: Any = None, retrain_topic: Any = None) -> None:
        self.app = app
        self.sink = sink
        self.rules = rules
        self.alerts = AlertManager(rules, dashboard_url=dashboard_url, linker=linker)
        self.notifier = Notifier.from_rules(rules)
        self.notify = notify
        self.trigger = RetrainTrigger.from_rules(rules)
        self.alerts_topic = alerts_topic or app.topic(TOPIC_ALERTS, value_serializer="raw",
                                                      key_serializer="raw")
        self.retrain_topic = retrain_topic or app.topic(TOPIC_RETRAIN, value_serializer="raw",
                                                        key_serializer="raw")
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state = state_dir / "alerts.json"
        self._outbox: dict[tuple[str, str], AlertEvent] = {}  # (alert_id, kind) -> page owed
        self._batches = 0  # batches of signals under way (awaiting the store or a topic)
        # transitions whose row, alerts message or retrain request is not out yet, oldest
        # first: {"row", "retrain" (the request or None), "stored", "announced", "attempts"}
        self._owed: list[dict[str, Any]] = []
        self._owed_lock = asyncio.Lock()
        self._retry: asyncio.Task[None] | None = None
        self._restore()
        app.task(self._send_owed)
        if self.notify:
            app.task(self._send_outbox)

    async def __call__(self, signals: list[Signal]) -> None:
        self._batches += 1
        try:
            await self._take(signals)
        finally:
            self._batches -= 1

    async def _take(self, signals: list[Signal]) -> None:
        events = self.alerts.process_many(signals)
        if not events:
            # saved even with no transition: a restarted worker replays the signals
            # after its engine snapshot, and the manager must know which it has seen
            self._save(force=True)
            return
        # the pages the transitions owe are in the outbox before anything is awaited,
        # and no other save runs until this batch's (see _save)
        pages: list[AlertEvent] = []
        for ev in events:
            self.counts[ev.kind] += 1
            log.warning("alert %s: %s", ev.kind, ev.row.get("summary"))
            if self.notify and "notify" in ev.rule.actions:
                self._outbox[(ev.row["alert_id"], ev.kind)] = ev
                pages.append(ev)
            req = self.trigger.process(ev)
            if req is not None:
                self.counts["retrain_requests"] += 1
            self._owed.append({"row": ev.row, "retrain": req, "stored": False,
                               "announced": False, "attempts": 0})
        try:
            await self._write_owed()
        finally:
            # the transitions and the pages they owe, before any page goes out; a store
            # or topic that failed does not keep the pages from going out
            self._save(force=True)
            for ev in pages:
                self._page(ev)

    async def _write_owed(self) -> bool:
        """Store and send the owed transitions, oldest first; whether none is left. A
        failure leaves the failing one and those after it queued, with a retry planned."""
        async with self._owed_lock:
            while self._owed:
                try:
                    unstored = [e for e in self._owed if not e["stored"]]
                    if unstored:
                        await self.sink.write("alerts", [orjson.dumps(e["row"]) for e in unstored])
                        for e in unstored:
                            e["stored"] = True
                    while self._owed:
                        head = self._owed[0]
                        if not head["announced"]:
                            await self.alerts_topic.send(key=str(head["row"]["alert_id"]).encode(),
                                                         value=orjson.dumps(head["row"]))
                            head["announced"] = True
                        if head["retrain"] is not None:
                            await self.retrain_topic.send(key=str(head["retrain"]["model"]).encode(),
                                                          value=orjson.dumps(head["retrain"]))
                        self._owed.pop(0)
                except Exception:
                    head = self._owed[0]
                    head["attempts"] += 1
                    self.counts["owed_send_failures"] += 1
                    if head["attempts"] < MAX_ATTEMPTS:
                        log.exception("alert %s: storing or sending it failed (attempt %d of %d);"
                                      " it and %d later transition(s) wait for a retry",
                                      head["row"].get("alert_id"), head["attempts"], MAX_ATTEMPTS,
                                      len(self._owed) - 1)
                        self._retry_later(head["attempts"])
                        return False
                    log.exception("alert %s: giving up its message after %d attempts: %s",
                                  head["row"].get("alert_id"), head["attempts"],
                                  json.dumps(head, default=str))
                    self.counts["owed_given_up"] += 1
                    self._owed.pop(0)
        return True

    def _retry_later(self, attempts: int) -> None:
        if self._retry is not None and not self._retry.done():
            return
        delay = min(RETRY_S * 2 ** (attempts - 1), 60.0)
        self._retry = asyncio.ensure_future(self._retry_after(delay))

    async def _retry_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._retry = None  # a failure now plans the next retry
        self.counts["owed_retries"] += 1
        await self._send_owed()

    async def _send_owed(self) -> None:
        """The owed transitions (at start: those a previous run left), then the state."""
        if not self._owed:
            return
        log.info("sending %d alert transition(s) owed", len(self._owed))
        await self._write_owed()
        self._save()

    def _page(self, ev: AlertEvent) -> None:
        task = asyncio.ensure_future(self._deliver(ev))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, ev: AlertEvent) -> None:
        await self.notifier.send(ev)  # never raises; failures are retried, then recorded
        self._outbox.pop((ev.row["alert_id"], ev.kind), None)
        self._save()  # put off to the end of a batch under way (see _save)

    async def _send_outbox(self) -> None:
        """At start: the pages a previous run owed and may not have sent."""
        if self._outbox:
            log.info("sending %d page(s) owed by the previous run", len(self._outbox))
            self.counts["pages_resent_after_restart"] += len(self._outbox)
        for ev in list(self._outbox.values()):
            self._page(ev)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait for the pages being delivered in the background."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def stats(self) -> dict[str, Any]:
        return {"alerts": dict(self.counts), "manager": self.alerts.stats(),
                "pending_retrains": len(self.trigger.pending()), "pages_owed": len(self._outbox),
                "transitions_owed": len(self._owed)}

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()  # what is owed is saved below, and sent after the restart
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        await self.notifier.close()
        self._save(force=True)

    # -- groups moving with their llmpulse.grouped partition (handoff.GroupStates) ---------

    def export_groups(self, keys: Collection[bytes]) -> bytes:
        """The alert states of the groups ``keys``, for the worker their partition goes to."""
        return json.dumps(self.alerts.export(_groups(keys)), default=str).encode()

    def take_over_groups(self, keys: Collection[bytes], state: bytes | None) -> None:
        """Continue the groups ``keys`` from a previous owner's :meth:`export_groups`,
        replacing what this worker held of them (an older state, from when it last had
        them). ``None`` (the previous owner wrote none): what this worker holds stays."""
        if state is None:
            return
        try:
            exported = json.loads(state)
            if not isinstance(exported, dict) or exported.get("version") != 1:
                raise ValueError("not an alert state of this version")
        except ValueError:
            log.warning("ignoring unreadable alert states handed over for %d group(s)", len(keys))
            self.counts["handoff_unreadable"] += 1
            return
        self.alerts.drop(_groups(keys))
        try:
            self.counts["handoff_keys_taken"] += self.alerts.merge(exported)
        except Exception:  # the groups start over here, as before states were handed over
            log.exception("ignoring alert states handed over that do not fit these rules")
            self.counts["handoff_unreadable"] += 1
        self._save()

    def drop_groups(self, keys: Collection[bytes]) -> None:
        """Forget the alert states of the groups ``keys``, open alerts included, with no
        event: their partition's new owner continues (and resolves) them. Pages owed for
        them stay in the outbox and go out from here."""
        self.counts["handoff_keys_dropped"] += self.alerts.drop(_groups(keys))
        self._save()

    def _save(self, *, force: bool = False) -> None:
        """Write the state. Unless ``force`` (a batch's own save, the last one at close),
        nothing is written while a batch is under way: the manager has moved past
        signals whose rows and pages that batch has not finished, and a kill then left
        a state with an alert open and its page nowhere (the restart sees the alert
        fired and never pages it); the batch's save at its end writes everything, this
        change included."""
        if self._batches and not force:
            self.counts["saves_left_to_the_batch"] += 1
            return
        try:
            state = {"alerts": self.alerts.snapshot(), "notifier": self.notifier.snapshot(),
                     "trigger": self.trigger.snapshot(),
                     "outbox": [{"kind": ev.kind, "row": ev.row, "key": list(ev.key)}
                                for ev in self._outbox.values()],
                     "owed": self._owed}
            write_atomic(self._state, json.dumps(state, default=str).encode())
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
            for item in state.get("outbox", []):
                rule = self.rules.get(item["key"][0])
                if rule is None:
                    continue  # the rule is gone from the rules file
                ev = AlertEvent(str(item["kind"]), dict(item["row"]), rule,
                                tuple(str(x) for x in item["key"]))  # type: ignore[arg-type]
                self._outbox[(ev.row["alert_id"], ev.kind)] = ev
            for item in state.get("owed", []):
                try:
                    self._owed.append(_owed_item(item))
                except ValueError:
                    log.exception("ignoring an unreadable owed alert transition")
        except Exception:
            log.exception("ignoring alert state that does not fit these rules")


def _owed_item(item: Any) -> dict[str, Any]:
    """An owed transition read back from the state file, checked."""
    if not isinstance(item, dict) or not isinstance(item.get("row"), dict) \
            or not isinstance(item["row"].get("alert_id"), str):
        raise ValueError(f"not an owed alert transition: {item!r:.200}")
    req = item.get("retrain")
    if req is not None and not (isinstance(req, dict) and "model" in req):
        raise ValueError(f"not a retrain request: {req!r:.200}")
    return {"row": item["row"], "retrain": req, "stored": bool(item.get("stored")),
            "announced": bool(item.get("announced")), "attempts": int(item.get("attempts", 0))}
