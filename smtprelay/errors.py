"""What a service can refuse, as types: the front doors map each kind once.

Owns: the error kinds every service raises. The CLI maps them to exit statuses (Invalid → 2,
bad usage; the others → 1); the admin API to HTTP (Invalid → 400 naming the field,
NotFound → 404, Refused → 409, StoreUnavailable → 503).

Must never: carry presentation (no CLI option names unless the field is one, no HTTP codes).
"""
from __future__ import annotations


class ServiceError(Exception):
    """Anything a service refuses; the text is one complete sentence for a person."""


class Invalid(ServiceError):
    """A value that can never be right (a malformed domain, a negative quota). `field` names
    the argument (the API's field, the CLI's option or positional) when one is to blame."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Refused(ServiceError):
    """A well-formed request the current state does not allow (a duplicate, a rule)."""


class NotFound(Refused):
    """The object named does not exist."""


class StoreUnavailable(ServiceError):
    """The catalog or the store could not be used (locked, full, unreadable)."""
