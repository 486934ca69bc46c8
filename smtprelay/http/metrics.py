"""Prometheus metrics (names from DESIGN §4, prefix `smtprelay_`).

Owns: the registry and every metric object. Labels stay low-cardinality: never an
address or a message id.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

from smtprelay import __version__


# The *_created series double the output and no dashboard of ours uses them.
disable_created_metrics()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.smtp_connections = Counter("smtprelay_smtp_connections_total",
                                        "SMTP connections accepted by the listeners", ["listener"], registry=r)
        self.smtp_connections_refused = Counter("smtprelay_smtp_connections_refused_total",
                                                "SMTP connections refused by a connection cap", ["reason"],
                                                registry=r)
        self.smtp_sessions_active = Gauge("smtprelay_smtp_sessions_active", "Open SMTP sessions", registry=r)
        self.blocklist_entries = Gauge("smtprelay_blocklist_entries",
                                       "Blocklist entries RCPT is judged against (expired ones until pruned)",
                                       registry=r)
        self.auth_attempts = Counter("smtprelay_auth_attempts_total", "SMTP AUTH attempts", ["result"],
                                     registry=r)
        self.messages_accepted = Counter("smtprelay_messages_accepted_total",
                                         "Messages accepted and committed to the queue", registry=r)
        self.recipients_rejected = Counter("smtprelay_recipients_rejected_total",
                                           "Recipients (or whole transactions) refused, by reason", ["reason"],
                                           registry=r)
        self.store_commits = Counter("smtprelay_store_commits_total",
                                     "Queue store transactions (group commits)", ["result"], registry=r)
        self.cluster_store_errors = Counter("smtprelay_cluster_store_errors_total",
                                            "Failed round trips to a store shared by the cluster's nodes", ["store"],
                                            registry=r)
        self.cluster_store_latency = Histogram("smtprelay_cluster_store_latency_seconds",
                                               "Round trips to a store shared by the cluster's nodes", ["store"],
                                               buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1),
                                               registry=r)
        self.dkim_sign_seconds = Histogram("smtprelay_dkim_sign_seconds", "Time to DKIM-sign one message "
                                           "(all its signatures), including the hop to the signing thread",
                                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
                                           registry=r)
        self.domain_status_changes = Counter("smtprelay_domain_status_changes_total",
                                             "Sender domain status changes, by new status", ["status"], registry=r)
        self.deliveries = Counter("smtprelay_deliveries_total", "Delivery attempts per recipient, by result and "
                                  "the egress pool it went out from", ["result", "pool"], registry=r)
        for result in ("delivered", "deferred", "bounced", "expired"):
            self.deliveries.labels(result=result, pool="shared")
        self.delivery_duration_seconds = Histogram(
            "smtprelay_delivery_duration_seconds", "Time of one SMTP transaction to a remote server",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self.queue_messages = Gauge("smtprelay_queue_messages", "Recipients in the queue, by state", ["state"],
                                    registry=r)
        self.queue_oldest_age_seconds = Gauge("smtprelay_queue_oldest_age_seconds",
                                              "Age of the oldest message not yet finished", registry=r)
        self.warmup_remaining = Gauge("smtprelay_warmup_remaining",
                                      "Warm-up budget left today per sender domain and named provider "
                                      "(+Inf when uncapped); per source address of an egress pool with ip "
                                      "(sender_domain empty)", ["sender_domain", "provider", "ip"], registry=r)
        self.warmup_transitions = Counter("smtprelay_warmup_transitions_total",
                                          "Warm-up and reputation transitions (frozen, unfrozen, paused, "
                                          "suspended, resumed, day_advanced)", ["transition"], registry=r)
        self.webhook_deliveries = Counter("smtprelay_webhook_deliveries_total",
                                          "Webhook POSTs, by result (delivered, retry, dead)", ["result"], registry=r)
        for result in ("delivered", "retry", "dead"):
            self.webhook_deliveries.labels(result=result)
        self.tls_certificate_expiry = Gauge("smtprelay_tls_certificate_expiry_seconds",
                                            "When the submission TLS certificate expires (Unix time)", registry=r)
        self.tasks = Gauge("smtprelay_tasks", "Sending tasks, by status (scheduled, running, paused, finished, "
                           "cancelled)", ["status"], registry=r)
        self.task_recipients = Counter("smtprelay_task_recipients_total",
                                       "Group rows a sending task submitted, by result (accepted, rejected; "
                                       "deferred: refused for a while, tried again)", ["result"], registry=r)
        for result in ("accepted", "rejected", "deferred"):
            self.task_recipients.labels(result=result)
        for status in ("scheduled", "running", "paused", "finished", "cancelled"):
            self.tasks.labels(status=status)
        self.content_scans = Counter("smtprelay_content_scans_total",
                                     "Scans that were not simply clean, by scanner and result (virus, spam, hold, "
                                     "failure)", ["scanner", "result"], registry=r)
        self.feedback_messages = Counter("smtprelay_feedback_messages_total",
                                         "Mail the feedback listener accepted, by what it was (dsn, arf, unsubscribe,"
                                         " unparsed) and what it changed (applied, duplicate, unmatched, ignored, kept)",
                                         ["type", "result"], registry=r)
        self.account_suspensions = Counter("smtprelay_account_suspensions_total",
                                           "Accounts suspended for content (virus or spam refusals)", registry=r)
        self.build_info = Info("smtprelay_build", "smtprelay version", registry=r)
        self.build_info.info({"version": __version__})
        for result in ("success", "failure", "locked_out"):
            self.auth_attempts.labels(result=result)

    # -- the task runner's (batch.runner.Counters) ------------------------------------------------
    def recipients(self, result: str) -> None:
        self.task_recipients.labels(result=result).inc()

    def statuses(self, counts: dict[str, int]) -> None:
        for status in ("scheduled", "running", "paused", "finished", "cancelled"):
            self.tasks.labels(status=status).set(counts.get(status, 0))
