-- Table bloat estimated from the statistics only (pgstattuple not installed): the share of dead
-- tuples. Parameter: min_bytes.
SELECT s.schemaname AS schema, s.relname AS "table", pg_table_size(s.relid) AS bytes,
       round(100.0 * s.n_dead_tup / nullif(s.n_live_tup + s.n_dead_tup, 0), 1)::float AS dead_percent,
       NULL::float AS bloat_percent
FROM pg_stat_user_tables s
WHERE pg_table_size(s.relid) >= %(min_bytes)s
ORDER BY pg_table_size(s.relid) DESC
LIMIT 20;
