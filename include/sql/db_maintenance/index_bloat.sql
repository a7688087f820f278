-- B-tree index bloat from pgstatindex (reads the whole index: keep it to the quiet hour).
-- A freshly built index shows about 10 percent (its fill factor). Parameter: min_bytes.
-- Only the 20 largest valid indexes of at least min_bytes are measured: the subquery picks them
-- by size first (the LIMIT inside it keeps pgstatindex from running on any other index).
SELECT b.schema, b."table", b.index, b.bytes,
       round((100 - (pgstatindex(b.oid::regclass)).avg_leaf_density)::numeric, 1)::float AS bloat_percent
FROM (
    SELECT c.oid, n.nspname AS schema, t.relname AS "table", c.relname AS index,
           pg_relation_size(c.oid) AS bytes
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_am a ON a.oid = c.relam
    JOIN pg_index i ON i.indexrelid = c.oid
    JOIN pg_class t ON t.oid = i.indrelid
    WHERE c.relkind = 'i' AND a.amname = 'btree' AND i.indisvalid
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%%'
      AND pg_relation_size(c.oid) >= %(min_bytes)s
    ORDER BY pg_relation_size(c.oid) DESC
    LIMIT 20
) b
ORDER BY b.bytes DESC;
