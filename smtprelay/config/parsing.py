"""relay.toml → Config: every section validated, every problem collected.

Must never: open sockets, touch the store, or read anything but the file it is given.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from smtprelay.config.model import (DEFAULT_RETRY, AuthConfig, BareNewline, BlocklistConfig, Protocol, ReceivedHeader, Config, DeliveryConfig,
                                    DeliveryTls, DestinationLimits, DkimAlgorithm, DkimConfig, DnsConfig,
                                    DomainsConfig, EventsConfig, BatchConfig, ClamavConfig, ContentConfig, RspamdConfig, ScannerFailure, ScanScope, HttpConfig, ConsoleConfig, ClusterConfig, FeedbackConfig, LimitsConfig, ListenerConfig, ReturnPath, LogConfig, MiB, Network, WebhooksConfig, TrackingConfig,
                                    DEFAULT_MACHINE_AGENTS,
                                    PolicyConfig, ReputationConfig, Route, ServerConfig, TlsConfig, TlsMode)
from smtprelay.config.egress import parse_egress
from smtprelay.config.warmup import fraction, parse_warmup
from smtprelay.config.reader import (_HOSTNAME, _LABEL, _NAME, ConfigError, _host_port, _ip_text, _list, _one_of,
                                     _one_of_int, _parse_nameserver, _parse_networks, _Section, _show,
                                     parse_duration)

def parse(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a decoded TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    base = base_dir or Path(".")
    known = {"server", "listeners", "tls", "auth", "limits", "http", "dns", "log", "domains", "dkim", "policy",
             "delivery", "reputation", "blocklist", "warmup", "events", "webhooks", "tracking", "batch", "content",
             "egress", "feedback", "console", "cluster"}
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
        workers=s._get("workers", 0, _workers),
        commit_window=s.duration("commit_window", 0.005, allow_zero=True),
        protocol=s.choice("protocol", Protocol.AIOSMTPD, Protocol),
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
        received_header=a.choice("received_header", ReceivedHeader.ACCOUNT, ReceivedHeader),
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
        junk_command_limit=lim.positive_int("junk_command_limit", 100),
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
        signing_threads=dk.positive_int("signing_threads", 0, allow_zero=True),
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

    reputation = ReputationConfig(
        levels=rp._get("levels", (), levels),
        promote_usage=rp._get("promote_usage", 0.8, fraction),
        max_bounce_rate=rp._get("max_bounce_rate", 0.05, fraction),
        max_complaint_rate=rp._get("max_complaint_rate", 0.001, fraction),
        bounce_hold=rp._get("bounce_hold", 0.05, fraction),
        complaint_hold=rp._get("complaint_hold", 0.001, fraction),
        blocklisted_suspend=rp._get("blocklisted_suspend", 0.08, fraction),
        min_sample=rp.positive_int("min_sample", 100),
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
    warmup = parse_warmup(data.get("warmup", {}), problems)
    ev = _Section(data.get("events", {}), "events", problems)
    events = EventsConfig(retention=ev.duration("retention", 30 * 86400.0))
    ev.finish()
    wh = _Section(data.get("webhooks", {}), "webhooks", problems)
    webhooks = WebhooksConfig(
        concurrency=wh.positive_int("concurrency", 8), timeout=wh.duration("timeout", 10.0),
        retry_initial=wh.duration("retry_initial", 30.0), retry_max=wh.duration("retry_max", 3600.0),
        max_age=wh.duration("max_age", 86400.0), secret_overlap=wh.duration("secret_overlap", 86400.0),
        poll_interval=wh.duration("poll_interval", 1.0), retention=wh.duration("retention", 7 * 86400.0))
    wh.finish()
    tr = _Section(data.get("tracking", {}), "tracking", problems)

    def base_url(raw: Any) -> str:
        if not isinstance(raw, str) or not raw.startswith(("https://", "http://")) or len(raw) < 9:
            raise ValueError("must be an http(s) URL like \"https://t.example.com\"")
        return raw.rstrip("/")
    tracking = TrackingConfig(
        base_url=tr._get("base_url", None, base_url), secret=tr.string("secret", None),
        unsubscribe_mailto=tr.string("unsubscribe_mailto", None),
        machine_user_agents=tr._get("machine_user_agents", DEFAULT_MACHINE_AGENTS,
                                    lambda raw: tuple(str(x).lower() for x in _list(raw))),
        machine_window=tr.duration("machine_window", 60.0))
    tr.finish()
    ba = _Section(data.get("batch", {}), "batch", problems)
    batch = BatchConfig(max_group_size=ba.positive_int("max_group_size", 10_000),
                        concurrency=ba.positive_int("concurrency", 16), chunk_rows=ba.positive_int("chunk_rows", 500))
    ba.finish()
    content = _parse_content(data.get("content", {}), problems)
    egress = parse_egress(data.get("egress", {}), problems)
    if tracking.secret is not None and len(tracking.secret) < 16:
        problems.append("tracking.secret: must be at least 16 characters")
    if webhooks.max_age < 86400.0:
        problems.append("webhooks.max_age: must be at least 24h (events are retried for at least a day)")
    listeners = _parse_listeners(data.get("listeners", []), problems)
    feedback = _parse_feedback(data.get("feedback", {}), problems)
    co = _Section(data.get("console", {}), "console", problems)
    console = ConsoleConfig(enabled=co.boolean("enabled", False),
                            session_lifetime=co.duration("session_lifetime", 12 * 3600.0),
                            idle_timeout=co.duration("idle_timeout", 3600.0),
                            secure_cookie=co.boolean("secure_cookie", False))
    co.finish()
    cluster = _parse_cluster(data.get("cluster", {}), problems)
    if listeners and not any(l.role == "submission" for l in listeners):
        problems.append("listeners: at least one listener must have role = \"submission\" (the default)")
    config = Config(server=server, listeners=listeners, tls=tls, auth=auth, limits=limits,
                    http=http, dns=dns, log=log, domains=domains, dkim=dkim, policy=policy, delivery=delivery,
                    reputation=reputation, blocklist=blocklist, warmup=warmup,
                    events=events, webhooks=webhooks, tracking=tracking, batch=batch,
                    content=content, egress=egress, feedback=feedback,
                    console=console, cluster=cluster)
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
        delay_warning=d.duration("delay_warning", 0.0, allow_zero=True),
        routes=routes,
        domains=limits,
    )
    d.finish()
    if config.initial_concurrency > config.max_concurrency:
        problems.append("delivery.initial_concurrency: must not exceed delivery.max_concurrency, "
                        f"got {config.initial_concurrency}")
    return config


def _workers(raw: object) -> int:
    if raw == "auto":
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1 or raw > 256:
        raise ValueError('must be "auto" (one per CPU core but one) or a number of processes from 1 to 256')
    return raw


def _parse_content(raw: Any, problems: list[str]) -> ContentConfig:
    c = _Section(raw, "content", problems)
    failure = c.choice("scanner_failure", ScannerFailure.TEMPFAIL, ScannerFailure)
    suspend_after = c.positive_int("suspend_after", 20, allow_zero=True)
    window = c.duration("suspend_window", 86400.0)
    scanners = _Section(_table(c, "scanners"), "content.scanners", problems)
    clamav = rspamd = None
    if "clamav" in scanners.data:
        cl = _Section(_table(scanners, "clamav"), "content.scanners.clamav", problems)
        address = cl.string("address", None)
        if address is None:
            problems.append("content.scanners.clamav.address: required (\"unix:/run/clamav/clamd.ctl\" or "
                            "\"127.0.0.1:3310\")")
        elif not address.startswith("unix:/") and not re.fullmatch(r"\[?[0-9A-Za-z.:-]+\]?:\d{1,5}", address):
            problems.append(f"content.scanners.clamav.address: must be \"unix:/path\" or \"host:port\", "
                            f"got {address!r}")
        clamav = ClamavConfig(address or "", cl.choice("scan", ScanScope.ATTACHMENTS, ScanScope),
                              cl.duration("timeout", 10.0))
        cl.finish()
    if "rspamd" in scanners.data:
        rs = _Section(_table(scanners, "rspamd"), "content.scanners.rspamd", problems)
        url = rs.string("url", None, re.compile(r"https?://[^/\s]+/?$"), "an http URL like \"http://127.0.0.1:11333\"")
        if url is None and "url" not in rs.data:
            problems.append("content.scanners.rspamd.url: required (\"http://127.0.0.1:11333\")")

        def score(raw: Any) -> float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError("must be a number")
            return float(raw)
        rspamd = RspamdConfig((url or "").rstrip("/"), rs._get("reject_score", 15.0, score),
                              rs._get("hold_score", None, score), rs.boolean("add_header", False),
                              rs.duration("timeout", 10.0))
        rs.finish()
        if rspamd.hold_score is not None and rspamd.reject_score is not None and \
                rspamd.hold_score >= rspamd.reject_score:
            problems.append("content.scanners.rspamd.hold_score: must be below reject_score")
    scanners.finish()
    c.finish()
    return ContentConfig(failure, suspend_after, window, clamav, rspamd)


def _table(section: _Section, name: str) -> dict[str, Any]:
    section.seen.add(name)
    value = section.data.get(name, {})
    if not isinstance(value, dict):
        section.problems.append(f"{section.key(name)}: must be a table, got {_show(value)}")
        return {}
    return value


def _parse_algorithms(raw: Any) -> tuple[DkimAlgorithm, ...]:
    allowed = [a.value for a in DkimAlgorithm]
    if not isinstance(raw, list) or not raw or any(x not in allowed for x in raw) or len(set(raw)) != len(raw):
        raise ValueError("must be a non-empty list of distinct values from " + ", ".join(f'"{a}"' for a in allowed))
    return tuple(DkimAlgorithm(x) for x in raw)


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
        role = sec._get("role", "submission", lambda raw: _one_of(raw, ("submission", "feedback")))
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
        if role == "feedback" and (nets or account):
            problems.append(f"listeners[{i}].trusted_networks: a feedback listener has no accounts and no trusted "
                            "networks (it takes mail only for the bounce and unsubscribe addresses)")
        if tls is TlsMode.NONE and not nets and role == "submission":
            problems.append(f"listeners[{i}].tls: \"none\" is only allowed with trusted_networks "
                            "(plaintext AUTH would expose passwords)")
        result.append(ListenerConfig(name=name, address=address, port=port, tls=tls,
                                     trusted_networks=nets, trusted_account=account, role=role))
    return tuple(result)


_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,15}$")


_REDIS_URL = re.compile(r"(redis|rediss|unix)://\S+\Z")
_PG_URL = re.compile(r"(postgresql|postgres)://\S*\Z")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


def _parse_cluster(raw: Any, problems: list[str]) -> ClusterConfig:
    import socket
    cl = _Section(raw, "cluster", problems)
    config = ClusterConfig(
        node=cl.string("node", socket.gethostname().split(".")[0] or "relay", _NODE,
                       "a name of letters, digits, '.', '_' or '-'"),
        redis=cl.string("redis", None, _REDIS_URL, "a redis://, rediss:// or unix:// URL"),
        postgres=cl.string("postgres", None, _PG_URL, "a postgresql:// URL"),
        key_file=cl.path_value("key_file", None),
        lease=cl.duration("lease", 600.0),
        on_failure=cl.string("on_failure", "refuse", re.compile(r"(refuse|local)\Z"), "\"refuse\" or \"local\""))
    cl.finish()
    if config.postgres is not None and config.key_file is None:
        problems.append("cluster.key_file: required with cluster.postgres: the DKIM private keys are kept in "
                        "PostgreSQL sealed with it, the same file on every node (README \"Running several nodes\")")
    if config.lease < 10:
        problems.append("cluster.lease: must be at least 10s (a reservation lives from RCPT to the end of DATA)")
    return config


def _parse_feedback(raw: Any, problems: list[str]) -> FeedbackConfig:
    f = _Section(raw, "feedback", problems)
    config = FeedbackConfig(
        return_path=f.choice("return_path", ReturnPath.AUTO, ReturnPath),
        return_path_prefix=f.string("return_path_prefix", "bounces", _PREFIX,
                                    "1 to 16 lower-case letters, digits, '.', '_' or '-' (the local part before '+')"),
        max_message_bytes=f.positive_int("max_message_bytes", 1 * MiB),
        secret=f.string("secret", None),
        retention=f.duration("retention", 30 * 86400.0))
    f.finish()
    if config.secret is not None and len(config.secret) < 16:
        problems.append("feedback.secret: must be at least 16 characters")
    return config


def load(path: Path) -> Config:
    """Read and validate a relay.toml; raise ConfigError with every problem found."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found (name the file with --config PATH or SMTPRELAY_CONFIG; "
                           f"the repository's relay.toml is a starting point)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse(data, base_dir=path.resolve().parent)
