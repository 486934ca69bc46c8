"""The admin API's route table types and the validation of a route's fields: a route names
the service call it makes and the typed fields it takes (path, query or body); `validate`
turns what a request gave into those fields or an `Invalid` naming the field.

Must never: know a route (http.admin and http.sending_routes hold the tables), or do I/O.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from smtprelay import when
from smtprelay.errors import Invalid
from smtprelay.services import Services

Params = dict[str, Any]


@dataclass(frozen=True)
class Field:
    name: str
    type: str = "string"            # string, integer, number, boolean, object, when (a past moment), deadline,
                                    # file (multipart/form-data, or a string in JSON)
    required: bool = False
    choices: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Route:
    method: str
    path: str                       # {name} parts are required string fields
    summary: str
    call: Callable[[Services, Params], Any]     # the service call; returns the JSON document
    fields: tuple[Field, ...] = ()

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def operation_id(self) -> str:
        words = [w for w in re.split(r"[/{}-]+", self.path) if w]
        return self.method.lower() + "_" + "_".join(words)


def docs(key: str, items: list[Any], to_doc: Callable[[Any], Any]) -> dict[str, Any]:
    return {key: [to_doc(i) for i in items]}


def validate(route: Route, match: dict[str, str], given: dict[str, Any], from_query: bool, now: float) -> Params:
    """The route's fields from the path and the query or body, typed; anything else is an
    `Invalid` naming the field."""
    known = {f.name: f for f in route.fields}
    unknown = sorted(set(given) - set(known))
    if unknown:
        takes = ", ".join(known) or "none"
        raise Invalid(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                      f"this operation takes: {takes}", unknown[0])
    params: Params = dict(match)
    for f in route.fields:
        value = given.get(f.name)
        if value is None or (from_query and value == ""):
            if f.required:
                raise Invalid(f"the field \"{f.name}\" is required", f.name)
            continue
        params[f.name] = _typed(f, value, from_query, now)
    return params


def _typed(f: Field, value: Any, from_query: bool, now: float) -> Any:
    def bad(expected: str) -> Invalid:
        return Invalid(f"the field \"{f.name}\" must be {expected}, got {value!r}", f.name)
    if f.type == "integer":
        if from_query and isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad("a positive integer")
        return value
    if f.type == "number":
        if from_query and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad("a positive number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise bad("a positive number")
        return float(value)
    if f.type == "boolean":
        if isinstance(value, bool):
            return value
        if from_query and value in ("true", "false", "1", "0"):
            return value in ("true", "1")
        raise bad("true or false")
    if f.type == "object":
        if not isinstance(value, dict):
            raise bad("a JSON object")
        return value
    if f.type == "file":
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if not isinstance(value, str):
            raise bad("a file (multipart/form-data) or a string")
        return value.encode("utf-8")
    if not isinstance(value, str):
        raise bad("a string")
    if f.choices and value not in f.choices:
        raise bad("one of " + ", ".join(f.choices))
    if f.type in ("when", "deadline"):
        try:
            return when.parse_when(value, now, future=f.type == "deadline")
        except ValueError as exc:
            raise Invalid(f"{f.name}: {exc}", f.name) from None
    return value
