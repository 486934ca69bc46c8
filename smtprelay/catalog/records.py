"""The catalog's records: what every catalog implementation returns and the services read.

Owns: plain frozen dataclasses, no behaviour beyond small read-only properties.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from smtprelay.domains.records import PublicKey
from smtprelay.domains.status import DomainState

if TYPE_CHECKING:
    from smtprelay.dkim.keys import SigningKey


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    name: str
    daily_quota: int | None
    rate_per_second: float | None
    created_at: float
    delivery_tls: str | None = None
    level: int = 0
    suspended_at: float | None = None     # for content (issue 22): `account resume` lifts it
    suspended_reason: str | None = None
    pool: str | None = None               # egress pool (issue 19); None: "shared"
    pool_fallback: str | None = None      # "shared" or "none"; None: "shared"


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    account: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class Login:
    """What the authenticator needs to know about one username."""
    username: str
    digest: str
    account_id: int
    account: str


@dataclass(frozen=True, slots=True)
class DomainRecord:
    id: int
    name: str
    account: str
    account_id: int
    state: DomainState
    verified_at: float | None
    last_checked_at: float | None
    created_at: float
    keys: tuple[PublicKey, ...]
    addresses: int
    pool: str | None = None               # its own egress pool binding (None: the account's)
    pool_fallback: str | None = None
    account_pool: str | None = None       # the account's (None: "shared")
    account_pool_fallback: str | None = None

    @property
    def egress(self) -> tuple[str, str, str]:
        """The pool its mail goes out from, the fallback, and where the pool was set (domain,
        account or default): the domain's binding overrides the account's."""
        pool, source = ((self.pool, "domain") if self.pool else (self.account_pool, "account") if self.account_pool
                        else ("shared", "default"))
        return pool, self.pool_fallback or self.account_pool_fallback or "shared", source


@dataclass(frozen=True, slots=True)
class AddressRecord:
    address: str
    name: str | None
    domain: str
    account: str
    created_at: float


@dataclass(frozen=True, slots=True)
class SenderDomain:
    """A sender domain as the front end checks and signs for it."""
    name: str
    account_id: int
    state: DomainState
    signing_keys: tuple[SigningKey, ...]
    suspended: str | None = None    # why sending is suspended for reputation (domain resume lifts it)


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    account: str
    address: str | None
    url: str
    created_at: float
    pending: int
    dead: int


@dataclass(frozen=True, slots=True)
class TrackingRow:
    """One stored settings row: None means inherit (a domain from its account, an account: off)."""
    account_id: int
    domain: str | None
    opens: bool | None
    clicks: bool | None
    unsubscribe: bool | None


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    id: int
    account_id: int
    account: str
    name: str
    description: str | None
    version: int
    status: str                  # active, inactive
    status_reason: str | None
    created_at: float
    updated_at: float
    subject: str | None
    html: str | None
    text: str | None
    variables: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GroupRecord:
    id: int
    account_id: int
    account: str
    name: str
    description: str | None
    columns: tuple[str, ...]
    size: int
    skipped: int
    created_at: float


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    account_id: int
    account: str
    group_id: int
    group: str
    template_id: int
    template: str
    mail_from: str
    subject: str | None
    tag: str | None
    data: str                   # JSON object
    kind: str                   # now, at, every
    first_at: float
    every_seconds: float | None
    created_at: float
    held: bool                  # the operator paused it
    cancelled_at: float | None
    state: str                  # the runner's: scheduled, running, finished, cancelled
    wait_reason: str | None
    wait_until: float | None
    next_run_at: float | None
    runs: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a task and its counts (requested = rows resolved so far)."""
    task_id: int
    run: int
    due_at: float
    started_at: float
    finished_at: float | None
    size: int
    status: str
    counts: dict[str, int]
