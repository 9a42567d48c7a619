"""Test support for Kafka over TLS: a private CA made per test session and a
stunnel TLS terminator (mutual TLS) in front of the Tansu broker.

The Tansu binary we ship accepts ``--cert``/``--key`` but serves no TLS (the
two flags are even mutually exclusive in its argument parser), so TLS is
terminated by stunnel, as a load balancer or sidecar would in production.
stunnel comes from Debian (``stunnel4``); :func:`ensure_stunnel` installs it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from llmpulse.broker import free_port, port_is_free


@dataclass(frozen=True)
class Pki:
    """Files of one test PKI: a CA, the broker's certificate, a client's, and a
    second, unrelated CA with a client certificate of its own."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *,
          server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
    )
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """A fresh CA, broker and client certificates (and a rogue CA) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca, ca_key = _ca("llmpulse test CA")
    rogue, rogue_key = _ca("llmpulse rogue CA")
    srv, srv_key = _leaf("localhost", ca, ca_key, server=True)
    cli, cli_key = _leaf("llmpulse-client", ca, ca_key, server=False)
    rcli, rcli_key = _leaf("llmpulse-client", rogue, rogue_key, server=False)
    p = Pki(*(directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                       "client.key", "rogue-ca.pem", "rogue-client.pem",
                                       "rogue-client.key")))
    p.ca.write_bytes(ca.public_bytes(pem))
    p.rogue_ca.write_bytes(rogue.public_bytes(pem))
    p.server_cert.write_bytes(srv.public_bytes(pem))
    p.client_cert.write_bytes(cli.public_bytes(pem))
    p.rogue_client_cert.write_bytes(rcli.public_bytes(pem))
    _write_key(srv_key, p.server_key)
    _write_key(cli_key, p.client_key)
    _write_key(rcli_key, p.rogue_client_key)
    return p


def ensure_stunnel() -> str:
    """The stunnel binary, installed from Debian when missing; skips (loudly, and
    never under CI=true) only if it cannot be installed."""
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found:
        return found
    errors = []
    for cmd in (["apt-get", "install", "-y", "-q", "stunnel4"],
                ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "stunnel4"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{' '.join(cmd)}: {exc}")
            continue
        if r.returncode != 0:
            errors.append(f"{' '.join(cmd)}: {r.stderr.strip()[-300:]}")
        found = shutil.which("stunnel4") or shutil.which("stunnel")
        if found:
            return found
    reason = "stunnel4 is needed for the Kafka TLS tests and could not be installed: " + "; ".join(errors)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)
    raise AssertionError("unreachable")


class TlsProxy:
    """stunnel accepting TLS on ``port`` and forwarding to ``target`` (plain TCP).
    With ``require_client_cert`` a client must present a certificate signed by
    ``pki.ca`` (mutual TLS). Started and stopped by pid."""

    def __init__(self, pki: Pki, target_port: int, directory: Path, *,
                 port: int | None = None, require_client_cert: bool = True) -> None:
        self.pki = pki
        self.target_port = target_port
        self.port = port if port is not None else free_port()
        self.directory = directory
        self.require_client_cert = require_client_cert
        self.log_path = directory / f"stunnel-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> TlsProxy:
        binary = ensure_stunnel()
        conf = self.directory / f"stunnel-{self.port}.conf"
        lines = [
            "foreground = yes", "pid =", "debug = 5", f"output = {self.log_path}",
            "[kafka]", f"accept = 127.0.0.1:{self.port}", f"connect = 127.0.0.1:{self.target_port}",
            f"cert = {self.pki.server_cert}", f"key = {self.pki.server_key}",
        ]
        if self.require_client_cert:
            lines += [f"CAfile = {self.pki.ca}", "verifyChain = yes", "requireCert = yes"]
        conf.write_text("\n".join(lines) + "\n")
        self._proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"stunnel exited: {self.log()}")
            if not port_is_free(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"stunnel did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
