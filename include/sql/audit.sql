-- Airlock's audit trail of releases and rollbacks. {schema} is filled in with a quoted identifier.
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.releases (
    id              bigserial PRIMARY KEY,
    environment     text        NOT NULL,
    dag_id          text        NOT NULL,
    run_id          text        NOT NULL,
    action          text        NOT NULL,  -- release | rollback
    version         text        NOT NULL,
    previous        jsonb       NOT NULL,  -- host -> release it had before
    triggered_by    text,
    approved_by     text,
    reason          text,
    started_at      timestamptz,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    result          text        NOT NULL,  -- succeeded | rolled_back | failed | rejected
    detail          text,
    UNIQUE (run_id, action)
);
