-- Shipped since demo-app 1.1.0: /items reports each item's category once this column exists.
ALTER TABLE items ADD COLUMN category text NOT NULL DEFAULT 'general';
