from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.config import ConfigError, TlsMode, format_duration, parse, parse_duration, reload_report

LISTENER = {"name": "s", "address": "127.0.0.1", "port": 2587, "tls": "starttls"}


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("15m", 900), ("72h", 259200), ("180d", 15552000),
                                          ("500ms", 0.5), ("1h30m", 5400), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "30x", "-5s", "1h 30m", "30S", "ms"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_duration_round_trip(n: int, unit: str) -> None:
    seconds = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.text(max_size=12))
def test_parse_duration_never_crashes(text: str) -> None:
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass


def test_defaults() -> None:
    config = parse({"listeners": [LISTENER]})
    assert config.limits.max_message_bytes == 4 * 1024 * 1024
    assert config.limits.max_subject_chars == 998
    assert config.limits.recipient_hourly_cap == 10
    assert config.limits.account_daily_quota == 500
    assert config.limits.account_rate_per_second == 20
    assert config.listeners[0].tls is TlsMode.STARTTLS


def test_problems_carry_key_paths() -> None:
    with pytest.raises(ConfigError) as err:
        parse({"listeners": [LISTENER, {**LISTENER, "port": 70000, "trusted_networks": ["10.0.0.1/8"]}],
               "limits": {"max_message_bytes": "4MB"}, "dns": {"nameservers": ["dns.example:53"]},
               "nonsense": {}})
    problems = err.value.problems
    assert 'limits.max_message_bytes: must be a positive integer, got "4MB"' in problems
    assert "listeners[1].port: must be a port number between 0 and 65535, got 70000" in problems
    assert any(p.startswith('listeners[1].trusted_networks: "10.0.0.1/8" is not a CIDR') for p in problems)
    assert any(p.startswith("dns.nameservers:") and "not a name" in p for p in problems)
    assert "nonsense: unknown section" in problems
    assert 'listeners[1].name: duplicate listener name, got "s"' in problems


def test_trusted_networks_need_an_account() -> None:
    with pytest.raises(ConfigError) as err:
        parse({"listeners": [{**LISTENER, "trusted_networks": ["10.0.0.0/8"]}]})
    assert err.value.problems == ["listeners[0].trusted_account: is required when trusted_networks is set"]


def test_nameserver_forms() -> None:
    config = parse({"listeners": [LISTENER], "dns": {"nameservers": ["127.0.0.1:5353", "::1", "[::1]:5300"]}})
    assert config.dns.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("::1", 5300))


def test_relative_data_dir_is_relative_to_the_config_file() -> None:
    config = parse({"listeners": [LISTENER], "server": {"data_dir": "./var"}}, base_dir=Path("/etc/smtprelay"))
    assert config.server.data_dir == Path("/etc/smtprelay/var")


def test_reload_report() -> None:
    old = parse({"listeners": [LISTENER]})
    new = parse({"listeners": [{**LISTENER, "port": 2588}], "limits": {"max_recipients": 5}})
    assert reload_report(old, new) == (["limits"], ["listeners"])
    # The admin token is read per request: applied at once, not "needs a restart" (issue 23.6).
    token = parse({"listeners": [LISTENER], "http": {"admin_token": "a-new-token-of-32-characters-xxxxx"}})
    assert reload_report(old, token) == (["http.admin_token"], [])
    both = parse({"listeners": [LISTENER], "http": {"admin_token": "a-new-token-of-32-characters-xxxxx", "port": 9999}})
    assert reload_report(old, both) == (["http.admin_token"], ["http"])


def test_workers_and_commit_window() -> None:
    config = parse({"listeners": [LISTENER]})
    assert config.server.workers == 0 and config.server.worker_count >= 1   # "auto"
    assert config.server.commit_window == 0.005
    config = parse({"server": {"workers": 3, "commit_window": "0s"}, "listeners": [LISTENER]})
    assert (config.server.worker_count, config.server.commit_window) == (3, 0.0)
    assert parse({"server": {"workers": "auto"}, "listeners": [LISTENER]}).server.workers == 0
    for bad in (0, -1, "two", True, 1000):
        with pytest.raises(ConfigError) as err:
            parse({"server": {"workers": bad}, "listeners": [LISTENER]})
        assert any(p.startswith("server.workers:") and '"auto"' in p for p in err.value.problems)
    with pytest.raises(ConfigError) as err:
        parse({"server": {"commit_window": "-5ms"}, "listeners": [LISTENER]})
    assert any(p.startswith("server.commit_window:") for p in err.value.problems)


