"""Receiving servers for delivery tests: our aiosmtpd receiver and Postfix's smtp-sink, as
processes on 127.0.0.x, stopped by PID."""
from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import ROOT


def port_free_on(hosts: tuple[str, ...]) -> int:
    """A TCP port free on every one of these loopback addresses (MX tests share one port)."""
    while True:
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        ok = True
        for host in hosts[1:]:
            with socket.socket() as t:
                try:
                    t.bind((host, port))
                except OSError:
                    ok = False
        if ok:
            return port


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start on {host}:{port}")
            time.sleep(0.05)


class _Process:
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


class Receiver(_Process):
    def __init__(self, tmp: Path, host: str = "127.0.0.1", port: int | None = None, *args: str):
        self.host = host
        self.port = port or port_free_on((host,))
        self.log = tmp / f"receiver-{host}-{self.port}.jsonl"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Receiver":
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "receiver.py"), "--host", self.host,
                                      "--port", str(self.port), "--log", str(self.log), *self.args],
                                     stdout=subprocess.DEVNULL, stderr=open(str(self.log) + ".err", "ab"))
        wait_listening(self.host, self.port, self.proc, "receiver")
        return self

    def transactions(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            doc = json.loads(line)
            doc["data"] = base64.b64decode(doc["data"])
            out.append(doc)
        return out


class SmtpSink(_Process):
    """Postfix's smtp-sink with fault injection flags (see smtp-sink(1))."""

    def __init__(self, tmp: Path, *flags: str, host: str = "127.0.0.1"):
        self.host = host
        self.port = port_free_on((host,))
        self.flags = flags
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "SmtpSink":
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        # No -d dump: smtp-sink writes it as user nobody, who cannot enter pytest's 0700 tmp dirs.
        self.proc = subprocess.Popen([binary, "-u", "nobody", *self.flags, f"{self.host}:{self.port}", "64"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.host, self.port, self.proc, "smtp-sink")
        return self



def make_ca(tmp: Path, names: tuple[str, ...]) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for `names`: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtprelay test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / "ca.pem", tmp / "server.pem", tmp / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths
