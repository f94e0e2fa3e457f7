-- Orders, their idempotency keys, and per-user purchase totals.

CREATE TABLE orders (
    id              UUID PRIMARY KEY,
    user_id         TEXT   NOT NULL,
    sku             TEXT   NOT NULL,
    qty             BIGINT NOT NULL CHECK (qty > 0),
    -- pending -> reserved -> paid; reserved -> cancelled; pending -> rejected
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'reserved', 'paid', 'cancelled', 'rejected')),
    reason          TEXT,
    pay_by          TIMESTAMPTZ,
    -- false while a cancelled order's stock has not been confirmed released
    stock_released  BOOLEAN NOT NULL DEFAULT false,
    -- who may drive a pending order: a request or the recovery worker holds it until then
    locked_until    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC);
CREATE INDEX orders_open ON orders (status, updated_at) WHERE status IN ('pending', 'reserved', 'cancelled');

-- One row per (user, Idempotency-Key): the primary key is the guarantee that a key makes at
-- most one order. `fingerprint` is the canonical request; `status`/`body`/`location` the stored
-- response once `state` is 'done'.
CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    order_id     UUID NOT NULL REFERENCES orders (id),
    state        TEXT NOT NULL CHECK (state IN ('in_progress', 'done')),
    status       INT,
    body         JSONB,
    location     TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Units a user holds of an item in pending, reserved or paid orders (the purchase limit).
CREATE TABLE purchase_totals (
    user_id  TEXT   NOT NULL,
    sku      TEXT   NOT NULL,
    qty      BIGINT NOT NULL CHECK (qty >= 0),
    PRIMARY KEY (user_id, sku)
);
