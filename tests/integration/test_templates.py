"""Templates and the send API as a tenant meets them (issue 16), through the running relay: a
template with HTML, text and variables sent by the API and by SMTP arrives at a real receiving
server rendered, escaped, DKIM-valid (mailauth and dkimpy) with its attachment intact; missing
variables, sandbox escapes, bad fields and policy refusals get their codes; 50 parallel API
sends to one address are held to the hourly cap exactly; `stats --template` counts them."""
from __future__ import annotations

import base64
import concurrent.futures
import email
import email.policy
import json
import os
import shutil
import smtplib
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from dns.resolver import Resolver

from tests.dnsserver import DnsServer
from tests.integration.test_admin_api import call
from tests.integration.test_delivery import wait_for
from tests.integration.test_domains import VERIFIER, independent_verify, publish_domain
from tests.mailservers import Receiver
from tests.support import ROOT, Relay, client_tls

HTML = ("<html><body><h1>Hello {{name}}</h1><p>Your order {{order.id}} ships today.</p>{{{footer}}}"
        "<p><a href=\"https://shop.example/o\">Track it on shop.example</a></p></body></html>")
TEXT = "Hello {{name}}, your order {{order.id}} ships today.\n"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 800         # binary, 200 KB: built in a thread (INLINE_BYTES)


def api(relay: Relay, body: Any, auth: tuple[str, str] | None, path: str = "/api/v1/send",
        raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{relay.http_port}{path}", data=data, method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def add_template(relay: Relay, tmp: Path, account: str = "acme", name: str = "welcome", html: str = HTML,
                 text: str | None = TEXT, subject: str = "Hi {{name}}") -> dict[str, Any]:
    (tmp / f"{name}.html").write_text(html)
    args = ["template", "add", account, name, "--html", str(tmp / f"{name}.html"), "--subject", subject]
    if text is not None:
        (tmp / f"{name}.txt").write_text(text)
        args += ["--text", str(tmp / f"{name}.txt")]
    return relay.cli_json(*args)  # type: ignore[no-any-return]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(tmp_path).start()
    yield rx
    rx.stop()


@pytest.mark.skipif(shutil.which("dnsmasq") is None or not (VERIFIER.parent / "node_modules").is_dir(),
                    reason="dnsmasq and the mailauth verifier are installed by `make test`")
