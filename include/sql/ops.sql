-- Airlock's ops schema: the tables Airlock itself writes in the ops database, created if missing
-- by airlock.hooks.ops_store (the one place that creates them). {schema} is filled in with a
-- quoted identifier (database.ops_schema of the environment file).
CREATE SCHEMA IF NOT EXISTS {schema};

-- The audit trail of releases, rollbacks, migrations and restores: one row per run and action.
CREATE TABLE IF NOT EXISTS {schema}.releases (
    id              bigserial PRIMARY KEY,
    environment     text        NOT NULL,
    dag_id          text        NOT NULL,
    run_id          text        NOT NULL,
    action          text        NOT NULL,  -- release | rollback | migrate | restore | break_lock
    version         text        NOT NULL,
    previous        jsonb       NOT NULL,  -- host -> release it had before
    triggered_by    text,
    approved_by     text,
    reason          text,
    started_at      timestamptz,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    result          text        NOT NULL,  -- succeeded | rolled_back | failed | rejected | timed_out | planned | broken
    detail          text,
    UNIQUE (run_id, action)
);
-- approved_by is the approver's user id; under FAB (numeric ids) or Keycloak it differs from the
-- name people know them by, which is kept beside it.
ALTER TABLE {schema}.releases ADD COLUMN IF NOT EXISTS approved_by_name text;
-- When the released commit was made, if the CI trigger said (release param committed_at): the
-- start of the DORA lead time for changes on the Airlock board.
ALTER TABLE {schema}.releases ADD COLUMN IF NOT EXISTS committed_at timestamptz;
-- The Airlock board reads an environment's newest rows first (releases, DORA windows).
CREATE INDEX IF NOT EXISTS releases_by_time ON {schema}.releases (environment, finished_at DESC);

-- The health-check history: one row per check, target and run of health_<env>. Read it for
-- trends and dashboards, e.g.
--   SELECT checked_at, status, value FROM airlock.health_checks
--    WHERE environment = 'demo' AND check_name = 'disk' ORDER BY checked_at DESC;
CREATE TABLE IF NOT EXISTS {schema}.health_checks (
    id              bigserial        PRIMARY KEY,
    environment     text             NOT NULL,
    dag_id          text             NOT NULL,
    run_id          text             NOT NULL,
    checked_at      timestamptz      NOT NULL DEFAULT now(),
    check_name      text             NOT NULL,  -- app, ssh, disk, inodes, load, memory, db_*, redis_*, backup_age, airflow
    target          text             NOT NULL,  -- host, host:mount, connection id, component
    status          text             NOT NULL CHECK (status IN ('ok', 'warn', 'critical', 'skipped')),
    value           double precision,           -- in the unit the message names (%, ms, s, h, MB, count)
    threshold       text,
    message         text             NOT NULL,
    duration_ms     double precision NOT NULL,
    UNIQUE (environment, run_id, check_name, target)
);
CREATE INDEX IF NOT EXISTS health_checks_by_check
    ON {schema}.health_checks (environment, check_name, target, checked_at DESC);
-- Whether Slack heard of a run's result: sent, pending (Slack did not accept it; the next run
-- retries), held (the hourly rate limit), silenced; null when there was nothing to say. Kept apart
-- from status, so "critical" never reads as "announced".
ALTER TABLE {schema}.health_checks ADD COLUMN IF NOT EXISTS notified text;

-- The alert state of each check and target (airlock.core.health.AlertState): the durable copy;
-- Redis keeps a cache of it. A row with pending set holds a line Slack has not accepted yet.
CREATE TABLE IF NOT EXISTS {schema}.health_alerts (
    environment     text        NOT NULL,
    check_name      text        NOT NULL,
    target          text        NOT NULL,
    status          text        NOT NULL,  -- what Slack knows: ok, warn, critical
    state           jsonb       NOT NULL,  -- the whole AlertState (streaks, pending line, attempts)
    pending         boolean     NOT NULL DEFAULT false,
    attempts        integer     NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (environment, check_name, target)
);

-- Every message health_<env> tried to send: the hourly rate limit counts the sent ones.
CREATE TABLE IF NOT EXISTS {schema}.health_notifications (
    id              bigserial   PRIMARY KEY,
    environment     text        NOT NULL,
    run_id          text        NOT NULL,
    attempted_at    timestamptz NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('sent', 'failed', 'summary', 'summary_failed')),
    lines           integer     NOT NULL,
    text            text        NOT NULL
);
CREATE INDEX IF NOT EXISTS health_notifications_by_time
    ON {schema}.health_notifications (environment, attempted_at DESC);

-- Silences added by silence_<env>: alerts of matching checks and targets are muted until ends_at;
-- health_<env> deletes expired ones.
CREATE TABLE IF NOT EXISTS {schema}.health_silences (
    id              bigserial   PRIMARY KEY,
    environment     text        NOT NULL,
    run_id          text        NOT NULL UNIQUE,
    check_pattern   text        NOT NULL,
    host_pattern    text        NOT NULL,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    reason          text        NOT NULL,
    created_by      text        NOT NULL
);
-- The Airlock board's history since a time, and each check's latest row within a window.
CREATE INDEX IF NOT EXISTS health_checks_by_time ON {schema}.health_checks (environment, checked_at DESC);
