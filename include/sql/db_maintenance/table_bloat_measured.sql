-- Table bloat measured with pgstattuple_approx (reads the visibility map and the pages that are
-- not all-visible): dead tuples plus free space, in percent of the table. Parameter: min_bytes.
-- Only the 20 largest tables of at least min_bytes are measured: the subquery picks them by size
-- first (the LIMIT inside it keeps pgstattuple_approx from running on any other table).
SELECT s.schema, s."table", s.bytes,
       round(100.0 * s.n_dead_tup / nullif(s.n_live_tup + s.n_dead_tup, 0), 1)::float AS dead_percent,
       round((a.dead_tuple_percent + a.approx_free_percent)::numeric, 1)::float AS bloat_percent
FROM (
    SELECT relid, schemaname AS schema, relname AS "table", pg_table_size(relid) AS bytes,
           n_dead_tup, n_live_tup
    FROM pg_stat_user_tables
    WHERE pg_table_size(relid) >= %(min_bytes)s
    ORDER BY pg_table_size(relid) DESC
    LIMIT 20
) s
CROSS JOIN LATERAL pgstattuple_approx(s.relid) a
ORDER BY s.bytes DESC;
