"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer), for runs longer than
`make test` affords (issue 24, item 7). The properties are those of tests/test_fuzz.py and
tests/test_templates_unit.py: no exception but the parser's own refusal escapes, a refusal
is a well-formed SMTP reply, an accepted address parses back to itself.

    make fuzz                                   # every target, FUZZ_SECONDS (60) each
    .venv/bin/python tests/fuzz/harness.py TARGET [libFuzzer flags, e.g. -max_total_time=600 CORPUS_DIR]

Targets: mail, rcpt, address, unstuff, dkim-headers, template, send-request. A crash writes
the input to crash-<hash> (libFuzzer's default) to be turned into a regression test.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from smtprelay.dkim.signer import MalformedMessage, RelaxedHeaders, rfc822_headers  # noqa: E402
    from smtprelay.errors import Invalid  # noqa: E402
    from smtprelay.policy.address import AddressError, parse_address  # noqa: E402
    from smtprelay.smtp import commands as C  # noqa: E402
    from smtprelay.templates.engine import TemplateError, compile_part  # noqa: E402
    from smtprelay.templates.request import FIELDS, parse as parse_request  # noqa: E402

REPLY = re.compile(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} \S")


def _text(data: bytes) -> str:
    return atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))


def mail(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    extended, nested = fdp.ConsumeBool(), fdp.ConsumeBool()
    result = C.mail_argument(fdp.ConsumeUnicodeNoSurrogates(256), extended, nested, 1000, "192.0.2.1")
    if isinstance(result, str):
        assert REPLY.match(result), result
    else:
        assert result[0] == str(parse_address(result[0]))


def rcpt(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    extended = fdp.ConsumeBool()
    result = C.rcpt_argument(fdp.ConsumeUnicodeNoSurrogates(256), extended, "192.0.2.1")
    if isinstance(result, str):
        assert REPLY.match(result), result
    else:
        parsed = parse_address(result[0])
        assert "%" not in parsed.local and "!" not in parsed.local


def address(data: bytes) -> None:
    try:
        parsed = parse_address(_text(data))
    except AddressError:
        return
    assert parse_address(str(parsed)) == parsed


def unstuff(data: bytes) -> None:
    result = C.unstuff(data.replace(b"\r", b"").replace(b"\n", b"\r\n") + b"\r\n")
    if isinstance(result, str):
        assert REPLY.match(result), result


def dkim_headers(data: bytes) -> None:
    try:
        headers = rfc822_headers(data + b"\r\n")
    except MalformedMessage:
        return
    for _, value in RelaxedHeaders.canonicalize_headers(headers):
        assert value.endswith(b"\r\n") and b"\r\n" not in value[:-2]


def template(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    html = fdp.ConsumeBool()
    source = fdp.ConsumeUnicodeNoSurrogates(512)
    try:
        part = compile_part(source, "html" if html else "text", html)
    except TemplateError:
        return
    values = {v.split(".")[0]: fdp.ConsumeUnicodeNoSurrogates(16) for v in part.variables}
    try:
        part.render(values)
    except TemplateError:
        pass


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 5 if depth < 2 else 2)
    if kind == 0:
        return fdp.ConsumeUnicodeNoSurrogates(40)
    if kind == 1:
        return fdp.ConsumeInt(4)
    if kind == 2:
        return None if fdp.ConsumeBool() else fdp.ConsumeBool()
    if kind == 3:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 4:
        return {k: _value(fdp, depth + 1) for k in ("id", "data", "filename", "content_type", "content_base64")
                if fdp.ConsumeBool()}
    return {fdp.ConsumeUnicodeNoSurrogates(8): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 2))}


def send_request(data: bytes) -> None:
    """A body built from the API's own field names with values of any JSON type."""
    fdp = atheris.FuzzedDataProvider(data)
    body = {name: _value(fdp) for name in FIELDS if fdp.ConsumeBool()}
    try:
        request = parse_request(json.loads(json.dumps(body)), 50)
    except Invalid:
        return
    assert request.recipients and len(request.recipients) <= 50


TARGETS: dict[str, Callable[[bytes], None]] = {
    "mail": mail, "rcpt": rcpt, "address": address, "unstuff": unstuff, "dkim-headers": dkim_headers,
    "template": template, "send-request": send_request}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(__doc__)
        print("targets:", ", ".join(TARGETS))
        sys.exit(2)
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
