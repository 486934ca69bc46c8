"""What every service runs on (the configuration, the catalog, the store and the clock), and
`guard`, which turns the drivers' errors into StoreUnavailable."""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from smtprelay.catalog import Catalog
from smtprelay.clock import Clock
from smtprelay.config import Config
from smtprelay.errors import StoreUnavailable


@dataclass
class Context:
    config: Config
    catalog: Catalog
    store: sqlite3.Connection        # the queue and its events (local to each node)
    clock: Clock

    def now(self) -> float:
        return self.clock.now()


# The drivers' error classes of every catalog opened so far (the store's own: sqlite3).
_DRIVER_ERRORS: set[type[BaseException]] = {sqlite3.Error}


def register_errors(errors: tuple[type[BaseException], ...]) -> None:
    """A catalog implementation's driver errors, for `guard`."""
    _DRIVER_ERRORS.update(errors)


@contextmanager
def guard() -> Iterator[None]:
    """The catalog's and the store's driver errors, as StoreUnavailable: the front doors run
    every service call inside this."""
    try:
        yield
    except tuple(_DRIVER_ERRORS) as exc:
        raise StoreUnavailable(f"the store could not be used: {exc}") from None
