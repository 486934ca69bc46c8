"""A real DNS server for tests: dnsmasq on a free 127.0.0.1 port, answering only the records given."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype


def free_udp_tcp_port() -> int:
    from tests.support import free_port
    return free_port(udp_too=True)


class DnsServer:
    def __init__(self, tmp: Path, zones: tuple[str, ...]):
        self.dir = tmp
        self.zones = zones
        self.port = free_udp_tcp_port()
        self.records: list[tuple[str, str, str]] = []   # (type, name, value)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def publish(self, records: list[tuple[str, str, str]]) -> None:
        """Serve exactly these records (replacing the previous set) and wait until they answer."""
        self.records = list(records)
        self.stop()
        lines = [f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
                 "no-poll", "pid-file=", "log-facility=-", "cache-size=0"]
        lines += [f"local=/{zone}/" for zone in self.zones]  # authoritative NXDOMAIN/NODATA for the rest
        for rtype, name, value in self.records:
            if rtype == "TXT":
                chunks = [value[i:i + 255] for i in range(0, len(value), 255)]
                lines.append(f"txt-record={name}," + ",".join('"' + c + '"' for c in chunks))
            elif rtype == "MX":
                pref, target = value.split()
                lines.append(f"mx-host={name},{target.rstrip('.')},{pref}")
            elif rtype == "A":
                lines.append(f"host-record={name},{value}")
            elif rtype == "PTR":                  # name: the reverse name (1.8.0.127.in-addr.arpa)
                lines.append(f"ptr-record={name},{value}")
            else:
                raise ValueError(rtype)
        conf = self.dir / f"dnsmasq-{self.port}.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--user=root"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "dnsmasq.log", "ab"))
        deadline = time.monotonic() + 10
        probe = dns.message.make_query(self.zones[0], dns.rdatatype.SOA)
        while True:
            try:
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.2)
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("dnsmasq did not start: " + (self.dir / "dnsmasq.log").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


def records_from_cli(doc: dict) -> list[tuple[str, str, str]]:  # type: ignore[type-arg]
    """The records `smtprelay domain records --json` asks for, as dnsmasq entries."""
    return [(r["type"], r["fqdn"], r["value"]) for r in doc["records"]]
