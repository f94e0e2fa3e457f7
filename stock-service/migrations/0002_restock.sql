-- Restocks: units added to a live item without a reset (its generation and ledger stay). A
-- restock is a ledger row of its own kind, keyed by the admin's restock id (so a retried
-- restock adds nothing twice), and the segments' `initial` counts the units they were given.
ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_kind_check;
ALTER TABLE stock_movements
    ADD CONSTRAINT stock_movements_kind_check CHECK (kind IN ('deduct', 'release', 'restock'));
