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
