"""The syntax of MAIL and RCPT arguments and the reply texts both SMTP protocols share
(smtp.submission on aiosmtpd, smtp.server native): one parser, so the two give the same
reply to the same line.

Owns: argument syntax (RFC 5321 4.1.2, RFC 1870 SIZE, RFC 6152 BODY), the strict address
parse that policy and delivery share (policy.address: source routes, `%`, `!`, quoted `@`,
IP literals → 553 5.1.3), and the fixed reply lines.

Must never: decide policy (that is the FrontEnd's) or do I/O.
"""
from __future__ import annotations

import logging
from typing import Any

from smtprelay.config import ListenerConfig

from smtprelay.policy.address import AddressError, parse_address, split_smtp_argument

log = logging.getLogger("smtprelay.smtp")

COMMAND_LINE_MAX = 512          # RFC 5321 4.5.3.1.4, including CRLF
MAIL_LINE_MAX = 512 + 26        # plus what SIZE= may add (RFC 1870)
TEXT_LINE_MAX = 1000            # a DATA line, without its CRLF (RFC 5321 allows 998 + a stuffed dot)
BOGUS_LIMIT = 5                 # unknown commands before we hang up

TOO_LONG_LINE = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6 allows 1000 octets)"
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
MAIL_SYNTAX = ("501 5.5.4 Syntax: MAIL FROM:<address> [SP <mail-parameters>] (the null sender is not accepted "
               "for submission)")
RCPT_SYNTAX = "501 5.5.4 Syntax: RCPT TO:<address>"
BAD_ADDRESS = "553 5.1.3 Bad address syntax"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
HELP = "214 2.0.0 Commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY"
VRFY = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
LOCAL_PROBLEM = "451 4.3.0 Error: local problem; try again later"
JUNK_LIMIT = "421 4.7.0 Too many commands without a message; closing the connection"
LOCKED_OUT = "421 4.7.0 Too many failed authentication attempts from your address; try again later"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"


def connection_facts(transport: Any, listener: ListenerConfig) -> tuple[str, bool, str | None]:
    """A new connection's client address, whether its network is trusted on this listener,
    and the TLS version if the connection is already encrypted (implicit TLS)."""
    peer = transport.get_extra_info("peername")
    client_ip = peer[0] if peer else ""
    ssl_object = transport.get_extra_info("ssl_object")
    return client_ip, listener.is_trusted(client_ip), ssl_object.version() if ssl_object is not None else None


def refusal(hostname: str, refused: str) -> str:
    """The 421 for a connection the gate did not admit ("unavailable": the back end is gone)."""
    if refused == "unavailable":
        return f"421 4.3.2 {hostname} Service not available, try again later"
    what = "your address" if refused == "per_client" else "all clients"
    return f"421 4.7.0 {hostname} Too many connections from {what}; try again later"


def ehlo_lines(hostname: str, max_bytes: int, starttls: bool, auth: bool) -> list[str]:
    """The EHLO reply's lines, without the 250 prefixes."""
    lines = [hostname, "PIPELINING", f"SIZE {max_bytes}", "8BITMIME", "ENHANCEDSTATUSCODES"]
    if starttls:
        lines.append("STARTTLS")
    if auth:
        lines.append("AUTH LOGIN PLAIN")
    lines.append("HELP")
    return lines


def _address(text: str, client_ip: str) -> tuple[str | None, str]:
    """(address or None if malformed, parameters); address "" for the null path.
    Strict parsing: policy and delivery must see the same address (policy.address)."""
    try:
        inner, rest = split_smtp_argument(text)
        if inner == "":
            return "", rest
        return str(parse_address(inner)), rest
    except AddressError as exc:
        log.info("reject: bad address syntax from [%s]: %s: %s", client_ip, exc, text[:200])
        return None, ""


def mail_argument(arg: str, extended: bool, nested: bool, max_bytes: int,
                  client_ip: str) -> tuple[str, list[str]] | str:
    """MAIL FROM's argument → (address, upper-cased options), or the reply refusing it.
    `nested`: a transaction is already open."""
    if arg[:5].upper() != "FROM:":
        return MAIL_SYNTAX
    address, rest = _address(arg[5:].strip(), client_ip)
    if address is None:
        return BAD_ADDRESS
    if not address or (rest and not extended):
        return MAIL_SYNTAX
    if nested:
        return NESTED_MAIL
    options = rest.upper().split()
    params: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not key.isalnum() or (eq and not value):
            return MAIL_SYNTAX
        params[key] = value
    if params.pop("BODY", "7BIT") not in ("7BIT", "8BITMIME"):
        return "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME"
    if "SMTPUTF8" in params:
        return "555 5.6.7 SMTPUTF8 is not supported"
    size = params.pop("SIZE", None)
    if size is not None:
        if not size.isdigit():
            return MAIL_SYNTAX
        if int(size) > max_bytes:
            return TOO_BIG
    if params:
        return "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
    return address, options


def rcpt_argument(arg: str, extended: bool, client_ip: str) -> str | tuple[str]:
    """RCPT TO's argument → (address,), or the reply refusing it."""
    if arg[:3].upper() != "TO:":
        return RCPT_SYNTAX
    address, rest = _address(arg[3:].strip(), client_ip)
    if address is None:
        return BAD_ADDRESS
    if not address or (rest and not extended):
        return RCPT_SYNTAX
    if rest:
        return "555 5.5.4 RCPT TO parameters not recognized or not implemented"
    return (address,)


def unstuff(raw: bytes) -> bytes | str:
    """Message data between DATA and the final dot (CRLF line ends) → the message, with
    dot-stuffing undone (RFC 5321 4.5.2), or the reply refusing a line over 1000 octets."""
    # With a CRLF in front, every line start is "\r\n".
    content = (b"\r\n" + raw).replace(b"\r\n.", b"\r\n")[2:] if b"\r\n." in raw or raw[:1] == b"." else raw
    if len(content) > TEXT_LINE_MAX and max(map(len, content.split(b"\r\n"))) > TEXT_LINE_MAX:
        return TOO_LONG_LINE
    return content
