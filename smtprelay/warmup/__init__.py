"""Warm-up: the schedule and daily caps (schedule), mailbox providers (providers), the
throttle with budgets, reputation and backoff per sender domain and provider (throttle), the
scheduler's side of it (admission) and its SQL (ledger). Its commands are cli.warmup."""
