"""Kafka over mutual TLS, for real: Tansu behind a stunnel TLS terminator that
requires client certificates signed by a CA made for the test session.

Covered: the shim (librdkafka) and aiokafka produce and consume through TLS;
``llmpulse up`` (Faust/aiokafka worker) ingests through it; a client without a
certificate, with a certificate of another CA, or trusting the wrong CA is
refused with an error naming the ``kafka_security`` setting; events sent with
a refused certificate wait in the buffer and journal and arrive exactly once
after a restart with the right one; SASL against Tansu (SCRAM with
``--authentication``; none without it) fails with a clear error.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from llmpulse.broker import BrokerError, EmbeddedBroker, create_topics
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE, split_envelope
from llmpulse.kafka_security import KafkaSecurity
from llmpulse.monitor import Monitor
from llmpulse.secret import Secret
from tests.integration.tls_support import Pki, TlsProxy, make_pki

pytestmark = pytest.mark.integration

PARTITIONS = 2
TOPICS = {TOPIC_INFERENCE: PARTITIONS, TOPIC_FEEDBACK: PARTITIONS}
OK = {"model": "m", "model_version": "1", "latency_ms": 12.5, "status": "ok", "input_tokens": 3, "output_tokens": 4}
CANARY = "Canary-Pw-7f3a9c1e"


@dataclass
class TlsKafka:
    broker: EmbeddedBroker
    proxy: TlsProxy
    pki: Pki

    @property
    def bootstrap(self) -> str:
        return self.proxy.bootstrap

    def security(self, **kw: Any) -> KafkaSecurity:
        base: dict[str, Any] = {"security_protocol": "SSL", "ca_file": str(self.pki.ca),
                                "cert_file": str(self.pki.client_cert),
                                "key_file": str(self.pki.client_key)}
        base.update(kw)
        return KafkaSecurity(**base)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_kafka_factory(pki: Pki, tmp_path: Path) -> Iterator[Callable[[], TlsKafka]]:
    """Start Tansu (advertising the proxy's port) and stunnel in front of it."""
    started: list[TlsKafka] = []

    def make() -> TlsKafka:
        proxy_port = EmbeddedBroker().port
        broker = EmbeddedBroker(advertised_port=proxy_port, log_path=tmp_path / "tansu.log")
        broker.start()
        proxy = TlsProxy(pki, broker.port, tmp_path, port=proxy_port)
        tk = TlsKafka(broker, proxy, pki)
        started.append(tk)
        proxy.start()
        create_topics(tk.bootstrap, TOPICS, security=tk.security(), timeout=20)
        return tk

    yield make
    for tk in started:
        tk.proxy.stop()
        tk.broker.stop()


@pytest.fixture
def tls_kafka(tls_kafka_factory: Callable[[], TlsKafka]) -> TlsKafka:
    return tls_kafka_factory()


def consume(bootstrap: str, security: KafkaSecurity, app: str, want: int,
            timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every event of ``app`` on llmpulse.inference, read from the start through TLS,
    until ``want`` are read and the topic has nothing more (or ``timeout``)."""
    conf = {"bootstrap.servers": bootstrap, "group.id": f"t-{app}", "enable.auto.commit": False}
    conf.update(security.librdkafka())
    c = Consumer(conf)
    try:
        c.assign([TopicPartition(TOPIC_INFERENCE, p, 0) for p in range(PARTITIONS)])
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        idle = 0
        while time.monotonic() < deadline and idle < 6:
            msg = c.poll(0.5)
            if msg is None:
                idle = idle + 1 if len(events) >= want else 0
                continue
            if msg.error():
                continue
            for line in split_envelope(msg.value()):
                ev = orjson.loads(line)
                if ev.get("app") == app:
                    events.append(ev)
        return events
    finally:
        c.close()


def wait_for(pred: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_shim_and_aiokafka_round_trip_over_mutual_tls(tls_kafka: TlsKafka) -> None:
    n = 300
    sec = tls_kafka.security()
    with Monitor(app="tls-rt", bootstrap=tls_kafka.bootstrap, security=sec, linger_ms=5) as mon:
        ids = {mon.inference(**OK) for _ in range(n)}
        assert mon.flush(60), mon.stats()
        assert mon.stats()["delivered"] == n
        assert mon.transport_error is None
    got = consume(tls_kafka.bootstrap, sec, "tls-rt", n)
    assert sorted(e["request_id"] for e in got) == sorted(ids)

    # aiokafka (what the Faust workers use) with the same settings
    async def read_with_aiokafka() -> set[str]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(TOPIC_INFERENCE, bootstrap_servers=tls_kafka.bootstrap,
                                    auto_offset_reset="earliest", group_id="t-aio",
                                    **sec.aiokafka_kwargs())
        await consumer.start()
        seen: set[str] = set()
        try:
            deadline = time.monotonic() + 60
            while len(seen) < n and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        for line in split_envelope(rec.value):
                            ev = orjson.loads(line)
                            if ev["app"] == "tls-rt":
                                seen.add(ev["request_id"])
        finally:
            await consumer.stop()
        return seen

    assert asyncio.run(read_with_aiokafka()) == ids


@pytest.mark.parametrize("case", ["no client cert", "client cert of another CA", "wrong CA"])
def test_refused_clients_get_an_error_naming_the_setting(tls_kafka: TlsKafka, case: str) -> None:
    pki = tls_kafka.pki
    if case == "no client cert":
        sec = KafkaSecurity(security_protocol="SSL", ca_file=str(pki.ca))
        want = "kafka_security TLS handshake refused"
    elif case == "client cert of another CA":
        sec = tls_kafka.security(cert_file=str(pki.rogue_client_cert),
                                 key_file=str(pki.rogue_client_key))
        want = "kafka_security TLS handshake refused"
    else:
        sec = tls_kafka.security(ca_file=str(pki.rogue_ca))
        want = "kafka_security.ca_file does not verify"
    with pytest.raises(BrokerError) as info:
        create_topics(tls_kafka.bootstrap, {"llmpulse.refused": 1}, security=sec, timeout=5)
    assert want in str(info.value)
    mon = Monitor(app="tls-refused", bootstrap=tls_kafka.bootstrap, security=sec)
    try:
        mon.inference(**OK)
        assert wait_for(lambda: mon.transport_error is not None, 30), mon.stats()
        assert want in str(mon.transport_error)
        assert mon.stats()["delivered"] == 0
    finally:
        mon.close(timeout=0)


def test_events_sent_with_a_refused_cert_arrive_once_after_the_fix(
        tls_kafka: TlsKafka, tmp_path: Path) -> None:
    n = 500
    journal = tmp_path / "journal"
    bad = tls_kafka.security(cert_file=str(tls_kafka.pki.rogue_client_cert),
                             key_file=str(tls_kafka.pki.rogue_client_key))
    mon = Monitor(app="tls-fix", bootstrap=tls_kafka.bootstrap, security=bad,
                  journal_dir=journal, linger_ms=5)
    ids = {mon.inference(**OK) for _ in range(n)}
    assert wait_for(lambda: mon.transport_error is not None, 30), mon.stats()
    assert "cert_file" in str(mon.transport_error)
    assert not mon.flush(2)
    mon.close(timeout=0)
    s = mon.stats()
    assert s["delivered"] == 0 and s["dropped"] == 0, s
    assert s["journaled"] == n, s

    with Monitor(app="tls-fix", bootstrap=tls_kafka.bootstrap, security=tls_kafka.security(),
                 journal_dir=journal, linger_ms=5) as fixed:
        assert fixed.stats()["recovered"] == n
        assert fixed.flush(60), fixed.stats()
        assert fixed.stats()["delivered"] == n
    got = consume(tls_kafka.bootstrap, tls_kafka.security(), "tls-fix", n)
    assert len(got) == n  # exactly once: no event missing, none twice
    assert {e["request_id"] for e in got} == ids


async def _aiokafka_start_error(bootstrap: str, sec: KafkaSecurity) -> str:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                **sec.aiokafka_kwargs())
    try:
        await producer.start()
    except Exception as exc:  # aiokafka's own error type for the refusal
        return f"{type(exc).__name__}: {exc}"
    finally:
        await producer.stop()
    return ""


def test_sasl_against_tansu_fails_clearly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Tansu without --authentication offers no SASL mechanism; with it, it runs
    SCRAM but its users cannot be created (see the module docstring of
    tls_support): either way the client says which setting is refused, and the
    password never shows."""
    caplog.set_level(logging.DEBUG)
    for auth, mech, want in [(False, "SCRAM-SHA-512", "kafka_security.sasl_mechanism SCRAM-SHA-512"),
                             (True, "SCRAM-SHA-512", "kafka_security.password rejected"),
                             (True, "SCRAM-SHA-256", "kafka_security.password rejected")]:
        with EmbeddedBroker(authentication=auth, log_path=tmp_path / "tansu.log") as b:
            sec = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mech,
                                username="svc", password=Secret(CANARY))
            with pytest.raises(BrokerError) as info:
                create_topics(b.bootstrap, {"llmpulse.sasl": 1}, security=sec, timeout=5)
            assert want in str(info.value), (auth, mech, str(info.value))
            mon = Monitor(app="sasl", bootstrap=b.bootstrap, security=sec, log_interval_s=0)
            try:
                mon.inference(**OK)
                assert wait_for(lambda m=mon: m.transport_error is not None, 30)  # type: ignore[misc]
                assert want in str(mon.transport_error)
                assert mon.stats()["dropped"] == 0
            finally:
                mon.close(timeout=0)
            assert CANARY not in str(info.value) + str(mon.transport_error) + repr(mon)
            # aiokafka, as the Faust workers run it, with the same settings
            aio_error = asyncio.run(_aiokafka_start_error(b.bootstrap, sec))
            assert aio_error and CANARY not in aio_error
    assert "rejected" in caplog.text
    assert CANARY not in caplog.text


def test_llmpulse_up_ingests_over_mutual_tls(tls_kafka: TlsKafka, stack_factory: Any) -> None:
    pki = tls_kafka.pki
    sp = stack_factory(LLMPULSE_KAFKA=tls_kafka.bootstrap,
                       LLMPULSE_KAFKA_SECURITY_PROTOCOL="SSL",
                       LLMPULSE_KAFKA_CA_FILE=str(pki.ca),
                       LLMPULSE_KAFKA_CERT_FILE=str(pki.client_cert),
                       LLMPULSE_KAFKA_KEY_FILE=str(pki.client_key))
    sp.start(timeout=180)
    assert sp.endpoints["kafka"] == tls_kafka.bootstrap
    n = 200
    # the shim reads the same LLMPULSE_KAFKA_* variables when no security is given
    with Monitor(app="tls-up", bootstrap=tls_kafka.bootstrap,
                 security=KafkaSecurity.from_env(sp.env)) as mon:
        for _ in range(n):
            mon.inference(**OK)
        assert mon.flush(60), mon.stats()
    stats = sp.wait_stored(TOPIC_INFERENCE, n, timeout=120)
    assert stats["stored"][TOPIC_INFERENCE] == n
    rows = sp.sql("SELECT count() AS n FROM inference_events FINAL WHERE app = 'tls-up'")
    assert rows[0]["n"] == n
    # the broker only ever saw the proxy: every byte between client and broker went through TLS
    assert "connected remote server" in tls_kafka.proxy.log()
    status = subprocess.run([sys.executable, "-m", "llmpulse.cli", "status"], env=sp.env,
                            capture_output=True, text=True, timeout=120, cwd=str(sp.data_dir.parent))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"kafka  {tls_kafka.bootstrap}" in status.stdout
    assert sp.stop() == 0


def test_secrets_never_printed_or_written(tls_kafka: TlsKafka, stack_factory: Any,
                                          tmp_path: Path) -> None:
    """A recognisable password, given the ways an operator would, shows up in no
    output, log, error or file of a stack that could not authenticate."""
    pw_file = tmp_path / "kafka-password"
    pw_file.write_text(CANARY + "\n")
    pki = tls_kafka.pki
    sp = stack_factory(LLMPULSE_KAFKA=tls_kafka.bootstrap,
                       LLMPULSE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                       LLMPULSE_KAFKA_USERNAME="svc",
                       LLMPULSE_KAFKA_PASSWORD_FILE=str(pw_file),
                       LLMPULSE_KAFKA_CA_FILE=str(pki.ca),
                       LLMPULSE_KAFKA_CERT_FILE=str(pki.client_cert),
                       LLMPULSE_KAFKA_KEY_FILE=str(pki.client_key))
    with pytest.raises(RuntimeError) as info:
        sp.start(timeout=120)
    out = str(info.value) + sp.log()
    assert "kafka_security.sasl_mechanism" in out, out
    status = subprocess.run([sys.executable, "-m", "llmpulse.cli", "status"], env=sp.env,
                            capture_output=True, text=True, timeout=120, cwd=str(sp.data_dir.parent))
    texts = [out, status.stdout, status.stderr]
    for path in sp.data_dir.parent.rglob("*"):
        if path.is_file() and path != pw_file:
            texts.append(path.read_text(errors="replace"))
    assert all(CANARY not in t for t in texts)

    # the ClickHouse password in a DSN: never in the store's errors or the settings
    from llmpulse.config import load_settings
    from llmpulse.store import Store, StoreError

    dsn = f"http://svc:{CANARY}@127.0.0.1:{EmbeddedBroker().port}"
    settings = load_settings(env={"LLMPULSE_CLICKHOUSE": dsn, "LLMPULSE_DATA_DIR": str(tmp_path / "d")},
                             path=None)
    assert CANARY not in (settings.clickhouse or "") + repr(settings)
    assert settings.clickhouse_auth.password is not None
    assert settings.clickhouse_auth.password.get() == CANARY
    with pytest.raises(StoreError) as err:
        Store.open(dsn, ddl=True)
    assert CANARY not in str(err.value)
    assert "svc" in str(err.value) or "127.0.0.1" in str(err.value)


def test_clickhouse_over_https_checks_the_ca_and_hides_the_password(pki: Pki, tmp_path: Path) -> None:
    """clickhouse-connect gets the CA file and the credentials taken out of the DSN:
    a server certificate of another CA is refused, the right CA gets past TLS (to a
    port with no ClickHouse behind it), and no error quotes the password."""
    from llmpulse.store import Store, StoreError
    from llmpulse.store_auth import ClickHouseCredentials

    proxy = TlsProxy(pki, EmbeddedBroker().port, tmp_path, require_client_cert=False).start()
    try:
        dsn = f"https://svc:{CANARY}@localhost:{proxy.port}"
        errors = {}
        for name, ca in (("rogue", pki.rogue_ca), ("right", pki.ca)):
            clean, creds = ClickHouseCredentials.resolve(dsn, {"LLMPULSE_CLICKHOUSE_CA_FILE": str(ca)})
            assert clean == f"https://localhost:{proxy.port}" and creds.username == "svc"
            with pytest.raises(StoreError) as info:
                Store.open(clean, credentials=creds, ddl=False)
            errors[name] = str(info.value)
        assert "certificate verify failed" in errors["rogue"].lower(), errors
        assert "certificate verify failed" not in errors["right"].lower(), errors
        assert all(CANARY not in e for e in errors.values())
    finally:
        proxy.stop()


async def test_notifier_pages_from_alerts_read_over_mutual_tls(tls_kafka: TlsKafka) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer
    from confluent_kafka import Producer

    from llmpulse.events import TOPIC_ALERTS
    from llmpulse.streams.notify.__main__ import serve
    from llmpulse.streams.rules import Rules
    from tests.integration.test_notifier_service import RULES, _rows

    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    sec = tls_kafka.security()
    rules = Rules.from_yaml(RULES.format(url=f"http://127.0.0.1:{server.port}/hook"))
    create_topics(tls_kafka.bootstrap, {TOPIC_ALERTS: 1}, security=sec)
    p = Producer({"bootstrap.servers": tls_kafka.bootstrap, **sec.librdkafka()})
    rows = _rows(rules)
    for r in rows:
        p.produce(TOPIC_ALERTS, orjson.dumps(r), key=r["alert_id"].encode())
    assert p.flush(30) == 0
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(tls_kafka.bootstrap, rules, stop, sec))
    for _ in range(600):
        if len(got) >= 2:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 30)
    await server.close()
    assert [g["kind"] for g in got] == ["firing", "resolved"]


def test_simulator_sends_over_mutual_tls_from_the_environment(tls_kafka: TlsKafka) -> None:
    from tests.conftest import stack_env

    pki = tls_kafka.pki
    env = stack_env(Path("/nonexistent"), LLMPULSE_KAFKA_SECURITY_PROTOCOL="SSL",
                    LLMPULSE_KAFKA_CA_FILE=str(pki.ca), LLMPULSE_KAFKA_CERT_FILE=str(pki.client_cert),
                    LLMPULSE_KAFKA_KEY_FILE=str(pki.client_key))
    r = subprocess.run([sys.executable, "-m", "llmpulse.cli", "simulate", "--bootstrap",
                        tls_kafka.bootstrap, "--app", "tls-sim", "--fast", "--rate", "20",
                        "--duration", "5"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = consume(tls_kafka.bootstrap, tls_kafka.security(), "tls-sim", 1)
    assert len(got) >= 50  # 20 requests/s for 5 s, every one sent through TLS
    assert len({e["event_id"] for e in got}) == len(got)
