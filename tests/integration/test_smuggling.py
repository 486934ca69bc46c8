"""SMTP smuggling: every end-of-data look-alike stays inside one message (or the message is refused)."""
from __future__ import annotations

import socket

import pytest

from tests.conftest import PROTOCOLS
from tests.support import Relay

# Every test here runs against both SMTP protocols (server.protocol), the same assertions.
pytestmark = pytest.mark.parametrize("protocol", PROTOCOLS)

SEQUENCES = [b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n\x00.\r\n",
             b"\r\n.\r\r\n", b"\r\r\n.\r\r\n"]
SMUGGLED = (b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@target.example>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nwire the money\r\n")


def submit_raw(relay: Relay, payload: bytes) -> list[bytes]:
    """Send one transaction whose DATA holds `payload`; return every reply line read."""
    with socket.create_connection(("127.0.0.1", relay.trusted_port), timeout=10) as sock:
        f = sock.makefile("rwb")
        replies = [f.readline()]

        def send(data: bytes) -> bytes:
            f.write(data)
            f.flush()
            line = f.readline()
            while line[3:4] == b"-":
                line = f.readline()
            replies.append(line)
            return line
        send(b"EHLO app.test\r\n")
        send(b"MAIL FROM:<app@apps.example>\r\n")
        send(b"RCPT TO:<friend@example.org>\r\n")
        assert send(b"DATA\r\n").startswith(b"354")
        send(b"From: app@apps.example\r\nSubject: hello\r\n\r\nfirst part" + payload + SMUGGLED + b"\r\n.\r\n")
        # Anything the relay would have parsed as extra commands would show up as more replies.
        f.write(b"QUIT\r\n")
        f.flush()
        replies.extend(f.readlines())
    return [r.strip() for r in replies]


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[repr(s) for s in SEQUENCES])
def test_normalize_keeps_one_message(relay: Relay, sequence: bytes) -> None:
    replies = submit_raw(relay, sequence)
    assert replies[-2].startswith(b"250 2.0.0 Ok: queued as ")
    assert replies[-1] == b"221 2.0.0 Bye"
    assert len(replies) == 7  # greeting, EHLO, MAIL, RCPT, 354, one 250 for the data, 221
    ids = relay.queued_ids()
    assert len(ids) == 1
    qid = ids.pop()
    assert relay.recipients(qid) == ["friend@example.org"]
    body = relay.body(qid)
    assert b"wire the money" in body  # kept as content of the one message
    stripped = body.replace(b"\r\n", b"")
    assert b"\r" not in stripped and b"\n" not in stripped and b"\x00" not in body


@pytest.mark.parametrize("sequence", SEQUENCES, ids=[repr(s) for s in SEQUENCES])
def test_reject_mode_refuses(make_relay, sequence: bytes) -> None:  # type: ignore[no-untyped-def]
    relay = make_relay({"limits": {"bare_newline": "reject"}}).start()
    replies = submit_raw(relay, sequence)
    assert replies[-2].startswith(b"550 5.6.0 Message contains bare CR, bare LF or NUL")
    assert relay.queued_ids() == set()
    assert relay.metric("smtprelay_recipients_rejected_total", 'reason="bare_newline"') == 1


PIECES = SEQUENCES + [b"\r\n", b"\r\n.", b".\r\n", b"\r\n..\r\n", b"x", b"\x00", b"\r", b"\n", b"."]


def test_random_end_of_data_lookalikes_split_across_packets(relay: Relay) -> None:
    """Fuzzing the DATA scanner (issue 24, item 7): 40 payloads made of end-of-data look-alikes,
    each sent in random pieces (TCP_NODELAY, one send per piece), seeds fixed so a failure
    replays. Each transaction is exactly one message or one refusal, never two, and the replies
    stay in step."""
    import random
    rng = random.Random(2026)
    before = len(relay.queued_ids())
    accepted = 0
    for case in range(40):
        payload = b"".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        body = b"From: app@apps.example\r\nSubject: fuzz %d\r\n\r\nstart" % case + payload + b"marker"
        # Dot-stuffed as a client does after every CRLF: the one true end is the last line.
        # The look-alikes (a dot after a bare LF or CR, NUL, ...) are left for the relay to judge.
        data = body.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n"
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        with socket.create_connection(("127.0.0.1", relay.trusted_port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f = sock.makefile("rb")
            assert f.readline().startswith(b"220")
            sock.sendall(b"EHLO fuzz.test\r\nMAIL FROM:<app@apps.example>\r\nRCPT TO:<friend@example.org>\r\nDATA\r\n")
            lines = []
            while len(lines) < 4:
                line = f.readline()
                if line[3:4] != b"-":
                    lines.append(line)
            assert [x[:3] for x in lines] == [b"250", b"250", b"250", b"354"], (case, lines)
            for piece in pieces:
                sock.sendall(piece)
            sock.sendall(b"QUIT\r\n")
            rest = [line.strip() for line in f.readlines()]
        assert len(rest) == 2 and rest[-1] == b"221 2.0.0 Bye", (case, payload, pieces, rest)
        assert rest[0][:1] in (b"2", b"5"), (case, rest)          # one message, or one refusal
        accepted += rest[0].startswith(b"250")
    assert len(relay.queued_ids()) - before == accepted          # never a second (smuggled) message
