-- Sessions running one statement, or idle inside a transaction, for longer than the limit.
-- An old open transaction keeps vacuum from removing dead tuples anywhere in the database.
-- Parameter: seconds. The query text is redacted (literals, comments) before anything shows it.
SELECT pid, usename AS "user", application_name, client_addr::text, state,
       extract(epoch FROM now() - xact_start)::int AS transaction_seconds,
       extract(epoch FROM now() - CASE WHEN state = 'active' THEN query_start ELSE state_change END)::int
           AS seconds,
       query
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND ((state = 'active' AND now() - query_start > make_interval(secs => %(seconds)s))
    OR (state LIKE 'idle in transaction%%' AND now() - state_change > make_interval(secs => %(seconds)s)))
ORDER BY xact_start NULLS LAST;
