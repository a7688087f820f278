-- Indexes left invalid, e.g. by a failed CREATE INDEX or REINDEX ... CONCURRENTLY (<name>_ccnew).
SELECT n.nspname AS schema, t.relname AS "table", c.relname AS index
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid
ORDER BY 1, 3;