def test_a_template_sent_by_the_api_and_by_smtp_arrives_rendered_and_signed(
        make_relay: Callable[..., Relay], tmp_path: Path, receiver: Receiver) -> None:
    dns = DnsServer(tmp_path, ("example.com",))
    try:
        relay = make_relay({"server": {"public_ips": ["127.0.0.1"]},
                            "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
                            "delivery": {"routes": {"*": f"127.0.0.1:{receiver.port}"}}}, seed=False)
        user, password = relay.add_account_with_credential("acme")
        relay.cli("domain", "add", "acme", "example.com")
        relay.cli("address", "add", "news@example.com")
        publish_domain(relay, dns, "example.com")
        relay.cli("domain", "verify", "example.com")
        added = add_template(relay, tmp_path)
        assert added["variables"] == ["name", "order.id", "footer"] and added["status"] == "active"
        relay.start()

        data = {"name": "Ann <& Co>", "order": {"id": 42}, "footer": "<p><b>Thanks!</b></p>"}
        status, doc, _ = api(relay, {
            "from": "Ånne Shop <news@example.com>", "to": ["Bob Ünïcode <bob@d.test>"], "cc": ["carol@d.test"],
            "bcc": ["dave@d.test"], "reply_to": ["help@example.com"], "template": {"id": "welcome", "data": data},
            "attachments": [{"filename": "facture été.pdf", "content_type": "application/pdf",
                             "content_base64": base64.b64encode(PDF).decode()}],
            "headers": {"X-Campaign": "spring"}, "tag": "orders"}, (user, password))
        assert status == 202, doc
        assert [r["status"] for r in doc["recipients"]] == ["accepted"] * 3
        api_id = doc["queue_id"]
        assert doc["smtp_reply"] == f"250 2.0.0 Ok: queued as {api_id}"

        with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="app.test", timeout=30) as s:
            s.starttls(context=client_tls())
            s.login(user, password)
            code, reply = s.docmd("MAIL", "FROM:<news@example.com>")
            s.rcpt("erin@d.test")
            code, reply = s.data(b"From: News <news@example.com>\r\nTo: erin@d.test\r\nSubject: ignored\r\n"
                                 b"X-Smtprelay-Template: welcome\r\n"
                                 b"X-Smtprelay-Template-Data: {\"name\": \"Erin\", \"order\": {\"id\": 7},\r\n"
                                 b" \"footer\": \"\"}\r\n\r\nthis body is replaced\r\n")
            assert code == 250, reply

        wait_for(lambda: len(receiver.transactions()) == 2)
        by_rcpt = {tuple(sorted(t["rcpts"])): t["data"] for t in receiver.transactions()}
        api_copy = by_rcpt[("bob@d.test", "carol@d.test", "dave@d.test")]
        smtp_copy = by_rcpt[("erin@d.test",)]
        host, port = dns.nameserver.split(":")
        resolver = Resolver(configure=False)
        resolver.nameservers, resolver.port = [host], int(port)

        def txt(name: bytes, timeout: int = 5) -> bytes:
            return b"".join(resolver.resolve(name.decode(), "TXT")[0].strings)
        for copy in (api_copy, smtp_copy):
            assert [line.split()[0] for line in independent_verify(dns, copy)] == ["pass"]
            assert dkim.DKIM(copy).verify(dnsfunc=txt)
            assert b"X-Smtprelay-Template" not in copy and b"X-Smtprelay-Tag" not in copy

        msg = email.message_from_bytes(api_copy, policy=email.policy.default)
        assert msg["Subject"] == "Hi Ann <& Co>" and msg["From"] == "Ånne Shop <news@example.com>"
        assert msg["To"] == "Bob Ünïcode <bob@d.test>" and msg["Cc"] == "carol@d.test" and msg["Bcc"] is None
        assert msg["Reply-To"] == "help@example.com" and msg["X-Campaign"] == "spring"
        assert msg.get_content_type() == "multipart/mixed"
        html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
        text = next(p for p in msg.walk() if p.get_content_type() == "text/plain").get_content()
        assert "<h1>Hello Ann &lt;&amp; Co&gt;</h1>" in html           # escaped in HTML
        assert "<p><b>Thanks!</b></p>" in html                         # {{{footer}}} raw
        assert text.splitlines() == ["Hello Ann <& Co>, your order 42 ships today."]  # not HTML-escaped
        [attachment] = list(msg.iter_attachments())
        assert attachment.get_filename() == "facture été.pdf" and attachment.get_content() == PDF

        smtp_msg = email.message_from_bytes(smtp_copy, policy=email.policy.default)
        assert smtp_msg["Subject"] == "Hi Erin" and smtp_msg["From"] == "News <news@example.com>"
        assert "Hello Erin, your order 7" in smtp_msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert b"this body is replaced" not in smtp_copy

        # Statistics and status carry the template; a new version leaves queued mail alone.
        rows = relay.cli_json("stats", "--template", "welcome")["days"]
        assert sorted((r["template"], r["tag"] or "", r["accepted"]) for r in rows) == \
            [("welcome", "", 1), ("welcome", "orders", 3)]
        shown = relay.cli_json("status", api_id)
        assert shown["template"] == {"id": added["id"], "version": 1, "name": "welcome"}
        assert shown["tag"] == "orders"
        (tmp_path / "v2.txt").write_text("Version two for {{name}}\n")
        assert relay.cli_json("template", "update", "welcome", "--text", str(tmp_path / "v2.txt"))["version"] == 2
        assert relay.cli_json("template", "show", "welcome", "--version", "1")["text"] == TEXT
    finally:
        dns.stop()


