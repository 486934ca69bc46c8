"""The store's DDL: one script per schema version, in order (queue.schema applies them and
keeps `PRAGMA user_version`). Append-only: never edit a released step, add a new one.

Must never: hold data logic, or open a connection.
"""
from __future__ import annotations


def _bump_triggers(*tables: str) -> str:
    return "\n".join(
        f"    CREATE TRIGGER {t}_{op[:3].lower()} AFTER {op} ON {t} BEGIN\n"
        "        UPDATE meta SET value = value + 1 WHERE key = 'catalog_version'; END;"
        for t in tables for op in ("INSERT", "UPDATE", "DELETE"))


MIGRATIONS: list[str] = [
    # 1: accounts, credentials, the queue.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('catalog_version', 0);

    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        daily_quota INTEGER,            -- NULL: limits.account_daily_quota
        rate_per_second REAL,           -- NULL: limits.account_rate_per_second
        created_at REAL NOT NULL
    );
    CREATE TABLE credentials (
        username TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        digest TEXT NOT NULL,           -- sha256$<salt>$<hex>; the password is never stored
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    -- Any change to who may log in bumps catalog_version (triggers below); the server
    -- polls that one integer and reloads its credential table only when it moved.
{catalog_triggers}
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,            -- the queue id shown in "queued as <ID>"
        account_id INTEGER REFERENCES accounts(id),
        username TEXT,                  -- SASL username, NULL for trusted networks
        mail_from TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        client_address TEXT NOT NULL,
        tls TEXT,                       -- TLS version of the submission, NULL if none
        header_message_id TEXT,
        body BLOB NOT NULL              -- last: listing never reads the overflow pages
    );
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        state TEXT NOT NULL,            -- queued, ...
        next_attempt_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_reply TEXT,
        updated_at REAL NOT NULL
    );
    CREATE INDEX recipients_ready ON recipients (state, next_attempt_at);
    CREATE INDEX recipients_domain ON recipients (domain, state);
    CREATE INDEX recipients_message ON recipients (message_id);
    """.replace("{catalog_triggers}", _bump_triggers("accounts", "credentials")),
    # 2: sender domains, their DKIM keys, sender addresses.
    """
    CREATE TABLE domains (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        status TEXT NOT NULL,           -- pending, verified, failing
        failing_since REAL,
        failing_record TEXT,            -- which required record failed, and why
        verified_at REAL,
        last_checked_at REAL,
        created_at REAL NOT NULL
    );
    CREATE TABLE dkim_keys (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        selector TEXT NOT NULL,
        algorithm TEXT NOT NULL,        -- rsa-sha256, ed25519-sha256
        public_key TEXT NOT NULL,       -- the p= value; the private key is a 0600 file
        state TEXT NOT NULL,            -- active, pending (rotation), retiring, retired
        created_at REAL NOT NULL,
        activated_at REAL,
        retire_at REAL,
        UNIQUE (domain_id, selector)
    );
    CREATE TABLE addresses (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL UNIQUE,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        display_name TEXT,
        created_at REAL NOT NULL
    );
    {catalog_triggers}
    """.replace("{catalog_triggers}", _bump_triggers("domains", "dkim_keys", "addresses")),
    # 3: delivery: leases, attempts, bounce classes, per-account TLS, flush requests.
    """
    ALTER TABLE recipients ADD COLUMN lease_until REAL;
    ALTER TABLE recipients ADD COLUMN bounce_class TEXT;
    ALTER TABLE accounts ADD COLUMN delivery_tls TEXT;   -- NULL: delivery.tls
    CREATE INDEX recipients_state_message ON recipients (state, message_id);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        recipient_id INTEGER NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
        at REAL NOT NULL,
        result TEXT NOT NULL,           -- delivered, deferred, bounced, expired
        relay TEXT,                     -- host[ip]:port
        tls TEXT,
        code INTEGER,
        enhanced TEXT,
        reply TEXT,
        bounce_class TEXT,
        duration REAL
    );
    CREATE INDEX attempts_recipient ON attempts (recipient_id);
    INSERT INTO meta (key, value) VALUES ('flush_generation', 0);
    """,
    # 4: sending limits, reputation levels, the blocklist.
    """
    ALTER TABLE accounts ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN level_evaluated_day TEXT;   -- last UTC day judged for promotion
    -- One row per accepted recipient: rolling hourly caps, daily quotas, reputation usage.
    CREATE TABLE sends (account_id INTEGER NOT NULL, address TEXT NOT NULL, at REAL NOT NULL);
    CREATE INDEX sends_account_at ON sends (account_id, at);
    CREATE TABLE blocklist (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        type TEXT NOT NULL,             -- invalid, reject, custom, full_inbox
        account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,   -- custom: its account (NULL: all)
        sender_domain TEXT,             -- reject: the sender domain the recipient refused
        origin_account_id INTEGER REFERENCES accounts(id) ON DELETE SET NULL,
        reason TEXT,
        note TEXT,
        created_at REAL NOT NULL,
        expires_at REAL                 -- NULL: never
    );
    CREATE INDEX blocklist_address ON blocklist (address);
    CREATE TABLE allowlist (
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (account_id, address)
    );
    -- Complaints and unsubscribes (written by the events side; read by reputation).
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        account_id INTEGER,
        sender_domain TEXT NOT NULL,
        address TEXT NOT NULL,
        kind TEXT NOT NULL,             -- complaint, unsubscribe
        at REAL NOT NULL
    );
    CREATE INDEX feedback_account_at ON feedback (account_id, at);
    INSERT INTO meta (key, value) VALUES ('blocklist_version', 0);
    CREATE TRIGGER blocklist_ins AFTER INSERT ON blocklist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version'; END;
    CREATE TRIGGER blocklist_del AFTER DELETE ON blocklist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version'; END;
    CREATE TRIGGER blocklist_upd AFTER UPDATE ON blocklist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version'; END;
    CREATE TRIGGER allowlist_ins AFTER INSERT ON allowlist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version'; END;
    CREATE TRIGGER allowlist_del AFTER DELETE ON allowlist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version'; END;
    """,
    # 5: warm-up and sender-domain reputation (issue 6).
    """
    ALTER TABLE messages ADD COLUMN sender_domain TEXT;          -- NULL for bounces (null sender)
    UPDATE messages SET sender_domain = lower(substr(mail_from, instr(mail_from, '@') + 1)) WHERE mail_from != '';
    CREATE INDEX messages_sender_domain ON messages (sender_domain);
    -- "throttled" is a shown state: queued with throttled_since set (one index finds ready work).
    ALTER TABLE recipients ADD COLUMN throttled_since REAL;
    ALTER TABLE recipients ADD COLUMN throttled_for REAL NOT NULL DEFAULT 0;  -- not counted in max_lifetime
    ALTER TABLE recipients ADD COLUMN hold_reason TEXT;          -- NULL: operator hold; 'suspended'
    CREATE INDEX recipients_throttled ON recipients (next_attempt_at) WHERE state = 'queued' AND throttled_since IS NOT NULL;
    ALTER TABLE attempts ADD COLUMN sender_domain TEXT;
    ALTER TABLE attempts ADD COLUMN provider TEXT;
    CREATE INDEX attempts_at ON attempts (at);
    ALTER TABLE domains ADD COLUMN suspended_at REAL;
    ALTER TABLE domains ADD COLUMN suspended_reason TEXT;
    ALTER TABLE domains ADD COLUMN resumed_at REAL;
    CREATE TABLE warmup (
        sender_domain TEXT NOT NULL,
        provider TEXT NOT NULL,
        day INTEGER NOT NULL,
        day_date TEXT NOT NULL,         -- the local date `used` belongs to
        used INTEGER NOT NULL,
        withheld INTEGER NOT NULL DEFAULT 0,
        frozen_reason TEXT,
        paused_until REAL NOT NULL DEFAULT 0,
        pause_reason TEXT NOT NULL DEFAULT '',
        backoff_step INTEGER NOT NULL DEFAULT 0,
        day_override INTEGER,           -- set by `warmup set-day`; the scheduler applies and clears it
        updated_at REAL NOT NULL,
        PRIMARY KEY (sender_domain, provider)
    );
    CREATE TABLE provider_hours (provider TEXT PRIMARY KEY, hour INTEGER NOT NULL, used INTEGER NOT NULL);
    CREATE TABLE domain_requests (
        sender_domain TEXT NOT NULL,
        hour INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        blocklisted INTEGER NOT NULL,
        PRIMARY KEY (sender_domain, hour)
    );
    -- One row per state change (smtprelay.events.types): written in the same transaction as
    -- the change itself, so status, statistics and (later) webhooks never miss or invent one.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        type TEXT NOT NULL,             -- accepted, rejected, delivered, ...; warmup.*, domain.*
        at REAL NOT NULL,
        account_id INTEGER,
        queue_id TEXT,
        recipient TEXT,
        sender_domain TEXT,
        recipient_domain TEXT,
        provider TEXT,
        tag TEXT,
        data TEXT NOT NULL              -- JSON: the type's own fields (smtp_response, mx, bounce_type, ...)
    );
    CREATE INDEX events_at ON events (at);
    CREATE INDEX events_queue ON events (queue_id);
    CREATE INDEX events_recipient ON events (recipient, at);
    ALTER TABLE messages ADD COLUMN tag TEXT;   -- X-Smtprelay-Tag (removed from the message)
    INSERT INTO meta (key, value) VALUES ('warmup_generation', 0);
    """,
    # 6: webhooks and their durable outbox (issue 7).
    """
    CREATE TABLE webhooks (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        address TEXT,                   -- NULL: the account's hook; else mail from this sender address
        url TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX webhooks_owner ON webhooks (account_id, coalesce(address, ''));
    CREATE TABLE webhook_secrets (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        secret TEXT NOT NULL,
        created_at REAL NOT NULL,
        retire_at REAL                  -- NULL: current; else still signing until then (rotation overlap)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL,
        url TEXT NOT NULL,
        account_id INTEGER NOT NULL,
        queue_id TEXT,
        state TEXT NOT NULL,            -- pending, delivered, dead
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        created_at REAL NOT NULL,
        delivered_at REAL,
        last_error TEXT
    );
    CREATE INDEX outbox_ready ON outbox (state, next_at);
    CREATE INDEX outbox_message ON outbox (url, queue_id, state);
    INSERT INTO meta (key, value) VALUES ('webhook_cursor', 0);
    """,
    # 7: open/click tracking and List-Unsubscribe: per-recipient bodies, settings (issue 7).
    """
    ALTER TABLE recipients ADD COLUMN body BLOB;          -- this recipient's own copy (tracking tokens)
    CREATE TABLE tracking_settings (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        domain TEXT,                    -- NULL: the account's defaults; else one sender domain
        opens INTEGER,                  -- 1 on, 0 off, NULL inherit (domain → account → off)
        clicks INTEGER,
        unsubscribe INTEGER
    );
    CREATE UNIQUE INDEX tracking_owner ON tracking_settings (account_id, coalesce(domain, ''));
    {catalog_triggers}
    """.replace("{catalog_triggers}", _bump_triggers("tracking_settings")),
    # 8: scale (issue 8): the per-recipient hourly cap reads its history from `sends` instead
    # of holding every recipient of the last hour in memory; `queue list --domain` walks one
    # domain's messages of one state in id order and stops at its limit (the same index still
    # serves the dead-destination deferral by domain and state).
    """
    CREATE INDEX sends_recipient ON sends (account_id, address, at);
    DROP INDEX recipients_domain;
    CREATE INDEX recipients_domain ON recipients (domain, state, message_id);
    """,
    # 9: the queue gauge shows `deferred` (queued after a failed attempt) apart from `queued`;
    # a partial index counts them without reading the queue, like `throttled`.
    """
    CREATE INDEX recipients_deferred ON recipients (next_attempt_at)
        WHERE state = 'queued' AND attempts > 0 AND throttled_since IS NULL;
    """,
    # 10: templates (issue 16). A template's versions are kept: a message records the one it
    # was rendered from, and statistics name it after the template is deleted (deleted_at).
    """
    CREATE TABLE templates (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        description TEXT,
        version INTEGER NOT NULL,       -- the current version (template_versions)
        status TEXT NOT NULL,           -- active; inactive: a strict check found errors (status_reason)
        status_reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deleted_at REAL
    );
    CREATE UNIQUE INDEX templates_name ON templates (account_id, name) WHERE deleted_at IS NULL;
    CREATE TABLE template_versions (
        template_id INTEGER NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        subject TEXT,
        html TEXT,
        text TEXT,
        variables TEXT NOT NULL,        -- JSON list of the dotted variable names the parts use
        created_at REAL NOT NULL,
        PRIMARY KEY (template_id, version)
    );
    ALTER TABLE messages ADD COLUMN template_id INTEGER;
    ALTER TABLE messages ADD COLUMN template_version INTEGER;
    ALTER TABLE events ADD COLUMN template_id INTEGER;
    ALTER TABLE events ADD COLUMN template_version INTEGER;
    {catalog_triggers}
    """.replace("{catalog_triggers}", _bump_triggers("templates")),
    # 11: recipient groups and sending tasks (issue 17). A group's rows never change (a new
    # upload is a new group). The CLI writes what an operator asks (a task, `held`,
    # `cancelled_at`); the back end's task runner alone writes a task's progress (`state`,
    # `wait_*`, `next_run_at`, `runs`, task_runs, the `rejected` task_rows). An accepted row's
    # task_rows line is written in the message's own enqueue transaction: after a crash a row
    # is either queued and recorded, or neither — never sent twice.
    """
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        description TEXT,
        columns TEXT NOT NULL,          -- JSON list: the variable columns, in file order (not email)
        size INTEGER NOT NULL,
        skipped INTEGER NOT NULL DEFAULT 0,   -- bad rows left out (--skip-invalid)
        created_at REAL NOT NULL,
        deleted_at REAL                 -- its rows are gone; tasks that used it still name it
    );
    CREATE UNIQUE INDEX groups_name ON groups (account_id, name) WHERE deleted_at IS NULL;
    CREATE TABLE group_rows (
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        row INTEGER NOT NULL,           -- 1, 2, ... in file order
        line INTEGER NOT NULL,          -- its line in the CSV
        email TEXT NOT NULL,
        data TEXT NOT NULL,             -- JSON object of the row's variables
        PRIMARY KEY (group_id, row)
    ) WITHOUT ROWID;
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        template_id INTEGER NOT NULL REFERENCES templates(id),
        mail_from TEXT NOT NULL,        -- as given ("Name <address>" or address)
        subject TEXT,
        tag TEXT,
        data TEXT NOT NULL,             -- JSON object: task-wide variables (a row's own win)
        kind TEXT NOT NULL,             -- now, at, every
        first_at REAL NOT NULL,
        every_seconds REAL,
        created_at REAL NOT NULL,
        held INTEGER NOT NULL DEFAULT 0,      -- operator: task pause / task resume
        cancelled_at REAL,                    -- operator: task cancel
        state TEXT NOT NULL DEFAULT 'scheduled',   -- runner: scheduled, running, finished, cancelled
        wait_reason TEXT,                     -- runner: why it waits (daily quota, sender refused)
        wait_until REAL,
        next_run_at REAL,                     -- runner: when the next run is due (NULL: none)
        runs INTEGER NOT NULL DEFAULT 0,      -- runner: runs started
        updated_at REAL NOT NULL
    );
    CREATE INDEX tasks_open ON tasks (state) WHERE state IN ('scheduled', 'running');
    CREATE INDEX tasks_group ON tasks (group_id);
    CREATE INDEX tasks_template ON tasks (template_id);
    CREATE TABLE task_runs (
        task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        run INTEGER NOT NULL,
        due_at REAL NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        size INTEGER NOT NULL,          -- the group's rows
        cursor INTEGER NOT NULL DEFAULT 0,    -- every row up to here is resolved
        status TEXT NOT NULL,           -- running, finished, cancelled
        counts TEXT,                    -- JSON, frozen when its task_rows and events age out (retention)
        PRIMARY KEY (task_id, run)
    );
    CREATE TABLE task_rows (
        task_id INTEGER NOT NULL,
        run INTEGER NOT NULL,
        row INTEGER NOT NULL,
        result TEXT NOT NULL,           -- accepted, rejected
        queue_id TEXT,
        reply TEXT,
        at REAL NOT NULL,
        PRIMARY KEY (task_id, run, row)
    ) WITHOUT ROWID;
    ALTER TABLE messages ADD COLUMN task_id INTEGER;
    ALTER TABLE messages ADD COLUMN task_run INTEGER;
    ALTER TABLE events ADD COLUMN task_id INTEGER;
    ALTER TABLE events ADD COLUMN task_run INTEGER;
    CREATE INDEX messages_task ON messages (task_id, task_run) WHERE task_id IS NOT NULL;
    CREATE INDEX events_task ON events (task_id, task_run, type) WHERE task_id IS NOT NULL;
    """,
    # 12: content safety (issue 22). An account whose mail was refused for viruses or spam too
    # often is suspended (the back end writes it; `account resume` lifts it, and the refusals
    # before content_resumed_at no longer count). Its queued mail is held meanwhile
    # (hold_reason 'account suspended'). The accounts trigger bumps catalog_version: the
    # workers refuse MAIL within a second.
    """
    ALTER TABLE accounts ADD COLUMN suspended_at REAL;
    ALTER TABLE accounts ADD COLUMN suspended_reason TEXT;
    ALTER TABLE accounts ADD COLUMN content_resumed_at REAL;
    CREATE INDEX events_content ON events (at) WHERE type = 'rejected'
        AND json_extract(data, '$.rule') IN ('virus', 'spam');
    """,
    # 13: egress IP pools (issue 19). A sender domain or an account is bound to a pool of
    # relay.toml ([[egress.pools]]; NULL: the account's, then "shared") and says whether its
    # mail may fall back to the shared pool ('shared' or 'none'; NULL: 'shared'). Every attempt
    # records the source address it went out from (NULL: the kernel's choice). A pool address
    # warms up per mailbox provider like a sender domain does (`ip_warmup`, the scheduler's;
    # `warmup set-day --ip` writes day_override).
    """
    ALTER TABLE accounts ADD COLUMN pool TEXT;
    ALTER TABLE accounts ADD COLUMN pool_fallback TEXT;
    ALTER TABLE domains ADD COLUMN pool TEXT;
    ALTER TABLE domains ADD COLUMN pool_fallback TEXT;
    ALTER TABLE attempts ADD COLUMN source TEXT;
    CREATE TABLE ip_warmup (
        address TEXT NOT NULL,
        provider TEXT NOT NULL,
        day INTEGER NOT NULL,
        day_date TEXT NOT NULL,
        used INTEGER NOT NULL,
        withheld INTEGER NOT NULL DEFAULT 0,
        paused_until REAL NOT NULL DEFAULT 0,
        pause_reason TEXT NOT NULL DEFAULT '',
        backoff_step INTEGER NOT NULL DEFAULT 0,
        day_override INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (address, provider)
    );
    """,
    # 14: inbound feedback (issue 18). Every mail the feedback listener accepted is kept with
    # what it was found to be (type dsn, arf, unsubscribe, unparsed) and what it changed
    # (result); `feedback list/show` and /api/v1/feedback read it. A domain's return path is
    # VERP once its bounce MX and bounce SPF records verify (return_path_ok, set by `domain
    # verify`). delay_warned_at: the sender was told once that the recipient is delayed.
    """
    CREATE TABLE feedback_messages (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,
        listener TEXT NOT NULL,
        peer TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,          -- the envelope recipients, one per line
        type TEXT NOT NULL,             -- dsn, arf, unsubscribe, unparsed
        result TEXT NOT NULL,           -- applied, unmatched, ignored, duplicate, kept
        queue_id TEXT,                  -- the message it was about, when found
        recipient TEXT,                 -- the recipient it was about, when found
        sender_domain TEXT,
        account_id INTEGER,
        detail TEXT NOT NULL,           -- JSON: the parsed report and what was done
        raw BLOB NOT NULL
    );
    CREATE INDEX feedback_messages_at ON feedback_messages (received_at);
    CREATE INDEX feedback_messages_type ON feedback_messages (type, received_at);
    ALTER TABLE domains ADD COLUMN return_path_ok INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE recipients ADD COLUMN delay_warned_at REAL;
    """,
    # 15: the web console (issue 21). Its users (`console-user add`): an admin, or one account's
    # user, read-only or not; the password is generated and only its digest kept. A session is
    # kept by the digest of its cookie; its CSRF token is checked on every form.
    """
    CREATE TABLE console_users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        account_id INTEGER REFERENCES accounts(id) ON DELETE CASCADE,   -- NULL: an admin
        read_only INTEGER NOT NULL DEFAULT 0,
        password_digest TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_login_at REAL
    );
    CREATE TABLE console_sessions (
        token_digest TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES console_users(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        seen_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX console_sessions_user ON console_sessions (user_id);
    """,
    # 16: cluster mode (issue 20): the changes this node makes itself to rows the cluster shares
    # (a bounce's or complaint's blocklist entry, a suspension, a reputation level) are noted in
    # `cluster_outbox` in the same transaction, and cluster.mirror copies them to PostgreSQL;
    # its events follow them there past `cluster_events_cursor` (cluster-wide stats and status).
    # `cluster_push` is 1 only on a node in cluster mode, and 0 while the mirror itself writes.
    """
    INSERT INTO meta (key, value) VALUES ('cluster_push', 0);
    INSERT INTO meta (key, value) VALUES ('cluster_events_cursor', 0);   -- the last event sent to PostgreSQL
    CREATE TABLE cluster_outbox (
        id INTEGER PRIMARY KEY,
        tbl TEXT NOT NULL,              -- blocklist (a new row), accounts or domains (changed columns)
        row_id INTEGER NOT NULL,
        payload TEXT NOT NULL           -- the row's values then (JSON): the mirror may replace the row
    );
    CREATE TRIGGER cluster_push_blocklist AFTER INSERT ON blocklist
        WHEN (SELECT value FROM meta WHERE key = 'cluster_push') = 1 BEGIN
        INSERT INTO cluster_outbox (tbl, row_id, payload) VALUES ('blocklist', NEW.id,
            json_object('address', NEW.address, 'type', NEW.type, 'account_id', NEW.account_id, 'sender_domain', NEW.sender_domain, 'origin_account_id', NEW.origin_account_id, 'reason', NEW.reason, 'note', NEW.note, 'created_at', NEW.created_at, 'expires_at', NEW.expires_at)); END;
    CREATE TRIGGER cluster_push_accounts AFTER UPDATE OF level, level_evaluated_day, suspended_at, suspended_reason, content_resumed_at ON accounts
        WHEN (SELECT value FROM meta WHERE key = 'cluster_push') = 1 BEGIN
        INSERT INTO cluster_outbox (tbl, row_id, payload) VALUES ('accounts', NEW.id,
            json_object('level', NEW.level, 'level_evaluated_day', NEW.level_evaluated_day, 'suspended_at', NEW.suspended_at, 'suspended_reason', NEW.suspended_reason, 'content_resumed_at', NEW.content_resumed_at)); END;
    CREATE TRIGGER cluster_push_domains AFTER UPDATE OF suspended_at, suspended_reason, resumed_at ON domains
        WHEN (SELECT value FROM meta WHERE key = 'cluster_push') = 1 BEGIN
        INSERT INTO cluster_outbox (tbl, row_id, payload) VALUES ('domains', NEW.id,
            json_object('suspended_at', NEW.suspended_at, 'suspended_reason', NEW.suspended_reason, 'resumed_at', NEW.resumed_at)); END;
    """,
    # 17: the gate reads only what changed in the blocklist (issue 20: a cluster's bounces change
    # it every second; a 100 000-entry list was read whole each time). Each row carries the
    # blocklist_version of its last change (`rev`); a deletion leaves its id and version in
    # blocklist_deleted until the back end has applied it.
    """
    ALTER TABLE blocklist ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX blocklist_rev ON blocklist (rev);
    CREATE TABLE blocklist_deleted (entry_id INTEGER NOT NULL, rev INTEGER NOT NULL);
    CREATE INDEX blocklist_deleted_rev ON blocklist_deleted (rev);
    DROP TRIGGER blocklist_ins;
    DROP TRIGGER blocklist_upd;
    DROP TRIGGER blocklist_del;
    CREATE TRIGGER blocklist_ins AFTER INSERT ON blocklist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version';
        UPDATE blocklist SET rev = (SELECT value FROM meta WHERE key = 'blocklist_version') WHERE id = NEW.id; END;
    CREATE TRIGGER blocklist_upd AFTER UPDATE OF address, type, account_id, sender_domain, origin_account_id,
        reason, note, created_at, expires_at ON blocklist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version';
        UPDATE blocklist SET rev = (SELECT value FROM meta WHERE key = 'blocklist_version') WHERE id = NEW.id; END;
    CREATE TRIGGER blocklist_del AFTER DELETE ON blocklist BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'blocklist_version';
        INSERT INTO blocklist_deleted (entry_id, rev) SELECT OLD.id, value FROM meta WHERE key = 'blocklist_version';
        END;
    UPDATE blocklist SET rev = 1;
    """,
    # 18: cluster mode (issue 20): a warm-up day set through any node (`warmup set-day`) is
    # mirrored into `warmup_days`; its triggers apply it to this node's pair as the local command
    # does (day_override, picked up by the scheduler at its next scan).
    """
    CREATE TABLE warmup_days (
        sender_domain TEXT NOT NULL,
        provider TEXT NOT NULL,
        day INTEGER NOT NULL,
        day_date TEXT NOT NULL,
        set_at REAL NOT NULL,
        PRIMARY KEY (sender_domain, provider)
    );
{apply}
    """.replace("{apply}", "\n".join(
        f"    CREATE TRIGGER warmup_days_{op[:3].lower()} AFTER {op} ON warmup_days BEGIN\n"
        "        INSERT INTO warmup (sender_domain, provider, day, day_date, used, updated_at, day_override)\n"
        "            VALUES (NEW.sender_domain, NEW.provider, NEW.day, NEW.day_date, 0, NEW.set_at, NEW.day)\n"
        "            ON CONFLICT (sender_domain, provider) DO UPDATE SET day_override = excluded.day_override,\n"
        "            day = excluded.day, updated_at = excluded.updated_at;\n"
        "        UPDATE meta SET value = value + 1 WHERE key = 'warmup_generation'; END;" for op in ("INSERT", "UPDATE"))),
]
