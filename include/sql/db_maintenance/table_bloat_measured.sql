-- Table bloat measured with pgstattuple_approx (reads the visibility map and the pages that are
-- not all-visible): dead tuples plus free space, in percent of the table. Parameter: min_bytes.
SELECT s.schemaname AS schema, s.relname AS "table", pg_table_size(s.relid) AS bytes,
       round(100.0 * s.n_dead_tup / nullif(s.n_live_tup + s.n_dead_tup, 0), 1)::float AS dead_percent,
       round((a.dead_tuple_percent + a.approx_free_percent)::numeric, 1)::float AS bloat_percent
FROM pg_stat_user_tables s
CROSS JOIN LATERAL pgstattuple_approx(s.relid) a
WHERE pg_table_size(s.relid) >= %(min_bytes)s
ORDER BY pg_table_size(s.relid) DESC
LIMIT 20;
