"""config/prometheus.yml and config/alerts.yml: promtool accepts them, and every smtprelay
metric the rules use is one the relay exports."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from smtprelay.http.metrics import Metrics
from tests.support import ROOT

PROMTOOL = ROOT / "tests" / "tools" / "bin" / "promtool"
promtool = str(PROMTOOL) if PROMTOOL.exists() else shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="`make test` extracts promtool")


@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    rules = subprocess.run([str(promtool), "check", "rules", str(ROOT / "config" / "alerts.yml")],
                           capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 11 rules found" in rules.stdout
    conf = subprocess.run([str(promtool), "check", "config", str(ROOT / "config" / "prometheus.yml")],
                          capture_output=True, text=True)
    assert conf.returncode == 0, conf.stdout + conf.stderr


def test_every_metric_in_the_rules_exists() -> None:
    used = set(re.findall(r"smtprelay_[a-z_]+", (ROOT / "config" / "alerts.yml").read_text()))
    metrics = Metrics()
    metrics.tls_certificate_expiry.set(0)
    exported = generate_latest(metrics.registry).decode()
    names = set(re.findall(r"^# TYPE (smtprelay_[a-z_]+) (\w+)", exported, re.M))
    known = {n for n, _ in names} | {n + "_total" for n, t in names if t == "counter"}
    assert used <= known, used - known
    assert Path(ROOT / "config" / "prometheus.yml").read_text().count("alerts.yml") == 1
