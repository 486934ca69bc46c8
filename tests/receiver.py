"""A receiving SMTP server for tests, run as its own process (aiosmtpd).

Logs every transaction as one JSON line: peer, HELO, MAIL FROM, RCPT TOs, data (base64),
TLS version, connection number and transaction number within the connection.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import time
import ssl
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session

_connections = itertools.count(1)


class Handler:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rcpt_rules = [rule.split("=", 1) for rule in args.rcpt_reply]

    async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        for pattern, reply in self.rcpt_rules:
            if pattern in address:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session: Session, envelope: Envelope):  # type: ignore[no-untyped-def]
        if self.args.stall_data:
            await asyncio.sleep(self.args.stall_data)
        conn = server.conn_id
        server.transactions += 1
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        record = {"peer": session.peer[0], "helo": session.host_name, "mail_from": envelope.mail_from,
                  "rcpts": envelope.rcpt_tos, "data": base64.b64encode(envelope.original_content or b"").decode(),
                  "tls": ssl_object.version() if ssl_object else None, "conn": conn, "txn": server.transactions,
                  "at": time.time()}
        with open(self.args.log, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return self.args.data_reply


class Server(SMTP):
    def __init__(self, handler: Handler, tls: ssl.SSLContext | None, broken_tls: bool):
        super().__init__(handler, hostname="receiver.test", tls_context=tls, auth_require_tls=False,
                         data_size_limit=None)
        self.conn_id = next(_connections)
        self.transactions = 0
        self.broken_tls = broken_tls

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.broken_tls:
            await self.push("220 Ready to start TLS")
            assert self.transport is not None
            self.transport.close()  # the handshake can never succeed
            return
        await super().smtp_STARTTLS(arg)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--broken-tls", action="store_true")
    p.add_argument("--rcpt-reply", action="append", default=[], help="SUBSTRING=REPLY")
    p.add_argument("--data-reply", default="250 2.0.0 Ok: queued")
    p.add_argument("--stall-data", type=float, default=0.0)
    args = p.parse_args()
    tls = None
    if args.tls_cert or args.broken_tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if args.tls_cert:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
    handler = Handler(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(handler, tls, args.broken_tls), args.host, args.port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
