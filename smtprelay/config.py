"""relay.toml → frozen dataclasses, validated with key-path errors.

Owns: parsing and validating the configuration file. Every problem is collected (not
just the first) and reported as ``key.path: reason, got <value>`` so that
``smtprelay check-config`` can print them all at once. Unknown keys are errors too:
a typo in a limit must never silently fall back to the default.

Must never: open sockets, touch the store, or read anything but the file it is given.
"""
from __future__ import annotations

import enum
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

MiB = 1024 * 1024

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(text: str) -> float:
    """Parse "30s", "15m", "72h", "180d", "500ms" or combinations like "1h30m" into seconds."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be a duration string like \"30s\", \"15m\", \"72h\" or \"180d\"")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError("must be a duration string like \"30s\", \"15m\", \"72h\" or \"180d\"")
    return total


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


class TlsMode(str, enum.Enum):
    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"


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

    @property
    def database_path(self) -> Path:
        return self.data_dir / "relay.db"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    address: str
    port: int
    tls: TlsMode
    trusted_networks: tuple[Network, ...] = ()
    trusted_account: str | None = None

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
    signing_threads: int = 2


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


# Sections whose values a running server takes over on SIGHUP. Everything else is
# bound to sockets, files or the store and needs a restart.
RELOADABLE_SECTIONS = ("limits", "auth", "log", "domains", "policy", "delivery", "reputation", "blocklist")


def reload_report(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Which changed sections apply now, and which need a restart."""
    applied: list[str] = []
    restart: list[str] = []
    for name in ("server", "listeners", "tls", "auth", "limits", "http", "dns", "log", "domains", "dkim",
                 "policy", "delivery", "reputation", "blocklist"):
        if getattr(old, name) != getattr(new, name):
            (applied if name in RELOADABLE_SECTIONS else restart).append(name)
    return applied, restart


class _Section:
    """Reads one TOML table, recording problems under its key path."""

    def __init__(self, data: Any, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        if not isinstance(data, dict):
            problems.append(f"{path}: must be a table, got {_show(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, default: T, convert: Callable[[Any], T]) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        raw = self.data[name]
        try:
            return convert(raw)
        except ValueError as exc:
            self.problems.append(f"{self.key(name)}: {exc}, got {_show(raw)}")
            return default

    def positive_int(self, name: str, default: int, allow_zero: bool = False) -> int:
        def convert(raw: Any) -> int:
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0 or (raw == 0 and not allow_zero):
                raise ValueError("must be a non-negative integer" if allow_zero else "must be a positive integer")
            return raw
        return self._get(name, default, convert)

    def positive_number(self, name: str, default: float) -> float:
        def convert(raw: Any) -> float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw <= 0:
                raise ValueError("must be a positive number")
            return float(raw)
        return self._get(name, default, convert)

    def port(self, name: str, default: int) -> int:
        def convert(raw: Any) -> int:
            if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 65535:
                raise ValueError("must be a port number between 0 and 65535")
            return raw
        return self._get(name, default, convert)

    def duration(self, name: str, default: float) -> float:
        def convert(raw: Any) -> float:
            value = parse_duration(raw)
            if value <= 0:
                raise ValueError("must be a positive duration")
            return value
        return self._get(name, default, convert)

    def boolean(self, name: str, default: bool) -> bool:
        def convert(raw: Any) -> bool:
            if not isinstance(raw, bool):
                raise ValueError("must be true or false")
            return raw
        return self._get(name, default, convert)

    def string(self, name: str, default: Any, pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        def convert(raw: Any) -> str:
            if not isinstance(raw, str) or not raw:
                raise ValueError("must be a non-empty string")
            if pattern is not None and not pattern.match(raw):
                raise ValueError(f"must be {what}")
            return raw
        return self._get(name, default, convert)

    def choice(self, name: str, default: Any, enum_type: type[enum.Enum]) -> Any:
        allowed = [m.value for m in enum_type]

        def convert(raw: Any) -> Any:
            if raw not in allowed:
                raise ValueError("must be one of " + ", ".join(f'"{a}"' for a in allowed))
            return enum_type(raw)
        return self._get(name, default, convert)

    def path_value(self, name: str, default: Path | None) -> Path | None:
        return self._get(name, default, lambda raw: Path(_nonempty_str(raw)))

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.seen):
            self.problems.append(f"{self.key(name)}: unknown key")


def _nonempty_str(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a non-empty string")
    return raw


def _show(raw: Any) -> str:
    if isinstance(raw, str):
        return f'"{raw}"'
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a table"
    return repr(raw)


def _parse_networks(raw: Any) -> tuple[Network, ...]:
    if not isinstance(raw, list):
        raise ValueError("must be a list of CIDR strings like \"127.0.0.1/32\"")
    nets = []
    for item in raw:
        if not isinstance(item, str):
            raise ValueError("must be a list of CIDR strings like \"127.0.0.1/32\"")
        try:
            nets.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise ValueError(f"\"{item}\" is not a CIDR network (host bits must be zero)") from None
    return tuple(nets)


def _parse_nameserver(raw: Any) -> tuple[str, int]:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be a list of \"address\" or \"address:port\" strings")
    host, port = raw, 53
    if raw.startswith("["):  # [::1]:5353
        host, _, rest = raw[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"\"{raw}\" is not address:port")
            port = int(rest[1:])
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"\"{raw}\" is not address:port")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"\"{raw}\": a nameserver must be an IP address, not a name") from None
    if not 0 < port <= 65535:
        raise ValueError(f"\"{raw}\": port out of range")
    return host, port