def test_refusals_name_the_problem(make_relay: Callable[..., Relay], tmp_path: Path, receiver: Receiver) -> None:
    relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{receiver.port}"}},
                        "limits": {"max_message_bytes": 200_000}})
    user, password = relay.add_account_with_credential("acme")
    add_template(relay, tmp_path)
    relay.cli("account", "add", "rival")
    add_template(relay, tmp_path, account="rival", name="theirs")
    relay.cli("account", "add", "apps")
    add_template(relay, tmp_path, account="apps", name="note", html="<p>{{who}}</p>", text=None)
    # A template that reaches for Python objects is refused when it is added, naming the part.
    (tmp_path / "evil.html").write_text("<p>{{ ''.__class__.__mro__ }}</p>")
    bad = relay.cli("template", "add", "acme", "evil", "--html", str(tmp_path / "evil.html"), check=False)
    assert bad.returncode == 2 and "html: line 1: only {{name}}" in bad.stderr
    for source in ("{{ name.__class__ }}", "{{ name|attr('x') }}", "{{ lipsum() }}", "{{ cycler.__init__ }}"):
        (tmp_path / "evil.txt").write_text(source)
        bad = relay.cli("template", "add", "acme", "evil", "--text", str(tmp_path / "evil.txt"), check=False)
        assert bad.returncode == 2 and bad.stderr.startswith("smtprelay: text:"), (source, bad.stderr)
    # Literal {% and {# are text, and a look-up reads only the data (never a Python attribute).
    (tmp_path / "css.html").write_text("<style>p {% width: 5 %}</style><p>{{ d.items }} {# not a comment #}</p>")
    add_template(relay, tmp_path, name="css", html=(tmp_path / "css.html").read_text(), text=None, subject="x")
    preview = relay.cli_json("template", "preview", "css", "--data", '{"d": {"items": "<ok>"}}')
    assert preview["html"] == "<style>p {% width: 5 %}</style><p>&lt;ok&gt; {# not a comment #}</p>"
    relay.cli("blocklist", "add", "blocked@d.test")
    relay.start()
    auth = (user, password)
    base = {"from": "a@example.com", "to": ["x@d.test"]}

    status, doc, headers = api(relay, {**base, "subject": "s", "text": "t"}, None)
    assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    status, doc, _ = api(relay, {**base, "subject": "s", "text": "t"}, (user, "wrong"))
    assert status == 401 and doc["smtp_reply"] == "535 5.7.8 Authentication credentials invalid"
    status, doc, _ = api(relay, None, auth, raw=b"{not json")
    assert status == 400 and doc["error"] == "the body is not JSON"
    status, doc, _ = api(relay, {**base, "subject": "s", "text": "t", "priority": 1}, auth)
    assert status == 400 and doc["field"] == "priority"
    status, doc, _ = api(relay, {**base, "to": ["x@d.test", "user%other@d.test"], "subject": "s", "text": "t"}, auth)
    assert status == 400 and doc["field"] == "to[1]" and "routing in the local part is not accepted" in doc["error"]
    status, doc, _ = api(relay, {**base, "text": "t"}, auth)
    assert status == 400 and doc["field"] == "subject"
    status, doc, _ = api(relay, {**base, "subject": "s", "text": "t", "headers": {"Bcc": "spy@evil.test"}}, auth)
    assert status == 400 and doc["field"] == "headers.Bcc"
    status, doc, _ = api(relay, {**base, "subject": "s", "text": "t",
                                 "attachments": [{"filename": "a", "content_base64": "***"}]}, auth)
    assert status == 400 and doc["field"] == "attachments[0].content_base64"
    status, doc, _ = api(relay, {**base, "template": {"id": "welcome", "data": {"name": "A"}}}, auth)
    assert status == 400 and doc["field"] == "template.data" and "missing variable 'order.id'" in doc["error"]
    status, doc, _ = api(relay, {**base, "template": {"id": "theirs", "data": {}}}, auth)
    assert status == 400 and "does not exist in this account" in doc["error"]   # another account's name
    status, doc, _ = api(relay, {**base, "subject": "s", "text": "t",
                                 "attachments": [{"filename": "big.bin", "content_base64":
                                                  base64.b64encode(b"x" * 250_000).decode()}]}, auth)
    assert status == 413 and doc["smtp_reply"].startswith("552 5.3.4")
    status, doc, _ = api(relay, {**base, "from": "ceo@apps.example", "subject": "s", "text": "t"}, auth)
    assert status == 422 and doc["smtp_reply"].startswith("550 5.7.1 Sender domain apps.example is not")
    status, doc, _ = api(relay, {**base, "to": ["blocked@d.test"], "subject": "s", "text": "t"}, auth)
    assert status == 422 and doc["recipients"][0]["smtp_reply"].startswith("550 5.7.1")
    # A strict check that fails makes the template inactive: sending with it says why (the
    # workers load the change within 2 s; sends until then still use the active one).
    assert relay.cli("template", "check", "welcome", "--strict", check=False).returncode == 1
    data = {"name": "N", "order": {"id": 1}, "footer": ""}
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    wait_for(lambda: answers.append(api(relay, {**base, "template": {"id": "welcome", "data": data}}, auth))
             or answers[-1][0] != 202)
    status, doc, _ = answers[-1]
    assert status == 422 and "Template welcome is inactive: variable text is 60 characters" in doc["error"]

    # Over SMTP: a bad template or data is 550 5.6.0 naming the problem.
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        s.rcpt("y@d.test")
        code, reply = s.data(b"From: app@apps.example\r\nX-Smtprelay-Template: note\r\n"
                             b"X-Smtprelay-Template-Data: {\"whom\": 1}\r\n\r\n-\r\n")
        assert (code, reply) == (550, b"5.6.0 Template note: missing variable 'who' (used in the html)")
        s.rset()
        s.mail("app@apps.example")
        s.rcpt("y@d.test")
        code, reply = s.data(b"From: app@apps.example\r\nX-Smtprelay-Template: note\r\n"
                             b"X-Smtprelay-Template-Data: [1]\r\n\r\n-\r\n")
        assert code == 550 and reply.startswith(b"5.6.0 X-Smtprelay-Template-Data: must be a JSON object")

    # The API shares SMTP AUTH's lockout: after auth.max_failures (5) bad passwords from one
    # address, even the right one is refused — over HTTP and over SMTP.
    for _ in range(5):
        assert api(relay, {**base, "subject": "s", "text": "t"}, (user, "wrong"))[0] == 401
    status, doc, _ = api(relay, {**base, "subject": "s", "text": "t"}, auth)
    assert status == 401 and doc["smtp_reply"].startswith("421 4.7.0 Too many failed authentication attempts")
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="app.test", timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        assert s.docmd("AUTH", "PLAIN " + token)[0] == 421


