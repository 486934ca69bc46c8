"""Every row of the README's replies table, as two real clients see it — Python's smtplib and
swaks — against both SMTP protocols (server.protocol): the same reply code and enhanced
status code for each row, whoever asks and whichever protocol answers.

Rows the protocol has no part in are tested elsewhere for both protocols: connection caps
(test_connections), bare CR/LF (test_smuggling); the store-full 452 (test_durability) and
reputation suspension (test_warmup) are decided by the back end, not the protocol.
"""
from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from dataclasses import dataclass, field

import pytest

from tests.conftest import PROTOCOLS
from tests.support import Relay, client_tls

pytestmark = [pytest.mark.parametrize("protocol", PROTOCOLS),
              pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by `make test`")]

LONG_LINE = "x" * 1200
BIG = "y" * 70 + "\r\n"


@dataclass
class Row:
    """One submission: which listener, TLS and AUTH, the envelope and the message; `expect` is
    the code and enhanced status code of the first refusal (or of the final 250)."""
    name: str
    expect: str
    trusted: bool = False                  # the trusted-network listener (no AUTH), else STARTTLS + AUTH
    password: str | None = None            # None: the right one; "": no AUTH at all; else a wrong one
    mail_from: str = "a@example.com"
    rcpts: list[str] = field(default_factory=list)       # default: one address named after the row
    from_header: str | None = None
    subject: str = "replies"
    body: str = "hello\r\n"
    source: str = "127.0.0.1"
    swaks_source: str | None = None        # another address for swaks (a failed AUTH counts per address)
    fills: bool = False                    # the first pass (one send per client) fills a limit of 2

    def __post_init__(self) -> None:
        if not self.rcpts:
            self.rcpts = [re.sub(r"[^a-z0-9]+", "-", self.name.lower()) + "@example.org"]

    def message(self) -> str:
        return (f"From: {self.from_header or self.mail_from}\r\nTo: {self.rcpts[0]}\r\nSubject: {self.subject}\r\n"
                f"\r\n{self.body}")


def rows() -> list[Row]:
    return [
        Row("accepted", "250 2.0.0"),
        Row("bad credentials", "535 5.7.8", password="wrong", source="127.0.0.5", swaks_source="127.0.0.6"),
        Row("MAIL without AUTH", "530 5.7.0", password=""),
        Row("sender domain not owned", "550 5.7.1", mail_from="x@other.example"),
        Row("sender address not registered", "550 5.7.1", mail_from="nobody@example.com"),
        Row("recipient on the blocklist", "550 5.7.1", rcpts=["blocked@example.org"]),
        Row("From: header domain not verified", "550 5.7.1", from_header="boss@other.example"),
        Row("open-relay address form", "553 5.1.3", rcpts=["user%elsewhere.example@example.org"]),
        Row("message over the size limit", "552 5.3.4", body=BIG * 400),
        Row("too many recipients", "452 4.5.3", rcpts=["r1@example.org", "r2@example.org", "r3@example.org"]),
        Row("a line over 1000 octets", "500 5.5.2", body=LONG_LINE + "\r\n"),
        Row("subject over 998 characters", "550 5.6.0", subject="s" * 500 + "\r\n " + "s" * 500),
        Row("recipient hourly cap reached", "450 4.7.1", fills=True),
        Row("account quota reached", "454 4.7.0", trusted=True, mail_from="app@apps.example"),
    ]


def by_smtplib(relay: Relay, row: Row) -> str:
    port = relay.trusted_port if row.trusted else relay.starttls_port
    with smtplib.SMTP("127.0.0.1", port, local_hostname="lib.test", timeout=20,
                      source_address=(row.source, 0)) as s:
        s.ehlo()
        if not row.trusted:
            s.starttls(context=client_tls())
            s.ehlo()
            if row.password != "":
                # One mechanism (login() would try the next after a failure: two failures counted).
                s.user, s.password = relay.user, row.password or relay.password  # type: ignore[attr-defined]
                try:
                    s.auth("PLAIN", s.auth_plain)
                except smtplib.SMTPAuthenticationError as exc:
                    return f"{exc.smtp_code} {exc.smtp_error.split()[0].decode()}"
                except smtplib.SMTPServerDisconnected:
                    return "closed"
        steps = [("MAIL", f"FROM:<{row.mail_from}>")] + [("RCPT", f"TO:<{r}>") for r in row.rcpts]
        for verb, arg in steps:
            code, reply = s.docmd(verb, arg)
            if code >= 400:
                return f"{code} {reply.split()[0].decode()}"
        code, reply = s.data(row.message().encode())
        return f"{code} {reply.split()[0].decode()}"


def by_swaks(relay: Relay, row: Row) -> str:
    port = relay.trusted_port if row.trusted else relay.starttls_port
    args = ["swaks", "--server", f"127.0.0.1:{port}", "--local-interface", row.swaks_source or row.source, "--helo", "swaks.test",
            "--from", row.mail_from, "--to", ",".join(row.rcpts), "--data", row.message().replace("\r\n", "\n"),
            "--timeout", "20"]
    if not row.trusted:
        args += ["--tls"]
        if row.password != "":
            args += ["--auth", "PLAIN", "--auth-user", relay.user,  # type: ignore[attr-defined]
                     "--auth-password", row.password or relay.password]  # type: ignore[attr-defined]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
    replies = [line[3:].strip() for line in out.splitlines() if line[:2] in ("<-", "<~", "<*")]
    refused = [line for line in out.splitlines() if line.startswith(("<**", "<~*"))]
    if refused:
        words = refused[0][4:].split()
        return f"{words[0]} {words[1]}"
    queued = [r for r in replies if "queued as" in r]
    assert queued, out
    words = queued[-1].split()
    return f"{words[0]} {words[1]}"


@pytest.fixture
def table_relay(make_relay) -> Relay:  # type: ignore[no-untyped-def]
    relay = make_relay({"limits": {"max_message_bytes": 20_000, "max_recipients": 2, "recipient_hourly_cap": 2},
                        "auth": {"max_failures": 2}})
    relay.user, relay.password = relay.add_account_with_credential("acme")  # type: ignore[attr-defined]
    relay.cli("account", "add", "apps", "--daily-quota", "1")      # the trusted listener's account
    relay.cli("blocklist", "add", "blocked@example.org", "--note", "replies table")
    return relay.start()


def test_every_row_of_the_replies_table_with_smtplib_and_swaks(table_relay: Relay) -> None:
    relay = table_relay
    # The trusted listener's account has a quota of one recipient: smtplib's message uses it.
    assert by_smtplib(relay, Row("fills the quota", "", trusted=True, mail_from="app@apps.example")) == "250 2.0.0"
    seen = {row.name: (by_smtplib(relay, row), by_swaks(relay, row)) for row in rows()}
    # The hourly-cap row is accepted once for each client (a cap of 2), then refused.
    assert seen == {row.name: ("250 2.0.0",) * 2 if row.fills else (row.expect,) * 2 for row in rows()}
    again = {row.name: (by_smtplib(relay, row), by_swaks(relay, row)) for row in rows() if row.fills}
    assert again == {row.name: (row.expect,) * 2 for row in rows() if row.fills}
    # So does MAIL without AUTH (item 7: it had none).
    relay.wait_for_log("NOQUEUE: reject: MAIL from [127.0.0.1]: 530 5.7.0 Authentication required")


def test_lockout_421_after_failures_with_smtplib_and_swaks(table_relay: Relay) -> None:
    relay = table_relay
    wrong = Row("lockout", "421 4.7.0", password="wrong")
    lib = [by_smtplib(relay, Row(**{**vars(wrong), "source": "127.0.0.2"})) for _ in range(3)]
    swaks = [by_swaks(relay, Row(**{**vars(wrong), "source": "127.0.0.3"})) for _ in range(3)]
    # auth.max_failures = 2: the second failure locks the address out, the third finds it locked.
    assert lib == swaks == ["535 5.7.8", "421 4.7.0", "421 4.7.0"]
    # The locked address is refused even with the right password; another address is not.
    assert by_smtplib(relay, Row("locked", "", source="127.0.0.2")) == "421 4.7.0"
    assert by_swaks(relay, Row("other", "", source="127.0.0.4")) == "250 2.0.0"
    # A refusal of a locked-out address has its log line (issue 23, item 7).
    relay.wait_for_log("[127.0.0.2]: AUTH refused: the address is locked out")


def test_auth_before_tls_and_size_parameter_with_smtplib(table_relay: Relay) -> None:
    """Two rows swaks cannot send: it does not offer AUTH where EHLO did not advertise it, and it
    has no option for MAIL parameters."""
    relay = table_relay
    with smtplib.SMTP("127.0.0.1", relay.starttls_port, local_hostname="lib.test", timeout=20) as s:
        s.ehlo()
        code, reply = s.docmd("AUTH", "PLAIN AGEAYg==")
        assert (code, reply.split()[0]) == (538, b"5.7.11")
        s.starttls(context=client_tls())
        s.ehlo()
        s.login(relay.user, relay.password)  # type: ignore[attr-defined]
        code, reply = s.docmd("MAIL", "FROM:<a@example.com> SIZE=20001")
        assert (code, reply.split()[0]) == (552, b"5.3.4")
    # A SIZE= refusal has its NOQUEUE line like every other (item 7).
    relay.wait_for_log("NOQUEUE: reject: MAIL from [127.0.0.1]: 552 5.3.4 Message size exceeds fixed limit")
