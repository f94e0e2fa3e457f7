-- Flash-sale stock: the database is the source of truth.

-- One row per item. `generation` increases on every reset (PUT /stock/{sku}).
CREATE TABLE items (
    sku         TEXT PRIMARY KEY,
    total       BIGINT NOT NULL CHECK (total >= 0),
    segments    INT    NOT NULL CHECK (segments BETWEEN 1 AND 1024),
    generation  BIGINT NOT NULL DEFAULT 1,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The item's stock split into segments, each deducted under its own lock.
-- `last_fence` is the fencing token of the last fenced write: a fenced write applies only
-- when the row still carries the fence it read and its own token is larger.
-- `version` increases on every write (optimistic strategy).
CREATE TABLE stock_segments (
    sku         TEXT   NOT NULL REFERENCES items (sku) ON DELETE CASCADE,
    segment     INT    NOT NULL CHECK (segment >= 0),
    initial     BIGINT NOT NULL CHECK (initial >= 0),
    available   BIGINT NOT NULL CHECK (available >= 0),
    last_fence  BIGINT NOT NULL DEFAULT 0,
    version     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (sku, segment)
);

-- The ledger: one row per order and kind. The primary key is what makes a retried
-- deduction or release idempotent. `parts` says how much came from (or went back to) which
-- segment: [{"segment": 3, "qty": 1}, ...].
CREATE TABLE stock_movements (
    order_id    TEXT   NOT NULL,
    kind        TEXT   NOT NULL CHECK (kind IN ('deduct', 'release')),
    sku         TEXT   NOT NULL,
    generation  BIGINT NOT NULL,
    qty         BIGINT NOT NULL CHECK (qty > 0),
    parts       JSONB  NOT NULL,
    strategy    TEXT   NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);

CREATE INDEX stock_movements_sku ON stock_movements (sku, generation);
