"""Templates without a relay: the narrowed Jinja2 sandbox, `template check`, the send API's
request validation and the MIME it becomes (issue 16), with hypothesis where input is open."""
from __future__ import annotations

import base64
import email
import email.policy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.errors import Invalid
from smtprelay.templates import lint
from smtprelay.templates.compiled import CompiledTemplate
from smtprelay.templates.engine import MAX_PLACEHOLDERS, TemplateError, compile_part
from smtprelay.templates.message import build, rebuild
from smtprelay.templates.request import parse


def render(source: str, data: dict[str, Any], html: bool = True) -> str:
    return compile_part(source, "html" if html else "text", html).render(data)


def test_placeholders_escape_in_html_and_raw_with_three_braces() -> None:
    part = compile_part("<p>{{ name }} {{{ raw }}} {{user.first}} {{ items.1 }}</p>", "html", True)
    assert part.variables == ("name", "raw", "user.first", "items.1")
    assert part.render({"name": "<b>&", "raw": "<i>ok</i>", "user": {"first": "Ann"}, "items": ["a", "b"]}) == \
        "<p>&lt;b&gt;&amp; <i>ok</i> Ann b</p>"
    assert render("{{a}} {{{a}}}", {"a": "<x>"}, html=False) == "<x> <x>"       # text: nothing to escape
    assert render("{{n}} {{t}} {{f}} {{z}}", {"n": None, "t": True, "f": False, "z": 1.5}) == " true false 1.5"


def test_a_missing_variable_or_a_non_value_is_an_error_naming_it() -> None:
    part = compile_part("Hi {{user.name}}", "subject")
    with pytest.raises(TemplateError, match=r"missing variable 'user.name' \(used in the subject\)") as info:
        part.render({"user": {}})
    assert info.value.variable == "user.name"
    with pytest.raises(TemplateError, match="holds a JSON object, not a value"):
        part.render({"user": {"name": {"first": "A"}}})
    with pytest.raises(TemplateError, match="missing variable 'user.name'"):
        part.render({"user": "Ann"})       # a string has no fields: never str.name, str.upper, ...


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}", "{{ x.__class__.__mro__ }}", "{{ x._private }}", "{{ x() }}", "{{ x|upper }}",
    "{{ x|attr('y') }}", "{{ x + 1 }}", "{{ x['k'] }}", "{{ lipsum.__globals__ }}", "{{ x if y else z }}",
    "{{ [1,2] }}", "{{ x", "{{ range(10) }}"])
def test_anything_but_a_placeholder_is_refused(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_part(source, "html", True)
    assert str(info.value).startswith("html: line 1:")


def test_placeholders_are_bounded() -> None:
    compile_part("{{a}}" * MAX_PLACEHOLDERS, "html", True)
    with pytest.raises(TemplateError, match=f"more than {MAX_PLACEHOLDERS} placeholders"):
        compile_part("{{a}}" * (MAX_PLACEHOLDERS + 1), "html", True)


def test_look_ups_read_the_data_only() -> None:
    assert render("{{ d.items }} {{ d.keys }}", {"d": {"items": "I", "keys": "K"}}) == "I K"
    with pytest.raises(TemplateError, match="missing variable 'd.items'"):
        render("{{ d.items }}", {"d": {}})                 # not dict.items
    assert render("a {% b %} {# c #} {%- d -%}", {}) == "a {% b %} {# c #} {%- d -%}"   # tags are text
    with pytest.raises(TemplateError, match="NUL"):
        compile_part("a\0b", "text")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}%#._ab0-<>'\"()|\n\\ ")), max_size=40),
       st.dictionaries(st.sampled_from(["a", "b", "_a", "a0"]), json_values, max_size=4))
def test_fuzz_compile_and_render_raise_only_template_errors(source: str, data: dict[str, Any]) -> None:
    try:
        part = compile_part(source, "html", True)
    except TemplateError:
        return
    try:
        part.render(data)
    except TemplateError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fuzz_a_value_cannot_add_markup(value: str) -> None:
    out = render("<p>{{v}}</p>", {"v": value})
    assert "<" not in out[3:-4] and ">" not in out[3:-4]


