"""The DNS records a sender domain must publish, and their renderings (table, zone, JSON,
and a dnsmasq command serving them for a local test setup).

Pure: takes the domain, its DKIM public keys and the relay's settings. Host names are
given both fully qualified and relative to the registered domain, so the operator of
`abc.example.com` (zone `example.com`) sees `_dmarc.abc` and `<selector>._domainkey.abc`.
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass

from smtprelay.config import Config

# Public suffixes with two labels that are common enough to matter for the "host" column.
# Anything else is treated as a one-label suffix (example.com, example.de, ...).
_TWO_LABEL_SUFFIXES = {
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "com.au", "net.au", "org.au", "edu.au", "co.nz", "org.nz",
    "co.jp", "ne.jp", "or.jp", "ac.jp", "com.cn", "net.cn", "org.cn", "gov.cn", "edu.cn", "com.hk", "com.tw",
    "com.sg", "com.my", "co.kr", "co.in", "co.za", "com.br", "com.mx", "com.ar", "com.tr", "com.ua", "co.il",
    "com.ru",
}


def registered_domain(domain: str) -> str:
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and ".".join(labels[-2:]) in _TWO_LABEL_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def relative_host(fqdn: str, zone: str) -> str:
    if fqdn == zone:
        return "@"
    return fqdn[: -(len(zone) + 1)]


@dataclass(frozen=True, slots=True)
class DnsRecord:
    kind: str          # dkim, spf, dmarc, mx
    type: str          # TXT, MX
    fqdn: str
    host: str          # relative to the registered domain ("@" for the apex)
    value: str
    required: bool
    note: str = ""
    selector: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PublicKey:
    selector: str
    algorithm: str
    dns_value: str
    state: str         # active, pending (rotation), retiring


def expected_spf(config: Config, addresses: list[str] | None = None) -> str:
    """`addresses`: every source address the domain's mail can leave from (its egress pools,
    and server.public_ips where the kernel picks); by default server.public_ips. With
    server.spf_include, the include covers the relay's own addresses and pool addresses are
    named beside it."""
    ips = list(config.server.public_ips) if addresses is None else addresses
    if config.server.spf_include:
        extra = [ip for ip in ips if ip not in config.server.public_ips]
        return " ".join(["v=spf1", f"include:{config.server.spf_include}", *_mechanisms(extra), "~all"])
    mechanisms = " ".join(_mechanisms(ips))
    return f"v=spf1 {mechanisms} ~all" if mechanisms else f"v=spf1 a:{config.server.hostname} ~all"


def _mechanisms(ips: list[str]) -> list[str]:
    return [("ip6:" if ":" in ip else "ip4:") + ip for ip in ips]


def expected_records(domain: str, keys: list[PublicKey], config: Config,
                     addresses: list[str] | None = None) -> list[DnsRecord]:
    zone = registered_domain(domain)
    records = []
    for key in keys:
        fqdn = f"{key.selector}._domainkey.{domain}"
        note = {"pending": "new key from rotation: signing switches to it once this record verifies",
                "retiring": "previous key: keep it published until the overlap ends"}.get(key.state, "")
        records.append(DnsRecord("dkim", "TXT", fqdn, relative_host(fqdn, zone), key.dns_value,
                                 required=key.state == "active", note=note, selector=key.selector))
    records.append(DnsRecord("spf", "TXT", domain, relative_host(domain, zone), expected_spf(config, addresses), True,
                             note="a domain must have exactly one SPF record: merge these mechanisms into an "
                                  "existing v=spf1 record instead of adding a second one"))
    dmarc = f"_dmarc.{domain}"
    records.append(DnsRecord("dmarc", "TXT", dmarc, relative_host(dmarc, zone),
                             f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}", True,
                             note="any valid DMARC record with v=DMARC1 and p= passes"))
    bounce = f"{config.domains.return_path_host}.{domain}"
    records.append(DnsRecord("mx", "MX", bounce, relative_host(bounce, zone), f"10 {config.server.hostname}.",
                             False, note="recommended: bounces and complaints to the return-path host reach this "
                                         "relay's feedback listener; with this and the next record verified, the "
                                         "envelope sender of delivered mail becomes <prefix>+<token>@" + bounce))
    records.append(DnsRecord("bounce_spf", "TXT", bounce, relative_host(bounce, zone), expected_spf(config, addresses),
                             False, note="SPF is checked for the envelope sender's domain: publish the same policy "
                                         "here for the return-path host (DKIM still signs the From: domain, and DMARC "
                                         "aligns it relaxed)"))
    return records


def txt_strings(value: str) -> list[str]:
    """Split a TXT value into the ≤255-octet strings DNS needs (long DKIM keys)."""
    return [value[i:i + 255] for i in range(0, len(value), 255)] or [""]


def zone_lines(records: list[DnsRecord], ttl: int = 3600) -> list[str]:
    lines = []
    for r in records:
        if r.type == "TXT":
            data = " ".join('"' + s.replace('"', '\\"') + '"' for s in txt_strings(r.value))
            lines.append(f"{r.fqdn}. {ttl} IN TXT ( {data} )")
        else:
            lines.append(f"{r.fqdn}. {ttl} IN {r.type} {r.value}")
    return lines


def dnsmasq_command(domain: str, records: list[DnsRecord], port: int = 5353) -> list[str]:
    """A dnsmasq command line (one option per line, shell-quoted) that serves exactly these
    records on 127.0.0.1:`port` for a local test setup: no system configuration
    (`--conf-file=/dev/null`), loopback only, no upstream, and every other name under the
    domain's zone answered NXDOMAIN (`--local`). TXT values are split into ≤255-octet strings."""
    zone = registered_domain(domain)
    options = ["--conf-file=/dev/null", "--keep-in-foreground", f"--port={port}", "--listen-address=127.0.0.1",
               "--bind-interfaces", "--no-resolv", "--no-hosts", "--cache-size=0", f"--local=/{zone}/"]
    for r in records:
        if r.type == "TXT":
            # On dnsmasq's command line a comma separates the strings of one TXT record (quotes
            # would be served as part of the value); our values hold no comma.
            options.append(f"--txt-record={r.fqdn}," + ",".join(txt_strings(r.value)))
        elif r.type == "MX":
            preference, target = r.value.split()
            options.append(f"--mx-host={r.fqdn},{target.rstrip('.')},{preference}")
    return ["dnsmasq \\"] + [f"  {shlex.quote(o)} \\" for o in options[:-1]] + [f"  {shlex.quote(options[-1])}"]
