"""The anchor: a private Postfix instance (and OpenDKIM as its milter) on 127.0.0.1 only.

Postfix runs from its own config, queue and data directories under a scratch directory, with
Debian's defaults apart from what a loopback relay needs: mynetworks = 127.0.0.0/8 may relay,
everything goes to one relayhost (the benchmark's smtp-sink), no DNS, no TLS, its log in a file.
Queue files are fsynced as always (Postfix's durability is not turned down for the race).
OpenDKIM signs with RSA-2048, relaxed/relaxed, over a unix socket (milter protocol 6).

Stopped by PID: the master's (from its pid file) and OpenDKIM's.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import stop_pid, wait_port

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class OpenDkim:
    def __init__(self, workdir: Path, domain: str, selector: str = "anchor"):
        self.dir = workdir / "opendkim"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "milter.sock"
        postfix = pwd.getpwnam("postfix")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file = self.dir / f"{selector}.private"
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_file, 0o600)
        os.chown(key_file, postfix.pw_uid, postfix.pw_gid)
        os.chown(self.dir, postfix.pw_uid, postfix.pw_gid)
        conf = self.dir / "opendkim.conf"
        conf.write_text("\n".join([
            "Syslog no", "Background no", "Mode s", "Canonicalization relaxed/relaxed",
            "SignatureAlgorithm rsa-sha256", f"Domain {domain}", f"Selector {selector}", f"KeyFile {key_file}",
            f"Socket local:{self.socket}", "UMask 000", "UserID postfix", "OversignHeaders From",
            "InternalHosts 127.0.0.1", "",
        ]))
        self.proc = subprocess.Popen(["opendkim", "-f", "-x", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "opendkim.log", "ab"))
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("opendkim did not start: " + (self.dir / "opendkim.log").read_text())
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_pid(self.proc.pid)


class Postfix:
    def __init__(self, workdir: Path, port: int, relayhost_port: int, milter: Path | None = None):
        self.dir = workdir / "postfix"
        self.port = port
        self.etc, self.spool, self.data = self.dir / "etc", self.dir / "spool", self.dir / "data"
        for d in (self.etc, self.spool, self.data):
            d.mkdir(parents=True, exist_ok=True)
        postfix = pwd.getpwnam("postfix")
        os.chown(self.data, postfix.pw_uid, postfix.pw_gid)
        self.maillog = self.dir / "maillog"
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.spool}", f"data_directory = {self.data}", "meta_directory = /etc/postfix",
            "myhostname = anchor.bench", "mydomain = bench", "myorigin = $myhostname", "mydestination =",
            "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4", "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            f"relayhost = [127.0.0.1]:{relayhost_port}",
            f"maillog_file = {self.maillog}", f"maillog_file_prefixes = {self.dir}",
            "smtp_dns_support_level = disabled", "smtpd_peername_lookup = no",
            "smtp_tls_security_level = none", "smtpd_tls_security_level = none",
            "alias_maps =", "alias_database =", "local_recipient_maps =", "biff = no",
        ]
        if milter is not None:
            main += [f"smtpd_milters = unix:{milter}", "milter_default_action = tempfail", "milter_protocol = 6"]
        (self.etc / "main.cf").write_text("\n".join(main) + "\n")
        (self.etc / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{port}"))
        # `postfix start` creates the queue directories with their owners, then starts the master.
        out = subprocess.run(["postfix", "-c", str(self.etc), "start"], capture_output=True, text=True)
        if out.returncode != 0:
            log = self.maillog.read_text() if self.maillog.exists() else ""
            raise RuntimeError(f"postfix did not start: {out.stdout}{out.stderr}{log[-2000:]}")
        wait_port(port)
        self.pid = int((self.spool / "pid" / "master.pid").read_text().split()[0])

    def delivered(self) -> int:
        """Messages the anchor relayed, from its log (status=sent lines)."""
        if not self.maillog.exists():
            return 0
        return self.maillog.read_text(errors="replace").count("status=sent")

    def stop(self) -> None:
        stop_pid(self.pid)
