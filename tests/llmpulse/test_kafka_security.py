"""Transport security settings: parsing, errors naming the key, and the two
translations (librdkafka for the shim, aiokafka/Faust for the workers)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from llmpulse.config import ConfigError, load_settings
from llmpulse.kafka_security import KafkaSecurity, KafkaSecurityError
from llmpulse.secret import Secret
from llmpulse.store_auth import ClickHouseCredentials, CredentialsError, redact_dsn, split_dsn
from llmpulse.streams.app import faust_credentials
from tests.dashboards.test_publisher import TOKEN as GRAFANA_TOKEN
from tests.dashboards.test_publisher import grafana  # noqa: F401 - the fake Grafana fixture
from tests.integration.tls_support import make_pki

CANARY = "Canary-Pw-55e1b0"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_pki(tmp_path_factory.mktemp("pki"))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "llmpulse.yaml"
    p.write_text(text)
    return p


def test_default_is_plaintext_and_changes_no_client_setting() -> None:
    sec = KafkaSecurity.from_env({})
    assert sec.is_plaintext
    assert sec.librdkafka() == {}
    assert faust_credentials(sec) is None
    assert sec.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_mutual_tls_translations(pki) -> None:  # type: ignore[no-untyped-def]
    sec = KafkaSecurity.from_env({
        "LLMPULSE_KAFKA_SECURITY_PROTOCOL": "ssl", "LLMPULSE_KAFKA_CA_FILE": str(pki.ca),
        "LLMPULSE_KAFKA_CERT_FILE": str(pki.client_cert),
        "LLMPULSE_KAFKA_KEY_FILE": str(pki.client_key)})
    assert sec.librdkafka() == {
        "security.protocol": "SSL", "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.client_cert), "ssl.key.location": str(pki.client_key),
        "ssl.endpoint.identification.algorithm": "https"}
    ctx = sec.ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    kw = sec.aiokafka_kwargs()
    assert kw["security_protocol"] == "SSL" and kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    import faust

    creds = faust_credentials(sec)
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.context.check_hostname
    off = KafkaSecurity.from_env({"LLMPULSE_KAFKA_SECURITY_PROTOCOL": "SSL",
                                  "LLMPULSE_KAFKA_CHECK_HOSTNAME": "false"})
    assert off.librdkafka()["ssl.endpoint.identification.algorithm"] == "none"
    ctx_off = off.ssl_context()
    assert ctx_off is not None and not ctx_off.check_hostname


@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_translations_for_every_mechanism(mech: str, pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pw = tmp_path / "pw"
    pw.write_text(CANARY + "\n")
    sec = KafkaSecurity.from_env({
        "LLMPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LLMPULSE_KAFKA_SASL_MECHANISM": mech,
        "LLMPULSE_KAFKA_USERNAME": "svc", "LLMPULSE_KAFKA_PASSWORD_FILE": str(pw),
        "LLMPULSE_KAFKA_CA_FILE": str(pki.ca)})
    conf = sec.librdkafka()
    assert conf["sasl.mechanism"] == mech and conf["sasl.username"] == "svc"
    assert conf["sasl.password"] == CANARY  # the trailing newline of the file is not part of it
    kw = sec.aiokafka_kwargs()
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (mech, "svc", CANARY)
    assert kw["security_protocol"] == "SASL_SSL"
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    creds = faust_credentials(sec)
    assert isinstance(creds, faust.SASLCredentials)
    # what faust-streaming really hands to aiokafka, SCRAM included
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == mech
    assert auth["sasl_plain_username"] == "svc" and auth["sasl_plain_password"] == CANARY
    assert CANARY not in repr(sec) + str(sec) + repr(creds)


def test_faust_app_carries_the_credentials_without_showing_them(tmp_path: Path) -> None:
    from llmpulse.streams.app import new_faust_app

    settings = load_settings(env={
        "LLMPULSE_KAFKA": "127.0.0.1:9", "LLMPULSE_DATA_DIR": str(tmp_path),
        "LLMPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LLMPULSE_KAFKA_USERNAME": "svc",
        "LLMPULSE_KAFKA_PASSWORD": CANARY}, path=None)
    app = new_faust_app("t-sec", settings, bootstrap="127.0.0.1:9", datadir=tmp_path / "w",
                        web_port=None)
    creds = app.conf.broker_credentials
    assert creds.username == "svc" and creds.password == CANARY
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert CANARY not in repr(creds) + repr(settings)


def test_yaml_key_with_env_overrides(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    pw = tmp_path / "pw"
    pw.write_text(CANARY)
    cfg = _write(tmp_path, f"kafka: broker:9093\nkafka_security:\n  security_protocol: SASL_SSL\n"
                           f"  sasl_mechanism: SCRAM-SHA-256\n  username: yaml-user\n"
                           f"  password_file: {pw}\n  ca_file: {pki.ca}\n")
    s = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "d")}, path=cfg)
    assert s.kafka_security.username == "yaml-user"
    assert s.kafka_security.sasl_mechanism == "SCRAM-SHA-256"
    assert s.kafka_security.password == Secret(CANARY)
    s2 = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "d"),
                            "LLMPULSE_KAFKA_USERNAME": "env-user",
                            "LLMPULSE_KAFKA_PASSWORD": "from-env"}, path=cfg)
    assert s2.kafka_security.username == "env-user"
    assert s2.kafka_security.password == Secret("from-env")


@pytest.mark.parametrize(("yaml_sec", "env", "key"), [
    ("  security_protocol: TLS\n", {}, "kafka_security.security_protocol"),
    ("  security_protocol: SASL_SSL\n  sasl_mechanism: GSSAPI\n", {}, "kafka_security.sasl_mechanism"),
    ("  security_protocol: SASL_SSL\n", {"LLMPULSE_KAFKA_PASSWORD": "x"}, "kafka_security.username"),
    ("  security_protocol: SASL_SSL\n  username: u\n", {}, "kafka_security.password"),
    (f"  security_protocol: SASL_SSL\n  username: u\n  password: {CANARY}\n", {},
     "kafka_security.password: do not write the password into the config file"),
    ("  security_protocol: SSL\n  ca_file: /nonexistent/ca.pem\n", {}, "kafka_security.ca_file"),
    ("  security_protocol: PLAINTEXT\n", {"LLMPULSE_KAFKA_USERNAME": "u"}, "kafka_security.username"),
    ("  security_protocol: SSL\n  check_hostname: maybe\n", {}, "kafka_security.check_hostname"),
    ("  colour: blue\n", {}, "kafka_security.colour: unknown setting"),
    ("  security_protocol: SASL_SSL\n  username: u\n", {"LLMPULSE_KAFKA_PASSWORD_FILE": "/nonexistent/pw"},
     "kafka_security.password"),
])
def test_bad_settings_name_the_key(tmp_path: Path, yaml_sec: str, env: dict[str, str], key: str) -> None:
    cfg = _write(tmp_path, "kafka: broker:9093\nkafka_security:\n" + yaml_sec)
    with pytest.raises(ConfigError) as info:
        load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "d"), **env}, path=cfg)
    assert str(info.value).startswith(key), str(info.value)
    assert CANARY not in str(info.value)


def test_client_cert_needs_its_key(pki) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KafkaSecurityError, match=r"^kafka_security.key_file"):
        KafkaSecurity(security_protocol="SSL", cert_file=str(pki.client_cert))
    with pytest.raises(KafkaSecurityError, match=r"^kafka_security.cert_file"):
        KafkaSecurity(security_protocol="SSL", cert_file=str(pki.client_cert),
                      key_file=str(pki.rogue_client_key)).ssl_context()


def test_tls_without_a_cluster_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^kafka_security.security_protocol: SSL needs a Kafka cluster"):
        load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path), "LLMPULSE_KAFKA_SECURITY_PROTOCOL": "SSL"},
                      path=None)


def test_monitor_takes_a_dict_and_the_environment(monkeypatch: pytest.MonkeyPatch, pki) -> None:  # type: ignore[no-untyped-def]
    from llmpulse.monitor import Monitor

    mon = Monitor(app="a", bootstrap="127.0.0.1:9", security={
        "security_protocol": "SASL_SSL", "username": "svc", "password": CANARY, "ca_file": str(pki.ca)})
    try:
        assert mon.security.librdkafka()["sasl.password"] == CANARY
        assert CANARY not in repr(mon) + repr(mon.security)
    finally:
        mon.close(timeout=0)
    with pytest.raises(KafkaSecurityError, match=r"^kafka_security.security_protocol"):
        Monitor(app="a", bootstrap="127.0.0.1:9", security={"security_protocol": "SSL3"})
    monkeypatch.setenv("LLMPULSE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("LLMPULSE_KAFKA_CA_FILE", str(pki.ca))
    mon = Monitor(app="a", bootstrap="127.0.0.1:9")
    try:
        assert mon.security.security_protocol == "SSL" and mon.security.ca_file == str(pki.ca)
    finally:
        mon.close(timeout=0)


def test_clickhouse_credentials_leave_the_dsn(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    assert split_dsn("https://u:p%3Aw@h:8443/db?x=1") == ("https://h:8443/db?x=1", "u", "p:w")
    assert split_dsn("chdb:///tmp/x") == ("chdb:///tmp/x", None, None)
    assert redact_dsn(f"http://u:{CANARY}@h:8123") == "http://u:***@h:8123"
    pwf = tmp_path / "chpw"
    pwf.write_text(CANARY + "\n")
    s = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path), "LLMPULSE_CLICKHOUSE": "https://ch:8443",
                           "LLMPULSE_CLICKHOUSE_USER": "svc", "LLMPULSE_CLICKHOUSE_PASSWORD_FILE": str(pwf),
                           "LLMPULSE_CLICKHOUSE_CA_FILE": str(pki.ca)}, path=None)
    assert s.clickhouse == "https://ch:8443"
    assert s.clickhouse_auth.client_kwargs() == {"username": "svc", "password": CANARY,
                                                 "ca_cert": str(pki.ca)}
    with pytest.raises(ConfigError) as info:
        load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path), "LLMPULSE_CLICKHOUSE": f"ftp://u:{CANARY}@h"},
                      path=None)
    assert CANARY not in str(info.value)
    with pytest.raises(CredentialsError, match=r"^LLMPULSE_CLICKHOUSE_CA_FILE"):
        ClickHouseCredentials.resolve("http://ch:8123", {"LLMPULSE_CLICKHOUSE_CA_FILE": str(pki.ca)})
    with pytest.raises(CredentialsError, match=r"^LLMPULSE_CLICKHOUSE"):
        ClickHouseCredentials.resolve(f"chdb://u:{CANARY}@/tmp/x", {})


def test_grafana_token_from_a_file_and_never_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str],
                                                    grafana) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    import argparse

    from llmpulse import dashboards_cli as publish

    _fake, url = grafana
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(tmp_path / "none.yaml"))
    publish.configure(parser)
    monkeypatch.setenv("LLMPULSE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    token_file = tmp_path / "grafana-token"
    token_file.write_text(GRAFANA_TOKEN + "\n")
    monkeypatch.setenv("GRAFANA_TOKEN_FILE", str(token_file))
    args = parser.parse_args(["publish", "--grafana-url", url, "--no-annotations",
                              "--dashboard", "overview"])
    assert publish.run_cli(args) == 0
    token_file.write_text(CANARY)
    assert publish.run_cli(args) == 2
    captured = capsys.readouterr()
    assert "Unauthorized" in captured.err
    assert CANARY not in captured.out + captured.err
    monkeypatch.setenv("GRAFANA_TOKEN_FILE", str(tmp_path / "missing"))
    assert publish.run_cli(args) == 2
    assert "GRAFANA_TOKEN_FILE: cannot read" in capsys.readouterr().err
