"""The configuration as frozen dataclasses: every section and key with its default.

Owns: the shape of relay.toml and which sections a SIGHUP may change. Parsing and
validation are in config.parsing; value readers with key-path errors in config.reader.
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from smtprelay.config.pools import EgressConfig

MiB = 1024 * 1024


class TlsMode(str, enum.Enum):
    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"


class Protocol(str, enum.Enum):
    """The SMTP server protocol of the submission listeners (server.protocol)."""
    AIOSMTPD = "aiosmtpd"     # aiosmtpd.smtp.SMTP subclass (smtp/submission.py), the default
    NATIVE = "native"         # our own asyncio.Protocol (smtp/server.py), the faster option


class ReceivedHeader(str, enum.Enum):
    """What the Received: header says about who submitted (auth.received_header), like
    Postfix's smtpd_sasl_authenticated_header."""
    FULL = "full"            # the account and the SMTP user name
    ACCOUNT = "account"      # the account only: a login's user name is half a credential
    NONE = "none"            # neither (the protocol, ESMTPA, still says it was authenticated)


class BareNewline(str, enum.Enum):
    NORMALIZE = "normalize"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str = "localhost"
    data_dir: Path = Path("./var")
    shutdown_grace: float = 30.0
    # Like Postfix's queue_minfree, inverted: a cap on the store so the disk never fills.
    # 0 means no cap. Over it, new mail gets 452 4.3.1 and nothing accepted is touched.
    max_store_bytes: int = 0
    store_busy_timeout: float = 5.0
    # What sender domains publish in SPF: include:<spf_include>, or ip4:/ip6: of public_ips.
    # SPF verification evaluates the published policy for every address in public_ips.
    spf_include: str | None = None
    public_ips: tuple[str, ...] = ()
    # SMTP front-end processes sharing the listeners (0: one per CPU core but one, at least one).
    workers: int = 0
    # Under load, a commit may wait this long for more messages to share its fsync (0: never).
    commit_window: float = 0.005
    # The SMTP protocol implementation under the same FrontEnd: aiosmtpd (default) or native.
    protocol: Protocol = Protocol.AIOSMTPD

    @property
    def database_path(self) -> Path:
        return self.data_dir / "relay.db"

    @property
    def worker_count(self) -> int:
        """`auto`: a core is left to the back end (store, scheduler, delivery), which is busy too;
        on 2 cores one worker was as fast as two and used 11 % less CPU per message (issue 8)."""
        return self.workers or max(1, (os.cpu_count() or 1) - 1)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    address: str
    port: int
    tls: TlsMode
    trusted_networks: tuple[Network, ...] = ()
    trusted_account: str | None = None
    # "submission": the front-end workers serve it (AUTH, policy); "feedback": the back end
    # serves it (bounces, complaints, unsubscribe mail; no AUTH; issue 18).
    role: str = "submission"

    def is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_networks)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    require_tls: bool = True
    max_failures: int = 5
    failure_window: float = 900.0
    lockout: float = 900.0
    # Who the Received: header names for authenticated mail (every recipient sees it).
    received_header: ReceivedHeader = ReceivedHeader.ACCOUNT


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_message_bytes: int = 4 * MiB
    max_recipients: int = 50
    max_subject_chars: int = 998
    recipient_hourly_cap: int = 10
    account_daily_quota: int = 500
    account_rate_per_second: float = 20.0
    max_connections: int = 1000
    max_connections_per_client: int = 50
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    bare_newline: BareNewline = BareNewline.NORMALIZE
    # NOOP, RSET, VRFY and HELP a session may send between messages before it is closed with
    # 421 4.7.0 (Postfix's smtpd_junk_command_limit): a trickle of NOOPs cannot hold a slot.
    junk_command_limit: int = 100


@dataclass(frozen=True, slots=True)
class DomainsConfig:
    max_per_account: int = 10
    max_addresses_per_domain: int = 10
    recheck_interval: float = 6 * 3600.0
    grace: float = 48 * 3600.0
    return_path_host: str = "bounce"   # MX record at <return_path_host>.<domain> → server.hostname


class DkimAlgorithm(str, enum.Enum):
    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


@dataclass(frozen=True, slots=True)
class DkimConfig:
    algorithms: tuple[DkimAlgorithm, ...] = (DkimAlgorithm.RSA_SHA256,)
    rsa_bits: int = 2048
    rotation_overlap: float = 7 * 86400.0
    signing_threads: int = 0     # 0: sign on the worker's own loop (each worker has a core)