def test_protocol() -> None:
    from smtprelay.config import Protocol
    assert parse({"listeners": [LISTENER]}).server.protocol is Protocol.AIOSMTPD       # the default
    assert parse({"server": {"protocol": "native"}, "listeners": [LISTENER]}).server.protocol is Protocol.NATIVE
    with pytest.raises(ConfigError) as err:
        parse({"server": {"protocol": "postfix"}, "listeners": [LISTENER]})
    assert 'server.protocol: must be one of "aiosmtpd", "native", got "postfix"' in err.value.problems


def test_feedback_listeners_and_section_are_checked_with_key_paths() -> None:
    """Issue 18: a feedback listener takes no accounts; the [feedback] section names its keys."""
    ok = parse({"listeners": [{"port": 2525}, {"name": "fb", "port": 2526, "role": "feedback", "tls": "none"}],
                "feedback": {"return_path_prefix": "b", "max_message_bytes": 2048}, "delivery": {"delay_warning": "4h"}})
    assert [l.name for l in ok.feedback_listeners] == ["fb"] and [l.name for l in ok.submission_listeners] == [
        "listener0"]
    assert ok.feedback.return_path.value == "auto" and ok.feedback.max_message_bytes == 2048
    assert ok.delivery.delay_warning == 4 * 3600 and parse({"listeners": [{"port": 1}]}).delivery.delay_warning == 0
    with pytest.raises(ConfigError) as err:
        parse({"listeners": [{"name": "fb", "port": 2526, "role": "feedback", "trusted_networks": ["127.0.0.1/32"],
                              "trusted_account": "apps"}, {"port": 25, "role": "inbound"}],
               "feedback": {"return_path_prefix": "Bounces+X", "secret": "short", "return_path": "on", "other": 1}})
    problems = "\n".join(err.value.problems)
    assert "listeners[0].trusted_networks: a feedback listener has no accounts" in problems
    assert 'listeners[1].role: must be one of "submission", "feedback"' in problems
    assert "feedback.return_path_prefix: must be 1 to 16 lower-case letters" in problems
    assert "feedback.secret: must be at least 16 characters" in problems
    assert 'feedback.return_path: must be one of "auto", "off"' in problems
    assert "feedback.other: unknown key" in problems
    with pytest.raises(ConfigError) as err:
        parse({"listeners": [{"name": "fb", "port": 2526, "role": "feedback", "tls": "none"}]})
    assert any("at least one listener must have role = \"submission\"" in p for p in err.value.problems)


def test_console_section_is_checked() -> None:
    assert parse({"listeners": [{"port": 1}]}).console.enabled is False
    with pytest.raises(ConfigError) as err:
        parse({"listeners": [{"port": 1}], "console": {"enabled": "yes", "session_lifetime": "forever", "theme": 1}})
    problems = "\n".join(err.value.problems)
    assert "console.enabled: must be true or false" in problems and "console.session_lifetime:" in problems
    assert "console.theme: unknown key" in problems


def test_cluster_section_is_checked() -> None:
    single = parse({"listeners": [{"port": 1}]}).cluster
    assert single.redis is None and single.node and single.lease == 600.0 and single.on_failure == "refuse"
    cluster = parse({"listeners": [{"port": 1}], "cluster": {"node": "relay-1", "redis": "rediss://r.example:6380/0",
                                                             "lease": "2m", "on_failure": "local"}}).cluster
    assert (cluster.node, cluster.redis, cluster.lease, cluster.on_failure) == (
        "relay-1", "rediss://r.example:6380/0", 120.0, "local")
    shared = parse({"listeners": [{"port": 1}], "cluster": {"postgres": "postgresql://relay@db/relay",
                                                            "key_file": "/etc/smtprelay/cluster.key"}}).cluster
    assert (shared.postgres, str(shared.key_file)) == ("postgresql://relay@db/relay", "/etc/smtprelay/cluster.key")
    with pytest.raises(ConfigError) as bad:
        parse({"listeners": [{"port": 1}], "cluster": {"node": "relay 1", "redis": "http://r.example",
                                                       "lease": "5s", "on_failure": "refusex",
                                                       "postgres": "postgresql://db"}})
    problems = "\n".join(bad.value.problems)
    for expected in ("cluster.node: must be a name of letters", "cluster.redis: must be a redis://, rediss:// or "
                     "unix:// URL", "cluster.lease: must be at least 10s", "cluster.on_failure: must be \"refuse\" "
                     "or \"local\"", "cluster.key_file: required with cluster.postgres"):
        assert expected in problems, problems
