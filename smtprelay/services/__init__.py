"""The services: every operation the CLI, the admin API and the console offer, once.

Owns: the rules of each area (who may, what is valid, what follows from what), as typed
methods that take typed arguments and return dataclasses with a `doc()` (the JSON document
both front doors show), raising `smtprelay.errors` kinds. They read and write through a
`Catalog` (catalog.sqlite today) and, for the queue and its events, the store's own modules.

Must never: print, parse argv, know HTTP, or return exit statuses. A new command is a method
here first; the front doors (smtprelay.cli, smtprelay.http.admin) only translate.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smtprelay.services.context import Context, guard

if TYPE_CHECKING:
    from smtprelay.services.facade import Services, open_services

__all__ = ["Context", "Services", "guard", "open_services"]


def __getattr__(name: str) -> Any:
    """`Services` and `open_services` load every area: only when asked for, so a CLI command
    imports just its own."""
    if name in ("Services", "open_services"):
        from smtprelay.services import facade
        return getattr(facade, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
