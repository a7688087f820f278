-- Dead tuples and the last (auto)vacuum/analyze of every user table, read after a VACUUM.
SELECT schemaname AS schema, relname AS "table", n_live_tup AS live_tuples, n_dead_tup AS dead_tuples,
       last_vacuum, last_autovacuum, last_analyze, last_autoanalyze
FROM pg_stat_user_tables
ORDER BY schemaname, relname;