def test_check_reports_what_filters_hold_against_a_template() -> None:
    html = "<p>" + "<img src=a.png>" * 51 + "<a href='http://10.0.0.1/x'>x</a>" \
           "<a href='https://evil.test/'>Log in at bank.example</a></p>"
    t = CompiledTemplate.of("Hi", None, html)
    findings = {f.rule: f for f in lint.check(t.subject, t.text, t.html)}
    assert findings["text_generated"].level == "info"
    assert findings["images"].level == "warning" and findings["images"].value == 51
    assert findings["image_only"].level == "warning"
    assert findings["link_ip"].value == "http://10.0.0.1/x"
    assert findings["link_mismatch"].message == "a link shows bank.example but goes to evil.test"
    assert findings["links"].value == {"10.0.0.1": 1, "evil.test": 1}
    assert not lint.errors(list(findings.values()))
    strict = lint.check(t.subject, t.text, t.html, strict=True)
    assert {f.rule for f in lint.errors(strict)} >= {"images", "image_only", "link_ip", "link_mismatch"}
    only = CompiledTemplate.of(None, "{{a}} {{b}}", None)
    assert {f.rule: f.level for f in lint.check(only.subject, only.text, only.html)}["variable_only"] == "warning"
    ratio = CompiledTemplate.of("s", "Dear {{name}}, " + "your statement is ready to read. " * 3, None)
    found = {f.rule: f for f in lint.check(ratio.subject, ratio.text, ratio.html, data={"name": "A" * 40})}
    assert found["variable_ratio"].level == "warning" and "with the sample data" in found["variable_ratio"].message
    found = {f.rule: f for f in lint.check(ratio.subject, ratio.text, ratio.html, data={"name": "Al"})}
    assert found["variable_ratio"].level == "info"


def test_send_requests_are_validated_field_by_field() -> None:
    ok = {"from": "Ann <a@example.com>", "to": "b@d.test", "cc": ["b@d.test", "C <c@d.test>"],
          "bcc": ["c@d.test"], "subject": "s", "text": "t"}
    req = parse(ok, 10)
    assert req.sender == ("Ann", "a@example.com") and req.recipients == ["b@d.test", "c@d.test"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"to": [], "cc": [], "bcc": []}, "to"), ({"to": ["a@b.test"] * 11}, "to"), ({"from": "no-at-sign"}, "from"),
        ({"to": ["x@[10.0.0.1]"]}, "to[0]"), ({"subject": "a\r\nBcc: x@y.z"}, "subject"),
        ({"template": {"id": 1}}, "template"), ({"text": None, "template": {"id": True}}, "template.id"),
        ({"text": None, "template": {"id": 1, "data": []}}, "template.data"),
        ({"headers": {"X-A": "1\r\nBcc: x@y.z"}}, "headers.X-A"), ({"headers": {"Bad Name": "1"}}, "headers.Bad Name"),
        ({"headers": {"Content-Type": "text/html"}}, "headers.Content-Type"), ({"tag": "a b"}, "tag"),
        ({"attachments": [{"filename": "../x", "content_base64": ""}]}, "attachments[0].filename"),
        ({"attachments": [{"filename": "x", "content_type": "pdf", "content_base64": ""}]},
         "attachments[0].content_type"), ({"reply_to": 5}, "reply_to"), ({"extra": 1}, "extra")]
    for change, field in cases:
        with pytest.raises(Invalid) as info:
            parse({**ok, **change}, 10)
        assert info.value.field == field, (change, str(info.value))


def test_the_message_is_standard_mime_and_reads_back() -> None:
    pdf = bytes(range(256))
    req = parse({"from": "Zoë <z@example.com>", "to": ["Bjørn <b@d.test>"], "reply_to": ["r@example.com"],
                 "subject": "unused", "html": "x", "headers": {"X-Id": "7"}, "tag": "t1",
                 "attachments": [{"filename": "naïve résumé.pdf", "content_type": "application/pdf",
                                  "content_base64": base64.b64encode(pdf).decode()}]}, 5)
    rendered = CompiledTemplate.of(None, None, "<p>Grüße {{n}}</p>").render({"n": "Zoë"})
    raw = build(req, rendered, "Grüße, Zoë")
    assert b"\r\n" in raw and all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert max(raw) < 128                                    # 7-bit clean: no 8BITMIME needed
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Grüße, Zoë" and msg["From"] == "Zoë <z@example.com>" and msg["X-Id"] == "7"
    assert msg["To"] == "Bjørn <b@d.test>" and msg["X-Smtprelay-Tag"] == "t1"
    assert [p.get_content_type() for p in msg.walk()] == ["multipart/mixed", "multipart/alternative", "text/plain",
                                                         "text/html", "application/pdf"]
    assert msg.get_body(("plain",)).get_content().strip() == "Grüße Zoë"   # type: ignore[union-attr]
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "naïve résumé.pdf" and att.get_content() == pdf
    submitted = raw.replace(b"Subject:", b"X-Smtprelay-Template: 1\r\nSubject:", 1)
    again = email.message_from_bytes(rebuild(submitted, CompiledTemplate.of("New", "T", None).render({})),
                                     policy=email.policy.default)
    assert again["Subject"] == "New" and again["X-Smtprelay-Template"] is None
    assert [a.get_filename() for a in again.iter_attachments()] == ["naïve résumé.pdf"]
    assert again.get_body(("plain",)).get_content().strip() == "T"          # type: ignore[union-attr]
