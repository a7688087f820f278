-- Tables autovacuum has fallen behind on: more dead tuples than the threshold, and more than
-- the given share of the table's rows. Parameters: threshold, ratio.
SELECT schemaname AS schema, relname AS "table", n_live_tup AS live_tuples, n_dead_tup AS dead_tuples,
       round(n_dead_tup::numeric / nullif(n_live_tup + n_dead_tup, 0), 3)::float AS dead_ratio,
       last_vacuum, last_autovacuum, last_analyze, last_autoanalyze
FROM pg_stat_user_tables
WHERE n_dead_tup > %(threshold)s
  AND n_dead_tup > %(ratio)s * (n_live_tup + n_dead_tup)
ORDER BY n_dead_tup DESC;
