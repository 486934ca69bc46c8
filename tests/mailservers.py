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
import tempfile
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
        # Only whole lines: the receiver may be writing the last one as we read (a large message
        # is more than one write), and a line is complete once its newline is there.
        for line in self.log.read_text().split("\n")[:-1]:
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


class PostfixMx:
    """A private Postfix instance as a receiving MX that accepts first and bounces later:
    `domain`'s mail goes to local(8), which bounces unknown users with Postfix's own DSN
    generator; every mail it sends (those DSNs) goes to `relayhost` ([ip]:port, no DNS).
    Its directories are under /var/tmp (Postfix's daemons run as user postfix and cannot
    enter pytest's 0700 directories); `stop` ends its master by the PID it wrote."""

    def __init__(self, domain: str, relayhost: str, users: tuple[str, ...] = ()):
        self.domain = domain
        self.relayhost = relayhost
        self.users = users
        self.port = port_free_on(("127.0.0.1",))
        self.dir = Path(tempfile.mkdtemp(prefix="smtprelay-postfix-", dir="/var/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None

    def _postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.dir / "etc"), *args], check=True, capture_output=True)

    def start(self) -> "PostfixMx":
        d = self.dir
        d.chmod(0o755)
        for sub in ("etc", "spool", "data"):
            (d / sub).mkdir()
        shutil.chown(d / "data", "postfix")
        shutil.copy("/etc/postfix/master.cf", d / "etc" / "master.cf")
        aliases = d / "etc" / "aliases"
        # Known users get their mail appended to a file (delivered); anyone else bounces 5.1.1.
        aliases.write_text("".join(f"{u}: {d}/mailbox-{u}\n" for u in self.users))
        (d / "etc" / "main.cf").write_text("\n".join([
            "compatibility_level = 3.6", f"queue_directory = {d}/spool", f"data_directory = {d}/data",
            "mail_owner = postfix", "setgid_group = postdrop", "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
            f"myhostname = mx.{self.domain}", f"mydomain = {self.domain}", f"myorigin = {self.domain}",
            f"mydestination = {self.domain}", "local_recipient_maps =", f"alias_maps = hash:{aliases}",
            f"alias_database = hash:{aliases}", f"relayhost = [{self.relayhost.rsplit(':', 1)[0]}]:"
            f"{self.relayhost.rsplit(':', 1)[1]}", "smtp_dns_support_level = disabled", "mynetworks = 127.0.0.0/8",
            f"maillog_file = {d}/maillog", "biff = no", "allow_mail_to_files = alias", "default_privs = nobody",
            "shlib_directory = /usr/lib/postfix", "daemon_directory = /usr/lib/postfix/sbin",
            "meta_directory = /etc/postfix", ""]))
        subprocess.run(["postalias", "-c", str(d / "etc"), str(aliases)], check=True, capture_output=True)
        for user in self.users:
            box = d / f"mailbox-{user}"
            box.touch()
            shutil.chown(box, "nobody")
        self._postconf("-F", "*/*/chroot = n")
        self._postconf("-M#", "smtp/inet")
        with open(d / "etc" / "master.cf", "a") as fh:
            fh.write(f"127.0.0.1:{self.port} inet n - n - - smtpd\n")
        self._postconf("-M", "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd")
        self.proc = subprocess.Popen(["postfix", "-c", str(d / "etc"), "start-fg"], stdout=subprocess.DEVNULL,
                                     stderr=open(d / "start.err", "ab"))
        wait_listening("127.0.0.1", self.port, self.proc, "postfix")
        return self

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
