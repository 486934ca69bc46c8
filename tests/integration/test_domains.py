"""Sender domains as a tenant meets them: records, live verification against a real DNS
server (dnsmasq), sender policy, DKIM signatures checked by an independent verifier, drift,
re-verification by the running server, and key rotation."""
from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from dns.resolver import Resolver

from tests.dnsserver import DnsServer, records_from_cli
from tests.support import ROOT, Relay, client_tls, free_port, queued_id

VERIFIER = ROOT / "tests" / "tools" / "dkim_verify.mjs"
pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None or not (VERIFIER.parent / "node_modules").is_dir(),
                                reason="dnsmasq and the mailauth verifier are installed by `make test`")

ZONES = ("example.com", "example.org", "other.example")


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path, ZONES)
    server.publish([])
    yield server
    server.stop()


def domain_relay(make_relay: Callable[..., Relay], dns: DnsServer, **overrides: Any) -> Relay:
    # Recipients at example.org go to a port where nothing listens: delivery defers, and never
    # bounces (an NXDOMAIN bounce would put the test recipient on the blocklist).
    conf = {"server": {"public_ips": ["127.0.0.1"]}, "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
            "delivery": {"routes": {"example.org": f"127.0.0.1:{free_port()}"}}}
    for key, value in overrides.items():
        conf.setdefault(key, {}).update(value)
    relay = make_relay(conf, seed=False)
    relay.user, relay.password = relay.add_account_with_credential("acme")  # type: ignore[attr-defined]
    return relay


def publish_domain(relay: Relay, dns: DnsServer, domain: str, extra: list[tuple[str, str, str]] = ()) -> None:  # type: ignore[assignment]
    dns.publish(dns.records + records_from_cli(relay.cli_json("domain", "records", domain)) + list(extra))


