"""Template rendering: `{{name}}` placeholders (escaped in HTML), `{{{name}}}` raw, nothing else.

Owns: compiling a template part (subject, text or HTML) with Jinja2's SandboxedEnvironment,
the check that it holds only placeholders, the list of variables it uses, and rendering with
a request's data. Jinja2 parses and escapes (autoescape in HTML parts, through MarkupSafe);
this module narrows what it accepts:

- the parsed tree may hold only text and variable look-ups (`a`, `a.b`, `a.0`): no tags,
  filters, calls, literals or operators, so a template cannot run code; `{{{x}}}` becomes
  Jinja's `{{ x|safe }}` before parsing and is the one filter allowed;
- look-ups read only the request's JSON (dict keys, list indexes), never a Python attribute
  (`environment.getattr` is replaced), so `{{ x.__class__ }}` or `{{ x.items }}` reach
  nothing but the data;
- a variable the data does not hold is an error naming it (never an empty string), and so is
  one that holds an object or a list rather than a value.

Pure: strings in, strings out. Must never: read files or the environment, or call data.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

_TRIPLE = re.compile(r"\{\{\{\s*([^{}]*?)\s*\}\}\}")
VARIABLE_SYNTAX = "{{name}} or {{{name}}} with letters, digits, '_' and '.'"
# Compiling costs about 0.3 s per MB of text plus 0.4 ms per placeholder (Jinja2 generates
# Python code for each): a bound keeps a template's compile (once per version, in a thread)
# well under a second.
MAX_PLACEHOLDERS = 1000


class TemplateError(Exception):
    """A template that cannot be compiled, or data it cannot be rendered with. `part` names
    where (subject, text, html, data) and `variable` the variable to blame, if one is."""

    def __init__(self, message: str, part: str, variable: str | None = None):
        super().__init__(message)
        self.part = part
        self.variable = variable


class _DataOnly(SandboxedEnvironment):
    """Look-ups reach the request's JSON values only, never an attribute of a Python object."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self.getitem(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, dict) and isinstance(argument, str) and argument in obj:
            return obj[argument]
        if isinstance(obj, list):
            try:
                return obj[int(argument)]
            except (ValueError, IndexError):
                pass
        return self.undefined(obj=obj, name=str(argument))


def _environment(html: bool) -> _DataOnly:
    # Only `{{ }}` is syntax: block and comment delimiters are set to strings no template can
    # hold (a NUL is refused), so `{%` and `{#` in CSS or prose stay text.
    return _DataOnly(autoescape=html, undefined=StrictUndefined, keep_trailing_newline=True, auto_reload=False,
                     cache_size=0, block_start_string="\0{%", block_end_string="%}\0",
                     comment_start_string="\0{#", comment_end_string="#}\0")


_HTML_ENV = _environment(True)
_TEXT_ENV = _environment(False)


@dataclass(frozen=True, eq=False)
class CompiledPart:
    part: str                     # subject, text, html
    source: str
    variables: tuple[str, ...]    # dotted paths, in order of first use
    template: Template

    def render(self, data: dict[str, Any]) -> str:
        for path in self.variables:
            _value(data, path, self.part)
        try:
            return self.template.render(_plain(data))
        except TemplateError:
            raise
        except Exception as exc:     # defensive: the tree check should leave nothing that raises
            raise TemplateError(f"{self.part}: cannot be rendered: {exc}", self.part) from None


def compile_part(source: str, part: str, html: bool = False) -> CompiledPart:
    """Parse and check one part; TemplateError says where and why it is refused."""
    if "\0" in source:
        raise TemplateError(f"{part}: holds a NUL character", part)
    env = _HTML_ENV if html else _TEXT_ENV
    translated = _translate(source, html)
    try:
        tree = env.parse(translated)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part}: line {exc.lineno}: {exc.message}; only {VARIABLE_SYNTAX} is allowed",
                            part) from None
    variables: list[str] = []
    placeholders = 0
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            raise TemplateError(f"{part}: line {node.lineno}: only {VARIABLE_SYNTAX} is allowed", part)
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                continue
            placeholders += 1
            if placeholders > MAX_PLACEHOLDERS:
                raise TemplateError(f"{part}: more than {MAX_PLACEHOLDERS} placeholders", part)
            path = _path(child, part)
            if path not in variables:
                variables.append(path)
    return CompiledPart(part, source, tuple(variables), env.from_string(translated))


def variables_of(*parts: CompiledPart | None) -> list[str]:
    seen: list[str] = []
    for p in parts:
        if p is not None:
            seen += [v for v in p.variables if v not in seen]
    return seen


def parse_data(text: str, part: str = "data") -> dict[str, Any]:
    """Template data as given on a command line or in a header: a JSON object."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TemplateError(f"{part}: not valid JSON: {exc}", part) from None
    if not isinstance(data, dict):
        raise TemplateError(f"{part}: must be a JSON object of variable names and values", part)
    return data


# -- internals -------------------------------------------------------------------------------
def _translate(source: str, html: bool) -> str:
    """`{{{x}}}` → `{{ x|safe }}` in HTML (raw); in text and subject nothing is escaped anyway."""
    return _TRIPLE.sub(lambda m: "{{ " + m.group(1) + ("|safe }}" if html else " }}"), source)


def _path(node: nodes.Node, part: str) -> str:
    """A look-up node as its dotted path; anything else is refused."""
    if isinstance(node, nodes.Filter) and node.name == "safe" and not node.args and not node.kwargs \
            and node.node is not None:
        node = node.node
    segments: list[str] = []
    while True:
        if isinstance(node, nodes.Name):
            segments.append(node.name)
            break
        if isinstance(node, nodes.Getattr):
            segments.append(node.attr)
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, int) and not isinstance(node.arg.value, bool):
            segments.append(str(node.arg.value))
        else:
            raise TemplateError(f"{part}: line {node.lineno}: only {VARIABLE_SYNTAX} is allowed "
                                f"(found a {type(node).__name__.lower()} expression)", part)
        node = node.node
    path = ".".join(reversed(segments))
    if any(s.startswith("_") for s in segments):
        raise TemplateError(f"{part}: line {node.lineno}: variable {path!r} may not start a name with '_'",
                            part, path)
    return path


def _value(data: Any, path: str, part: str) -> Any:
    found = data
    for segment in path.split("."):
        if isinstance(found, dict) and segment in found:
            found = found[segment]
        elif isinstance(found, list) and segment.isdigit() and int(segment) < len(found):
            found = found[int(segment)]
        else:
            raise TemplateError(f"missing variable {path!r} (used in the {part})", part, path)
    if isinstance(found, (dict, list)):
        raise TemplateError(f"variable {path!r} (used in the {part}) holds a JSON "
                            f"{'object' if isinstance(found, dict) else 'list'}, not a value", part, path)
    return found


def _plain(value: Any) -> Any:
    """JSON values as text would show them: null → "", true/false rather than True/False."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
