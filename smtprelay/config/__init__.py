"""relay.toml → frozen dataclasses, validated with key-path errors.

Owns: parsing and validating the configuration file. Every problem is collected (not
just the first) and reported as ``key.path: reason, got <value>`` so that
``smtprelay check-config`` can print them all at once. Unknown keys are errors too:
a typo in a limit must never silently fall back to the default.

Layout: config.model (the dataclasses), config.reader (value readers), config.parsing
(the sections). Import from here.
"""
from __future__ import annotations

from smtprelay.config.model import (RELOADABLE_SECTIONS, BareNewline, ClamavConfig, Config, ContentConfig,
                                    DeliveryConfig, DeliveryTls, DkimAlgorithm, FeedbackConfig, ReturnPath, RspamdConfig, ScannerFailure, ScanScope, DnsConfig, ListenerConfig, Protocol, ReceivedHeader, Route, TlsMode,
                                    reload_report)
from smtprelay.config.parsing import load, parse
from smtprelay.config.reader import ConfigError, format_duration, parse_duration

__all__ = ["RELOADABLE_SECTIONS", "BareNewline", "ClamavConfig", "Config", "ContentConfig", "RspamdConfig",
           "ScanScope", "ScannerFailure", "ConfigError", "DeliveryConfig", "DeliveryTls",
           "DkimAlgorithm", "DnsConfig", "FeedbackConfig", "ReturnPath", "ListenerConfig", "Protocol", "ReceivedHeader", "Route", "TlsMode", "format_duration", "load", "parse",
           "parse_duration", "reload_report"]