def test_templates_over_the_admin_api_and_the_send_endpoint_in_openapi(make_relay: Callable[..., Relay]) -> None:
    relay = make_relay({"http": {"admin_token": "s3cret-token"}})
    user, password = relay.add_account_with_credential("acme")
    (relay.dir / "welcome.txt").write_text("Hello {{name}}, welcome.")
    relay.cli("template", "add", "acme", "welcome", "--text", str(relay.dir / "welcome.txt"), "--subject", "Hi {{name}}")
    relay.start()
    status, doc = call(relay, "POST", "/templates", {"account": "acme", "name": "promo", "subject": "{{title}}",
                                                     "html": "<p>{{body}}</p>"})
    assert status == 200 and doc["variables"] == ["title", "body"] and doc["version"] == 1
    assert call(relay, "GET", "/templates?account=acme")[1]["templates"] == relay.cli_json("template", "list")[
        "templates"]                                                          # one implementation
    status, doc = call(relay, "POST", f"/templates/{doc['id']}/preview", {"data": {"title": "T", "body": "<b>"}})
    assert status == 200 and (doc["subject"], doc["html"]) == ("T", "<p>&lt;b&gt;</p>")
    assert doc["text"] == "<b>\n"                   # the text part made from the HTML reads as text
    status, doc = call(relay, "POST", "/templates/promo/preview", {"data": {"title": "T"}})
    assert status == 400 and doc["field"] == "data" and "missing variable 'body'" in doc["error"]
    status, doc = call(relay, "PATCH", "/templates/promo", {"html": "<p>{{ body.__class__ }}</p>"})
    assert status == 400 and doc["field"] == "html"
    status, doc = call(relay, "POST", "/templates", {"account": "acme", "name": "promo", "text": "x"})
    assert status == 409 and "already has a template named promo" in doc["error"]
    status, doc = call(relay, "POST", "/templates/promo/check", {"strict": True})
    assert status == 200 and doc["status"] == "inactive"
    assert call(relay, "DELETE", "/templates/promo")[0] == 200
    assert call(relay, "GET", "/templates/promo")[0] == 404
    spec = call(relay, "GET", "/openapi.json", token=None)[1]
    send = spec["paths"]["/send"]["post"]
    assert send["security"] == [{"basic": []}] and {"202", "400", "401", "413", "422", "429", "503"} <= set(
        send["responses"])
    assert "template" in send["requestBody"]["content"]["application/json"]["schema"]["properties"]
    # The README's example application, standard library only.
    (relay.dir / "invoice.pdf").write_bytes(b"%PDF-1.4 example")
    example = subprocess.run([sys.executable, str(ROOT / "examples" / "send.py"), "ann@d.test",
                              str(relay.dir / "invoice.pdf")], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SMTPRELAY_URL": f"http://127.0.0.1:{relay.http_port}",
                                  "SMTP_USER": user, "SMTP_PASSWORD": password,
                                  "SMTPRELAY_FROM": "Acme <a@example.com>"})
    assert example.returncode == 0, example.stdout + example.stderr
    queue_id = json.loads(example.stdout.split(" ", 1)[1])["queue_id"]
    body = relay.body(queue_id)
    assert b"Hello Ann, welcome." in body and b'filename="invoice.pdf"' in body


