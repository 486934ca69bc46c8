"""The SMTP conversation itself (smtp/server.py) against a running relay, over raw sockets:
pipelined commands, the end-of-data marker split anywhere between packets, dot-stuffing,
STARTTLS command injection, and the AUTH exchanges."""
from __future__ import annotations

import base64
import socket
import ssl

import pytest

from tests.conftest import PROTOCOLS
from tests.support import Relay, client_tls, queued_id

# Every test here runs against both SMTP protocols (server.protocol), the same assertions.
pytestmark = pytest.mark.parametrize("protocol", PROTOCOLS)

MESSAGE = (b"From: app@apps.example\r\nTo: b@example.org\r\nSubject: split\r\n\r\n"
           b"first line\r\n..a line that started with a dot\r\n.\r\n")   # stuffed: "." and ".a line..."


class Client:
    """A raw SMTP client: writes exactly what it is told, reads whole replies."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.file.readline()
            assert line, "connection closed"
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return b"\n".join(lines)

    def replies(self, count: int) -> list[bytes]:
        return [self.reply() for _ in range(count)]


def connect(port: int) -> Client:
    client = Client(socket.create_connection(("127.0.0.1", port), timeout=10))
    assert client.reply().startswith(b"220 relay.test ESMTP")
    return client


def test_pipelined_commands_are_answered_in_order(relay: Relay) -> None:
    c = connect(relay.trusted_port)
    c.send(b"EHLO app.test\r\n")
    ehlo = c.reply()
    assert b"250-PIPELINING" in ehlo and b"250-ENHANCEDSTATUSCODES" in ehlo and b"250-8BITMIME" in ehlo
    # One write: the whole envelope, then one write: the message and the next transaction's start.
    c.send(b"MAIL FROM:<app@apps.example>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<bad@[10.0.0.1]>\r\n"
           b"RCPT TO:<c@example.org>\r\nDATA\r\n")
    assert [r[:3] for r in c.replies(5)] == [b"250", b"250", b"553", b"250", b"354"]
    c.send(MESSAGE + b"RSET\r\nNOOP\r\nQUIT\r\n")
    done, rset, noop, bye = c.replies(4)
    assert done.startswith(b"250 2.0.0 Ok: queued as ")
    assert (rset, noop, bye) == (b"250 2.0.0 Ok", b"250 2.0.0 Ok", b"221 2.0.0 Bye")
    qid = queued_id(done)
    assert relay.recipients(qid) == ["b@example.org", "c@example.org"]
    # Dot-stuffing undone: the stored message holds the lines as the author wrote them.
    assert relay.body(qid).endswith(b"\r\n\r\nfirst line\r\n.a line that started with a dot\r\n")


@pytest.mark.parametrize("split", range(1, 9))
def test_end_of_data_split_between_packets(relay: Relay, split: int) -> None:
    c = connect(relay.trusted_port)
    c.send(b"EHLO app.test\r\nMAIL FROM:<app@apps.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert c.replies(4)[-1].startswith(b"354")
    payload = MESSAGE + b"NOOP\r\n"
    cut = len(MESSAGE) - 5 - 2 + split     # somewhere in "\r\n.\r\n" or just around it
    c.send(payload[:cut])
    c.sock.settimeout(0.3)                  # nothing may be answered before the marker is complete
    try:
        early = c.sock.recv(100, socket.MSG_PEEK)
    except TimeoutError:
        early = b""
    c.sock.settimeout(10)
    if cut < len(MESSAGE):
        assert early == b""
    c.send(payload[cut:])
    done, noop = c.replies(2)
    assert done.startswith(b"250 2.0.0 Ok: queued as ") and noop == b"250 2.0.0 Ok"
    assert relay.body(queued_id(done)).endswith(b"first line\r\n.a line that started with a dot\r\n")


def test_starttls_discards_commands_sent_before_the_handshake(relay: Relay) -> None:
    c = connect(relay.starttls_port)
    c.send(b"EHLO client.test\r\n")
    assert b"250-STARTTLS" in c.reply()
    # A man in the middle appends a command to the plaintext STARTTLS (CVE-2011-0411 style).
    c.send(b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\n")
    assert c.reply() == b"220 2.0.0 Ready to start TLS"
    tls = client_tls().wrap_socket(c.sock, server_hostname="relay.test")
    s = Client(tls)
    s.send(b"NOOP\r\n")
    assert s.reply() == b"250 2.0.0 Ok"          # the injected MAIL was never executed
    s.send(b"MAIL FROM:<a@example.com>\r\n")
    assert s.reply().startswith(b"503 5.5.1")     # after TLS the client must greet again
    s.send(b"EHLO client.test\r\n")
    ehlo = s.reply()
    assert b"AUTH LOGIN PLAIN" in ehlo and b"STARTTLS" not in ehlo
    tls.close()


def _tls_session(relay: Relay) -> Client:
    c = connect(relay.starttls_port)
    c.send(b"EHLO client.test\r\nSTARTTLS\r\n")
    c.replies(2)
    s = Client(client_tls().wrap_socket(c.sock, server_hostname="relay.test"))
    s.send(b"EHLO client.test\r\n")
    s.reply()
    return s


def test_auth_exchanges(relay: Relay) -> None:
    user, password = relay.user.encode(), relay.password.encode()  # type: ignore[attr-defined]
    b64 = base64.b64encode
    s = _tls_session(relay)
    s.send(b"AUTH LOGIN\r\n")
    assert s.reply() == b"334 VXNlcm5hbWU6"
    s.send(b64(user) + b"\r\n")
    assert s.reply() == b"334 UGFzc3dvcmQ6"
    s.send(b64(password) + b"\r\n")
    assert s.reply() == b"235 2.7.0 Authentication successful"
    s.send(b"AUTH PLAIN\r\n")
    assert s.reply().startswith(b"503 5.5.1 Already authenticated")
    s = _tls_session(relay)
    s.send(b"AUTH PLAIN\r\n")
    assert s.reply() == b"334 "     # RFC 4954: the space is required even with no challenge
    s.send(b"*\r\n")
    assert s.reply() == b"501 5.7.0 Auth aborted"
    s.send(b"AUTH PLAIN not-base64!\r\n")
    assert s.reply() == b"501 5.5.2 Can't decode base64"
    s.send(b"AUTH CRAM-MD5\r\n")
    assert s.reply().startswith(b"504 5.5.4")
    s.send(b"AUTH PLAIN\r\n")
    s.reply()
    s.send(b64(b"\0" + user + b"\0" + password) + b"\r\n")
    assert s.reply() == b"235 2.7.0 Authentication successful"
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert [r[:3] for r in s.replies(3)] == [b"250", b"250", b"354"]
    s.send(b"From: a@example.com\r\nSubject: hi\r\n\r\nhi\r\n.\r\n")
    assert s.reply().startswith(b"250 2.0.0 Ok: queued as ")


def test_helo_client_and_message_without_headers(relay: Relay) -> None:
    c = connect(relay.trusted_port)
    c.send(b"HELO old.test\r\n")
    assert c.reply() == b"250 relay.test"
    c.send(b"MAIL FROM:<app@apps.example> SIZE=100\r\n")
    assert c.reply().startswith(b"501 5.5.4")     # parameters need EHLO
    c.send(b"MAIL FROM:<app@apps.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n.\r\nQUIT\r\n")
    mail, rcpt, data, empty, bye = c.replies(5)
    assert (mail[:3], rcpt[:3], data[:3]) == (b"250", b"250", b"354")
    assert empty.startswith(b"550 5.6.0")         # no From: header at all
    assert bye == b"221 2.0.0 Bye"
    assert relay.queued_ids() == set()


def test_tls_client_gets_its_version_in_received(relay: Relay) -> None:
    s = _tls_session(relay)
    s.send(b"AUTH PLAIN " + base64.b64encode(b"\0" + relay.user.encode() + b"\0"  # type: ignore[attr-defined]
                                             + relay.password.encode()) + b"\r\n")  # type: ignore[attr-defined]
    assert s.reply().startswith(b"235")
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    s.replies(3)
    s.send(b"From: a@example.com\r\n\r\nx\r\n.\r\n")
    qid = queued_id(s.reply())
    version = s.sock.version() if isinstance(s.sock, ssl.SSLSocket) else None
    assert f"(using {version})".encode() in relay.body(qid)


def test_a_noop_trickle_is_closed_after_the_junk_limit(relay: Relay) -> None:
    """Issue 24, item 6: limits.junk_command_limit (100) NOOP/RSET/VRFY/HELP between messages,
    then 421 4.7.0 and the session ends; an accepted message starts the count again."""
    c = connect(relay.trusted_port)
    c.send(b"EHLO trickle.test\r\n")
    c.reply()
    c.send(b"NOOP\r\n" * 60 + b"RSET\r\n" * 39)
    assert all(r.startswith(b"250") for r in c.replies(99))
    c.send(b"MAIL FROM:<app@apps.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert [r[:3] for r in c.replies(3)] == [b"250", b"250", b"354"]
    c.send(MESSAGE)
    assert c.reply().startswith(b"250 2.0.0")
    c.send(b"NOOP\r\n" * 99 + b"HELP\r\n")                    # 100 since the message: still allowed
    assert all(r[:1] in (b"2",) for r in c.replies(100))
    c.send(b"VRFY someone\r\n")
    assert c.reply() == b"421 4.7.0 Too many commands without a message; closing the connection"
    assert c.file.readline() == b""                            # closed
    relay.wait_for_log("commands without a message: closing (limits.junk_command_limit)")
