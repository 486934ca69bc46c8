# The two commands of the README: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian tools the integration tests drive: swaks (a real SMTP client) and its TLS module,
# Postfix's smtp-sink and a private Postfix MX (below),
# dnsmasq (a real DNS server the tests start on a high port), Node.js for the independent
# DKIM verifier (mailauth, pinned in tests/tools/package-lock.json).
# clamav-daemon and rspamd: the content scanners the content tests start on their own sockets
# (tests/scanners.py; no signatures or rules are downloaded).
# chromium: the headless browser the web console's tests drive through Playwright (its
# executable_path: Playwright never downloads a browser here).
# redis-server and postgresql: the shared counters and the shared catalog of cluster mode; their
# tests start their own servers on high ports (PostgreSQL as the postgres user, in a directory
# of the test's): no daemon of the packages is started (policy-rc.d below).
DEBS := swaks libnet-ssleay-perl libio-socket-ssl-perl dnsmasq-base clamav-daemon rspamd chromium redis-server \
	postgresql
TOOLS := tests/tools/node_modules/.installed
# promtool checks config/prometheus.yml and config/alerts.yml: taken out of Debian's prometheus
# package without installing it (no Prometheus daemon is set up or started).
PROMTOOL := tests/tools/bin/promtool

.PHONY: run test bench fuzz venv debs clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/smtprelay serve --config ./relay.toml

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then policy=1; \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		status=$$?; [ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; [ $$status -eq 0 ]; \
	fi
	@# Postfix for smtp-sink (a receiving server with fault injection) and, in the feedback tests,
	@# a private instance the tests start as a bouncing MX (tests/mailservers.PostfixMx, its own
	@# config directory under /var/tmp): "No configuration" means the system's own Postfix daemon
	@# is never set up or started.
	@if ! dpkg -s postfix >/dev/null 2>&1; then \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix; \
	fi

$(TOOLS): tests/tools/package.json tests/tools/package-lock.json
	command -v npm >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	cd tests/tools && npm ci --silent --no-audit --no-fund
	touch $(TOOLS)

$(PROMTOOL):
	rm -rf tests/tools/prometheus-deb && mkdir -p tests/tools/prometheus-deb tests/tools/bin
	cd tests/tools/prometheus-deb && { apt-get -o APT::Sandbox::User=root download prometheus || { apt-get update -q && apt-get -o APT::Sandbox::User=root download prometheus; }; }
	dpkg-deb -x tests/tools/prometheus-deb/prometheus_*.deb tests/tools/prometheus-deb/x
	cp tests/tools/prometheus-deb/x/usr/bin/promtool $(PROMTOOL)
	rm -rf tests/tools/prometheus-deb

test: $(STAMP) debs $(TOOLS) $(PROMTOOL)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The benchmark suite (bench/README.md): installs Postfix, OpenDKIM and dnsmasq when missing
# (as root; no daemon is enabled), runs every benchmark and keeps the raw output in bench/results/.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/throughput.py --profile bench/results/profiles
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/signing.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/batch.py
	$(BIN)/python bench/content.py
	$(BIN)/python bench/egress.py
	$(BIN)/python bench/feedback.py
	$(BIN)/python bench/console.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/cluster_catalog.py

# Coverage-guided fuzzing of the parsers (atheris), longer than `make test` affords; not part of it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := mail rcpt address unstuff dkim-headers template send-request
fuzz: $(STAMP)
	$(BIN)/pip install --quiet atheris
	for target in $(FUZZ_TARGETS); do \
		$(BIN)/python tests/fuzz/harness.py $$target -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	rm -rf $(VENV) var *.egg-info