def test_parallel_api_sends_are_held_to_the_hourly_cap(make_relay: Callable[..., Relay], tmp_path: Path,
                                                      receiver: Receiver) -> None:
    relay = make_relay({"delivery": {"routes": {"*": f"127.0.0.1:{receiver.port}"}},
                        "limits": {"recipient_hourly_cap": 5, "account_daily_quota": 10_000_000,
                                   "account_rate_per_second": 1_000_000.0}})
    user, password = relay.add_account_with_credential("acme")
    add_template(relay, tmp_path)
    relay.start()
    body = {"from": "a@example.com", "to": ["same@d.test"],
            "template": {"id": "welcome", "data": {"name": "N", "order": {"id": 1}, "footer": ""}}}
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: api(relay, body, (user, password)), range(50)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [202] * 5 + [429] * 45
    refused = [r for r in results if r[0] == 429]
    assert all(r[1]["recipients"][0]["smtp_reply"].startswith("450 4.7.1") for r in refused)
    # Refused while the 5 were still being committed, the cap cannot name a moment yet ("a few
    # minutes": 60 s); once they are, Retry-After is when the oldest leaves the hour.
    assert all(r[2]["Retry-After"] == "60" or 3500 <= int(r[2]["Retry-After"]) <= 3601 for r in refused)
    # SMTP to the same address is held by the same count.
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="app.test", timeout=10) as s:
        s.starttls(context=client_tls())
        s.login(user, password)
        s.mail("a@example.com")
        assert s.rcpt("same@d.test")[0] == 450
    wait_for(lambda: len(receiver.transactions()) == 5)
    status, doc, headers = api(relay, body, (user, password))
    assert status == 429 and 3500 <= int(headers["Retry-After"]) <= 3601
    [row] = relay.cli_json("stats", "--template", "1")["days"]
    assert (row["template"], row["accepted"], row["delivered"]) == ("welcome", 5, 5)
    # The account's daily quota over the API is 429 too.
    relay.cli("account", "set", "acme", "--daily-quota", "5")
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = []
    # The running relay takes the new quota within 2 s; sends until then are within the old one.
    wait_for(lambda: answers.append(api(relay, {**body, "to": [f"q{len(answers)}@d.test"]}, (user, password)))
             or answers[-1][0] == 429)
    status, doc, headers = answers[-1]
    assert status == 429 and doc["recipients"][0]["smtp_reply"].startswith("454 4.7.0 Throttling failure: Daily")
    assert 86000 <= int(headers["Retry-After"]) <= 86460                # when the first send leaves the 24 h
