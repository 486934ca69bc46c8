"""Submission against a running relay: listeners, TLS, AUTH, relay control, limits, headers."""
from __future__ import annotations

import base64
import smtplib
import socket
import ssl

import pytest

from tests.conftest import PROTOCOLS
from tests.support import Relay, client_tls, queued_id

# Every test here runs against both SMTP protocols (server.protocol), the same assertions.
pytestmark = pytest.mark.parametrize("protocol", PROTOCOLS)

MSG = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hello\r\n\r\nbody line\r\n"
MSG_APP = b"From: app@apps.example\r\nTo: b@example.org\r\nSubject: hello\r\n\r\nbody line\r\n"


def starttls_login(relay: Relay, source: str = "127.0.0.1") -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="client.test", timeout=10,
                     source_address=(source, 0))
    s.starttls(context=client_tls())
    s.login(relay.user, relay.password)  # type: ignore[attr-defined]
    return s


def test_starttls_submission_is_queued_with_trace_headers(relay: Relay) -> None:
    with starttls_login(relay) as s:
        s.mail("a@example.com")
        s.rcpt("b@example.org")
        code, reply = s.data(MSG)
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as ")
    qid = queued_id(reply)
    assert relay.recipients(qid) == ["b@example.org"]
    body = relay.body(qid)
    head = body.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;")
    received = head[head.index("\r\nReceived: ") + 2:]
    assert received.startswith("Received: from client.test ([127.0.0.1])\r\n\tby relay.test (smtprelay) with ESMTPSA id "
                               + qid)
    assert "(using TLSv1.3)" in head or "(using TLSv1.2)" in head
    # auth.received_header = "account" (the default): every recipient sees the account, not the login.
    assert "(authenticated as account acme)" in head and relay.user not in head  # type: ignore[attr-defined]
    assert "Message-ID: <" + qid in head and "\r\nDate: " in head
    assert body.endswith(MSG)  # the client's bytes follow the added headers unchanged


def test_existing_message_id_and_date_are_kept(relay: Relay) -> None:
    msg = b"From: a@example.com\r\nMessage-ID: <mine@example.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: x\r\n\r\nhi\r\n"
    with starttls_login(relay) as s:
        _, reply = s.sendmail("a@example.com", ["b@example.org"], msg), s.noop()
    qid = relay.queued_ids().pop()
    body = relay.body(qid)
    assert body.count(b"Message-ID:") == 1 and body.count(b"Date:") == 1
    assert b"From: a@example.com\r\nMessage-ID: <mine@example.com>" in body


def test_implicit_tls_submission(relay: Relay) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", relay.implicit_port, context=client_tls(), timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert b"AUTH" in s.ehlo_resp  # offered at once: the connection is already encrypted
        s.login(relay.user, relay.password)  # type: ignore[attr-defined]
        s.mail("a@example.com")
        s.rcpt("b@example.org")
        code, reply = s.data(MSG)
    assert code == 250
    assert b"with ESMTPSA" in relay.body(queued_id(reply))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_older_than_1_2_is_refused(relay: Relay) -> None:
    ctx = client_tls()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected)):
        smtplib.SMTP_SSL("127.0.0.1", relay.implicit_port, context=ctx, timeout=10).ehlo()


def test_self_signed_certificate_generated_with_warning(relay: Relay) -> None:
    assert (relay.data_dir / "tls" / "selfsigned.crt").is_file()
    key = relay.data_dir / "tls" / "selfsigned.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "generated a self-signed certificate" in relay.log()