def parse(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a decoded TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    base = base_dir or Path(".")
    known = {"server", "listeners", "tls", "auth", "limits", "http", "dns", "log", "domains", "dkim", "policy",
             "delivery", "reputation", "blocklist"}
    for name in sorted(set(data) - known):
        problems.append(f"{name}: unknown section")

    s = _Section(data.get("server", {}), "server", problems)
    data_dir = s.path_value("data_dir", Path("./var")) or Path("./var")
    server = ServerConfig(
        hostname=s.string("hostname", "localhost", _HOSTNAME, "a host name like \"relay.example.com\""),
        data_dir=data_dir if data_dir.is_absolute() else (base / data_dir),
        shutdown_grace=s.duration("shutdown_grace", 30.0),
        max_store_bytes=s.positive_int("max_store_bytes", 0, allow_zero=True),
        store_busy_timeout=s.duration("store_busy_timeout", 5.0),
        spf_include=s.string("spf_include", None, _HOSTNAME, "a host name like \"_spf.example.net\""),
        public_ips=s._get("public_ips", (), lambda raw: tuple(_ip_text(x) for x in _list(raw))),
    )
    s.finish()

    t = _Section(data.get("tls", {}), "tls", problems)
    cert = t.path_value("cert_file", None)
    key = t.path_value("key_file", None)
    t.finish()
    if (cert is None) != (key is None):
        problems.append("tls: cert_file and key_file must be set together (or both left out for a self-signed certificate)")
    for name, p in (("cert_file", cert), ("key_file", key)):
        if p is not None and not (p if p.is_absolute() else base / p).is_file():
            problems.append(f"tls.{name}: file not found, got \"{p}\"")
    tls = TlsConfig(
        cert_file=None if cert is None else (cert if cert.is_absolute() else base / cert),
        key_file=None if key is None else (key if key.is_absolute() else base / key),
    )

    a = _Section(data.get("auth", {}), "auth", problems)
    auth = AuthConfig(
        require_tls=a.boolean("require_tls", True),
        max_failures=a.positive_int("max_failures", 5),
        failure_window=a.duration("failure_window", 900.0),
        lockout=a.duration("lockout", 900.0),
    )
    a.finish()

    lim = _Section(data.get("limits", {}), "limits", problems)
    limits = LimitsConfig(
        max_message_bytes=lim.positive_int("max_message_bytes", 4 * MiB),
        max_recipients=lim.positive_int("max_recipients", 50),
        max_subject_chars=lim.positive_int("max_subject_chars", 998),
        recipient_hourly_cap=lim.positive_int("recipient_hourly_cap", 10),
        account_daily_quota=lim.positive_int("account_daily_quota", 500),
        account_rate_per_second=lim.positive_number("account_rate_per_second", 20.0),
        max_connections=lim.positive_int("max_connections", 1000),
        max_connections_per_client=lim.positive_int("max_connections_per_client", 50),
        command_timeout=lim.duration("command_timeout", 300.0),
        data_timeout=lim.duration("data_timeout", 600.0),
        bare_newline=lim.choice("bare_newline", BareNewline.NORMALIZE, BareNewline),
    )
    lim.finish()
    if limits.max_connections_per_client > limits.max_connections:
        problems.append("limits.max_connections_per_client: must not exceed limits.max_connections, "
                        f"got {limits.max_connections_per_client}")

    h = _Section(data.get("http", {}), "http", problems)
    http = HttpConfig(
        address=h.string("address", "127.0.0.1"),
        port=h.port("port", 8025),
        admin_token=h.string("admin_token", None),
    )
    h.finish()

    d = _Section(data.get("dns", {}), "dns", problems)
    no_servers: tuple[tuple[str, int], ...] = ()
    nameservers = d._get("nameservers", no_servers, lambda raw: tuple(_parse_nameserver(x) for x in _list(raw)))
    dns = DnsConfig(nameservers=nameservers, timeout=d.duration("timeout", 5.0))
    d.finish()

    lg = _Section(data.get("log", {}), "log", problems)
    log = LogConfig(
        level=lg._get("level", "info", lambda raw: _one_of(raw, ("debug", "info", "warning", "error"))),
        format=lg._get("format", "text", lambda raw: _one_of(raw, ("text", "json"))),
    )
    lg.finish()

    dm = _Section(data.get("domains", {}), "domains", problems)
    domains = DomainsConfig(
        max_per_account=dm.positive_int("max_per_account", 10),
        max_addresses_per_domain=dm.positive_int("max_addresses_per_domain", 10),
        recheck_interval=dm.duration("recheck_interval", 6 * 3600.0),
        grace=dm.duration("grace", 48 * 3600.0),
        return_path_host=dm.string("return_path_host", "bounce", _LABEL, "one DNS label like \"bounce\""),
    )
    dm.finish()

    dk = _Section(data.get("dkim", {}), "dkim", problems)
    dkim = DkimConfig(
        algorithms=dk._get("algorithms", (DkimAlgorithm.RSA_SHA256,), _parse_algorithms),
        rsa_bits=dk._get("rsa_bits", 2048, lambda raw: _one_of_int(raw, (1024, 2048, 3072, 4096))),
        rotation_overlap=dk.duration("rotation_overlap", 7 * 86400.0),
        signing_threads=dk.positive_int("signing_threads", 2),
    )
    dk.finish()

    po = _Section(data.get("policy", {}), "policy", problems)
    policy = PolicyConfig(require_registered_address=po.boolean("require_registered_address", True))
    po.finish()

    delivery = _parse_delivery(data.get("delivery", {}), base, problems)

    rp = _Section(data.get("reputation", {}), "reputation", problems)

    def levels(raw: Any) -> tuple[int, ...]:
        values = _list(raw)
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values) or \
                any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError("must be a list of increasing positive daily quotas like [500, 1000, 5000]")
        return tuple(values)

    def fraction(raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw <= 1:
            raise ValueError("must be a fraction above 0 and at most 1, like 0.05 for 5 %")
        return float(raw)
    reputation = ReputationConfig(
        levels=rp._get("levels", (), levels),
        promote_usage=rp._get("promote_usage", 0.8, fraction),
        max_bounce_rate=rp._get("max_bounce_rate", 0.05, fraction),
        max_complaint_rate=rp._get("max_complaint_rate", 0.001, fraction),
    )
    rp.finish()

    bl = _Section(data.get("blocklist", {}), "blocklist", problems)
    blocklist = BlocklistConfig(
        invalid_address_days=bl.positive_int("invalid_address_days", 180),
        auto_block_full_inbox=bl.boolean("auto_block_full_inbox", False),
        full_inbox_failures=bl.positive_int("full_inbox_failures", 3),
        full_inbox_window=bl.duration("full_inbox_window", 72 * 3600.0),
        full_inbox_days=bl.positive_int("full_inbox_days", 7),
    )
    bl.finish()
    listeners = _parse_listeners(data.get("listeners", []), problems)
    config = Config(server=server, listeners=listeners, tls=tls, auth=auth, limits=limits,
                    http=http, dns=dns, log=log, domains=domains, dkim=dkim, policy=policy, delivery=delivery,
                    reputation=reputation, blocklist=blocklist)
    if problems:
        raise ConfigError(problems)
    return config


def _parse_delivery(raw: Any, base: Path, problems: list[str]) -> DeliveryConfig:
    d = _Section(raw, "delivery", problems)

    def schedule(value: Any) -> tuple[float, ...]:
        steps = tuple(parse_duration(x) for x in _list(value))
        if not steps or any(s <= 0 for s in steps):
            raise ValueError("must be a non-empty list of positive durations like [\"1m\", \"5m\", \"4h\"]")
        return steps

    def jitter(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError("must be a number from 0 (no jitter) to below 1")
        return float(value)

    ca = d.path_value("tls_ca_file", None)
    if ca is not None and not ca.is_absolute():
        ca = base / ca
    if ca is not None and not ca.is_file():
        problems.append(f"delivery.tls_ca_file: file not found, got \"{ca}\"")
    routes: dict[str, Route] = {}
    for domain, value in _table(d, "routes").items():
        key = f"delivery.routes.\"{domain}\""
        if domain != "*" and not _HOSTNAME.match(domain):
            problems.append(f"{key}: must be a recipient domain or \"*\"")
            continue
        target, tls_raw = (value, None) if isinstance(value, str) else (
            (value.get("host"), value.get("tls")) if isinstance(value, dict) else (None, None))
        try:
            host, port = _host_port(target)
            tls_mode = None if tls_raw is None else DeliveryTls(tls_raw)
        except ValueError as exc:
            problems.append(f"{key}: {exc}, got {_show(value)}")
            continue
        if isinstance(value, dict) and set(value) - {"host", "tls"}:
            problems.append(f"{key}: unknown key " + ", ".join(sorted(set(value) - {"host", "tls"})))
        routes[domain.lower()] = Route(host, port, tls_mode)
    limits: dict[str, DestinationLimits] = {}
    for domain, value in _table(d, "domains").items():
        sec = _Section(value, f"delivery.domains.\"{domain}\"", problems)
        limits[domain.lower()] = DestinationLimits(
            max_concurrency=sec.positive_int("max_concurrency", None),  # type: ignore[arg-type]
            max_messages_per_connection=sec.positive_int("max_messages_per_connection", None))  # type: ignore[arg-type]
        sec.finish()
    config = DeliveryConfig(
        tls=d.choice("tls", DeliveryTls.OPPORTUNISTIC, DeliveryTls),
        tls_ca_file=ca,
        retry_schedule=d._get("retry_schedule", DEFAULT_RETRY, schedule),
        retry_jitter=d._get("retry_jitter", 0.1, jitter),
        max_lifetime=d.duration("max_lifetime", 72 * 3600.0),
        mx_port=d.port("mx_port", 25),
        connect_timeout=d.duration("connect_timeout", 30.0),
        command_timeout=d.duration("command_timeout", 300.0),
        data_timeout=d.duration("data_timeout", 600.0),
        active_limit=d.positive_int("active_limit", 20000),
        max_connections=d.positive_int("max_connections", 100),
        initial_concurrency=d.positive_int("initial_concurrency", 2),
        max_concurrency=d.positive_int("max_concurrency", 20),
        dead_after_failures=d.positive_int("dead_after_failures", 3),
        max_messages_per_connection=d.positive_int("max_messages_per_connection", 100),
        max_recipients_per_transaction=d.positive_int("max_recipients_per_transaction", 50),
        scan_interval=d.duration("scan_interval", 1.0),
        lease=d.duration("lease", 1800.0),
        routes=routes,
        domains=limits,
    )
    d.finish()
    if config.initial_concurrency > config.max_concurrency:
        problems.append("delivery.initial_concurrency: must not exceed delivery.max_concurrency, "
                        f"got {config.initial_concurrency}")
    return config


def _table(section: _Section, name: str) -> dict[str, Any]:
    section.seen.add(name)
    value = section.data.get(name, {})
    if not isinstance(value, dict):
        section.problems.append(f"{section.key(name)}: must be a table, got {_show(value)}")
        return {}
    return value


def _host_port(raw: Any) -> tuple[str, int]:
    if not isinstance(raw, str) or not raw:
        raise ValueError("must be \"host:port\" (or a table with host and tls)")
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = raw.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError("must be \"host:port\" with a port from 1 to 65535")
    return host, int(port_text)


def _parse_algorithms(raw: Any) -> tuple[DkimAlgorithm, ...]:
    allowed = [a.value for a in DkimAlgorithm]
    if not isinstance(raw, list) or not raw or any(x not in allowed for x in raw) or len(set(raw)) != len(raw):
        raise ValueError("must be a non-empty list of distinct values from " + ", ".join(f'"{a}"' for a in allowed))
    return tuple(DkimAlgorithm(x) for x in raw)


def _one_of_int(raw: Any, allowed: tuple[int, ...]) -> int:
    if isinstance(raw, bool) or raw not in allowed:
        raise ValueError("must be one of " + ", ".join(str(a) for a in allowed))
    return int(raw)


def _list(raw: Any) -> list[Any]:
    if not isinstance(raw, list):
        raise ValueError("must be a list")
    return raw


def _one_of(raw: Any, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise ValueError("must be one of " + ", ".join(f'"{a}"' for a in allowed))
    return str(raw)


def _parse_listeners(raw: Any, problems: list[str]) -> tuple[ListenerConfig, ...]:
    if not isinstance(raw, list):
        problems.append(f"listeners: must be an array of tables ([[listeners]]), got {_show(raw)}")
        return ()
    if not raw:
        problems.append("listeners: at least one [[listeners]] table is required")
    result = []
    names: set[str] = set()
    endpoints: set[tuple[str, int]] = set()
    for i, item in enumerate(raw):
        sec = _Section(item, f"listeners[{i}]", problems)
        name = sec.string("name", f"listener{i}", _NAME, "lower-case letters, digits, '.', '_' or '-'")
        address = sec._get("address", "127.0.0.1", _ip_text)
        port = sec.port("port", 0)
        if "port" not in sec.data:
            problems.append(f"listeners[{i}].port: is required")
        tls = sec.choice("tls", TlsMode.STARTTLS, TlsMode)
        no_nets: tuple[Network, ...] = ()
        nets = sec._get("trusted_networks", no_nets, _parse_networks)
        account = sec.string("trusted_account", None, _NAME, "an account name")
        sec.finish()
        if name in names:
            problems.append(f"listeners[{i}].name: duplicate listener name, got \"{name}\"")
        names.add(name)
        if port and (address, port) in endpoints:
            problems.append(f"listeners[{i}].port: {address}:{port} is used by another listener")
        endpoints.add((address, port))
        if nets and not account:
            problems.append(f"listeners[{i}].trusted_account: is required when trusted_networks is set")
        if account and not nets:
            problems.append(f"listeners[{i}].trusted_networks: is required when trusted_account is set")
        if tls is TlsMode.NONE and not nets:
            problems.append(f"listeners[{i}].tls: \"none\" is only allowed with trusted_networks "
                            "(plaintext AUTH would expose passwords)")
        result.append(ListenerConfig(name=name, address=address, port=port, tls=tls,
                                     trusted_networks=nets, trusted_account=account))
    return tuple(result)


def _ip_text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be an IP address string")
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ValueError("must be an IP address such as \"127.0.0.1\" or \"::1\"") from None
    return raw


def load(path: Path) -> Config:
    """Read and validate a relay.toml; raise ConfigError with every problem found."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse(data, base_dir=path.resolve().parent)
