"""``python -m llmpulse.streams.notify``: the notifier as its own service.

Consumes ``llmpulse.alerts`` (consumer group ``llmpulse-notify``) and pages
the channels of the rules file, so stream workers can run with
``signals.notify_in_worker: false`` and scale without sending a page twice.
Offsets are committed after each page was handed to every channel (the
notifier retries and records failures itself, and never raises).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import orjson

from llmpulse.config import ConfigError, load_settings
from llmpulse.events import TOPIC_ALERTS
from llmpulse.kafka_security import KafkaSecurity
from llmpulse.streams.alerting import AlertEvent
from llmpulse.streams.alerts_agent import load_rules
from llmpulse.streams.notify import Notifier
from llmpulse.streams.rules import RulesError

log = logging.getLogger("llmpulse.notify")


def event_from_row(row: dict, rules) -> AlertEvent | None:  # type: ignore[no-untyped-def]
    """Rebuild the alert transition a worker produced from its ``alerts`` row."""
    try:
        rule = rules[row["rule"]]
    except KeyError:
        log.warning("alert %s names rule %r, not in this rules file", row.get("alert_id"), row.get("rule"))
        return None
    key = (row["rule"], row["signal"], row["app"], row["model"], row["model_version"],
           row["dimension"])
    kind = "resolved" if row.get("state") == "resolved" else "firing"
    return AlertEvent(kind=kind, row=row, rule=rule, key=key)


async def serve(bootstrap: str, rules, stop: asyncio.Event,  # type: ignore[no-untyped-def]
                security: KafkaSecurity | None = None) -> None:
    from confluent_kafka import Consumer

    notifier = Notifier.from_rules(rules)
    conf = {"bootstrap.servers": bootstrap, "group.id": "llmpulse-notify",
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000}
    conf.update(security.librdkafka() if security else {})
    consumer = Consumer(conf)
    consumer.subscribe([TOPIC_ALERTS])
    try:
        while not stop.is_set():
            msg = await asyncio.to_thread(consumer.poll, 0.5)
            if msg is None or msg.error():
                continue
            for line in (msg.value() or b"").split(b"\n"):
                if not line.strip():
                    continue
                ev = event_from_row(orjson.loads(line), rules)
                if ev is not None:
                    await notifier.send(ev)
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
        await notifier.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        rules = load_rules(settings.rules)
    except (ConfigError, RulesError) as exc:
        print(f"llmpulse notify: {exc}", file=sys.stderr)
        return 2
    if not settings.kafka:
        print("llmpulse notify: LLMPULSE_KAFKA: the notifier service needs a Kafka cluster",
              file=sys.stderr)
        return 2
    kafka = settings.kafka

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(kafka, rules, stop, settings.kafka_security)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