def test_auth_not_offered_before_starttls_and_refused_with_538(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("auth") and s.has_extn("starttls")
        token = base64.b64encode(b"\0user\0pass").decode()
        code, reply = s.docmd("AUTH", f"PLAIN {token}")
    assert (code, reply) == (538, b"5.7.11 Encryption required for requested authentication mechanism")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_mechanisms(relay: Relay, mechanism: str) -> None:
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        assert {"PLAIN", "LOGIN"} <= set(s.esmtp_features["auth"].split())
        s.user, s.password = relay.user, relay.password  # type: ignore[attr-defined]
        code, reply = s.auth(mechanism, getattr(s, f"auth_{mechanism.lower()}"))
    assert (code, reply) == (235, b"2.7.0 Authentication successful")


def test_bad_credentials_get_535_not_a_hang(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=client_tls())
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            s.login(relay.user, "wrong-password")  # type: ignore[attr-defined]
    assert err.value.smtp_code == 535 and err.value.smtp_error == b"5.7.8 Authentication credentials invalid"
    assert relay.metric("smtprelay_auth_attempts_total", 'result="failure"') >= 1


def test_lockout_after_max_failures_spares_other_addresses(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay({"auth": {"max_failures": 3, "lockout": "1h"}})
    relay.user, relay.password = relay.add_account_with_credential("acme")
    relay.start()
    replies = []
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=10) as s:
            s.starttls(context=client_tls())
            s.ehlo()
            token = base64.b64encode(b"\0" + relay.user.encode() + b"\0nope").decode()
            replies.append(s.docmd("AUTH", f"PLAIN {token}"))
    assert [r[0] for r in replies] == [535, 535, 421]
    assert replies[2][1].startswith(b"4.7.0 ")
    # Locked: even the right password is refused from this address, with 421 and a close.
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="c.test", timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        token = base64.b64encode(b"\0" + relay.user.encode() + b"\0" + relay.password.encode()).decode()
        code, reply = s.docmd("AUTH", f"PLAIN {token}")
        assert code == 421 and reply.startswith(b"4.7.0")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
    # Another client address is unaffected.
    with starttls_login(relay, source="127.0.0.2") as s:
        assert s.noop()[0] == 250
    assert relay.metric("smtprelay_auth_attempts_total", 'result="locked_out"') == 1
    assert relay.metric("smtprelay_auth_attempts_total", 'result="failure"') == 3
    assert relay.metric("smtprelay_auth_attempts_total", 'result="success"') == 1


def test_mail_without_auth_gets_530(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        assert s.docmd("MAIL", "FROM:<a@example.com>") == (530, b"5.7.0 Authentication required")


def test_trusted_network_submits_without_auth_as_its_account(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        assert not s.has_extn("auth")  # plaintext listener: AUTH never offered
        s.mail("app@apps.example")
        s.rcpt("b@example.org")
        code, reply = s.data(MSG_APP)
    assert code == 250
    body = relay.body(queued_id(reply))
    assert b"with ESMTP id" in body and b"(authenticated as account apps, trusted network)" in body
    # The same listener from an address outside trusted_networks must authenticate, and cannot
    # (no TLS, so no AUTH): the relay is not open.
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="x.test", timeout=10,
                      source_address=("127.0.0.2", 0)) as s:
        s.ehlo()
        assert s.docmd("MAIL", "FROM:<app@apps.example>") == (530, b"5.7.0 Authentication required")


OPEN_RELAY_FORMS = [
    "<relaytest%nmap.scanme.org@[127.0.0.1]>",
    "<relaytest%nmap.scanme.org@relay.test>",
    '<"relaytest@nmap.scanme.org">',
    '<"relaytest%nmap.scanme.org">',
    "<relaytest@nmap.scanme.org@[127.0.0.1]>",
    '<"relaytest@nmap.scanme.org"@[127.0.0.1]>',
    "<relaytest@nmap.scanme.org@relay.test>",
    "<@[127.0.0.1]:relaytest@nmap.scanme.org>",
    "<@relay.test:relaytest@nmap.scanme.org>",
    "<nmap.scanme.org!relaytest>",
    "<nmap.scanme.org!relaytest@[127.0.0.1]>",
    "<nmap.scanme.org!relaytest@relay.test>",
    "<relaytest@[127.0.0.1]>",
    '<"relay%test"@example.org>',
    "<relaytest@localhost>",
    "<relay test@example.org>",
]


def test_open_relay_forms_without_auth_get_530(relay: Relay) -> None:
    # nmap's smtp-open-relay sends these unauthenticated: MAIL already fails, plain and after STARTTLS.
    for use_tls in (False, True):
        with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="nmap.test", timeout=10) as s:
            if use_tls:
                s.starttls(context=client_tls())
            s.ehlo()
            for sender in ("<>", "<antispam@[127.0.0.1]>", "<antispam@relay.test>"):
                assert s.docmd("MAIL", f"FROM:{sender}")[0] in (530, 553), sender
                s.rset()
            assert s.docmd("RCPT", "TO:<relaytest@nmap.scanme.org>")[0] in (503, 530)


def test_open_relay_forms_are_refused_as_bad_syntax_even_when_trusted(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        assert s.docmd("MAIL", "FROM:<app@apps.example>")[0] == 250
        for form in OPEN_RELAY_FORMS:
            code, reply = s.docmd("RCPT", f"TO:{form}")
            assert (code, reply) == (553, b"5.1.3 Bad address syntax"), form
        assert s.docmd("RCPT", "TO:<Someone@Example.ORG>")[0] == 250
        code, reply = s.data(MSG_APP)
    # Domain lower-cased, local part exact: what policy saw is what delivery gets.
    assert relay.recipients(queued_id(reply)) == ["Someone@example.org"]


def test_size_param_over_limit_refused_at_mail(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay({"limits": {"max_message_bytes": 10000}}).start()
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        assert "size" in s.esmtp_features and s.esmtp_features["size"] == "10000"
        assert s.docmd("MAIL", "FROM:<app@apps.example> SIZE=10001") == (552, b"5.3.4 Message size exceeds fixed limit")
        assert s.docmd("MAIL", "FROM:<app@apps.example> SIZE=9000")[0] == 250
        s.rcpt("b@example.org")
        code, reply = s.data(b"From: app@apps.example\r\nSubject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 20)
        assert (code, reply) == (552, b"5.3.4 Message size exceeds fixed limit")
        # The session goes on after the refusal, and a small message still works.
        assert s.sendmail("app@apps.example", ["b@example.org"], MSG_APP) == {}
    assert len(relay.queued_ids()) == 1


def test_too_many_recipients_get_452(make_relay) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay({"limits": {"max_recipients": 3}}).start()
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        codes = [s.rcpt(f"r{i}@example.org") for i in range(4)]
        assert [c[0] for c in codes] == [250, 250, 250, 452]
        assert codes[3][1] == b"4.5.3 Too many recipients"
        code, reply = s.data(MSG_APP)
    assert code == 250 and len(relay.recipients(queued_id(reply))) == 3
    assert relay.metric("smtprelay_recipients_rejected_total", 'reason="max_recipients"') == 1


def test_overlong_line_refused(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        s.rcpt("b@example.org")
        code, reply = s.data(b"From: app@apps.example\r\nSubject: long\r\n\r\n" + b"y" * 5000 + b"\r\n")
        assert code == 500 and reply.startswith(b"5.5.2 Line too long")
        assert s.docmd("MAIL", "FROM:<app@apps.example> " + "X" * 600)[0] == 500
    assert relay.queued_ids() == set()


def _words(n_chars: int) -> bytes:
    """A subject of exactly n_chars characters, as space-separated words, folded below 1000 octets."""
    text = ("abcdefghi " * (n_chars // 10 + 1))[:n_chars]
    return text.replace("i ", "i\r\n ", n_chars // 500).encode()  # folding keeps the space


def _encoded(n_chars: int) -> bytes:
    """n_chars accented characters as several RFC 2047 words (whitespace between them is dropped)."""
    words = []
    while n_chars > 0:
        take = min(100, n_chars)
        words.append(b"=?utf-8?b?" + base64.b64encode("é".encode() * take) + b"?=")
        n_chars -= take
    return b"\r\n ".join(words)


def trusted_data(relay: Relay, message: bytes) -> tuple[int, bytes]:
    """One message from the trusted network; the reply to its end of DATA (the session goes on)."""
    with smtplib.SMTP("127.0.0.1", relay.trusted_port, local_hostname="app.test", timeout=10) as s:
        s.ehlo()
        s.mail("app@apps.example")
        s.rcpt("b@example.org")
        code, reply = s.data(message)
        assert s.noop()[0] == 250
    return code, reply


@pytest.mark.parametrize("subject,ok", [
    (_words(998), True),
    (_words(999), False),
    (_encoded(998), True),
    (_encoded(999), False),                                     # 999 characters once decoded
    (b"caf\xc3\xa9", True),                                     # raw UTF-8 (RFC 6532)
    (b"caf\xe9", False),                                        # raw Latin-1: not UTF-8
    (b"=?utf-8?b?" + base64.b64encode(b"\xff\xfe") + b"?=", False),
    (b"=?iso-8859-1?q?caf=E9?=", True),                         # other charsets are fine when declared
])
def test_subject_rules(relay: Relay, subject: bytes, ok: bool) -> None:
    code, reply = trusted_data(relay, b"From: app@apps.example\r\nSubject: " + subject + b"\r\n\r\nbody\r\n")
    if ok:
        assert code == 250, reply
    else:
        assert code == 550 and reply.startswith(b"5.6.0 Subject "), reply


def test_subject_rejection_names_the_rule(relay: Relay) -> None:
    code, reply = trusted_data(relay, b"From: app@apps.example\r\nSubject: caf\xe9\r\n\r\nbody\r\n")
    assert (code, reply) == (550, b"5.6.0 Subject is not valid UTF-8 (after RFC 2047 decoding)")


def test_malformed_header_block_is_refused_not_signed(relay: Relay) -> None:
    code, reply = trusted_data(relay, b"From: app@apps.example\r\nthis line is no header field\r\n\r\nbody\r\n")
    assert (code, reply[:40]) == (550, b"5.6.0 Message header is malformed: Unexp")
    assert relay.queued_ids() == set()
    assert relay.metric("smtprelay_recipients_rejected_total", 'reason="malformed_header"') == 1


def test_unknown_command_and_sequence_errors_have_enhanced_codes(relay: Relay) -> None:
    with socket.create_connection(("127.0.0.1", relay.trusted_port), timeout=10) as sock:
        f = sock.makefile("rwb")
        assert f.readline().startswith(b"220 relay.test ESMTP smtprelay")

        def cmd(line: bytes) -> bytes:
            f.write(line + b"\r\n")
            f.flush()
            out = f.readline()
            while out[3:4] == b"-":
                out = f.readline()
            return out.strip()
        assert cmd(b"EHLO app.test").startswith(b"250 ")
        assert cmd(b"RCPT TO:<b@example.org>") == b"503 5.5.1 Error: need MAIL command"
        assert cmd(b"MAIL FROM:<app@apps.example>") == b"250 2.1.0 Sender ok"
        assert cmd(b"DATA") == b"503 5.5.1 Error: need RCPT command"
        assert cmd(b"QUIT") == b"221 2.0.0 Bye"
