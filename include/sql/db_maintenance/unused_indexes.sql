-- Indexes never scanned since the statistics were last reset; unique and primary-key indexes
-- are left out (they enforce constraints). Report only: never dropped here.
SELECT s.schemaname AS schema, s.relname AS "table", s.indexrelname AS index, s.idx_scan AS scans,
       pg_relation_size(s.indexrelid) AS bytes,
       (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()) AS since
FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid
ORDER BY pg_relation_size(s.indexrelid) DESC, s.schemaname, s.indexrelname;
