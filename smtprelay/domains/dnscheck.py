"""Live DNS checks of a sender domain's records, through the configured resolver.

Owns: the dnspython resolver built from `[dns]` and the judgement of each record: DKIM
passes when the published key equals ours; SPF is evaluated with pyspf for every one of
`server.public_ips` (pass required; two SPF records is a failure); DMARC needs v=DMARC1
and a valid p=; MX (recommended) must point at `server.hostname`.

Must never: run on the event loop (it blocks on DNS); the server calls it in a thread.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import dns.exception
import dns.resolver
import spf

from smtprelay.config import Config
from smtprelay.resolver import describe_failure, make_resolver
from smtprelay.domains.records import DnsRecord


@dataclass(frozen=True, slots=True)
class RecordCheck:
    record: DnsRecord
    current: str          # what DNS has now ("" when nothing)
    status: str           # pass, fail, missing, error
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, object]:
        doc = self.record.as_dict()
        doc.update(expected=self.record.value, current=self.current, status=self.status, reason=self.reason)
        return doc


class TempDnsError(Exception):
    pass


def lookup_txt(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise TempDnsError(f"DNS lookup of {name} TXT failed: {describe_failure(exc)}") from None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def _tags(value: str) -> dict[str, str]:
    tags = {}
    for part in value.split(";"):
        if "=" in part:
            k, _, v = part.partition("=")
            tags[k.strip().lower()] = re.sub(r"\s+", "", v.strip())
    return tags


def check_dkim(resolver: dns.resolver.Resolver, record: DnsRecord) -> RecordCheck:
    found = lookup_txt(resolver, record.fqdn)
    if not found:
        return RecordCheck(record, "", "missing", "no TXT record")
    want = _tags(record.value)
    for value in found:
        tags = _tags(value)
        if tags.get("p") == want["p"] and tags.get("k", "rsa") == want["k"] and tags.get("v", "DKIM1") == "DKIM1":
            return RecordCheck(record, value, "pass", "published key equals ours")
    return RecordCheck(record, " | ".join(found), "fail", "the published key is not this selector's key")


def check_spf(resolver: dns.resolver.Resolver, record: DnsRecord, config: Config,
              addresses: list[str] | None = None) -> RecordCheck:
    """Evaluates the published policy for every address the domain's mail can leave from
    (`addresses`, by default server.public_ips)."""
    ips = list(config.server.public_ips) if addresses is None else addresses
    found = [v for v in lookup_txt(resolver, record.fqdn) if v.lower().startswith("v=spf1")]
    if not found:
        return RecordCheck(record, "", "missing", "no v=spf1 TXT record")
    current = " | ".join(found)
    if len(found) > 1:
        return RecordCheck(record, current, "fail", "more than one SPF record (RFC 7208 permerror): merge them")
    if not ips:
        return RecordCheck(record, current, "error", "set server.public_ips (or give the domain an egress pool "
                                                     "with addresses) so the policy can be evaluated")
    failures = []
    original = spf.DNSLookup
    spf.DNSLookup = _spf_lookup(resolver)  # pyspf's documented plug point for DNS
    try:
        for ip in ips:
            result, explanation = spf.check2(i=ip, s=f"postmaster@{record.fqdn}", h=config.server.hostname)
            if result != "pass":
                failures.append(f"{ip}: {result} ({explanation})")
    finally:
        spf.DNSLookup = original
    if failures:
        return RecordCheck(record, current, "fail", "SPF does not pass for " + "; ".join(failures))
    return RecordCheck(record, current, "pass", "SPF passes for " + ", ".join(ips))


def _spf_lookup(resolver: dns.resolver.Resolver):  # type: ignore[no-untyped-def]
    def lookup(name, qtype, strict=True, timeout=None):  # type: ignore[no-untyped-def]
        out = []
        try:
            answer = resolver.resolve(name, qtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from None
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out
    return lookup


def check_dmarc(resolver: dns.resolver.Resolver, record: DnsRecord) -> RecordCheck:
    found = [v for v in lookup_txt(resolver, record.fqdn) if v.replace(" ", "").upper().startswith("V=DMARC1")]
    if not found:
        return RecordCheck(record, "", "missing", "no v=DMARC1 TXT record")
    if len(found) > 1:
        return RecordCheck(record, " | ".join(found), "fail", "more than one DMARC record")
    policy = _tags(found[0]).get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return RecordCheck(record, found[0], "fail", "p= must be none, quarantine or reject")
    return RecordCheck(record, found[0], "pass", f"DMARC policy p={policy}")


def check_mx(resolver: dns.resolver.Resolver, record: DnsRecord, hostname: str) -> RecordCheck:
    try:
        answer = resolver.resolve(record.fqdn, "MX")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return RecordCheck(record, "", "missing", "no MX record")
    except dns.exception.DNSException as exc:
        return RecordCheck(record, "", "error", f"DNS lookup failed: {exc}")
    values = [f"{r.preference} {r.exchange.to_text()}" for r in answer]
    if any(r.exchange.to_text().rstrip(".").lower() == hostname.lower() for r in answer):
        return RecordCheck(record, " | ".join(values), "pass", "points at this relay")
    return RecordCheck(record, " | ".join(values), "fail", f"does not point at {hostname}")


def check_all(records: list[DnsRecord], config: Config, addresses: list[str] | None = None) -> list[RecordCheck]:
    resolver = make_resolver(config.dns)
    results = []
    for record in records:
        try:
            if record.kind == "dkim":
                results.append(check_dkim(resolver, record))
            elif record.kind in ("spf", "bounce_spf"):
                results.append(check_spf(resolver, record, config, addresses))
            elif record.kind == "dmarc":
                results.append(check_dmarc(resolver, record))
            else:
                results.append(check_mx(resolver, record, config.server.hostname))
        except TempDnsError as exc:
            results.append(RecordCheck(record, "", "error", str(exc)))
    return results