def send(relay: Relay, mail_from: str, from_header: str | None = None, subject: str = "hi") -> tuple[int, bytes]:
    header = from_header if from_header is not None else mail_from
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=10) as s:
        s.starttls(context=client_tls())
        s.login(relay.user, relay.password)  # type: ignore[attr-defined]
        code, reply = s.docmd("MAIL", f"FROM:<{mail_from}>")
        if code != 250:
            return code, reply
        s.rcpt("friend@example.org")
        return s.data(f"From: Sender <{header}>\r\nTo: friend@example.org\r\nSubject: {subject}\r\n"
                      f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n".encode())


def independent_verify(dns: DnsServer, message: bytes) -> list[str]:
    proc = subprocess.run(["node", str(VERIFIER), dns.nameserver], input=message, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().splitlines()


def wait_for(predicate: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)  # polling the running relay's store; the relay runs on real time


def test_records_for_a_subdomain_and_limits(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    relay = domain_relay(make_relay, dns, domains={"max_per_account": 2, "max_addresses_per_domain": 2},
                         dkim={"algorithms": ["rsa-sha256", "ed25519-sha256"]})
    added = relay.cli_json("domain", "add", "acme", "abc.example.com")
    assert added["status"] == "pending"
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in added["records"]:
        by_kind.setdefault(r["kind"], []).append(r)
    dkim = by_kind["dkim"]
    assert [d["value"].split(";")[1].strip() for d in dkim] == ["k=rsa", "k=ed25519"]
    assert all(d["host"] == f"{d['selector']}._domainkey.abc" and d["type"] == "TXT" for d in dkim)
    assert len(dkim[0]["value"]) > 390  # RSA-2048 public key
    assert by_kind["dmarc"][0]["host"] == "_dmarc.abc" and "p=none" in by_kind["dmarc"][0]["value"]
    assert by_kind["spf"][0]["host"] == "abc" and by_kind["spf"][0]["value"] == "v=spf1 ip4:127.0.0.1 ~all"
    assert "exactly one SPF record" in by_kind["spf"][0]["note"]
    assert by_kind["mx"][0]["value"].endswith(".") and by_kind["mx"][0]["fqdn"] == "bounce.abc.example.com"
    # The apex of a registered domain is "@".
    apex = relay.cli_json("domain", "add", "acme", "example.org")["records"]
    assert next(r for r in apex if r["kind"] == "spf")["host"] == "@"
    zone = relay.cli("domain", "records", "abc.example.com", "--format", "zone").stdout
    assert '_dmarc.abc.example.com. 3600 IN TXT ( "v=DMARC1;' in zone and "IN MX 10 relay.test." in zone
    # Limits and ownership.
    third = relay.cli("domain", "add", "acme", "third.example", check=False)
    assert third.returncode == 1 and "domains.max_per_account = 2" in third.stderr
    relay.cli("account", "add", "rival")
    taken = relay.cli("domain", "add", "rival", "example.org", check=False)
    assert taken.returncode == 1 and "already registered to another account" in taken.stderr
    relay.cli("address", "add", "a@example.org", "--name", "A")
    relay.cli("address", "add", "b@example.org")
    over = relay.cli("address", "add", "c@example.org", check=False)
    assert over.returncode == 1 and "domains.max_addresses_per_domain = 2" in over.stderr
    stray = relay.cli("address", "add", "x@unregistered.example", check=False)
    assert stray.returncode == 1 and "not a registered sender domain" in stray.stderr
    # Keys are files with 0600 permissions, never printed.
    key_files = list((relay.data_dir / "dkim" / "abc.example.com").iterdir())
    assert len(key_files) == 2 and all(f.stat().st_mode & 0o777 == 0o600 for f in key_files)
    assert "PRIVATE KEY" not in relay.cli("domain", "records", "abc.example.com").stdout


def test_verify_against_real_dns(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    relay = domain_relay(make_relay, dns)
    relay.cli("domain", "add", "acme", "example.com")
    missing = relay.cli("domain", "verify", "example.com", "--json", check=False)
    assert missing.returncode == 1
    publish_domain(relay, dns, "example.com")
    ok = relay.cli("domain", "verify", "example.com", check=False)
    assert ok.returncode == 0, ok.stdout
    assert "[PASS   ] DKIM TXT" in ok.stdout and "example.com: verified (was pending)" in ok.stdout
    assert ok.stderr == ""           # the transition is said once, on stdout (issue 23, item 18)
    # A second SPF record is a failure with that reason, even though each alone would pass.
    dns.publish(dns.records + [("TXT", "example.com", "v=spf1 ip4:192.0.2.1 -all")])
    doc = __import__("json").loads(relay.cli("domain", "verify", "example.com", "--json", check=False).stdout)
    spf = next(r for r in doc["records"] if r["kind"] == "spf")
    assert spf["status"] == "fail" and "more than one SPF record" in spf["reason"]
    assert doc["status"] == "failing"
    # An SPF policy that does not cover our IP fails by evaluation, not by text.
    records = [r for r in dns.records if not (r[1] == "example.com" and r[2].startswith("v=spf1"))]
    dns.publish(records + [("TXT", "example.com", "v=spf1 ip4:192.0.2.0/24 -all")])
    doc = __import__("json").loads(relay.cli("domain", "verify", "example.com", "--json", check=False).stdout)
    spf = next(r for r in doc["records"] if r["kind"] == "spf")
    assert spf["status"] == "fail" and "127.0.0.1: fail" in spf["reason"]


def test_the_printed_dnsmasq_command_serves_records_that_verify(make_relay, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 23, item 25: `domain records --format dnsmasq` prints a command a user can paste;
    run as printed (only the port moved to a free one), `domain verify` passes against it."""
    port = free_port(udp_too=True)
    relay = make_relay({"server": {"public_ips": ["127.0.0.1"]},
                        "dns": {"nameservers": [f"127.0.0.1:{port}"], "timeout": "2s"}}, seed=False)
    relay.cli("account", "add", "acme")
    relay.cli("domain", "add", "acme", "example.com")
    printed = relay.cli("domain", "records", "example.com", "--format", "dnsmasq").stdout
    assert "--conf-file=/dev/null" in printed and "--listen-address=127.0.0.1" in printed
    assert "restart the relay" in printed
    script = tmp_path / "dnsmasq.sh"
    script.write_text(printed.replace("--port=5353", f"--port={port}"))
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        resolver = Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 0.5
        deadline = time.monotonic() + 10
        while True:
            try:
                resolver.resolve("example.com", "TXT")
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        ok = relay.cli("domain", "verify", "example.com", check=False)
        assert ok.returncode == 0 and "example.com: verified (was pending)" in ok.stdout, ok.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)       # bash and the dnsmasq it started
        proc.wait(timeout=10)


def test_signed_mail_verifies_independently_with_both_algorithms(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    relay = domain_relay(make_relay, dns, dkim={"algorithms": ["rsa-sha256", "ed25519-sha256"]})
    relay.cli("domain", "add", "acme", "example.com")
    relay.cli("address", "add", "news@example.com")
    publish_domain(relay, dns, "example.com")
    assert relay.cli("domain", "verify", "example.com", check=False).returncode == 0
    relay.start()
    code, reply = send(relay, "news@example.com")
    assert code == 250, reply
    body = relay.body(queued_id(reply))
    results = independent_verify(dns, body)
    assert len(results) == 2
    assert results[0].startswith("pass rsa-sha256 d=example.com s=r")
    assert results[1].startswith("pass ed25519-sha256 d=example.com s=e")
    header = body.split(b"\r\n\r\n")[0].replace(b"\r\n ", b" ")
    assert b"c=relaxed/relaxed" in header
    # From over-signed; Date and Message-ID were added by the relay and are signed too.
    signed = header.split(b" h=", 1)[1].split(b";", 1)[0]
    assert sorted(name.strip() for name in signed.split(b":")) == [
        b"content-type", b"date", b"from", b"from", b"message-id", b"mime-version", b"subject", b"to"]
    # Tampering is caught by the same verifier.
    tampered = body.replace(b"Hello.", b"Hello!")
    tampered_results = independent_verify(dns, tampered)
    assert len(tampered_results) == 2 and not any(line.startswith("pass") for line in tampered_results)
    assert all("body hash" in line for line in tampered_results), tampered_results
    assert relay.metric("smtprelay_dkim_sign_seconds_count") == 1


SHAPES = {
    "long folded headers": b"Subject: " + b"\r\n\t".join([b"word " * 15] * 6) + b"\r\nTo: " + b",\r\n ".join(
        b"user%d@example.org" % i for i in range(40)) + b"\r\n\r\nbody\r\n",
    "8-bit body": "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                  "\r\nGrüße aus Köln \t — ünïcödé\r\n".encode(),
    "empty body": b"Subject: empty\r\n\r\n",
    "trailing blank lines": b"Subject: t\r\n\r\nlast\r\n\r\n\r\n\r\n",
    "body over 1 MB": b"Subject: big\r\n\r\n" + b"0123456789 abcdef  ghij\t\r\n" * 45_000,
}


@pytest.mark.parametrize("algorithms,expected", [
    (["rsa-sha256"], ["rsa-sha256"]), (["ed25519-sha256"], ["ed25519-sha256"]),
    (["rsa-sha256", "ed25519-sha256"], ["rsa-sha256", "ed25519-sha256"])], ids=["rsa", "ed25519", "dual"])
def test_message_shapes_verify_with_mailauth_and_dkimpy(make_relay, dns: DnsServer, algorithms: list[str],  # type: ignore[no-untyped-def]
                                                        expected: list[str]) -> None:
    relay = domain_relay(make_relay, dns, dkim={"algorithms": algorithms})
    relay.cli("domain", "add", "acme", "example.com")
    relay.cli("address", "add", "news@example.com")
    publish_domain(relay, dns, "example.com")
    assert relay.cli("domain", "verify", "example.com", check=False).returncode == 0
    relay.start()
    host, port = dns.nameserver.split(":")
    resolver = Resolver(configure=False)
    resolver.nameservers, resolver.port = [host], int(port)

    def txt(name: bytes, timeout: int = 5) -> bytes:
        return b"".join(resolver.resolve(name.decode(), "TXT")[0].strings)

    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=30) as s:
        s.starttls(context=client_tls())
        s.login(relay.user, relay.password)  # type: ignore[attr-defined]
        for name, shape in SHAPES.items():
            s.mail("news@example.com")
            s.rcpt("friend@example.org")
            code, reply = s.data(b"From: News <news@example.com>\r\n" + shape)
            assert code == 250, (name, reply)
            body = relay.body(queued_id(reply))
            assert body.endswith(shape), name
            results = independent_verify(dns, body)
            assert [line.split()[:2] for line in results] == [["pass", a] for a in expected], (name, results)
            count = body.split(b"\r\n\r\n", 1)[0].count(b"DKIM-Signature:")
            assert [dkim.DKIM(body).verify(idx=i, dnsfunc=txt) for i in range(count)] == [True] * len(expected), name


def test_sender_policy(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    relay = domain_relay(make_relay, dns)
    relay.cli("domain", "add", "acme", "example.com")
    relay.cli("address", "add", "news@example.com")
    relay.cli("account", "add", "rival")
    relay.cli("domain", "add", "rival", "other.example")
    relay.cli("address", "add", "ceo@other.example")
    relay.cli("domain", "add", "acme", "example.org")   # acme's, but never verified
    relay.cli("address", "add", "a@example.org")
    publish_domain(relay, dns, "example.com")
    publish_domain(relay, dns, "other.example")
    relay.cli("domain", "verify", "example.com")
    relay.cli("domain", "verify", "other.example")
    relay.start()
    assert send(relay, "news@example.com")[0] == 250
    code, reply = send(relay, "ceo@other.example")  # another tenant's verified domain
    assert code == 550 and reply.startswith(b"5.7.1 Sender domain other.example is not a sending domain of this "
                                            b"account (rule: domain ownership)")
    code, reply = send(relay, "a@example.org")
    assert code == 550 and b"not verified yet" in reply and b"(rule: domain verification)" in reply
    code, reply = send(relay, "unknown@example.com")
    assert code == 550 and b"Sender address unknown@example.com is not registered" in reply
    code, reply = send(relay, "news@example.com", from_header="ceo@other.example")
    assert code == 550 and b"From: header domain other.example is not example.com" in reply
    assert send(relay, "news@example.com", from_header="alerts@eu.example.com")[0] == 250  # subdomain is fine
    assert relay.metric("smtprelay_recipients_rejected_total", 'reason="sender_domain_not_owned"') == 1
    # With require_registered_address = false any address of a verified domain may send.
    relay.doc["policy"] = {"require_registered_address": False}
    relay.write_config()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: applied policy" in relay.log())
    assert send(relay, "unknown@example.com")[0] == 250


def test_drift_goes_failing_then_stops_after_grace(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    relay = domain_relay(make_relay, dns)
    relay.cli("domain", "add", "acme", "example.com")
    relay.cli("address", "add", "news@example.com")
    publish_domain(relay, dns, "example.com")
    relay.cli("domain", "verify", "example.com")
    relay.start()
    good = list(dns.records)
    # The DKIM record is changed to another key: verification fails, the domain is failing.
    dns.publish([r for r in good if "._domainkey." not in r[1]] +
                [(t, n, v[:-8] + "AAAAAAA=") for t, n, v in good if "._domainkey." in n])
    failed = relay.cli("domain", "verify", "example.com", check=False)
    assert failed.returncode == 1 and "example.com: failing (was verified)" in failed.stdout
    listed = relay.cli_json("domain", "list")["domains"][0]
    assert listed["status"] == "failing" and listed["failing_record"].startswith("DKIM record r")
    # Within the grace period (default 48h) mail still flows.
    assert send(relay, "news@example.com")[0] == 250
    # An operator with a short grace: past it, MAIL is refused naming the failing record.
    relay.doc["domains"] = {"grace": "1ms"}
    relay.write_config()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: applied domains" in relay.log())
    replies: list[bytes] = []

    def refused() -> bool:  # the running server sees the failing status within 2 s
        code, reply = send(relay, "news@example.com")
        replies.append(reply)
        return code == 550
    wait_for(refused)
    assert replies[-1].startswith(b"5.7.1 Sending for example.com is stopped: DKIM record r")
    # Fixing DNS and verifying again lifts it.
    dns.publish(good)
    assert relay.cli("domain", "verify", "example.com", check=False).returncode == 0
    wait_for(lambda: send(relay, "news@example.com")[0] == 250)


def test_running_server_rechecks_verified_domains(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    relay = domain_relay(make_relay, dns, domains={"recheck_interval": "1s"})
    relay.cli("domain", "add", "acme", "example.com")
    publish_domain(relay, dns, "example.com")
    relay.cli("domain", "verify", "example.com")
    relay.start()
    dns.publish([r for r in dns.records if not r[1].startswith("_dmarc.")])  # the DMARC record disappears
    wait_for(lambda: relay.cli_json("domain", "list")["domains"][0]["status"] == "failing", seconds=15)
    assert "domain example.com: verified → failing (DMARC record _dmarc.example.com" in relay.log()
    assert relay.metric("smtprelay_domain_status_changes_total", 'status="failing"') == 1


def test_running_server_verifies_pending_domains_by_itself(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    """Issue 23, item 8: a user publishes the records and does not come back; the relay checks
    pending domains itself (at start, then every 5 min for 2 h, hourly for 3 days: the schedule
    is unit-tested with a fake clock in tests/test_services.py)."""
    relay = domain_relay(make_relay, dns)
    relay.cli("domain", "add", "acme", "example.com")
    publish_domain(relay, dns, "example.com")
    relay.start()
    wait_for(lambda: relay.cli_json("domain", "list")["domains"][0]["status"] == "verified", seconds=15)
    assert "domain example.com: pending → verified" in relay.log()
    assert relay.metric("smtprelay_domain_status_changes_total", 'status="verified"') == 1


def test_rotation_switches_after_the_new_record_verifies(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    relay = domain_relay(make_relay, dns)
    relay.cli("domain", "add", "acme", "example.com")
    relay.cli("address", "add", "news@example.com")
    publish_domain(relay, dns, "example.com")
    relay.cli("domain", "verify", "example.com")
    old = relay.cli_json("domain", "list")["domains"][0]["dkim"][0]["selector"]
    relay.start()
    rotated = relay.cli_json("dkim", "rotate", "example.com")["records"]
    new = rotated[0]["selector"]
    assert new != old and rotated[0]["note"].startswith("new key")
    again = relay.cli("dkim", "rotate", "example.com", check=False)
    assert again.returncode == 1 and "already waiting" in again.stderr
    # Not yet published: signing stays on the old selector.
    code, reply = send(relay, "news@example.com")
    assert code == 250 and independent_verify(dns, relay.body(queued_id(reply)))[0].endswith(f"s={old}")
    publish_domain(relay, dns, "example.com")   # now includes the new selector's record
    verified = relay.cli_json("domain", "verify", "example.com")
    assert verified["promoted_selectors"] == [new]

    def signed_with_new() -> bool:
        code, reply = send(relay, "news@example.com")
        return code == 250 and independent_verify(dns, relay.body(queued_id(reply)))[0] == \
            f"pass rsa-sha256 d=example.com s={new}"
    wait_for(signed_with_new)
    # The old selector stays listed (keep it published) during the overlap.
    states = {k["selector"]: k["state"] for k in relay.cli_json("domain", "list")["domains"][0]["dkim"]}
    assert states == {old: "retiring", new: "active"}
    assert any(r["selector"] == old and "keep it published" in r["note"]
               for r in relay.cli_json("domain", "records", "example.com")["records"])


def test_signature_survives_delivery_to_a_receiving_mta(make_relay, dns: DnsServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.mailservers import Receiver
    rx = Receiver(tmp_path).start()
    try:
        relay = domain_relay(make_relay, dns, dkim={"algorithms": ["rsa-sha256", "ed25519-sha256"]},
                             delivery={"routes": {"example.org": f"127.0.0.1:{rx.port}"}})
        relay.cli("domain", "add", "acme", "example.com")
        relay.cli("address", "add", "news@example.com")
        publish_domain(relay, dns, "example.com")
        relay.cli("domain", "verify", "example.com")
        relay.start()
        # Lines that delivery must dot-stuff, a long line, 8-bit text: the signature must survive the trip.
        with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=10) as s:
            s.starttls(context=client_tls())
            s.login(relay.user, relay.password)  # type: ignore[attr-defined]
            s.sendmail("news@example.com", ["friend@example.org"],
                       "From: News <news@example.com>\r\nTo: friend@example.org\r\nSubject: Grüße\r\n"
                       "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                       ".a line starting with a dot\r\n..two dots\r\n.\r\n"
                       f"{'x' * 900}\r\nSchöne Grüße\r\n".encode())
        wait_for(lambda: len(rx.transactions()) == 1)
        received = rx.transactions()[0]["data"]
        assert b"\r\n.a line starting with a dot\r\n..two dots\r\n.\r\n" in received
        results = independent_verify(dns, received)
        assert [r.split()[0] for r in results] == ["pass", "pass"], results
    finally:
        rx.stop()


def test_the_return_path_turns_to_verp_once_both_bounce_records_verify(make_relay, dns: DnsServer) -> None:  # type: ignore[no-untyped-def]
    """Issue 18: the bounce host needs its MX (bounces reach the feedback listener) and its own
    SPF record (SPF is checked for the envelope sender's domain); only with both verified does
    delivered mail get the VERP return path."""
    relay = domain_relay(make_relay, dns)
    relay.cli("domain", "add", "acme", "example.com")
    records = relay.cli_json("domain", "records", "example.com")["records"]
    bounce_spf = next(r for r in records if r["kind"] == "bounce_spf")
    apex_spf = next(r for r in records if r["kind"] == "spf")
    assert bounce_spf["fqdn"] == "bounce.example.com" and bounce_spf["value"] == apex_spf["value"]
    assert bounce_spf["required"] is False and "envelope sender" in bounce_spf["note"]
    dns.publish(dns.records + [r for r in records_from_cli({"records": records}) if r[1] != "bounce.example.com"
                               or r[0] == "MX"])
    doc = __import__("json").loads(relay.cli("domain", "verify", "example.com", "--json").stdout)
    assert doc["status"] == "verified" and doc["return_path"] == "sender"
    assert next(r for r in doc["records"] if r["kind"] == "bounce_spf")["status"] == "missing"
    publish_domain(relay, dns, "example.com")
    assert "return path: VERP" in relay.cli("domain", "verify", "example.com").stdout
    doc = __import__("json").loads(relay.cli("domain", "verify", "example.com", "--json").stdout)
    assert {r["kind"]: r["status"] for r in doc["records"] if r["kind"] in ("mx", "bounce_spf")} == {
        "mx": "pass", "bounce_spf": "pass"}
    with relay.db() as conn:
        assert conn.execute("SELECT return_path_ok FROM domains WHERE name = 'example.com'").fetchone()[0] == 1
