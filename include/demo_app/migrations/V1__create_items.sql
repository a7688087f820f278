-- Shipped since demo-app 1.0.0: the table /items reads, with three sample rows.
CREATE TABLE items (
    id serial PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz DEFAULT now()
);

INSERT INTO items (name) VALUES ('anvil'), ('bellows'), ('crucible');
