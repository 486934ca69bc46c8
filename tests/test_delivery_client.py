"""The SMTP client against servers that misbehave, on 127.0.0.1: a STARTTLS reply with a
forged reply appended (response injection), replies that end mid-pipeline, overlong lines."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from smtprelay.config import DeliveryConfig, DeliveryTls
from smtprelay.delivery.client import Connection, ConnectFailure, SmtpTransport, wire_format
from smtprelay.delivery.mx import Host

Script = Callable[[bytes, int], bytes | None]   # (command line, connection number) -> reply, or None: hang up


async def serve(script: Script) -> tuple[asyncio.AbstractServer, int, list[list[bytes]]]:
    """A scripted server: replies to each command line as the script says; records commands."""
    seen: list[list[bytes]] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(seen)
        seen.append([])
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            seen[number].append(line.rstrip(b"\r\n"))
            reply = script(line.rstrip(b"\r\n"), number)
            if reply is None:
                break
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


@pytest.fixture
async def transport() -> AsyncIterator[SmtpTransport]:
    yield SmtpTransport(DeliveryConfig(), "relay.test")


def injecting(line: bytes, number: int) -> bytes | None:
    if line.startswith(b"EHLO"):
        return b"250-test\r\n250-PIPELINING\r\n250 STARTTLS\r\n" if number == 0 else b"250-test\r\n250 PIPELINING\r\n"
    if line == b"STARTTLS":
        return b"220 go ahead\r\n250 2.0.0 injected\r\n"     # a second reply smuggled behind the 220
    if line == b"QUIT":
        return b"221 bye\r\n"
    return b"250 ok\r\n"


async def test_starttls_response_injection_is_refused(transport: SmtpTransport) -> None:
    server, port, seen = await serve(injecting)
    try:
        host = Host("mx.test", ("127.0.0.1",), port)
        failure = await transport.connect((host,), DeliveryTls.REQUIRED)
        assert isinstance(failure, ConnectFailure) and failure.tls
        assert "after its STARTTLS reply" in failure.reason
        # Opportunistic: the poisoned session is dropped; a new plaintext one is used instead.
        conn = await transport.connect((host,), DeliveryTls.OPPORTUNISTIC)
        assert isinstance(conn, Connection) and conn.tls_version is None
        await conn.close()
        assert seen[-1] == [b"EHLO relay.test", b"QUIT"]
    finally:
        server.close()


async def test_a_connection_lost_mid_pipeline_keeps_the_replies_that_came(transport: SmtpTransport) -> None:
    def script(line: bytes, number: int) -> bytes | None:
        if line.startswith(b"EHLO"):
            return b"250-test\r\n250 PIPELINING\r\n"
        if line.startswith(b"RCPT TO:<first"):
            return b"550 5.1.1 no such user\r\n"
        if line.startswith(b"RCPT TO:<second"):
            return None                               # hangs up before answering the second
        return b"250 ok\r\n"
    server, port, _ = await serve(script)
    try:
        conn = await transport.connect((Host("mx.test", ("127.0.0.1",), port),), DeliveryTls.OPPORTUNISTIC)
        assert isinstance(conn, Connection)
        result = await conn.send("a@example.com", ["first@x.test", "second@x.test"], b"Subject: x\r\n\r\nx\r\n")
        assert result.recipients == {"first@x.test": result.recipients["first@x.test"]}
        assert str(result.recipients["first@x.test"]) == "550 5.1.1 no such user"
        assert result.session_failure == "lost connection" and not result.usable
    finally:
        server.close()


async def test_an_overlong_reply_line_ends_the_session(transport: SmtpTransport) -> None:
    server, port, _ = await serve(lambda line, n: b"250-" + b"x" * 10000 + b"\r\n250 ok\r\n")
    try:
        failure = await transport.connect((Host("mx.test", ("127.0.0.1",), port),), DeliveryTls.OPPORTUNISTIC)
        assert isinstance(failure, ConnectFailure) and "too long" in failure.reason
    finally:
        server.close()


def test_wire_format_stuffs_dots_and_ends_the_data() -> None:
    assert wire_format(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert wire_format(b"no final newline") == b"no final newline\r\n.\r\n"
    assert wire_format(b"bare\nnewline\r\n") == b"bare\r\nnewline\r\n.\r\n"


async def test_a_source_address_binds_the_connection_and_names_itself(transport: SmtpTransport) -> None:
    """Issue 19: an egress address is the connection's local address, its HELO name is said,
    and only the hosts' addresses of its family are tried (IPv6 ::1 to an IPv4-only host fails
    with the reason; to ::1 it goes)."""
    peers: list[str] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            peers.append(line.rstrip(b"\r\n").decode())
            writer.write(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 test\r\n")
            await writer.drain()
        writer.close()

    v4 = await asyncio.start_server(session, "127.0.0.1", 0)
    v6 = await asyncio.start_server(session, "::1", 0)
    try:
        port4, port6 = v4.sockets[0].getsockname()[1], v6.sockets[0].getsockname()[1]
        conn = await transport.connect((Host("mx.test", ("127.0.0.1",), port4),), DeliveryTls.OPPORTUNISTIC,
                                       "127.0.8.9", "out9.example.com")
        assert isinstance(conn, Connection) and conn.source == "127.0.8.9"
        await conn.close()
        assert peers[:2] == ["127.0.8.9", "EHLO out9.example.com"]
        failure = await transport.connect((Host("mx.test", ("127.0.0.1",), port4),), DeliveryTls.OPPORTUNISTIC,
                                          "::1", "out6.example.com")
        assert isinstance(failure, ConnectFailure) and "has no IPv6 address for source ::1" in failure.reason
        conn = await transport.connect((Host("mx.test", ("127.0.0.1", "::1"), port6),), DeliveryTls.OPPORTUNISTIC,
                                       "::1", "out6.example.com")
        assert isinstance(conn, Connection) and conn.address == "::1"
        await conn.close()
        assert "EHLO out6.example.com" in peers
    finally:
        v4.close()
        v6.close()