class DeliveryTls(str, enum.Enum):
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class Route:
    """A transport-map entry: deliver this recipient domain to host:port, skipping MX."""
    host: str
    port: int
    tls: DeliveryTls | None = None


@dataclass(frozen=True, slots=True)
class DestinationLimits:
    max_concurrency: int | None = None
    max_messages_per_connection: int | None = None


DEFAULT_RETRY = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    tls: DeliveryTls = DeliveryTls.OPPORTUNISTIC
    tls_ca_file: Path | None = None          # extra CA bundle for tls = "required" (default: system CAs)
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY   # the last step repeats
    retry_jitter: float = 0.1
    max_lifetime: float = 72 * 3600.0
    mx_port: int = 25                         # like Postfix's smtp_tcp_port
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    active_limit: int = 20000                 # recipients held in memory (qmgr_message_active_limit)
    max_connections: int = 100                # concurrent deliveries in total
    initial_concurrency: int = 2              # per destination, grows on success
    max_concurrency: int = 20                 # per destination
    dead_after_failures: int = 3              # consecutive connection failures → destination dead
    max_messages_per_connection: int = 100
    max_recipients_per_transaction: int = 50
    scan_interval: float = 1.0
    lease: float = 1800.0
    # After a recipient has waited this long, its sender gets one RFC 3464 "delayed" notice
    # (Postfix's delay_warning_time); 0: never.
    delay_warning: float = 0.0
    routes: dict[str, Route] = field(default_factory=dict)
    domains: dict[str, DestinationLimits] = field(default_factory=dict)

    def route_for(self, domain: str) -> Route | None:
        return self.routes.get(domain) or self.routes.get("*")


@dataclass(frozen=True, slots=True)
class ReputationConfig:
    # Daily quota per reputation level; an account starts at level 0. Empty: no levels,
    # limits.account_daily_quota (or the account's own quota) applies.
    levels: tuple[int, ...] = ()
    promote_usage: float = 0.8
    max_bounce_rate: float = 0.05
    max_complaint_rate: float = 0.001
    # Sender-domain reputation (issue 6), rolling 24 h, judged per sender domain and per
    # (sender domain, mailbox provider). Rates are ignored below min_sample.
    bounce_hold: float = 0.05           # hard bounces / attempts above this: freeze the ramp
    complaint_hold: float = 0.001       # complaints / deliveries above this: freeze the ramp
    blocklisted_suspend: float = 0.08   # blocklisted / requests at or above this: suspend the domain
    min_sample: int = 100


# Daily caps for warm-up day 1, 2, 3, ... per (sender domain, provider). Roughly doubling
# while volumes are tiny (providers judge a new domain on its first few hundred messages),
# then +20-30 % a day, reaching 100 000 on day 30; the rationale is in README "Warm-up".
DEFAULT_WARMUP_SCHEDULE = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 7500,
                           9000, 11000, 13000, 15000, 18000, 21000, 25000, 30000, 35000, 42000, 50000, 60000,
                           70000, 85000, 100000)

# Mailbox providers by the MX host names they use (a host matches a suffix when it equals it
# or ends with "." + suffix). With a route (no MX lookup) the recipient domain is matched.
DEFAULT_PROVIDERS: dict[str, tuple[str, ...]] = {
    "gmail": ("google.com", "googlemail.com", "gmail.com"),
    "microsoft": ("outlook.com", "protection.outlook.com", "hotmail.com", "live.com", "msn.com"),
    "yahoo": ("yahoodns.net", "yahoo.com", "aol.com", "ymail.com"),
    "apple": ("icloud.com", "me.com", "mac.com"),
    "qq": ("qq.com", "exmail.qq.com", "foxmail.com"),
    "netease": ("netease.com", "163.com", "126.com", "yeah.net"),
    "yandex": ("yandex.net", "yandex.ru", "yandex.com"),
    "mailru": ("mail.ru",),
    "gmx": ("gmx.net", "gmx.de", "gmx.com", "web.de", "mail.com"),
    "zoho": ("zoho.com", "zohomail.com", "zoho.eu"),
}

DEFAULT_BACKOFF_PATTERNS = ("rate limit", "rate-limit", "try again later", "too many connections",
                            "too many messages", "temporarily deferred", "throttl", "unusual rate",
                            "exceeded", "reputation")


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Per-provider overrides ([warmup.overrides.NAME])."""
    schedule: tuple[int, ...] | None = None
    max_daily: int | None = None
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    max_per_hour: int | None = None


NO_OVERRIDES = ProviderSettings()


@dataclass(frozen=True, slots=True)
class WarmupConfig:
    enabled: bool = True
    schedule: tuple[int, ...] = DEFAULT_WARMUP_SCHEDULE
    max_daily: int = 0                  # after the schedule: 0 = uncapped
    timezone: str = "UTC"               # when a warm-up day starts
    max_wait: float = 7 * 86400.0       # throttled longer than this (in total) → expired
    providers: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PROVIDERS))
    overrides: dict[str, ProviderSettings] = field(default_factory=dict)
    backoff_patterns: tuple[str, ...] = DEFAULT_BACKOFF_PATTERNS
    backoff_initial: float = 300.0      # first pause after a reputation reply; doubles on repeats
    backoff_max: float = 4 * 3600.0

    def settings(self, provider: str) -> ProviderSettings:
        return self.overrides.get(provider, NO_OVERRIDES)

    def schedule_for(self, provider: str) -> tuple[int, ...]:
        return self.settings(provider).schedule or self.schedule

    def max_daily_for(self, provider: str) -> int:
        value = self.settings(provider).max_daily
        return self.max_daily if value is None else value


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    concurrency: int = 8                # POSTs in flight at once
    timeout: float = 10.0               # per POST
    retry_initial: float = 30.0         # then doubling ...
    retry_max: float = 3600.0           # ... up to this between tries
    max_age: float = 86400.0            # retried this long, then a dead letter
    secret_overlap: float = 86400.0     # after `webhook secret --rotate`, the old secret signs too
    poll_interval: float = 1.0
    retention: float = 7 * 86400.0      # delivered outbox rows are kept this long


DEFAULT_MACHINE_AGENTS = ("yahoomailproxy", "barracuda", "mimecast", "proofpoint", "symantec", "bot", "spider",
                          "crawler", "python-requests", "curl/", "wget/", "go-http-client")


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    base_url: str | None = None         # e.g. "https://t.example.com" (served by [http]); unset: no tracking
    secret: str | None = None           # token key; unset: generated once into data_dir/tracking.key
    unsubscribe_mailto: str | None = None   # also offer mailto: in List-Unsubscribe (you handle that mailbox)
    machine_user_agents: tuple[str, ...] = DEFAULT_MACHINE_AGENTS
    machine_window: float = 60.0        # an open this soon after delivery is a prefetch, not a person


class ReturnPath(str, enum.Enum):
    AUTO = "auto"   # VERP once the domain's bounce MX and SPF records verify and a feedback listener exists
    OFF = "off"     # the envelope sender stays the submitted one


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """Inbound feedback (issue 18): the VERP return path and the feedback listener."""
    return_path: ReturnPath = ReturnPath.AUTO
    return_path_prefix: str = "bounces"
    max_message_bytes: int = 1 * MiB
    secret: str | None = None           # token key; unset: generated once into data_dir/feedback.key
    retention: float = 30 * 86400.0     # received feedback mail is kept this long


@dataclass(frozen=True, slots=True)
class EventsConfig:
    retention: float = 30 * 86400.0     # events older than this are deleted


class ScannerFailure(str, enum.Enum):
    TEMPFAIL = "tempfail"       # 451 4.7.1: the client tries again later
    ACCEPT = "accept"           # the message goes on unscanned (a log line and a metric each time)


class ScanScope(str, enum.Enum):
    ATTACHMENTS = "attachments"     # only messages with an attachment
    ALL = "all"


@dataclass(frozen=True, slots=True)
class ClamavConfig:
    address: str                        # "unix:/run/clamav/clamd.ctl" or "127.0.0.1:3310"
    scan: ScanScope = ScanScope.ATTACHMENTS
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class RspamdConfig:
    url: str                            # the normal worker, "http://127.0.0.1:11333"
    reject_score: float | None = 15.0   # 550 5.7.1 at or over this score
    hold_score: float | None = None     # accepted but held at or over this score
    add_header: bool = False            # X-Smtprelay-Spam-Score on accepted mail
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ContentConfig:
    scanner_failure: ScannerFailure = ScannerFailure.TEMPFAIL
    suspend_after: int = 20             # virus/spam refusals of one account within suspend_window (0: never)
    suspend_window: float = 86400.0
    clamav: ClamavConfig | None = None
    rspamd: RspamdConfig | None = None

    @property
    def scanning(self) -> bool:
        return self.clamav is not None or self.rspamd is not None


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_group_size: int = 10_000        # rows in one recipient group
    concurrency: int = 16               # task recipients being submitted at once, all tasks together
    chunk_rows: int = 500               # group rows a running task reads at a time


@dataclass(frozen=True, slots=True)
class BlocklistConfig:
    invalid_address_days: int = 180
    auto_block_full_inbox: bool = False
    full_inbox_failures: int = 3
    full_inbox_window: float = 72 * 3600.0
    full_inbox_days: int = 7


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    require_registered_address: bool = True


@dataclass(frozen=True, slots=True)
class HttpConfig:
    address: str = "127.0.0.1"
    port: int = 8025
    admin_token: str | None = None


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The web console under /console/ on [http] (issue 21); off by default."""
    enabled: bool = False
    session_lifetime: float = 12 * 3600.0    # a session ends this long after its login
    idle_timeout: float = 3600.0              # ... or after this long without a request
    secure_cookie: bool = False               # mark the cookie Secure (set it when a TLS proxy serves [http])


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Several nodes sharing limits and catalog (issue 20): absent `redis` and `postgres` = a single node."""
    node: str = ""                  # this node's name (default: the host name)
    redis: str | None = None        # redis://, rediss:// or unix:// URL of the shared counters
    postgres: str | None = None     # postgresql:// URL of the shared catalog
    key_file: Path | None = None    # seals the DKIM private keys in PostgreSQL (cluster.secrets)
    lease: float = 600.0            # a reservation a dead node holds is freed after this
    on_failure: str = "refuse"      # Redis unreachable: "refuse" (451, exact) or "local" (this node's limits)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    listeners: tuple[ListenerConfig, ...] = ()
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    reputation: ReputationConfig = field(default_factory=ReputationConfig)
    blocklist: BlocklistConfig = field(default_factory=BlocklistConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    egress: EgressConfig = field(default_factory=EgressConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def submission_listeners(self) -> tuple[ListenerConfig, ...]:
        return tuple(l for l in self.listeners if l.role == "submission")

    @property
    def feedback_listeners(self) -> tuple[ListenerConfig, ...]:
        return tuple(l for l in self.listeners if l.role == "feedback")

    def warnings(self) -> list[str]:
        """Valid settings a relay that sends to the Internet should not keep: what check-config
        and `domain add` warn about (the relay still starts; a local test set-up may want them)."""
        found = []
        if self.server.hostname == "localhost":
            found.append("server.hostname is \"localhost\": receivers see it in HELO, Received: and Message-IDs; "
                         "set the relay's public name")
        if not self.server.public_ips and self.server.spf_include is None and not self.egress.pools["shared"].addresses:
            found.append("server.public_ips is empty (and server.spf_include unset): the SPF record a sender domain "
                         "publishes cannot name this relay's outgoing addresses; set them before `domain add`")
        return found


# Sections whose values a running server takes over on SIGHUP. Everything else is
# bound to sockets, files or the store and needs a restart.
RELOADABLE_SECTIONS = ("limits", "auth", "log", "domains", "policy", "delivery", "reputation", "blocklist",
                       "warmup", "events", "webhooks",
                       "tracking", "batch", "content", "egress", "feedback", "console")


def reload_report(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Which changed sections apply now, and which need a restart."""
    applied: list[str] = []
    restart: list[str] = []
    for name in ("server", "listeners", "tls", "auth", "limits", "http", "dns", "log", "domains", "dkim",
                 "policy", "delivery", "reputation", "blocklist", "warmup", "events", "webhooks", "tracking",
                 "batch", "content", "egress", "cluster"):
        before, after = getattr(old, name), getattr(new, name)
        if name == "http" and before.admin_token != after.admin_token:
            # The admin API reads the token per request: a new one is live at once.
            applied.append("http.admin_token")
            before, after = dataclasses.replace(before, admin_token=None), dataclasses.replace(after, admin_token=None)
        if before != after:
            (applied if name in RELOADABLE_SECTIONS else restart).append(name)
    return applied, restart
